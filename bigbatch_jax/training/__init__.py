"""The data-parallel training system: plan, state, step, parallel wrappers, loop."""

from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.host_memory import retain_freed_host_memory
from bigbatch_jax.training.loop import evaluate, train_and_evaluate
from bigbatch_jax.training.metrics import MetricsLog, fit_log_growth, plot_run
from bigbatch_jax.training.parallel import (
  make_mesh,
  pmap_train_step,
  put_batch,
  shard_eval_step,
  shard_train_step,
)
from bigbatch_jax.training.plan import RunPlan, lr_schedule, make_optimizer, make_plan, norm_layer
from bigbatch_jax.training.state import TrainState, create_train_state
from bigbatch_jax.training.step import eval_step, train_step, weight_distances
from bigbatch_jax.training.variants import Variant, parse_variant

__all__ = [
  "Checkpointer",
  "MetricsLog",
  "RunPlan",
  "TrainState",
  "Variant",
  "create_train_state",
  "eval_step",
  "evaluate",
  "fit_log_growth",
  "lr_schedule",
  "make_mesh",
  "make_optimizer",
  "make_plan",
  "norm_layer",
  "parse_variant",
  "plot_run",
  "pmap_train_step",
  "put_batch",
  "retain_freed_host_memory",
  "shard_eval_step",
  "shard_train_step",
  "train_and_evaluate",
  "train_step",
  "weight_distances",
]
