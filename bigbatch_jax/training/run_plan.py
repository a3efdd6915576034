"""``RunPlan``: a run's derived quantities, and what they answer (batch sizes, epochs, lr).

:func:`bigbatch_jax.training.plan.make_plan` derives and checks them from the
config; the loop, the optimizer, the data iterator and the records only read
them. :func:`lr_schedule` is the scheduled learning rate a plan gives.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import optax

from bigbatch_jax import transforms
from bigbatch_jax.data.schedule import BatchSchedule
from bigbatch_jax.protocol import Protocol
from bigbatch_jax.regimes import Regime, gradual_warmup, warmup_polynomial_decay
from bigbatch_jax.training.variants import Variant


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """A run's derived quantities (all sizes are global, over every device)."""

  variant: Variant
  batch_size: int
  base_batch_size: int
  num_devices: int
  ghost_batch_size: int | None
  lr_rule: str | float
  regime: Regime  # adapted in epochs; its lr is the base lr (scaled by the transform)
  num_train: int
  num_steps: int
  noise_variance: float  # multiplicative noise sigma**2, 0 when off
  clip_norm: float | None
  clip_steps: int | None
  # (first step, global batch size) of each phase; one phase unless "grow".
  batch_phases: tuple[tuple[int, int], ...] = ()
  drop_distances: tuple[float, ...] = ()  # "dist": ||w - w0|| targets of the lr drops
  # The batch the lr rule divides by: base_batch_size, or 256 with main_normal_lr.
  lr_base_batch_size: int | None = None
  grow_lr_follows_batch: bool = False  # "grow": the lr rule reads the growing batch
  warmup_steps: int = 0  # "warmup": Goyal's linear ramp to the scaled lr over these updates
  lr_decay: str = "steps"  # regime.decay: "steps" (the regime's drops) or "poly"
  poly_warmup_steps: int = 0  # "poly": updates of the linear warmup from 0
  poly_power: float = 2.0  # "poly": the decay's exponent
  momentum_restart_steps: tuple[int, ...] = ()  # the momentum is zeroed before these updates
  lars_trust_coefficient: float = 0.001  # "lars": eta
  noise_alpha: float = 1e-5  # "white": the gradient noise's alpha (Neelakantan et al.)
  noise_gamma: float = 0.55  # "white": its decay exponent
  bn_scale_uniform: bool = False  # batch-norm scales start U(0, 1) (PyTorch < 1.0)
  # Each epoch is ceil(N / B) updates, the last of N mod B examples.
  partial_last_batch: bool = False
  running_variance: str = "biased"  # batch norm's running variance: "biased" or "unbiased"
  script_command: str = ""  # with script_columns: the bigBatch command the run reproduces
  # The run's protocol, resolved once (make_plan); the data path and the drivers read it here.
  protocol: Protocol | None = None

  @functools.cached_property
  def batch_schedule(self) -> BatchSchedule:
    """The batch size of each step and its stream offset (shared with the data iterator).

    Built once per plan: the loop asks it at every call.
    """
    return BatchSchedule(self.batch_phases, self.num_train if self.partial_last_batch else None)

  @property
  def steps_per_epoch(self) -> float:
    """Updates per epoch: N / B (batches cross epochs), or ceil(N / B) with partial batches."""
    return self.batch_schedule.steps_per_epoch(self.num_train)

  @property
  def partial_batch_size(self) -> int:
    """The global size of each epoch's partial last batch; 0 when there is none."""
    return self.batch_schedule.partial_size

  def ghost_batch_size_at(self, batch_size: int) -> int | None:
    """The ghost size of a step at ``batch_size``: the plan's, or the partial batch's.

    The reference (``main_gbn.py``) splits every batch with ``torch.chunk`` into
    as many ghost batches K as a full one holds, so the partial batch's ghost
    batches have partial / K examples (on MNIST, 2656 / 32 = 83).
    """
    partial = self.partial_batch_size
    if self.ghost_batch_size is None or not partial or batch_size != partial:
      return self.ghost_batch_size
    return batch_size * self.ghost_batch_size // self.batch_size

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """The distinct global batch sizes of the run (each compiles once)."""
    return self.batch_schedule.sizes

  def batch_size_at(self, step: int) -> int:
    """The global batch size of update ``step`` (host side)."""
    return self.batch_schedule(step)

  def batch_size_schedule(self):
    """The batch size of update ``step`` as a jittable function."""
    starts = jnp.asarray([start for start, _ in self.batch_phases], jnp.int32)
    sizes = jnp.asarray([size for _, size in self.batch_phases], jnp.float32)
    return lambda step: sizes[jnp.searchsorted(starts, step, side="right") - 1]

  def offset_at(self, step: int) -> int:
    """Training examples read before update ``step``."""
    return self.batch_schedule.offset_at(step)

  @property
  def lr_base(self) -> int:
    """The batch size the learning-rate rule divides by."""
    return self.lr_base_batch_size or self.base_batch_size

  def lr_batch_size(self):
    """The batch size the learning-rate rule reads: the schedule if the lr follows "grow"."""
    if len(self.batch_phases) > 1 and self.grow_lr_follows_batch:
      return self.batch_size_schedule()
    return self.batch_size

  @property
  def lr_scale(self) -> float:
    """(B / B_base)**p, the factor on the base learning rate (after any warmup)."""
    ratio = self.batch_size / self.lr_base
    return ratio ** transforms.lr_scaling_exponent(self.lr_rule)

  def epoch_at(self, step: int) -> float:
    return self.offset_at(step) / self.num_train


def lr_schedule(plan: RunPlan) -> optax.Schedule:
  """The scheduled learning rate: the regime's schedule times (B / B_base)**p.

  The schedule is the regime's drops, or with ``lr_decay == "poly"``
  ``bigbatch_jax.regimes.warmup_polynomial_decay`` over the run's updates.

  With "dist" the distance-triggered drops multiply this on device (the step
  logs the product).
  """
  if plan.lr_decay == "poly":
    base = warmup_polynomial_decay(
      plan.regime.lr, plan.poly_warmup_steps, plan.num_steps, plan.poly_power
    )
  else:
    base = plan.regime.schedule(plan.steps_per_epoch)
  scale = transforms.batch_size_scale_schedule(plan.lr_batch_size(), plan.lr_base, plan.lr_rule)
  if plan.warmup_steps:
    warmup = gradual_warmup(plan.lr_scale, plan.warmup_steps)
    return lambda step: base(step) * scale(step) * warmup(step)
  return lambda step: base(step) * scale(step)
