"""The reference protocol's artefacts one at a time: the ablation set.

``python -m experiments.table1 --ablation=sb,lb`` runs a small-batch row and a
large-batch row (any rows of ``rows.LABELS``) under the clean protocol, under
each artefact of the bigBatch reference code alone (``bigbatch_jax.protocol``:
momentum restart, reference MNIST augmentation, U(0, 1) batch-norm scales,
each column's script (its batch, ghost size, lr rule and epoch stretch), the
fitted main_normal.py rule on every column, the kept partial last batch, the
unbiased running variance, MNIST's Normalize(0.5, 0.5)), and under all of the
reference protocol's items together (the fitted rule excluded),
and reports for each setting the two accuracies, the gap (small minus large)
with its Welch 95% interval and p-value, and the change of the gap against the
clean protocol's with its 95% interval and a reading of the claim "the item
moves the gap" (``read_changes``).

An artefact that does not apply to a row is not run: the reference MNIST
augmentation on data that are not in-memory images (MNIST-1D), a momentum
restart without SGD momentum, U(0, 1) scales in a model without batch norm,
main_normal.py's rule on a row whose lr is not scaled and whose regime is not
adapted (plain SB and LB; use ``--ablation=sb,lb+lr`` to see it), the
partial last batch where the row's batch divides the training set (on
MNIST-1D's quick preset, 8000 examples: B=64 divides, 1024 leaves 832). Such a
cell is reported as not applicable with the reason; the row's run under that
setting would be its clean run, so the gap is computed with the clean run
there, and a setting that applies to neither row has no gap.

Every run sets every artefact key explicitly (``protocol="clean"``, the
keys off except the setting's), so a setting's config says what it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from bigbatch_jax import protocol as protocol_lib
from bigbatch_jax import statistics
from bigbatch_jax.data.reference_mnist import reference_mnist_augmentation
from bigbatch_jax.protocol import RunKind
from bigbatch_jax.training import make_plan, train_and_evaluate
from bigbatch_jax.training.setup import build_model, norm_layer
from bigbatch_jax.training.spec import resolve
from experiments.table1.aggregate import row_numbers
from experiments.table1.paper_claims import welch_p
from experiments.table1.report import format_ablation, write_ablation
from experiments.table1.rows import split_row, variant_config
from experiments.table1.runner import run_all

# The artefacts' config keys (bigbatch_jax.protocol), in the protocol's order.
ARTEFACT_LABELS = {
  "momentum_restart": "momentum restart every epoch (item 1)",
  "reference_mnist_augment": "MNIST pad-crop-flip augmentation (item 2)",
  "bn_scale_uniform": "batch-norm scales U(0, 1) (item 3)",
  "script_columns": "each column's script: batch, ghost, lr rule, stretch (item 4)",
  "main_normal_lr": "fitted: lr x (B/256)**p, epochs x ceil(B/256) on every column",
  "partial_last_batch": "each epoch's partial last batch kept (item 5)",
  "unbiased_running_variance": "PyTorch's unbiased running variance (item 6)",
  "reference_mnist_normalize": "MNIST Normalize(0.5, 0.5) on every route (item 7)",
}
ARTEFACTS = tuple(ARTEFACT_LABELS)
# "all" is the reference protocol's items: main_normal_lr is the fitted alternative to item 4.
ALL_EXCLUDES = ("main_normal_lr",)
SETTINGS = ("clean", *ARTEFACTS, "all")
SETTING_LABELS = {
  "clean": "clean protocol",
  **ARTEFACT_LABELS,
  "all": "all that apply together (the reference protocol)",
}


def parse_ablation(text: str) -> tuple[str, str]:
  """``"sb,lb"`` -> ``("sb", "lb")``: the small- and large-batch rows, each checked."""
  rows = [r.strip() for r in text.split(",") if r.strip()]
  if len(rows) != 2 or rows[0] == rows[1]:
    raise ValueError(
      f"--ablation={text!r}: expected two different rows, the small batch's then the large "
      "batch's, e.g. sb,lb or sb,lb+lr"
    )
  for row in rows:
    split_row(row)
  return rows[0], rows[1]


def run_name(setting: str, row: str) -> str:
  """The run's directory under the workdir: ``SETTING/ROW``."""
  return f"{setting}/{row}"


def with_artefacts(config: ml_collections.ConfigDict, on: Sequence[str]):
  """A copy of ``config`` under the clean protocol with exactly the artefacts ``on``."""
  config = config.copy_and_resolve_references()
  config.protocol = "clean"
  for key in ARTEFACTS:
    config[key] = key in on
  return config


def _has_batch_norm(config: ml_collections.ConfigDict, data) -> bool:
  """Whether the model keeps batch statistics (shapes only: nothing is computed)."""
  spec = resolve(config, num_train=data.num_train, num_devices=1)
  model = build_model(spec, data.num_classes, norm_layer(spec, axis_name=None))
  example = jnp.zeros((1, *data.input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
  return "batch_stats" in variables


def not_applicable(artefact: str, config: ml_collections.ConfigDict, data) -> str | None:
  """Why ``artefact`` does not apply to the row ``config`` on ``data``; None when it does.

  Where an item applies is the protocol's (``bigbatch_jax.protocol.PROTOCOL_ITEMS``,
  asked with the row's variant and data); what is checked here is whether it
  changes anything for this row (one epoch, no batch norm, no partial batch,
  the same lr and epochs).
  """
  on, off = with_artefacts(config, (artefact,)), with_artefacts(config, ())
  try:
    clean = make_plan(off, data.num_train, num_devices=1)
    run = RunKind.of(clean.variant, clean.regime.momentum, data)
    reason = protocol_lib.ITEMS[artefact].reason_not_applied(run)
    if reason is not None:
      return reason
    plan = make_plan(on, data.num_train, num_devices=1)
    reference_mnist_augmentation(plan.protocol, data, on.augment)  # against config.augment
  except ValueError as e:  # the artefact's own check says why
    return str(e)
  if artefact == "momentum_restart" and not any(plan.momentum_restart_steps):
    # A restart at update 0 only is the plain run: the trace starts at zero.
    return "the run has no SGD momentum to restart, or only one epoch"
  batch_norm_items = ("bn_scale_uniform", "unbiased_running_variance")
  if artefact in batch_norm_items and not _has_batch_norm(on, data):
    return f"model {on.model!r} has no batch norm"
  if artefact == "partial_last_batch" and not plan.partial_batch_size:
    return f"batch {plan.batch_size} divides the {data.num_train} training examples"
  if artefact in ("main_normal_lr", "script_columns"):
    same = ("lr_scale", "num_steps", "batch_size", "ghost_batch_size")
    if all(getattr(plan, k) == getattr(clean, k) for k in same):
      return f"{on.variant}: the rule changes none of its lr, epochs, batch or ghost size"
  return None


def ablation_configs(
  module: ModuleType,
  pair: tuple[str, str],
  preset: str,
  overrides: Mapping[str, Any],
  data,
) -> tuple[dict[str, ml_collections.ConfigDict], dict[str, dict[str, str]]]:
  """The ablation's runs and its cells that do not apply.

  Args:
    module: the config module (``get_config``).
    pair: the small- and large-batch rows (:func:`parse_ablation`).
    preset: ``quick`` or ``full`` (``rows.resolve_preset``).
    overrides: ``--config.KEY=VALUE`` overrides, applied to every run; they may
      not set the protocol or an artefact key (the ablation sets them).
    data: the training data (its size, shape and normalisation decide what applies).

  Returns:
    ``(configs, skipped)``: run name (:func:`run_name`) -> config, and setting
    -> row -> the reason the setting does not apply to that row.
  """
  fixed = sorted({"protocol", *ARTEFACTS} & set(overrides))
  if fixed:
    raise ValueError(
      f"--config.{fixed[0]} cannot be set with --ablation: the ablation sets the protocol and "
      f"each of {', '.join(ARTEFACTS)} itself"
    )
  configs, skipped = {}, {s: {} for s in SETTINGS}
  for row in pair:
    base = variant_config(module, row, preset, overrides)
    configs[run_name("clean", row)] = with_artefacts(base, ())
    applies = []
    for artefact in ARTEFACTS:
      reason = not_applicable(artefact, base, data)
      if reason is None:
        applies.append(artefact)
        configs[run_name(artefact, row)] = with_artefacts(base, (artefact,))
      else:
        skipped[artefact][row] = reason
    applies = [a for a in applies if a not in ALL_EXCLUDES]
    if applies:
      configs[run_name("all", row)] = with_artefacts(base, applies)
    else:
      skipped["all"][row] = "no artefact applies"
  return configs, skipped


def _cell(numbers: Mapping[str, dict], setting: str, row: str, skipped) -> dict:
  """One row's accuracy under ``setting``: its own run, or its clean run where it does not apply."""
  reason = skipped.get(setting, {}).get(row)
  r = numbers[run_name("clean" if reason else setting, row)]
  return {
    "row": row,
    "applies": reason is None,
    "reason": reason,
    "test_accuracy_mean": r["test_accuracy_mean"],
    "test_accuracy_std": r["test_accuracy_std"],
    "test_accuracy_per_seed": list(r["test_accuracy_per_seed"]),
  }


# Points: a change of the gap shown to lie within +-1 point reads as "the item does
# not move the gap", the margin the table's non-inferiority and equivalence claims use.
CHANGE_MARGIN = 1.0


def _gap_change(numbers, setting: str, pair, skipped) -> statistics.Welch | None:
  """(small - large under ``setting``) - (the same under clean), over the distinct runs.

  Where a setting does not apply to a row its clean run stands in, and enters
  the contrast once with the weights summed (here they cancel), so that one
  run is never counted as two independent groups.
  """
  weights: dict[str, float] = {}
  for name_setting, sign in ((setting, 1.0), ("clean", -1.0)):
    for row, row_sign in zip(pair, (1.0, -1.0)):
      reason = skipped.get(name_setting, {}).get(row)
      name = run_name("clean" if reason else name_setting, row)
      weights[name] = weights.get(name, 0.0) + sign * row_sign
  used = {name: w for name, w in weights.items() if w != 0}
  seeds = [numbers[name]["test_accuracy_per_seed"] for name in used]
  if not used or any(len(x) < 2 for x in seeds):
    return None
  return statistics.welch_contrast(seeds, list(used.values()))


def read_changes(rows: list[dict]) -> list[dict]:
  """Adds to each row the reading of "the item moves the gap", Holm-corrected over the rows.

  ``shown`` when Welch's two-sided test of a zero change rejects at 0.05
  after Holm's correction over the tested settings (``direction`` says
  "widens" or "narrows"); ``contradicted`` when the two one-sided tests
  (TOST) put the change inside +-``CHANGE_MARGIN`` points after the same
  correction; ``inconclusive`` otherwise.
  """
  tested = [r for r in rows if r["gap_change_test"] is not None]
  no_change = statistics.Hypothesis("equivalence", effect=0.0, margin=CHANGE_MARGIN)
  moved = [statistics.two_sided_p(r["gap_change_test"]) for r in tested]
  within = [statistics.p_value(no_change, r["gap_change_test"]) for r in tested]
  adjusted = zip(statistics.holm(moved), statistics.holm(within))
  for r, p, p_within, (p_holm, p_within_holm) in zip(tested, moved, within, adjusted):
    r.update(gap_change_p=p, gap_change_p_holm=p_holm)
    r.update(gap_within_margin_p=p_within, gap_within_margin_p_holm=p_within_holm)
    if p_holm < 2 * statistics.ALPHA:
      r["outcome"] = statistics.SHOWN
      r["direction"] = "widens" if r["gap_change_test"].difference > 0 else "narrows"
    elif p_within_holm < statistics.ALPHA:
      r["outcome"] = statistics.CONTRADICTED
    else:
      r["outcome"] = statistics.INCONCLUSIVE
  for r in rows:
    test = r.pop("gap_change_test")
    r["gap_change_ci95"] = None if test is None else list(statistics.ci95(test))
  return rows


def ablation_rows(
  numbers: Mapping[str, dict], pair: tuple[str, str], skipped: Mapping[str, Mapping[str, str]]
) -> list[dict]:
  """The ablation table: per setting, both rows' accuracy, the gap and its change, read.

  Args:
    numbers: run name -> ``aggregate.row_numbers`` (``test_accuracy_mean``,
      ``test_accuracy_std``, ``test_accuracy_per_seed``, in percent).
    pair: the small- and large-batch rows.
    skipped: setting -> row -> reason, as :func:`ablation_configs` returns.

  Returns:
    One dict per setting of ``SETTINGS``: ``small`` and ``large`` cells,
    ``gap`` (small minus large mean accuracy, points), ``gap_ci95`` and
    ``p_value`` (Welch, two-sided, on the per-seed accuracies),
    ``gap_change`` (the gap minus the clean protocol's) with ``gap_change_ci95``
    and, where it is tested (two or more seeds), the reading of
    :func:`read_changes`; None where the setting applies to neither row or a
    row has no finished run.
  """
  out, clean_gap = [], None
  for setting in SETTINGS:
    small, large = (_cell(numbers, setting, row, skipped) for row in pair)
    measured = small["test_accuracy_mean"] is not None and large["test_accuracy_mean"] is not None
    gap = p = change = gap_ci = test = None
    if measured and (small["applies"] or large["applies"]):
      gap = small["test_accuracy_mean"] - large["test_accuracy_mean"]
      p = welch_p(small["test_accuracy_per_seed"], large["test_accuracy_per_seed"])
      if p is not None:
        welch = statistics.welch(small["test_accuracy_per_seed"], large["test_accuracy_per_seed"])
        gap_ci = list(statistics.ci95(welch))
      clean_gap = gap if setting == "clean" else clean_gap
      change = None if clean_gap is None else gap - clean_gap
      if setting != "clean" and change is not None:
        test = _gap_change(numbers, setting, pair, skipped)
    out.append({
      "setting": setting,
      "label": SETTING_LABELS[setting],
      "small": small,
      "large": large,
      "gap": gap,
      "gap_ci95": gap_ci,
      "p_value": p,
      "gap_change": change,
      "gap_change_test": test,
    })  # fmt: skip
  return read_changes(out)


def run_ablation(
  configs: Mapping[str, ml_collections.ConfigDict],
  skipped: Mapping[str, Mapping[str, str]],
  pair: tuple[str, str],
  seeds: Sequence[int],
  workdir: str,
  *,
  preset: str = "",
  train_fn: Callable[[ml_collections.ConfigDict, str], dict] = train_and_evaluate,
  echo: Callable[[str], None] = print,
  population: bool = True,
  member_devices: int = 1,
) -> list[dict]:
  """Runs every (setting, row, seed) not yet finished, then writes the ablation table.

  Runs go to ``workdir/SETTING/ROW/seed_N`` (resumable, as the table's);
  ``table1.json`` holds ``ablation`` (:func:`ablation_rows`), ``runs`` (each
  run's numbers, ``aggregate.row_numbers`` without the curves) and ``meta``;
  ``table1.md`` is drawn from it. With ``population`` each run's seeds train
  as one population (``runner.run_all``), its members split over up to
  ``member_devices`` CPU devices.

  Returns:
    The ablation rows.
  """
  ran = run_all(configs, seeds, workdir, train_fn, echo, population, member_devices)
  numbers = {name: row_numbers(workdir, name, seeds) for name in configs}
  rows = ablation_rows(numbers, pair, skipped)
  some = configs[run_name("clean", pair[0])]
  meta = {
    "dataset": some.dataset,
    "model": some.model,
    "preset": preset,
    "rows": list(pair),
    "batch_sizes": [int(numbers[run_name("clean", r)]["batch_size"] or 0) for r in pair],
    "seeds": list(seeds),
    "change_margin": CHANGE_MARGIN,
    "runs_run": ran,
    "runs_skipped": len(configs) * len(seeds) - ran,
  }
  runs = {name: {k: v for k, v in n.items() if k != "curves"} for name, n in numbers.items()}
  write_ablation(rows, runs, workdir, meta)
  echo(format_ablation(rows, meta))
  return rows


__all__ = [
  "ALL_EXCLUDES", "ARTEFACTS", "SETTINGS", "ablation_configs", "ablation_rows", "not_applicable",
  "parse_ablation", "run_ablation", "run_name", "with_artefacts",
]  # fmt: skip
