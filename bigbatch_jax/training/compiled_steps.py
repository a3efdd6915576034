"""The run's train calls, compiled ahead of time once per (batch size, call length).

``train_and_evaluate`` compiles every call of the run before any data is
read (``compile_ahead``), so a batch or a population that does not fit fails
with its sizes rather than deep inside XLA; ``population_groups`` compiles
the same calls for fewer members to find the largest group that fits.
"""

from __future__ import annotations

import copy
import functools

from jax.sharding import Mesh

from bigbatch_jax.training import parallel
from bigbatch_jax.training import population as population_lib
from bigbatch_jax.training import step as step_lib
from bigbatch_jax.training.run_plan import RunPlan
from bigbatch_jax.training.setup import RunSetup


class CompiledSteps:
  """The run's train calls, compiled ahead of time once per (batch size, call length).

  A kept partial last batch is a batch size of its own: its step
  computes the loss and the batch statistics over its real examples, with its
  own ghost batches where ``RunSetup.partial_step_args`` says so.

  ``check_memory=False`` compiles without the memory check (a call that does
  not fit is still compiled); ``memory_bytes`` is the largest need per
  device of the calls compiled so far (``parallel.step_memory_bytes``).
  """

  def __init__(
    self,
    run: RunSetup,
    mesh: Mesh,
    input_shape: tuple[int, ...],
    plan: RunPlan,
    members: int | None = None,
    check_memory: bool = True,
  ):
    self._run, self._plan, self._members = run, plan, members
    self._state, self._mesh, self._input_shape = run.state, mesh, input_shape
    self._check_memory = check_memory
    self._sharded = {}
    self._executables = {}  # (batch size, length) -> the compiled step
    self._compiled = {}  # (batch size, length) -> the call
    self.memory_bytes = 0

  def for_run(self, run: RunSetup) -> CompiledSteps:
    """These calls for ``run``'s state and grid values, of the same shapes: nothing recompiled."""
    steps = copy.copy(self)
    steps._run, steps._state, steps._compiled = run, run.state, {}
    return steps

  def _sharded_fn(self, batch_size: int, scanned: bool):
    args = self._run.step_args_at(batch_size, self._plan)
    key = (args is self._run.step_args, scanned)
    if key not in self._sharded:
      population = self._members is not None
      one, many = (
        (population_lib.population_train_step, population_lib.population_train_steps)
        if population
        else (step_lib.train_step, step_lib.train_steps)
      )
      if self._run.member_arguments is not None:
        args = {**args, "member_arguments": self._run.member_arguments}
      self._sharded[key] = parallel.shard_train_step(
        many if scanned else one, self._mesh, stacked=scanned, members=population, **args
      )
    return self._sharded[key]

  def executable(self, batch_size: int, length: int):
    """The compiled step behind ``get(batch_size, length)`` (its HLO text, cost, memory)."""
    self.get(batch_size, length)
    return self._executables[batch_size, length]

  def get(self, batch_size: int, length: int):
    """The call ``(state, batches) -> (state, metrics)`` of ``length`` steps at ``batch_size``.

    Compiled on first use. A population's call passes its members' grid
    values (``RunSetup.hyperparameters``) to the compiled step as arrays.
    """
    if (batch_size, length) not in self._executables:
      fn = self._sharded_fn(batch_size, scanned=length != 1)
      steps = None if length == 1 else length
      compiled = parallel.compile_train_step(
        fn,
        self._state,
        batch_size,
        self._input_shape,
        self._mesh,
        steps,
        self._members,
        self._run.hyperparameters,
        check_memory=self._check_memory,
      )
      self.memory_bytes = max(self.memory_bytes, parallel.step_memory_bytes(compiled))
      self._executables[batch_size, length] = compiled
    if (batch_size, length) not in self._compiled:
      compiled, values = self._executables[batch_size, length], self._run.hyperparameters
      if self._members is not None:
        compiled = functools.partial(_call_with_values, compiled, values)
      self._compiled[batch_size, length] = compiled
    return self._compiled[batch_size, length]


def _call_with_values(compiled, values, state, batches):
  """A population's compiled step called with its members' grid values."""
  return compiled(state, batches, values)


def compile_ahead(steps: CompiledSteps, plan: RunPlan, steps_per_call: int) -> None:
  """Compiles before any data is read, once per batch size of the run.

  A batch that does not fit fails here, with sizes, rather than deep inside XLA.
  """
  for size in plan.batch_sizes:
    # A partial last batch is a call of its own (its neighbours are full batches).
    alone = size == plan.partial_batch_size
    steps.get(size, 1 if alone else min(steps_per_call, plan.num_steps))
