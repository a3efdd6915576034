"""The data-parallel training system: plan, state, step, parallel wrappers, loop."""

from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.evaluation import evaluate
from bigbatch_jax.training.host_memory import retain_freed_host_memory
from bigbatch_jax.training.loop import train_and_evaluate
from bigbatch_jax.training.loss import cross_entropy
from bigbatch_jax.training.metrics import MetricsLog, fit_log_growth, plot_run, read_metrics
from bigbatch_jax.training.optimizer import make_optimizer
from bigbatch_jax.training.parallel import (
  make_mesh,
  pmap_train_step,
  put_batch,
  shard_eval_step,
  shard_train_step,
)
from bigbatch_jax.training.plan import RunPlan, lr_schedule, make_plan
from bigbatch_jax.training.preemption import PREEMPTED_EXIT_CODE, Preempted
from bigbatch_jax.training.setup import RunSetup, build_model, norm_layer, set_up_run
from bigbatch_jax.training.spec import RunSpec, resolve
from bigbatch_jax.training.state import TrainState, create_train_state
from bigbatch_jax.training.step import eval_step, train_step, weight_distances
from bigbatch_jax.training.variants import Variant, parse_variant
from bigbatch_jax.training.workdir import RESUMABLE_KEYS, check_and_save_config, config_changes

__all__ = [
  "PREEMPTED_EXIT_CODE",
  "RESUMABLE_KEYS",
  "Checkpointer",
  "MetricsLog",
  "Preempted",
  "RunPlan",
  "RunSetup",
  "RunSpec",
  "TrainState",
  "Variant",
  "build_model",
  "check_and_save_config",
  "config_changes",
  "create_train_state",
  "cross_entropy",
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
  "read_metrics",
  "resolve",
  "retain_freed_host_memory",
  "set_up_run",
  "shard_eval_step",
  "shard_train_step",
  "train_and_evaluate",
  "train_step",
  "weight_distances",
]
