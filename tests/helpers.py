"""Shared test utilities: tree comparisons and central finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    x_leaves, x_def = jax.tree.flatten(x)
    y_leaves, y_def = jax.tree.flatten(y)
    if x_def != y_def:
        return False
    return all(np.allclose(a, b, rtol=rtol, atol=atol) for a, b in zip(x_leaves, y_leaves))


def finite_difference_grad(fn, x, *, eps=1e-6):
    """Central finite-difference gradient of a scalar `fn` at the PyTree `x` (float64)."""
    flat, unravel = ravel_pytree(x)
    flat = np.asarray(flat, dtype=np.float64)
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        plus = float(fn(unravel(jnp.asarray(flat + step))))
        minus = float(fn(unravel(jnp.asarray(flat - step))))
        grad[i] = (plus - minus) / (2 * eps)
    return unravel(jnp.asarray(grad))


def relative_error(a, b) -> float:
    fa, _ = ravel_pytree(a)
    fb, _ = ravel_pytree(b)
    return float(jnp.linalg.norm(fa - fb) / jnp.maximum(jnp.linalg.norm(fb), 1e-300))
