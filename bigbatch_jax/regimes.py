"""Training regimes in epochs, their adaptation to large batches, and durations.

A regime, as the bigBatch reference code defines one, is momentum SGD with a
piecewise-constant learning rate: an initial rate multiplied by a drop factor
at given epochs, for a total number of epochs, tuned for one batch size.

All durations go through :func:`epochs_to_steps`. The training data is read
as an endless stream of per-epoch permutations and batches may cross epoch
boundaries, so a run of E epochs at batch B takes exactly E * N / B updates
(rounded once). Regime adaptation therefore keeps the number of updates of the
small-batch regime exactly, as Hoffer et al. section 5 intends.
"""

from __future__ import annotations

import dataclasses
import numbers

import optax

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
    if not self.lr > 0:
      raise ValueError(f"Regime.lr must be > 0, got {self.lr}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"Regime.momentum must be in [0, 1), got {self.momentum}")
    if self.weight_decay < 0:
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

  Example:
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
