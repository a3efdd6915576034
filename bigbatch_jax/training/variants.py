"""Regime variants named as in Hoffer et al. Table 1: "lb+lr+gbn+ra" and friends.

A variant is a batch choice followed by remedies, joined with "+":

* ``sb`` / ``lb``: the small (base) or large batch.
* ``lr``: square-root learning-rate scaling (Hoffer eq. 7).
* ``linear``: linear learning-rate scaling (Goyal et al.; Jaiswal & Taura).
* ``gbn``: Ghost Batch Normalization (Hoffer Algorithm 1).
* ``gni``: Ghost Noise Injection (Kosson, Fan & Jaggi 2024): batch norm over
  the whole batch with the noise of ghost batches of the same ghost size
  (``bigbatch_jax.ghost_noise``).
* ``ra``: regime adaptation, the base regime stretched by r in epochs
  (Hoffer section 5).
* ``mult``: multiplicative gradient noise z ~ N(1, r - 1) as per-sample loss
  weights (Hoffer section 4).
* ``white``: decaying white gradient noise (Jaiswal & Taura section 3.1).
* ``clip``: gradient clipping at ``grad_clip_norm`` (Hoffer section 4: "for
  the first few iterations, we had to clip"), during the first
  ``grad_clip_steps`` updates (all updates when None).
* ``dist``: learning-rate drops triggered by the weight distance ||w - w0||
  reaching targets instead of at the regime's drop epochs (Hoffer section 5).
* ``grow``: the batch grows by ``batch_growth_factor`` (default the drop
  factor's inverse) at the regime's drop epochs instead of the learning rate
  dropping, the rate staying at its starting value (Smith et al. 2018, "Don't
  decay the learning rate, increase the batch size").
* ``warmup``: Goyal et al. 2017's gradual warmup, the rate rising linearly
  from the base to the scaled rate over ``warmup_epochs``; ``lb+linear+warmup``
  is Goyal's recipe.
* ``lars`` / ``lamb``: the optimizer is LARS (You et al. 2017) or LAMB (You et
  al. 2019) on the regime's schedule, weight decay and momentum instead of
  momentum SGD (``bigbatch_jax.regimes.lars_for_regime``, ``lamb_for_regime``).
"""

from __future__ import annotations

import dataclasses

BATCH_PARTS = ("sb", "lb")
REMEDY_PARTS = (
  "lr",
  "linear",
  "gbn",
  "gni",
  "ra",
  "mult",
  "white",
  "clip",
  "dist",
  "grow",
  "warmup",
  "lars",
  "lamb",
)
# Remedies that only mean something when the batch is larger than the base.
LARGE_BATCH_ONLY = ("lr", "linear", "ra", "mult", "warmup")


@dataclasses.dataclass(frozen=True)
class Variant:
  """The parsed parts of a variant name."""

  name: str
  large_batch: bool
  lr_rule: str  # "none", "sqrt" or "linear"
  ghost_batch_norm: bool
  regime_adaptation: bool
  multiplicative_noise: bool
  white_noise: bool
  clip: bool
  distance_drops: bool
  grow_batch: bool
  warmup: bool = False
  optimizer: str = "sgd"  # "sgd", "lars" or "lamb"
  ghost_noise: bool = False  # "gni"


def parse_variant(name: str) -> Variant:
  """Parses ``"lb+lr+gbn+ra"``-style names; errors name the offending part.

  Args:
    name: the batch part (``sb`` or ``lb``) then remedies, joined by ``+``.

  Returns:
    A :class:`Variant`.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"variant must be a non-empty string like 'lb+lr+gbn', got {name!r}")
  parts = [p.strip() for p in name.strip().split("+")]
  batch, remedies = parts[0], parts[1:]
  if batch not in BATCH_PARTS:
    raise ValueError(f"variant {name!r} must start with the batch part 'sb' or 'lb', got {batch!r}")
  for part in remedies:
    if part not in REMEDY_PARTS:
      valid = ", ".join(REMEDY_PARTS)
      raise ValueError(f"variant {name!r}: unknown part {part!r}; valid parts after sb/lb: {valid}")
  repeated = sorted({p for p in remedies if remedies.count(p) > 1})
  if repeated:
    raise ValueError(f"variant {name!r} repeats {repeated}")
  if "lr" in remedies and "linear" in remedies:
    raise ValueError(
      f"variant {name!r} is contradictory: 'lr' (square-root scaling) and 'linear' "
      "are two learning-rate rules; choose one"
    )
  for a, b, why in (
    ("grow", "dist", "both replace the regime's learning-rate drops"),
    ("grow", "ra", "regime adaptation stretches a fixed batch's regime"),
    ("grow", "mult", "the matched noise variance is defined for one batch size"),
    ("lars", "lamb", "two optimizers; choose one"),
    ("gbn", "gni", "two normalizations of the ghost batches; choose one"),
  ):
    if a in remedies and b in remedies:
      raise ValueError(f"variant {name!r} is contradictory: '{a}' and '{b}' ({why})")
  if batch == "sb":
    useless = [p for p in remedies if p in LARGE_BATCH_ONLY]
    if useless:
      raise ValueError(
        f"variant {name!r}: {useless} have no effect at the base batch size "
        "(r = 1); use them with 'lb'"
      )
  lr_rule = "sqrt" if "lr" in remedies else "linear" if "linear" in remedies else "none"
  if "warmup" in remedies and lr_rule == "none":
    raise ValueError(
      f"variant {name!r}: 'warmup' ramps the rate up to the scaled rate; add a scaling "
      "rule ('linear', Goyal et al., or 'lr')"
    )
  return Variant(
    name=name,
    large_batch=batch == "lb",
    lr_rule=lr_rule,
    ghost_batch_norm="gbn" in remedies,
    regime_adaptation="ra" in remedies,
    multiplicative_noise="mult" in remedies,
    white_noise="white" in remedies,
    clip="clip" in remedies,
    distance_drops="dist" in remedies,
    grow_batch="grow" in remedies,
    warmup="warmup" in remedies,
    optimizer=next((p for p in ("lars", "lamb") if p in remedies), "sgd"),
    ghost_noise="gni" in remedies,
  )
