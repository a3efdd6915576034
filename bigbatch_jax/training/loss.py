"""The one training objective: softmax cross-entropy, optionally weighted per example.

The step, evaluation and the diagnostics all call these, so every number the
library reports is the same loss. Per-example weights are how multiplicative
gradient noise enters (Hoffer section 4; ``bigbatch_jax.noise``): the gradient
is linear in them, so one backward pass gives the noisy gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

REDUCTIONS = ("mean", "sum")


def cross_entropy(
  logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None, reduction: str = "mean"
) -> jax.Array:
  """Cross-entropy of integer ``labels``, times ``weights`` per example, averaged or summed.

  Args:
    logits: (batch, classes).
    labels: (batch,) integer labels.
    weights: optional (batch,) per-example weights (noise weights, or a 0/1
      mask of padded evaluation examples).
    reduction: "mean" over the batch, or "sum".

  Returns:
    A scalar.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction={reduction!r}; valid: {REDUCTIONS}")
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is not None:
    losses = weights * losses
  return jnp.mean(losses) if reduction == "mean" else jnp.sum(losses)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(batch,) booleans: whether the top logit is the label."""
  return jnp.argmax(logits, -1) == labels


def eval_logits(model, params, batch_stats, x: jax.Array) -> jax.Array:
  """The model's logits in evaluation mode (batch norm on its running statistics)."""
  return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
