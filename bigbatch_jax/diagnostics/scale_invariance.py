"""Sharpness that does not change when a batch-normalized network is rescaled.

A layer whose output goes straight into batch norm (in training mode, on the
batch's own statistics) computes the same function when its kernel and bias
are multiplied by any c > 0. The loss is then constant along that scaling,
and its Hessian in those parameters scales as 1 / c**2: the top eigenvalue
lambda_max of two networks of very different weight norms compares their
scales as much as their minima (Hoffer et al. 2017 sec. 4 on the weights'
norm under batch norm; Dinh et al. 2017, "Sharp minima can generalize for
deep nets", on reparametrizations that change sharpness).

:func:`scale_invariant_modules` finds those layers by measurement, not by
name: a module (a parameter dict holding a ``kernel``) is scale invariant
when scaling its kernel and bias together by 2 leaves the logits unchanged
to a relative tolerance. :func:`scale_normalized_sharpness` is then
lambda_max * ||w_SI||**2, with w_SI all the parameters of those modules:
scaling every one of them by c leaves it unchanged where the top eigenvector
lies in their block (the eigenvalue scales as 1 / c**2 there). It is a
normalization for that joint scaling only: scaling the layers by different
factors, or the parameters outside w_SI (the output layer, the batch-norm
scales), is not normalized away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import traverse_util

Path = tuple[str, ...]


def _modules_with_kernel(params) -> list[Path]:
  flat = traverse_util.flatten_dict(params)
  return sorted({path[:-1] for path in flat if path[-1] == "kernel"})


def _scaled(params, module: Path, factor: float):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
    {path: value * factor if path[:-1] == module else value for path, value in flat.items()}
  )


def scale_invariant_modules(
  logits_fn: Callable, params, x: jax.Array, rtol: float = 1e-4
) -> list[Path]:
  """The modules whose kernel and bias, scaled together by 2, leave ``logits_fn`` unchanged.

  Args:
    logits_fn: (params, x) -> logits, batch norm in training mode (normalizing
      with the statistics of ``x``; in evaluation mode the running statistics
      are fixed and no layer is scale invariant).
    params: the parameter pytree (nested dicts, flax's layout).
    x: a batch of inputs, large enough for its batch statistics.
    rtol: the largest relative change of the logits (max-abs over max-abs)
      still counted as unchanged; float32 rounding leaves ~1e-6.

  Returns:
    The paths (tuples of dict keys) of the scale-invariant modules, sorted.
  """
  reference = logits_fn(params, x)
  scale = jnp.maximum(jnp.max(jnp.abs(reference)), 1e-12)
  invariant = []
  for module in _modules_with_kernel(params):
    change = jnp.max(jnp.abs(logits_fn(_scaled(params, module, 2.0), x) - reference)) / scale
    if float(change) < rtol:
      invariant.append(module)
  return invariant


def squared_norm(params, modules: Sequence[Path]) -> float:
  """||w||**2 over every parameter of ``modules`` (kernel, bias, ...)."""
  chosen = set(modules)
  flat = traverse_util.flatten_dict(params)
  return float(sum(jnp.sum(jnp.square(v)) for p, v in flat.items() if p[:-1] in chosen))


def scale_normalized_sharpness(top_eigenvalue: float, params, modules: Sequence[Path]) -> float:
  """lambda_max * ||w_SI||**2 (see the module docstring for what it normalizes and what not)."""
  return float(top_eigenvalue) * squared_norm(params, modules)
