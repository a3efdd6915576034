"""Curvature of a minimum: Hessian top eigenvalues (Lanczos) and Keskar's epsilon-sharpness.

Both act on a scalar ``loss_fn(params)``. For a network with batch
normalization, build ``loss_fn`` in evaluation mode (running statistics
frozen, ``train=False``) on a fixed set of batches: the loss is then one
deterministic function of the parameters, whose Hessian is well defined and
does not depend on how the examples are grouped into batches.
:func:`bigbatch_jax.diagnostics.runs.eval_loss_fn` builds such a function for
a run.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

LossFn = Callable[..., jax.Array]


def hvp(loss_fn: LossFn, params, vector):
  """The Hessian-vector product H(params) @ vector, forward over reverse.

  Args:
    loss_fn: scalar function of a parameter pytree.
    params: where the Hessian is taken.
    vector: a pytree shaped like ``params``.

  Returns:
    A pytree shaped like ``params``.
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def lanczos_eigenvalues(
  matvec: Callable[[jax.Array], jax.Array],
  dim: int,
  key: jax.Array,
  num_iterations: int,
  dtype=jnp.float32,
) -> jax.Array:
  """Ritz values of a symmetric operator by Lanczos with full reorthogonalization.

  The largest Ritz values converge first to the largest eigenvalues. Every new
  Lanczos vector is orthogonalized twice against all previous ones, so no
  spurious copies appear. If the Krylov space becomes invariant (the
  operator's rank or distinct eigenvalues are fewer than ``num_iterations``),
  the iteration restarts from a random vector orthogonal to all previous ones
  and the tridiagonal matrix decouples, so the Ritz values stay eigenvalues.

  Args:
    matvec: v -> A v for a flat vector of length ``dim`` (A symmetric).
    dim: the operator's dimension.
    key: typed key for the start vector (and restart vectors).
    num_iterations: Lanczos steps m, 1 <= m <= dim.
    dtype: dtype of the vectors.

  Returns:
    The m Ritz values, in descending order.
  """
  if not 1 <= num_iterations <= dim:
    raise ValueError(f"num_iterations={num_iterations} must be in [1, dim={dim}]")
  m = num_iterations

  def random_unit(i, basis):
    # Drawn inside the loop from fold_in(key, i): no (m, dim) block of randoms.
    r = orthogonalize(jax.random.normal(jax.random.fold_in(key, i), (dim,), dtype), basis)
    return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(dtype).tiny)

  def orthogonalize(w, basis):
    # Twice is enough (Parlett); rows not yet filled are zero and do nothing.
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    return w

  # Row m is scratch: the last step writes its (unused) next vector there.
  basis = jnp.zeros((m + 1, dim), dtype)
  basis = basis.at[0].set(random_unit(0, basis))

  def body(i, carry):
    basis, alphas, betas = carry
    v = basis[i]
    w = matvec(v)
    scale = jnp.linalg.norm(w)
    alpha = jnp.vdot(w, v)
    w = orthogonalize(w, basis)
    beta = jnp.linalg.norm(w)
    # A residual at rounding level means the Krylov space is invariant:
    # restart orthogonally, with a zero coupling in the tridiagonal matrix.
    invariant = beta <= 1e-4 * scale + jnp.finfo(dtype).tiny
    next_v = lax.cond(
      invariant,
      lambda: random_unit(i + 1, basis),
      lambda: w / jnp.where(invariant, 1.0, beta),
    )
    beta = jnp.where(invariant, 0.0, beta)
    return basis.at[i + 1].set(next_v), alphas.at[i].set(alpha), betas.at[i].set(beta)

  zeros = jnp.zeros((m,), dtype)
  _, alphas, betas = lax.fori_loop(0, m, body, (basis, zeros, zeros))
  tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  return jnp.linalg.eigvalsh(tridiagonal)[::-1]


def hessian_top_eigenvalues(
  loss_fn: LossFn, params, key: jax.Array, k: int = 1, num_iterations: int = 20
) -> jax.Array:
  """The k largest (algebraic) eigenvalues of the Hessian of ``loss_fn`` at ``params``.

  Lanczos (:func:`lanczos_eigenvalues`) on Hessian-vector products
  (``jax.jvp`` of ``jax.grad``) over the flattened parameter vector. The top
  eigenvalue is the sharpness measure of Keskar et al. (2017, section 2.2);
  large-batch minima have larger ones. Jittable with ``loss_fn``, ``k`` and
  ``num_iterations`` static, e.g.
  ``jax.jit(functools.partial(hessian_top_eigenvalues, loss_fn, k=3))``.

  Args:
    loss_fn: scalar function of a parameter pytree (a fixed set of batches,
      batch norm in evaluation mode).
    params: where the Hessian is taken.
    key: typed key for the Lanczos start vector.
    k: how many eigenvalues, 1 <= k <= num_iterations.
    num_iterations: Lanczos steps (Hessian-vector products); 20 to 50 give
      the top few eigenvalues of a network to about a percent.

  Returns:
    A (k,) array, descending.
  """
  if not 1 <= k <= num_iterations:
    raise ValueError(f"k={k} must be in [1, num_iterations={num_iterations}]")
  flat, unravel = ravel_pytree(params)

  def matvec(v):
    return ravel_pytree(hvp(loss_fn, params, unravel(v)))[0]

  return lanczos_eigenvalues(matvec, flat.size, key, num_iterations, flat.dtype)[:k]


def epsilon_sharpness(
  loss_fn: LossFn,
  params,
  epsilon: float = 1e-3,
  num_steps: int = 20,
  key: jax.Array | None = None,
) -> jax.Array:
  """Keskar et al.'s epsilon-sharpness in percent, by projected sign-gradient ascent.

  Keskar et al. (2017, eq. 3) with A = I (the full parameter space):

      phi(x, eps) = 100 * (max_{y in C} f(x + y) - f(x)) / (1 + f(x)),
      C = {y : |y_i| <= eps * (|x_i| + 1)},

  a box scaled to each parameter's magnitude. They solve the inner maximum
  approximately with L-BFGS-B; here it is projected gradient ascent with sign
  steps (the steepest-ascent direction in the box's infinity norm) of size
  ``2 / num_steps`` of the box, starting from the centre (or a random point
  of the box with ``key``), and the best loss seen is kept. The result is a
  lower bound on phi; it is exact when f is convex and separable along the
  box's axes (the maximum is the vertex that sign ascent reaches).

  Args:
    loss_fn: scalar function of a parameter pytree (fixed batches, batch norm
      in evaluation mode).
    params: the minimum x.
    epsilon: the box size, > 0 (Keskar et al. use 1e-3 and 5e-4).
    num_steps: ascent steps, >= 1.
    key: optional typed key for a random start inside the box.

  Returns:
    phi as a float scalar (percent).
  """
  if not epsilon > 0:
    raise ValueError(f"epsilon must be > 0, got {epsilon}")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  x, unravel = ravel_pytree(params)
  radius = epsilon * (jnp.abs(x) + 1.0)

  def flat_loss(y):
    return loss_fn(unravel(x + y))

  f0 = flat_loss(jnp.zeros_like(x))
  if key is None:
    y0 = jnp.zeros_like(x)
  else:
    y0 = radius * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  step = 2.0 * radius / num_steps

  def body(_, carry):
    y, best = carry
    value, grad = jax.value_and_grad(flat_loss)(y)
    best = jnp.maximum(best, value)
    y = jnp.clip(y + step * jnp.sign(grad), -radius, radius)
    return y, best

  y, best = lax.fori_loop(0, num_steps, body, (y0, f0))
  best = jnp.maximum(best, flat_loss(y))
  return 100.0 * (best - f0) / (1.0 + f0)
