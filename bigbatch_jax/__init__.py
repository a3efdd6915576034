"""bigbatch_jax: large-batch training without the generalization gap.

The methods of Hoffer, Hubara & Soudry 2017 ("Train longer, generalize
better") and Jaiswal & Taura as composable JAX parts: Optax transforms, a
Flax GhostBatchNorm (and Kosson et al.'s Ghost Noise Injection), regimes,
and multiplicative noise weights.
"""

from bigbatch_jax.ghost_batch_norm import GhostBatchNorm, ghost_running_average
from bigbatch_jax.ghost_noise import GhostNoiseBatchNorm
from bigbatch_jax.noise import matched_noise_variance, multiplicative_noise_weights
from bigbatch_jax.regimes import Regime, adapt_regime, epochs_to_steps
from bigbatch_jax.transforms import (
  add_decaying_noise,
  batch_size_scale_schedule,
  clip_by_global_norm_during,
  lr_scaling_exponent,
  restart_momentum_at,
  scale_by_batch_size,
  scale_by_distance_drops,
)

__version__ = "0.3.0.dev0"

__all__ = [
  "GhostBatchNorm",
  "GhostNoiseBatchNorm",
  "Regime",
  "adapt_regime",
  "add_decaying_noise",
  "batch_size_scale_schedule",
  "clip_by_global_norm_during",
  "epochs_to_steps",
  "ghost_running_average",
  "lr_scaling_exponent",
  "matched_noise_variance",
  "multiplicative_noise_weights",
  "restart_momentum_at",
  "scale_by_batch_size",
  "scale_by_distance_drops",
]
