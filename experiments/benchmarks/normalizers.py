"""Part "normalizers": the Ghost Noise Injection step against the BatchNorm and Ghost BN steps.

The library's F1 step at the large batch (config ``lb+lr``: clip at 5,
metrics and weight distances), built as ``train_and_evaluate`` builds it, with
each normalization of ``bigbatch_jax``:

* ``BatchNorm`` — variant ``lb+lr`` (GhostBatchNorm without a ghost size, which
  is ``flax.linen.BatchNorm``),
* ``Ghost BN`` — ``lb+lr+gbn``, ghost batches of 128,
* ``GNI, per ghost`` — ``lb+lr+gni``: whole-batch batch norm plus the noise of
  a ghost batch of 128 drawn with replacement per 128 examples (the default),
* ``GNI, per example`` — the same with one draw per example
  (``ghost_draws="per_example"``, the authors' code), which gathers 128
  examples for each example of the batch.

All four are timed interleaved in the same rounds; the target is the GNI step
(the default draws) at most 1.10 x the BatchNorm step.
"""

from __future__ import annotations

from experiments.benchmarks import steps, timing
from experiments.benchmarks.report import Section, Target

BOUND = 1.10
BN = "BatchNorm step (lb+lr)"
GBN = "Ghost BN step (lb+lr+gbn)"
GNI = "GNI step, per ghost (lb+lr+gni)"
GNI_EXAMPLE = "GNI step, per example (ghost_draws=per_example)"


def _candidates(batch: int, hidden: int) -> dict:
  def build(variant, **overrides):
    return steps.build_step(steps.f1_config(variant, batch, **overrides), hidden=hidden).run

  return {
    BN: build("lb+lr"),
    GBN: build("lb+lr+gbn"),
    GNI: build("lb+lr+gni"),
    GNI_EXAMPLE: build("lb+lr+gni", ghost_draws="per_example"),
  }


def run(args) -> list[Section]:
  t = timing.interleaved(_candidates(args.batch, args.hidden), rounds=args.rounds, inner=args.inner)
  rows = []
  for name in (BN, GBN, GNI, GNI_EXAMPLE):
    lo, hi = t.ratio_spread(name, BN)
    rows.append(
      [name, timing.fmt_ms(t.median(name)), f"{t.ratio(name, BN):.3f}", f"{lo:.3f}-{hi:.3f}"]
    )
  ratio = t.ratio(GNI, BN)
  lo, hi = t.ratio_spread(GNI, BN)
  target = Target(
    "GNI step / BatchNorm step",
    ratio,
    f"<= {BOUND}",
    ratio <= BOUND,
    f"IQR of the per-round ratio {lo:.3f}-{hi:.3f}; Ghost BN step / BatchNorm step "
    f"{t.ratio(GBN, BN):.3f}; one draw per example: {t.ratio(GNI_EXAMPLE, BN):.3f}",
  )
  text = (
    f"F1 (784-{args.hidden}x5-10) at batch {args.batch}, ghost size 128, {args.rounds} "
    "interleaved rounds. 'ratio' is the median over rounds of the row's time over the "
    "BatchNorm step's time in the same round, the range its 25-75% spread. GNI adds to batch "
    "norm a gather of the batch's normalized activations by random indices and the ghost "
    "statistics of the gathered copy (one extra read and write of the activations per layer "
    "with one draw per 128 examples; 128 per example with one draw per example)."
  )
  return [
    Section(
      f"Ghost Noise Injection against BatchNorm and Ghost BN (batch {args.batch})",
      ["step", "ms", "ratio to BatchNorm", "IQR of ratio"],
      rows,
      text,
      [target],
    )
  ]
