"""How much an approximate adjoint costs: backward-solve residual and gradient error."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PyTree, Scalar

from ._adjoint import AdjointName, resolve_adjoint
from ._inner import solve_inner, SYMMETRIC_TAGS


class AdjointDiagnostics(eqx.Module):
    r"""What [`omdx.adjoint_diagnostics`][] measured.

    **Fields:**

    - `linear_solve_residual`: $\|A^\top w - \bar y\| / \|\bar y\|$ of the backward
        solve $A^\top w = \bar y$, where $A = \partial f/\partial y$ at the inner solution
        and $\bar y = \nabla_y O$. Zero for an exact solve; one for $w = 0$.
    - `num_steps`: iterations the backward solve used (0 for a direct solve).
    - `cosine_similarity`: between the adjoint's gradient of the objective with respect
        to `args` and the reference gradient.
    - `relative_error`: $\|g - g_{\mathrm{ref}}\| / \|g_{\mathrm{ref}}\|$.
    - `gradient`, `reference_gradient`: the two gradients, PyTrees like the
        differentiable part of `args`.
    """

    linear_solve_residual: Scalar
    num_steps: Int[Array, ""]
    cosine_similarity: Scalar
    relative_error: Scalar
    gradient: PyTree
    reference_gradient: PyTree


def _objective_gradient(residual, objective, y0, args, solver, adjoint, kwargs):
    def total(diff_args, static_args):
        full_args = eqx.combine(diff_args, static_args)
        sol = solve_inner(residual, y0, full_args, solver=solver, adjoint=adjoint, **kwargs)
        return objective(sol.value, full_args)

    diff_args, static_args = eqx.partition(args, eqx.is_inexact_array)
    return jax.grad(total)(diff_args, static_args)


@eqx.filter_jit
def adjoint_diagnostics(
    residual: Callable[[PyTree, Any], PyTree],
    y0: PyTree,
    args: PyTree,
    *,
    objective: Callable[[PyTree, Any], Float[Array, ""]],
    solver: optx.AbstractRootFinder | optx.AbstractFixedPointSolver,
    adjoint: AdjointName | lx.AbstractLinearSolver,
    reference: AdjointName | lx.AbstractLinearSolver = "direct",
    symmetric: bool = False,
    max_steps: int | None = 256,
    options: dict[str, Any] | None = None,
) -> AdjointDiagnostics:
    r"""Measure an adjoint against a reference on one problem.

    Solves the inner problem with `solver`, then: (1) solves the backward system
    $(\partial f/\partial y)^\top w = \nabla_y O$ with `adjoint` and reports its relative
    residual and iteration count; (2) takes `jax.grad` of
    `objective(solve_inner(...).value, args)` with respect to the floating-point arrays
    of `args`, once with `adjoint` and once with `reference`, and compares them.

    **Arguments:**

    - `residual`, `y0`, `args`, `solver`, `symmetric`, `max_steps`, `options`: as for
        [`omdx.solve_inner`][].
    - `objective`: `objective(y, args) -> scalar`, the outer objective $O$.
    - `adjoint`: the adjoint to assess (a name or a Lineax solver).
    - `reference`: the adjoint taken as exact; `"direct"` by default (dense, so for
        large `y` pass e.g. `lx.CG(rtol=1e-8, atol=1e-8)` with `symmetric=True`).

    **Returns:**

    An [`omdx.AdjointDiagnostics`][].
    """
    kwargs = dict(symmetric=symmetric, max_steps=max_steps, options=options)
    sol = solve_inner(residual, y0, args, solver=solver, adjoint=adjoint, **kwargs)
    y_star = jax.lax.stop_gradient(sol.value)
    dtype = jnp.result_type(*jtu.tree_leaves(y_star))
    linear_solver = resolve_adjoint(adjoint, symmetric=symmetric, dtype=dtype)

    y_bar = jax.grad(lambda y: objective(y, args))(y_star)
    tags = SYMMETRIC_TAGS if symmetric else frozenset()
    operator = lx.JacobianLinearOperator(residual, y_star, args, tags=tags)
    operator_t = operator.transpose()
    backward = lx.linear_solve(operator_t, y_bar, linear_solver, throw=False)
    w = backward.value
    mismatch = jtu.tree_map(jnp.subtract, operator_t.mv(w), y_bar)
    flat_mismatch, _ = ravel_pytree(mismatch)
    flat_y_bar, _ = ravel_pytree(y_bar)
    solve_residual = jnp.linalg.norm(flat_mismatch) / jnp.linalg.norm(flat_y_bar)
    num_steps = jnp.asarray(backward.stats.get("num_steps", 0))

    gradient = _objective_gradient(residual, objective, y0, args, solver, adjoint, kwargs)
    reference_gradient = _objective_gradient(
        residual, objective, y0, args, solver, reference, kwargs
    )
    g, _ = ravel_pytree(gradient)
    g_ref, _ = ravel_pytree(reference_gradient)
    ref_norm = jnp.linalg.norm(g_ref)
    cosine = jnp.dot(g, g_ref) / (jnp.linalg.norm(g) * ref_norm)
    relative_error = jnp.linalg.norm(g - g_ref) / ref_norm
    return AdjointDiagnostics(
        linear_solve_residual=solve_residual,
        num_steps=num_steps,
        cosine_similarity=cosine,
        relative_error=relative_error,
        gradient=gradient,
        reference_gradient=reference_gradient,
    )
