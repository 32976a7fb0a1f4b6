"""`solve_inner`: the inner problem of bilevel RL, differentiated implicitly."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optax
import optimistix as optx
from jaxtyping import PyTree

from ._adjoint import AdjointName, resolve_adjoint
from ._solvers import GradientSteps


_SOLVER_TYPES = (
    optx.AbstractRootFinder,
    optx.AbstractFixedPointSolver,
    optx.AbstractLeastSquaresSolver,
    optx.AbstractMinimiser,
)

SYMMETRIC_TAGS = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


class _AsFixedPoint(eqx.Module):
    """`y -> y + residual(y, args)`: the map whose fixed point is the residual's root."""

    residual: Callable
    has_aux: bool = eqx.field(static=True)

    def __call__(self, y, args):
        out = self.residual(y, args)
        if self.has_aux:
            f, aux = out
            return jtu.tree_map(jnp.add, y, f), aux
        return jtu.tree_map(jnp.add, y, out)


def _describe(tree) -> str:
    return str(jtu.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", tree))


def _check_inputs(residual, y0, args, solver, has_aux, max_steps):
    if not callable(residual):
        raise TypeError(
            "`residual` must be a callable `residual(y, args) -> PyTree`, got "
            f"{type(residual).__name__}."
        )
    if not isinstance(solver, _SOLVER_TYPES):
        raise TypeError(
            "`solver` must be an Optimistix root finder, fixed-point solver, "
            "least-squares solver or minimiser (e.g. `optx.Newton(rtol, atol)`, "
            "`optx.FixedPointIteration(rtol, atol)` or `omdx.GradientSteps(...)`), got "
            f"{type(solver).__name__}."
        )
    if max_steps is not None and (
        not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1
    ):
        raise ValueError(f"`max_steps` must be a positive int or None, got {max_steps!r}.")
    if (
        isinstance(solver, GradientSteps)
        and isinstance(solver.steps, int)  # not traced
        and max_steps is not None
        and solver.steps > max_steps
    ):
        raise ValueError(
            f"`solver` takes {solver.steps} steps but `max_steps` is {max_steps}: the solve "
            "would stop at `max_steps` and report failure. Pass `max_steps` >= the "
            "solver's `steps` (or None)."
        )
    y_leaves = jtu.tree_leaves(y0)
    if not y_leaves:
        raise ValueError("`y0` must contain at least one array.")
    for leaf in y_leaves:
        if not (eqx.is_array_like(leaf)):
            raise TypeError(
                f"`y0` must be a PyTree of arrays, found a leaf of type {type(leaf).__name__}."
            )
    y_struct = jax.eval_shape(lambda y: jtu.tree_map(jnp.asarray, y), y0)
    try:
        out_struct = eqx.filter_eval_shape(residual, y0, args)
    except Exception as e:
        raise ValueError(
            f"`residual(y0, args)` failed while tracing shapes: {type(e).__name__}: {e}"
        ) from e
    if has_aux:
        if not (isinstance(out_struct, tuple) and len(out_struct) == 2):
            raise ValueError("With `has_aux=True`, `residual` must return a pair `(f, aux)`.")
        out_struct = out_struct[0]
    same_structure = jtu.tree_structure(out_struct) == jtu.tree_structure(y_struct)
    if same_structure:
        same_structure = all(
            o.shape == y.shape
            for o, y in zip(jtu.tree_leaves(out_struct), jtu.tree_leaves(y_struct))
        )
    if not same_structure:
        raise ValueError(
            "`y0` and the output of `residual(y0, args)` must have the same PyTree "
            f"structure and shapes; got y0 = {_describe(y_struct)} and residual = "
            f"{_describe(out_struct)}."
        )
    return y_struct


def solve_inner(
    residual: Callable[[PyTree, Any], PyTree],
    y0: PyTree,
    args: PyTree = None,
    *,
    solver: optx.AbstractRootFinder | optx.AbstractFixedPointSolver,
    adjoint: AdjointName | lx.AbstractLinearSolver | None = None,
    symmetric: bool = False,
    has_aux: bool = False,
    max_steps: int | None = 256,
    throw: bool = True,
    options: dict[str, Any] | None = None,
) -> optx.Solution:
    r"""Solve `residual(y, args) = 0` for `y`, differentiable in `args` by the IFT.

    The solution $y^*(\theta)$ of $f(y, \theta) = 0$ is an implicit function of the
    parameters $\theta$ carried in `args`. Gradients of anything computed from
    `solution.value` with respect to `args` are
    $-(\partial f/\partial \theta)^\top (\partial f/\partial y)^{-\top} \bar{y}$, with the
    linear solve done by `adjoint`; the solver's iterations are never backpropagated
    through. The warm start `y0` receives no gradient.

    This is `optimistix.root_find` with `optimistix.ImplicitAdjoint` (or
    `optimistix.fixed_point` for fixed-point solvers, on $y + f(y)$), with adjoints
    named by string, input checks, and the Jacobian tagged symmetric positive
    semidefinite when `symmetric=True`. It jits, vmaps (over `y0` and `args`) and runs
    inside `lax.scan`.

    !!! note

        What the residual depends on and should receive gradients may travel in `args`
        (arrays and Equinox modules) or be closed over: Optimistix converts closures, so
        a closed-over array is differentiated through as one in `args` (tested for root
        finders, fixed-point and least-squares solvers). `args` keeps the dependence
        explicit, and is what `jax.vmap` over `args` maps.

    **Arguments:**

    - `residual`: `residual(y, args) -> f`, a PyTree with the structure of `y`, zero at
        the solution. For a fixed-point problem use $T(y) - y$ (e.g. the Bellman
        residual $B^\theta Q - Q$); for a minimisation use the gradient of the loss
        (and `symmetric=True`).
    - `y0`: the initial guess (warm start), a PyTree of arrays.
    - `args`: the parameters $\theta$ and any data, passed to `residual`.
    - `solver`: any Optimistix root finder (`optx.Newton`, [`omdx.GradientSteps`][]),
        fixed-point solver (`optx.FixedPointIteration` is value iteration on
        $y + f(y)$), least-squares solver or minimiser. A least-squares solver or
        minimiser only finds the root (minimising the residual's norm, where BFGS can
        stall short of the root of a nonlinear residual); the gradient is then taken at
        that root through the residual, as for a root finder, with every adjoint.
    - `adjoint`: the backward-pass linear solver: `"direct"` (dense LU), `"gmres"`,
        `"cg"` (needs `symmetric=True`), `"neumann"`, `"identity"`, or any
        `lineax.AbstractLinearSolver` such as [`omdx.Neumann`][] or
        [`omdx.truncated_cg`][]. Defaults to `"cg"` if `symmetric` else `"direct"`.
        See [`omdx.resolve_adjoint`][] for what each name means.
    - `symmetric`: set when the residual is a gradient, so its Jacobian is a symmetric
        Hessian. Tags the operator symmetric positive semidefinite for CG (it is PSD for a
        convex loss or near a minimum; where it is not, as often for a network's loss
        away from its minimum, use [`omdx.truncated_cg`][], which stops at negative
        curvature), and sets the sign convention of `"neumann"`/`"identity"`.
    - `has_aux`: whether `residual` returns `(f, aux)`; `aux` is `solution.aux`.
    - `max_steps`: the solver's step limit.
    - `throw`: raise if the solver fails (runs out of steps, diverges). With a fixed
        budget, or under `vmap` (where one failure would abort every batch element),
        pass `throw=False` and read `solution.result`.
    - `options`: solver options, e.g. `{"opt_state": ...}` for
        [`omdx.GradientSteps`][].

    **Returns:**

    An `optimistix.Solution`: `.value` (the solution $y^*$), `.result`, `.stats`,
    `.aux` and `.state` (the solver's final state).
    """
    y_struct = _check_inputs(residual, y0, args, solver, has_aux, max_steps)
    if not isinstance(symmetric, bool):
        raise TypeError(f"`symmetric` must be a bool, got {type(symmetric).__name__}.")
    dtypes = [leaf.dtype for leaf in jtu.tree_leaves(y_struct)]
    dtype = jnp.result_type(*dtypes)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    linear_solver = resolve_adjoint(adjoint, symmetric=symmetric, dtype=dtype)
    implicit = optx.ImplicitAdjoint(linear_solver=linear_solver)
    tags = SYMMETRIC_TAGS if symmetric else frozenset()
    if isinstance(solver, optx.AbstractFixedPointSolver):
        return optx.fixed_point(
            _AsFixedPoint(residual, has_aux),
            solver,
            y0,
            args,
            options,
            has_aux=has_aux,
            max_steps=max_steps,
            adjoint=implicit,
            throw=throw,
            tags=tags,
        )
    if isinstance(solver, (optx.AbstractMinimiser, optx.AbstractLeastSquaresSolver)):
        # `optx.root_find` hands these to `minimise` / `least_squares`, which differentiate
        # the optimality condition of a norm of the residual instead of the residual: the
        # adjoint then sees an untagged operator, a minimiser's gradient comes out zero and
        # the Neumann-based adjoints get the wrong system. So solve without gradients, then
        # differentiate at the root found through the residual itself, as for a root finder.
        found = optx.root_find(
            residual,
            solver,
            _no_gradient(y0),
            _no_gradient(args),
            options,
            has_aux=has_aux,
            max_steps=max_steps,
            throw=throw,
        )
        at_root = optx.root_find(
            residual,
            _ALREADY_SOLVED,
            _no_gradient(found.value),
            args,
            has_aux=has_aux,
            max_steps=1,
            adjoint=implicit,
            throw=False,
            tags=tags,
        )
        return eqx.tree_at(lambda solution: solution.value, found, at_root.value)
    return optx.root_find(
        residual,
        solver,
        y0,
        args,
        options,
        has_aux=has_aux,
        max_steps=max_steps,
        adjoint=implicit,
        throw=throw,
        tags=tags,
    )


# Takes no step: the root finder that marks a known root, to differentiate there.
_ALREADY_SOLVED = GradientSteps(optax.sgd(0.0), steps=0)


def _no_gradient(tree: PyTree) -> PyTree:
    return jtu.tree_map(lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree)
