"""Diagnostics of large-batch training, each one call away.

The measurements the papers argue from (Hoffer et al. 2017; Keskar et al.
2017; Jaiswal & Taura; McCandlish et al. 2018), as pure, jittable functions
of closures and pytrees that work on any model, plus helpers that rebuild a
``bigbatch_jax.training`` run from its workdir:

* weight distance ||w_t - w0|| and its fit against log t (Hoffer eq. 4);
* Hessian top eigenvalues by Lanczos and Keskar's epsilon-sharpness, and
  the sharpness normalized for batch norm's scale invariance;
* the parametric plot between two minima (Keskar Fig. 3, Jaiswal Fig. 2);
* loss statistics along random directions and alpha (Hoffer appendix B);
* the gradient noise scale B_simple and the update covariance (Hoffer eq. 6).

The command line ``python -m experiments.analyze`` runs them on finished runs.
"""

from bigbatch_jax.diagnostics.distance import (
  fit_log_growth,
  fit_weight_distance,
  weight_distance,
  weight_distance_series,
  weight_distances,
)
from bigbatch_jax.diagnostics.hessian import (
  epsilon_sharpness,
  hessian_top_eigenvalues,
  hvp,
  lanczos_eigenvalues,
)
from bigbatch_jax.diagnostics.interpolation import (
  interpolate_params,
  interpolation_curve,
  recompute_batch_stats,
)
from bigbatch_jax.diagnostics.landscape import (
  binned_loss_std,
  fit_alpha,
  landscape_statistics,
  random_direction_losses,
)
from bigbatch_jax.diagnostics.noise_scale import (
  gradient_noise_scale,
  mean_squared_gradient_norm,
  measure_noise_scale,
  update_covariance,
)
from bigbatch_jax.diagnostics.runs import (
  Run,
  batch_stats_fn,
  checkpoint_steps,
  classification_metrics,
  eval_grad_fn,
  eval_loss_fn,
  load_run,
  sample_batches,
  scale_invariant_sq_norm_of_run,
  top_hessian_eigenvalue_of_run,
)
from bigbatch_jax.diagnostics.scale_invariance import (
  scale_invariant_modules,
  scale_normalized_sharpness,
)

__all__ = [
  "Run",
  "batch_stats_fn",
  "binned_loss_std",
  "checkpoint_steps",
  "classification_metrics",
  "epsilon_sharpness",
  "eval_grad_fn",
  "eval_loss_fn",
  "fit_alpha",
  "fit_log_growth",
  "fit_weight_distance",
  "gradient_noise_scale",
  "hessian_top_eigenvalues",
  "hvp",
  "interpolate_params",
  "interpolation_curve",
  "lanczos_eigenvalues",
  "landscape_statistics",
  "load_run",
  "mean_squared_gradient_norm",
  "measure_noise_scale",
  "random_direction_losses",
  "recompute_batch_stats",
  "sample_batches",
  "scale_invariant_modules",
  "scale_invariant_sq_norm_of_run",
  "scale_normalized_sharpness",
  "top_hessian_eigenvalue_of_run",
  "update_covariance",
  "weight_distance",
  "weight_distance_series",
  "weight_distances",
]
