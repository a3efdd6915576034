"""The table as text and files: ``table1.md`` (Markdown) and ``table1.json`` (the numbers).

``table1.json`` holds ``rows`` (every number of the table, and the seed-mean
curves the figures are drawn from), ``claims`` (see ``paper_claims``) and ``meta``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from bigbatch_jax.training import json_files
from experiments.table1.lr_selection import describe
from experiments.table1.paper_claims import claims

TABLE_FILE = "table1.md"
JSON_FILE = "table1.json"


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def _header(show_paper: bool, selected: bool) -> list[str]:
  head = ["variant", "", "test acc. (%)", "± std", "95% CI", "seeds", "p vs SB", "p vs LB"]
  head += ["paper (%)"] if show_paper else []
  head += ["selected lr"] if selected else []
  head += ["batch", "updates", "epochs", "wall (s/run)", "updates to SB", "time to SB (s)"]
  head += ["tr cov / SB (BN eval)", "tr cov / SB (BN train)"]
  # ‖ (U+2016), not ||: a pipe would split the Markdown table's cell.
  return [*head, "‖w-w0‖", "slope", "R²", "λ_max", "λ_max·‖w_SI‖²"]


def _seeds_cell(r: dict) -> str:
  cell = str(len(r["seeds"]))
  if r["diverged_seeds"]:
    cell += f" ({len(r['diverged_seeds'])} diverged)"
  if r["missing_seeds"]:
    cell += f" ({len(r['missing_seeds'])} missing)"
  if r.get("skipped_updates"):
    cell += f" ({r['skipped_updates']} updates skipped)"
  return cell


def _lr_cell(r: dict) -> str:
  selection = r.get("lr_selection")
  if selection is None:
    return "-"
  edge = {"lowest": " (grid's lowest)", "highest": " (grid's highest)"}.get(selection["edge"], "")
  return f"{selection['selected_lr']:g}{edge}"


def _cells(r: dict, show_paper: bool, selected: bool = False) -> list[str]:
  acc = _fmt(r["test_accuracy_mean"], ".2f", "diverged" if r["diverged_seeds"] else "-")
  ci = r.get("test_accuracy_ci95")
  ci_cell = "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
  cells = [r["variant"], r["label"], acc, _fmt(r["test_accuracy_std"], ".2f"), ci_cell]
  cells.append(_seeds_cell(r))
  cells += [_fmt(r.get("p_vs_sb"), ".2g"), _fmt(r.get("p_vs_lb"), ".2g")]
  if show_paper:
    cells.append(_fmt(r.get("paper_accuracy"), ".2f"))
  if selected:
    cells.append(_lr_cell(r))
  never = "never" if r["test_accuracy_mean"] is not None and "updates_to_sb" in r else "-"
  return [
    *cells,
    _fmt(r["batch_size"], "d"),
    _fmt(r["updates"], "d"),
    _fmt(r["epochs"], "g"),
    _fmt(r["wall_time_s"], ".1f"),
    _fmt(r.get("updates_to_sb"), "d", never),
    _fmt(r.get("time_to_sb_s"), ".1f", never),
    _fmt(r.get("covariance_ratio"), ".3g"),
    _fmt(r.get("covariance_ratio_training"), ".3g"),
    _fmt(r["weight_distance"], ".1f"),
    _fmt(r["weight_distance_slope"], ".2f"),
    _fmt(r["weight_distance_r2"], ".3f"),
    _fmt(r.get("top_hessian_eigenvalue"), ".3g"),
    _fmt(r.get("scale_normalized_sharpness"), ".4g"),
  ]


def _number(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{k}: {_number(v)}" for k, v in value.items()) + "}"
  return str(value)


def _tested_line(c: dict) -> str:
  first, second = c["rows"]
  means = f"{first} {_fmt(c['means'][first], '.2f')}, {second} {_fmt(c['means'][second], '.2f')}"
  if c["p_value"] is None:
    return f"- {c['name']}: **{c['outcome']}** ({means}; {c['note']}; test: {c['test']})"
  low, high = c["ci95"]
  needed = "never" if c["seeds_needed"] is None else str(c["seeds_needed"])
  return (
    f"- {c['name']}: **{c['outcome']}** ({means}; difference {c['difference']:+.2f}, 95% CI "
    f"[{low:+.2f}, {high:+.2f}], p {c['p_value']:.3g}, p_holm {c['p_holm']:.3g}, n "
    f"{c['n'][0]}/{c['n'][1]}; power {c['power']:.0%} for the paper's {c['effect']:+.2f}, "
    f"80% power at {needed} seeds per row; test: {c['test']}; effect: {c['reason']})"
  )


def format_claims(checks: Sequence[dict]) -> list[str]:
  """One line per claim: outcome, difference, 95% CI, p and Holm's p, power, test."""
  lines = []
  for c in checks:
    if c["kind"] != "rule":
      lines.append(_tested_line(c))
      continue
    numbers = ", ".join(f"{k} {_number(v)}" for k, v in c["numbers"].items())
    lines.append(f"- {c['name']}: **{c['outcome']}** ({numbers}; rule: {c['test']})")
  return lines


def format_table(rows: Sequence[dict], meta: Mapping[str, Any]) -> str:
  """The Markdown table (Hoffer Table 1 layout), its caption and the claim checks."""
  show_paper = any("paper_accuracy" in r for r in rows)
  selected = any("lr_selection" in r for r in rows)
  head = _header(show_paper, selected)
  lines = [
    f"Hoffer et al. Table 1 on {meta['dataset']} ({meta['model']}, preset {meta['preset']}, "
    f"B_S={meta['base_batch_size']}, B_L={meta['large_batch_size']}); accuracy is the final "
    f"test accuracy, mean ± standard deviation and the mean's 95% t-interval over seeds "
    f"{meta['seeds']}; p vs SB / LB: "
    "Welch's p-value of the row's per-seed accuracies against SB's / LB's. Time to SB: "
    "training-loop time until the seed-mean accuracy first reaches SB's final one. Exact digits "
    "vary with the CPU (XLA's code paths differ); the outcomes are the claims' tests.",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|",
  ]
  lines += ["| " + " | ".join(_cells(r, show_paper, selected)) + " |" for r in rows]
  if selected:
    lines += ["", *format_selection(rows, meta)]
  if not show_paper and meta.get("paper_dataset"):
    lines += ["", f"Paper numbers are shown only on the paper's dataset ({meta['paper_dataset']})."]
  checks = claims(rows)
  if checks:
    lines += [
      "",
      "The papers' claims tested on these numbers (bigbatch_jax.statistics; one-sided tests at "
      "0.025, Holm's correction across the tested claims):",
      "",
      *format_claims(checks),
    ]
  lines += [
    "",
    f"Driver wall time: {meta['driver_wall_time_s']:.0f} s for {meta['runs_run']} runs "
    f"({meta['runs_skipped']} skipped as already done).",
  ]
  return "\n".join(lines)


def format_selection(rows: Sequence[dict], meta: Mapping[str, Any]) -> list[str]:
  """The validation-tuned protocol: each row's grid, validation accuracies and selected rate."""
  chosen = meta.get("lr_selection", {})
  lines = [
    "Learning rates selected on a validation split (lr_selection): "
    f"{chosen.get('validation_fraction', 0.1):g} of the training set held out, the default "
    f"rate x {chosen.get('factors', [])}, selection seeds {chosen.get('seeds', [])}; the rate "
    "with the best mean validation accuracy is selected, then the table's seeds train on the "
    "whole training set at it and measure the test set. Mean validation accuracy (%) by lr:",
    "",
  ]
  for r in rows:
    if "lr_selection" in r:
      lines.append(f"- {r['variant']}: {describe(r['lr_selection'])}")
  return lines


def write_table(rows: Sequence[dict], workdir: str, meta: Mapping[str, Any]) -> None:
  """Writes ``table1.md`` and ``table1.json`` (``rows``, ``claims``, ``meta``)."""
  json_files.write_text_atomic(os.path.join(workdir, TABLE_FILE), format_table(rows, meta) + "\n")
  payload = {
    "rows": list(rows),
    "claims": claims(rows),
    "meta": {**meta, "accuracy_unit": "percent"},
  }
  json_files.write_json_atomic(os.path.join(workdir, JSON_FILE), payload, indent=2)


def read_table(workdir: str) -> dict:
  return json_files.read_json(
    os.path.join(workdir, JSON_FILE), "Rerun the same command to write it again"
  )


def _ablation_cell(cell: dict) -> str:
  if not cell["applies"]:
    return "n/a"
  if cell["test_accuracy_mean"] is None:
    return "-"
  return f"{cell['test_accuracy_mean']:.2f} ± {_fmt(cell['test_accuracy_std'], '.2f')}"


def _with_ci(value: float | None, interval: Sequence[float] | None, missing: str) -> str:
  if value is None:
    return missing
  if interval is None:
    return f"{value:+.2f}"
  return f"{value:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def _change_reading(row: dict) -> str:
  if "outcome" not in row:
    return "-"
  direction = f" ({row['direction']})" if "direction" in row else ""
  return f"{row['outcome']}{direction}, p_holm {row['gap_change_p_holm']:.3g}"


def format_ablation(rows: Sequence[dict], meta: Mapping[str, Any]) -> str:
  """The ablation table (``ablation.ablation_rows``) in Markdown, with the n/a reasons."""
  small, large = meta["rows"]
  lines = [
    f"The reference protocol's artefacts on {meta['dataset']} ({meta['model']}, preset "
    f"{meta['preset']}, {small} at B={meta['batch_sizes'][0]} against {large} at "
    f"B={meta['batch_sizes'][1]}): final test accuracy (%), mean ± std over seeds "
    f"{meta['seeds']}; gap = {small} - {large} (points) with Welch's 95% interval and p; "
    "the change of the gap against the clean protocol's with its 95% interval (Welch-"
    'Satterthwaite over the distinct runs) and the reading of "the item moves the gap": '
    "shown (the interval excludes 0, Holm-corrected over the settings), contradicted "
    f"(TOST puts the change within ±{meta.get('change_margin', 1.0):g} points, Holm-corrected) "
    "or inconclusive.",
    "",
    f"| setting | {small} (%) | {large} (%) | gap [95% CI] | Welch p "
    "| gap - clean gap [95% CI] | the item moves the gap |",
    "|---|---:|---:|---:|---:|---:|---|",
  ]
  for r in rows:
    cells = [r["label"], _ablation_cell(r["small"]), _ablation_cell(r["large"])]
    cells += [_with_ci(r["gap"], r.get("gap_ci95"), "n/a"), _fmt(r["p_value"], ".3g")]
    missing = "-" if r["setting"] == "clean" else "n/a"
    cells += [_with_ci(r["gap_change"], r.get("gap_change_ci95"), missing), _change_reading(r)]
    lines.append("| " + " | ".join(cells) + " |")
  reasons = [
    f"- {r['label']}, {c['row']}: {c['reason']}"
    for r in rows
    for c in (r["small"], r["large"])
    if not c["applies"]
  ]
  if reasons:
    lines += ["", "Not applicable (the row's clean run stands in for the gap):", "", *reasons]
  lines += ["", f"{meta['runs_run']} runs run, {meta['runs_skipped']} skipped as already done."]
  return "\n".join(lines)


def write_ablation(
  rows: Sequence[dict], runs: Mapping[str, dict], workdir: str, meta: Mapping[str, Any]
) -> None:
  """Writes ``table1.json`` (``ablation``, ``runs``, ``meta``) and ``table1.md`` from it."""
  meta = {**meta, "accuracy_unit": "percent"}
  payload = {"ablation": list(rows), "runs": dict(runs), "meta": meta}
  json_files.write_json_atomic(os.path.join(workdir, JSON_FILE), payload, indent=2)
  table = format_ablation(payload["ablation"], payload["meta"]) + "\n"
  json_files.write_text_atomic(os.path.join(workdir, TABLE_FILE), table)
