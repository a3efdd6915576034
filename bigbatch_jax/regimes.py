"""Training regimes in epochs, their adaptation to large batches, and durations.

A regime, as the bigBatch reference code defines one, is momentum SGD with a
piecewise-constant learning rate: an initial rate multiplied by a drop factor
at given epochs, for a total number of epochs, tuned for one batch size.

All durations go through :func:`epochs_to_steps`. The training data is read
as an endless stream of per-epoch permutations and batches may cross epoch
boundaries, so a run of E epochs at batch B takes exactly E * N / B updates
(rounded once). Regime adaptation therefore keeps the number of updates of the
small-batch regime exactly, as Hoffer et al. section 5 intends. (A run that
keeps each epoch's partial last batch, ``config.partial_last_batch``, takes
E * ceil(N / B): ``bigbatch_jax.data.schedule.BatchSchedule``.)

The optimizers along a regime (momentum SGD, LARS, LAMB) are in
:mod:`bigbatch_jax.regime_optimizers` and importable from here.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Sequence

import optax

from bigbatch_jax.regime_optimizers import OPTIMIZERS as OPTIMIZERS
from bigbatch_jax.regime_optimizers import is_traced
from bigbatch_jax.regime_optimizers import kernel_mask as kernel_mask
from bigbatch_jax.regime_optimizers import lamb_for_regime as lamb_for_regime
from bigbatch_jax.regime_optimizers import lars_for_regime as lars_for_regime
from bigbatch_jax.regime_optimizers import regime_optimizer_parts as regime_optimizer_parts
from bigbatch_jax.transforms import lr_scaling_exponent


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
  """The number of updates that read ``epochs`` passes over ``num_examples``.

  Args:
    epochs: a duration in epochs (may be fractional).
    num_examples: the size of the training set.
    batch_size: examples per update.

  Returns:
    round(epochs * num_examples / batch_size).
  """
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(
      f"num_examples and batch_size must be positive, got {num_examples} and {batch_size}"
    )
  if epochs < 0:
    raise ValueError(f"epochs must be >= 0, got {epochs}")
  return int(round(epochs * num_examples / batch_size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Regime:
  """A momentum-SGD regime defined in epochs for one batch size.

  Attributes:
    lr: the initial learning rate.
    momentum: the SGD momentum (heavy ball, as torch.optim.SGD).
    weight_decay: L2 weight decay added to the gradient.
    epochs: total training epochs.
    drop_epochs: epochs at which the learning rate is multiplied by
      ``drop_factor``, increasing.
    drop_factor: the multiplier applied at each drop.
    batch_size: the batch size the regime was made for.
    nesterov: Nesterov momentum.
  """

  lr: float
  momentum: float = 0.9
  weight_decay: float = 0.0
  epochs: float
  drop_epochs: tuple[float, ...] = ()
  drop_factor: float = 0.1
  batch_size: int
  nesterov: bool = False

  def __post_init__(self):
    object.__setattr__(self, "drop_epochs", tuple(self.drop_epochs))
    # A population member's lr and weight decay are traced inside its step
    # (training/population_grid.py); they were checked on the host.
    if not is_traced(self.lr) and not self.lr > 0:
      raise ValueError(f"Regime.lr must be > 0, got {self.lr}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"Regime.momentum must be in [0, 1), got {self.momentum}")
    if not is_traced(self.weight_decay) and self.weight_decay < 0:
      raise ValueError(f"Regime.weight_decay must be >= 0, got {self.weight_decay}")
    if not self.epochs > 0:
      raise ValueError(f"Regime.epochs must be > 0, got {self.epochs}")
    if not isinstance(self.batch_size, numbers.Integral) or self.batch_size <= 0:
      raise ValueError(f"Regime.batch_size must be a positive integer, got {self.batch_size!r}")
    if not self.drop_factor > 0:
      raise ValueError(f"Regime.drop_factor must be > 0, got {self.drop_factor}")
    if any(b <= a for a, b in zip(self.drop_epochs, self.drop_epochs[1:])):
      raise ValueError(f"Regime.drop_epochs must be increasing, got {self.drop_epochs}")
    if self.drop_epochs and not self.drop_epochs[0] > 0:
      raise ValueError(f"Regime.drop_epochs must be > 0, got {self.drop_epochs}")

  def steps_per_epoch(self, num_examples: int) -> float:
    """Updates per pass over ``num_examples`` at this regime's batch size."""
    return num_examples / self.batch_size

  def num_steps(self, num_examples: int) -> int:
    """Total updates of the regime on a training set of ``num_examples``."""
    return epochs_to_steps(self.epochs, num_examples, self.batch_size)

  def drop_steps(self, num_examples: int) -> tuple[int, ...]:
    """The update counts at which the learning rate drops."""
    return tuple(epochs_to_steps(e, num_examples, self.batch_size) for e in self.drop_epochs)

  def schedule(self, steps_per_epoch: float) -> optax.Schedule:
    """The learning rate as an optax schedule of the update count.

    Args:
      steps_per_epoch: updates per epoch, ``num_examples / batch_size`` (a
        float: batches cross epoch boundaries).

    Returns:
      A piecewise-constant ``optax.Schedule``, evaluated on device.
    """
    if not steps_per_epoch > 0:
      raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    boundaries = {}
    for epoch in self.drop_epochs:
      step = int(round(epoch * steps_per_epoch))
      # Two drops that round to the same update compound there.
      boundaries[step] = boundaries.get(step, 1.0) * self.drop_factor
    return optax.piecewise_constant_schedule(self.lr, boundaries)


def adapt_regime(
  regime: Regime,
  batch_size: int,
  lr_rule: str | float = "sqrt",
  regime_adaptation: bool = True,
) -> Regime:
  """Adapts a regime tuned for ``regime.batch_size`` to ``batch_size``.

  With r = batch_size / regime.batch_size, the learning rate becomes
  lr * r**p for the rule's exponent p (Hoffer et al. eq. 7 for "sqrt"). With
  regime adaptation (Hoffer et al. section 5) every drop epoch and the total
  number of epochs are multiplied by r, so the large batch takes the same
  number of updates as the base regime; without it the epochs stay and the
  large batch takes r times fewer updates.

  Args:
    regime: the base (small-batch) regime.
    batch_size: the new batch size.
    lr_rule: ``"sqrt"``, ``"linear"``, ``"none"`` or an exponent.
    regime_adaptation: stretch the regime in epochs by r.

  Returns:
    A new :class:`Regime` for ``batch_size``.

  Examples:
    >>> base = Regime(lr=0.1, epochs=50, drop_epochs=(10, 20, 30), batch_size=128)
    >>> lb = adapt_regime(base, 4096)
    >>> round(lb.lr, 4), lb.epochs, lb.drop_epochs
    (0.5657, 1600.0, (320.0, 640.0, 960.0))

  References:
    Hoffer, Hubara, Soudry 2017, eq. 7 and section 5.
  """
  if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  ratio = batch_size / regime.batch_size
  stretch = ratio if regime_adaptation else 1.0
  return dataclasses.replace(
    regime,
    lr=regime.lr * ratio ** lr_scaling_exponent(lr_rule),
    epochs=regime.epochs * stretch,
    drop_epochs=tuple(e * stretch for e in regime.drop_epochs),
    batch_size=batch_size,
  )


def epoch_first_steps(
  num_examples: int, batch_phases: int | Sequence[tuple[int, int]], num_steps: int
) -> tuple[int, ...]:
  """The first update of every epoch: where the reference code restarts its momentum.

  The training data is a stream of per-epoch permutations read in batches that
  may cross epoch boundaries. The first update of epoch k is the first update
  that starts at or after example k * num_examples of the stream, i.e. the
  update after the one that read the epoch's last example. Computed on the host
  with Python integers (no overflow at any run length).

  Args:
    num_examples: the size of the training set.
    batch_phases: the batch size, or ``(first step, batch size)`` phases sorted
      by step, the first at step 0 (a growing-batch run).
    num_steps: the run's number of updates; steps from it on are not listed.

  Returns:
    The increasing update counts, starting with 0.
  """
  phases = [(0, batch_phases)] if isinstance(batch_phases, numbers.Integral) else batch_phases
  phases = [(int(start), int(size)) for start, size in phases]
  if num_examples <= 0 or not phases or phases[0][0] != 0 or any(s <= 0 for _, s in phases):
    raise ValueError(
      f"need num_examples > 0 and batch phases starting at step 0 with positive sizes, "
      f"got num_examples={num_examples}, batch_phases={batch_phases!r}"
    )
  firsts, examples_before, epoch = {0}, 0, 1  # epoch: the next boundary not yet crossed
  ends = [start for start, _ in phases[1:]] + [num_steps]
  for (start, size), end in zip(phases, ends, strict=True):
    # Update t of this phase starts at example examples_before + (t - start) * size.
    stop = min(end, num_steps)
    while True:
      t = start + max(0, -(-(epoch * num_examples - examples_before) // size))
      if t >= stop:
        break
      firsts.add(t)
      epoch = (examples_before + (t - start) * size) // num_examples + 1
    examples_before += (end - start) * size
  return tuple(sorted(firsts))


def gradual_warmup(scale: float, warmup_steps: int) -> optax.Schedule:
  """The factor on the scaled learning rate during Goyal et al.'s gradual warmup.

  With linear scaling the large batch's rate is scale * lr. Goyal et al.
  (section 2.2) start from lr and raise it by a constant amount each update
  until it reaches scale * lr after the warmup (5 epochs), then follow the
  regime. Multiplying the scaled rate by this factor gives exactly that:
  lr(t) = lr * (1 + (scale - 1) * min(t, T) / T), T = ``warmup_steps``.

  Args:
    scale: the learning-rate multiplier of the large batch, r**p (> 0).
    warmup_steps: T, the updates of the warmup; 0 turns it off.

  Returns:
    An ``optax.Schedule``: 1 / scale at update 0, rising linearly to 1 at T.

  Examples:
    >>> factor = gradual_warmup(32.0, 100)
    >>> [round(float(factor(t)) * 32, 2) for t in (0, 50, 100, 200)]
    [1.0, 16.5, 32.0, 32.0]

  References:
    Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in
    1 Hour", section 2.2 (gradual warmup).
  """
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
    raise ValueError(f"the warmup's learning-rate scale must be > 0, got {scale!r}")
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral):
    raise ValueError(f"warmup_steps must be a whole number of updates, got {warmup_steps!r}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if warmup_steps == 0:
    return optax.constant_schedule(1.0)
  return optax.linear_schedule(1.0 / scale, 1.0, int(warmup_steps))


LR_DECAYS = ("steps", "poly")


def warmup_polynomial_decay(
  peak: float, warmup_steps: int, total_steps: int, power: float = 2.0
) -> optax.Schedule:
  """You et al.'s LARS/LAMB schedule: linear warmup from 0, then polynomial decay to 0.

  lr(t) = peak * t / W for t < W, then peak * (1 - (t - W) / (T - W))**power
  until T, and 0 after; W = ``warmup_steps``, T = ``total_steps``. Built from
  optax's linear and polynomial schedules joined at W; ``peak`` may be a
  traced value (a population member's learning rate).

  Args:
    peak: the rate at the end of the warmup.
    warmup_steps: W, updates of the linear warmup (0: none), below T.
    total_steps: T, the run's updates; the rate reaches 0 there.
    power: the decay's exponent (2 in both papers).

  Returns:
    An ``optax.Schedule`` of the update count.

  Examples:
    >>> lr = warmup_polynomial_decay(2.0, 10, 110, power=2.0)
    >>> [round(float(lr(t)), 4) for t in (0, 5, 10, 60, 110)]
    [0.0, 1.0, 2.0, 0.5, 0.0]

  References:
    You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
    Networks", sections 4-5 (poly policy, power 2; warmup over the first 5
    epochs); You et al. 2020, "Large Batch Optimization for Deep Learning:
    Training BERT in 76 minutes", section 4 (linear warmup, then polynomial
    decay of the rate).
  """
  for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
      raise ValueError(f"{name} must be a whole number of updates >= 0, got {value!r}")
  if not warmup_steps < total_steps:
    raise ValueError(
      f"the warmup ({warmup_steps} updates) must end before the run's {total_steps} updates"
    )
  if isinstance(power, bool) or not isinstance(power, numbers.Real) or not power > 0:
    raise ValueError(f"the decay's power must be > 0, got {power!r}")
  decay = optax.polynomial_schedule(peak, 0.0, power, int(total_steps - warmup_steps))
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, peak, int(warmup_steps))
  return optax.join_schedules((warmup, decay), (int(warmup_steps),))


@dataclasses.dataclass(frozen=True)
class GrowingBatch:
  """The phases of a growing-batch run (Smith et al. 2018).

  Attributes:
    phases: ``(first step, batch size)`` of each phase, the first at step 0.
    num_steps: the run's total updates.
    lr_drop_steps: updates at which the learning rate still drops by the
      regime's factor (the hybrid schedule, once the batch has reached its
      maximum); empty when the batch grows at every drop.
  """

  phases: tuple[tuple[int, int], ...]
  num_steps: int
  lr_drop_steps: tuple[int, ...] = ()

  def phase_lrs(
    self, lr: float, base_batch_size: int, rule: str | float, lr_follows_batch: bool = False
  ) -> tuple[float, ...]:
    """The learning rate at the start of each phase.

    By default the rate stays at its starting value lr * (B_0 / B_base)**p, as
    Smith et al. do; with ``lr_follows_batch`` the scaling rule is applied to
    each phase's batch, so the rate grows with the batch.
    """
    exponent = lr_scaling_exponent(rule)
    first = self.phases[0][1]
    sizes = [size if lr_follows_batch else first for _, size in self.phases]
    return tuple(lr * (size / base_batch_size) ** exponent for size in sizes)


def growing_batch_phases(
  regime: Regime,
  num_examples: int,
  *,
  growth_factor: float | None = None,
  max_batch_size: int | None = None,
  multiple_of: int = 1,
) -> GrowingBatch:
  """Replaces a regime's learning-rate drops by batch-size increases.

  Smith et al. (2018) show that multiplying the batch by 1 / drop_factor where
  the regime would divide the learning rate by it follows the same training
  curve with fewer updates. The batch starts at ``regime.batch_size``; each
  phase lasts the epochs between two drops. With ``max_batch_size`` the batch
  stops growing there and the remaining drops decay the learning rate instead
  (Smith et al.'s "hybrid" schedule); without it a batch larger than the
  training set is an error.

  Args:
    regime: the regime; its ``batch_size`` is the starting batch.
    num_examples: the size of the training set.
    growth_factor: the batch multiplier at each drop; default 1 / drop_factor.
    max_batch_size: the largest batch (<= num_examples); None for no hybrid.
    multiple_of: every batch size must be a multiple of it (devices times the
      ghost batch size).

  Returns:
    A :class:`GrowingBatch`.

  References:
    Smith, Kindermans, Ying, Le 2018, "Don't Decay the Learning Rate, Increase
    the Batch Size", sections 2 and 5.
  """
  factor = 1.0 / regime.drop_factor if growth_factor is None else growth_factor
  if not factor > 1:
    raise ValueError(f"the batch growth factor must be > 1, got {factor!r}")
  limit = num_examples if max_batch_size is None else max_batch_size
  if not 0 < limit <= num_examples:
    raise ValueError(
      f"max_batch_size={max_batch_size} must be in [1, {num_examples}] (the training set)"
    )
  bounds = [0.0, *(e for e in regime.drop_epochs if e < regime.epochs), regime.epochs]
  if len(bounds) < 3:
    raise ValueError(
      f"a growing batch needs drop epochs inside the run: the batch grows at them; "
      f"got drop_epochs={regime.drop_epochs} for {regime.epochs} epochs"
    )
  phases, lr_drops, step, size, capped = [], [], 0, regime.batch_size, False
  for begin, end in itertools.pairwise(bounds):
    if capped:
      lr_drops.append(step)  # the batch has stopped growing: drop the rate instead
    elif size > limit:
      what = "the training set" if max_batch_size is None else "max_batch_size"
      raise ValueError(
        f"the growing batch reaches {size} at epoch {begin:g}, larger than {what} "
        f"({limit}); set a max_batch_size (config.batch_growth_max: from it on the lr "
        "drops instead, Smith et al.'s hybrid), a smaller growth factor or fewer drops"
      )
    elif size % multiple_of:
      raise ValueError(
        f"the growing batch reaches {size}, not a multiple of {multiple_of} (devices x ghost "
        "batch size); choose a growth factor that keeps every size divisible"
      )
    else:
      phases.append((step, size))
    steps = epochs_to_steps(end - begin, num_examples, phases[-1][1])
    if steps < 1:
      raise ValueError(
        f"the phase from epoch {begin:g} to {end:g} at batch {phases[-1][1]} has no update "
        f"({end - begin:g} epochs of {num_examples} examples)"
      )
    step += steps
    size = int(round(phases[-1][1] * factor))
    capped = max_batch_size is not None and size > max_batch_size
  return GrowingBatch(phases=tuple(phases), num_steps=step, lr_drop_steps=tuple(lr_drops))
