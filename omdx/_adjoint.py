"""Linear solvers for the backward pass of the implicit function theorem.

The implicit gradient needs one solve with the transposed Jacobian of the residual. Any
Lineax solver does that; this module adds the Neumann series (not in Lineax), a damping
wrapper for near-singular Hessians, and the string names accepted by
[`omdx.solve_inner`][].
"""

from typing import Any, Literal, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jaxtyping import Array, PyTree


AdjointName: TypeAlias = Literal["direct", "gmres", "cg", "neumann", "identity"]
ADJOINT_NAMES: tuple[str, ...] = ("direct", "gmres", "cg", "neumann", "identity")

# Number of terms the string "neumann" uses: enough for a contraction of rate 0.9 to
# reach about 1% error, at 50 Jacobian-vector products.
DEFAULT_NEUMANN_STEPS = 50

_NeumannState: TypeAlias = lx.AbstractLinearOperator


def _is_real_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_scale(name: str, value: Any, *, positive: bool) -> None:
    """A Python number or a concrete array (NumPy's or JAX's) is checked now; a traced one
    (a vmapped sweep of it) cannot be, and passes."""
    if isinstance(value, jax.core.Tracer):
        return
    kind = "a positive" if positive else "a non-negative"
    if isinstance(value, bool) or not (_is_real_number(value) or eqx.is_array_like(value)):
        raise TypeError(f"`{name}` must be {kind} number, got {type(value).__name__}.")
    array = np.asarray(value)
    ok = np.issubdtype(array.dtype, np.number) and np.all(
        np.isfinite(array) & ((array > 0) if positive else (array >= 0))
    )
    if not ok:
        raise ValueError(f"`{name}` must be {kind} finite number, got {value!r}.")


class Neumann(lx.AbstractLinearSolver[_NeumannState]):
    r"""Truncated Neumann series for an approximate inverse, in a fixed budget.

    Solves $Ax = b$ approximately by

    $$x = \alpha \sum_{i=0}^{k} (I - \alpha A)^i b,$$

    which converges to $A^{-1}b$ as $k \to \infty$ whenever the spectral radius of
    $I - \alpha A$ is below one (for a symmetric positive definite $A$: $0 < \alpha <
    2/\lambda_{\max}$). It needs $k$ matrix-vector products and no extra memory, and it
    always reports success: spending its budget is what it is for.

    With `steps=0` it is the *identity* approximation $A^{-1} \approx \alpha I$, the
    paper's default adjoint for neural OMD.

    Fixed-point residuals $f(y) = T(y) - y$ with a contraction $T$ (such as the tabular
    residual $B^\theta Q - Q$) have a Jacobian $J_T - I$ whose spectrum lies in the left
    half-plane. Set `negative=True` for those: the series then runs on $-A$ and the
    result is negated, so that with $\alpha = 1$ it becomes
    $-\sum_{i=0}^{k} J_T^i b$, the value-iteration form of $(J_T - I)^{-1} b$.

    Its transpose is the same series on $A^\top$, so reverse-mode autodifferentiation
    through `lineax.linear_solve` works.
    """

    steps: int = eqx.field(static=True)
    scale: float | Array = 1.0
    negative: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool):
            raise TypeError(f"`steps` must be a non-negative int, got {type(self.steps).__name__}.")
        if self.steps < 0:
            raise ValueError(f"`steps` must be a non-negative int, got {self.steps}.")
        _check_scale("scale", self.scale, positive=True)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if not eqx.tree_equal(operator.in_structure(), operator.out_structure()):
            raise ValueError(
                "`Neumann` needs a square operator (input and output structures equal)."
            )
        if self.steps == 0:
            # The identity approximation never touches the operator: don't linearise it
            # (that would evaluate the residual's Jacobian machinery for nothing).
            return operator
        # Linearise once so that the k products reuse one linearisation.
        return lx.linearise(operator)

    def compute(
        self, state: _NeumannState, vector: PyTree[Array], options: dict[str, Any]
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        operator = state
        sign = -1.0 if self.negative else 1.0
        # The series for (sign * A)^{-1}, run by Horner's rule:
        # x <- scale * b + (I - scale * sign * A) x, starting from x = scale * b.
        scaled_b = jtu.tree_map(lambda b: self.scale * b, vector)

        def horner(_, x):
            ax = operator.mv(x)
            return jtu.tree_map(
                lambda sb, xi, axi: sb + xi - (sign * self.scale) * axi,
                scaled_b,
                x,
                ax,
            )

        solution = scaled_b
        if self.steps > 0:
            solution = jax.lax.fori_loop(0, self.steps, horner, scaled_b)
        solution = jtu.tree_map(lambda x: sign * x, solution)
        stats = {"num_steps": jnp.array(self.steps), "max_steps": self.steps}
        return solution, lx.RESULTS.successful, stats

    def transpose(self, state: _NeumannState, options: dict[str, Any]):
        # A polynomial in A transposes to the same polynomial in A^T.
        return state.transpose(), options

    def conj(self, state: _NeumannState, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True


Neumann.__init__.__doc__ = r"""**Arguments:**

- `steps`: the number $k \geq 0$ of terms after the first; the solve costs $k$
    matrix-vector products. `steps=0` is the identity approximation $\alpha I$.
- `scale`: the step size $\alpha > 0$. For a symmetric positive definite Hessian, choose
    $\alpha < 1/\lambda_{\max}$; for a fixed-point residual (with `negative=True`),
    $\alpha = 1$ gives the value-iteration series.
- `negative`: set when the operator's spectrum lies in the left half-plane, as for any
    fixed-point residual $T(y) - y$ with a contraction $T$.
"""


class _AbstractWrapper(lx.AbstractLinearSolver):
    """A solver that runs another, `solver`, changing one step of it."""

    solver: eqx.AbstractVar[lx.AbstractLinearSolver]

    def init(self, operator, options):
        return self.solver.init(operator, options)

    def compute(self, state, vector, options):
        return self.solver.compute(state, vector, options)

    def transpose(self, state, options):
        return self.solver.transpose(state, options)

    def conj(self, state, options):
        return self.solver.conj(state, options)

    def assume_full_rank(self) -> bool:
        return self.solver.assume_full_rank()


class Damped(_AbstractWrapper):
    r"""Solve $(A + \lambda I)x = b$ with another solver, keeping $A$'s tags.

    Damping regularises a Hessian that is only positive *semi*-definite (singular: a
    network's Bellman loss at a minimum, flat along its ReLU rescalings), as the paper's
    CG adjoint did with $\lambda = 10^{-5}$. It does not make an indefinite Hessian (a
    network's loss away from its minimum) definite: [`omdx.TruncatedCG`][] handles that.
    """

    solver: lx.AbstractLinearSolver
    damping: float | Array

    def __check_init__(self):
        if not isinstance(self.solver, lx.AbstractLinearSolver):
            raise TypeError(
                "`solver` must be a `lineax.AbstractLinearSolver`, got "
                f"{type(self.solver).__name__}."
            )
        _check_scale("damping", self.damping, positive=False)

    def _damp(self, operator: lx.AbstractLinearOperator) -> lx.AbstractLinearOperator:
        tags = set()
        if lx.is_symmetric(operator):
            tags.add(lx.symmetric_tag)
        if lx.is_positive_semidefinite(operator):
            tags.add(lx.positive_semidefinite_tag)
        structure = operator.in_structure()
        identity = lx.IdentityLinearOperator(structure)
        # Match the operator's dtype: a Python float under x64 would promote a float32
        # operator to float64 and break Lineax's structure check.
        dtype = jnp.result_type(*[s.dtype for s in jtu.tree_leaves(structure)])
        damped = lx.linearise(operator) + jnp.asarray(self.damping, dtype) * identity
        return lx.TaggedLinearOperator(damped, frozenset(tags))

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        return self.solver.init(self._damp(operator), options)


Damped.__init__.__doc__ = r"""**Arguments:**

- `solver`: the Lineax solver that solves the damped system.
- `damping`: $\lambda \geq 0$, added to the diagonal of the operator.
"""


class _FixedBudget(_AbstractWrapper):
    """Another solver run as a fixed budget: its iterate is the answer, whatever its own
    convergence test says.

    Lineax's GMRES with zero tolerances never counts as converged, so when it solves a
    system exactly within the budget the next Krylov vector breaks down and it reports
    failure, which Lineax raises inside `jax.grad`. The iterate it returns is then
    the exact solution. A non-finite iterate still reports the solver's own failure.
    """

    solver: lx.AbstractLinearSolver

    def compute(self, state, vector, options):
        solution, result, stats = self.solver.compute(state, vector, options)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(solution)]))
        return solution, lx.RESULTS.where(finite, lx.RESULTS.successful, result), stats


_TruncatedCGState: TypeAlias = lx.AbstractLinearOperator


class TruncatedCG(lx.AbstractLinearSolver[_TruncatedCGState]):
    r"""Conjugate gradient with a fixed budget, safe on indefinite Hessians.

    Runs at most `steps` CG iterations on $(A + \lambda I)x = b$ from $x_0 = 0$, and stops
    early when the residual vanishes or when it meets a direction of non-positive
    curvature ($p^\top (A + \lambda I) p \leq 0$), returning the iterate reached so far: the
    truncated CG of Newton-CG and Steihaug's method. The Hessian of a network's Bellman loss
    away from its minimum is often indefinite, and `lineax.CG` can break down there
    (dividing by a curvature near zero, or missing its tolerance within its steps, which
    raises inside `jax.grad`); this solver does not. It reports success whatever happens
    (a fixed budget spent by design must not raise inside `jax.grad`); `stats` hold
    `num_steps` and `negative_curvature`.

    This is the paper's "inverse Jacobian" adjoint (100 iterations, $\lambda = 10^{-5}$).
    The operator must be symmetric: use it with `solve_inner(..., symmetric=True)`.
    """

    steps: int = eqx.field(static=True)
    damping: float | Array = 0.0

    def __check_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"`steps` must be a positive int, got {self.steps!r}.")
        _check_scale("damping", self.damping, positive=False)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if not lx.is_symmetric(operator):
            raise ValueError(
                "`TruncatedCG` needs a symmetric operator: pass `symmetric=True` to "
                "`omdx.solve_inner` (for a gradient residual)."
            )
        return lx.linearise(operator)

    def compute(self, state, vector, options):
        del options
        operator = state
        dot = _tree_dot

        def matvec(p):
            ap = operator.mv(p)
            return jtu.tree_map(lambda a, q: a + self.damping * q, ap, p)

        zero = jtu.tree_map(jnp.zeros_like, vector)
        rr = dot(vector, vector)
        tiny = jnp.finfo(rr.dtype).tiny

        def cond(carry):
            _, _, _, rr, step, active, _ = carry
            return active & (step < self.steps) & (rr > tiny)

        def body(carry):
            x, r, p, rr, step, _, _ = carry
            ap = matvec(p)
            curvature = dot(p, ap)
            positive = curvature > tiny * dot(p, p)
            alpha = jnp.where(positive, rr / jnp.where(positive, curvature, 1.0), 0.0)
            x = jtu.tree_map(lambda xi, pi: xi + alpha * pi, x, p)
            r = jtu.tree_map(lambda ri, api: ri - alpha * api, r, ap)
            rr_new = dot(r, r)
            beta = jnp.where(positive, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
            p = jtu.tree_map(lambda ri, pi: ri + beta * pi, r, p)
            step = step + jnp.where(positive, 1, 0)
            return x, r, p, rr_new, step, positive, ~positive

        init = (zero, vector, vector, rr, jnp.array(0), jnp.array(True), jnp.array(False))
        x, _, _, _, num_steps, _, negative_curvature = jax.lax.while_loop(cond, body, init)
        stats = {
            "num_steps": num_steps,
            "max_steps": self.steps,
            "negative_curvature": negative_curvature,
        }
        return x, lx.RESULTS.successful, stats

    def transpose(self, state, options):
        return state.transpose(), options

    def conj(self, state, options):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True


TruncatedCG.__init__.__doc__ = r"""**Arguments:**

- `steps`: the most CG iterations ($\geq 1$); each costs one Hessian-vector product.
- `damping`: $\lambda \geq 0$ added to the diagonal (the paper used $10^{-5}$).
"""


def _tree_dot(a, b):
    leaves = [jnp.vdot(x, y) for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b))]
    return jnp.real(sum(leaves))


def truncated_cg(steps: int = 100, damping: float = 0.0) -> TruncatedCG:
    r"""A fixed-budget CG adjoint: [`omdx.TruncatedCG`][]`(steps, damping)`. The paper's is
    `truncated_cg(100, 1e-5)`.

    **Arguments:**

    - `steps`: the most CG iterations ($\geq 1$).
    - `damping`: $\lambda \geq 0$ added to the diagonal.

    **Returns:**

    An [`omdx.TruncatedCG`][].
    """
    return TruncatedCG(steps, damping)


def _uses_cg(solver: lx.AbstractLinearSolver) -> bool:
    while isinstance(solver, Damped):
        solver = solver.solver
    return isinstance(solver, (lx.CG, TruncatedCG))


def default_tolerance(dtype) -> float:
    """Tolerance of the iterative adjoints named by string, by floating-point precision."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def resolve_adjoint(
    adjoint: AdjointName | lx.AbstractLinearSolver | None,
    *,
    symmetric: bool,
    dtype=jnp.float32,
) -> lx.AbstractLinearSolver:
    r"""Turn an adjoint name (or solver) into the Lineax solver for the backward pass.

    **Arguments:**

    - `adjoint`: `None` (the default for the residual type: `"cg"` when `symmetric`,
        `"direct"` otherwise), one of `"direct"`, `"gmres"`, `"cg"`, `"neumann"`,
        `"identity"`, or any `lineax.AbstractLinearSolver`. `"neumann"` is
        [`omdx.Neumann`][]`(50)` with scale $\alpha = 1$, which converges only when the
        Jacobian's eigenvalues lie in $(0, 2)$ (for `symmetric=False`, those of its
        negative): for a Hessian with larger ones it diverges, so pass
        `omdx.Neumann(k, scale=alpha)` with $\alpha < 2/\lambda_{\max}$ (and check it with
        [`omdx.adjoint_diagnostics`][]). `"identity"` is `Neumann(0)`, $\pm I$.
    - `symmetric`: whether the residual is a gradient, so that its Jacobian is a
        symmetric Hessian (positive semidefinite for a convex loss or near a minimum,
        often indefinite for a network's loss away from it). It also fixes the sign convention
        of `"neumann"` and `"identity"`: a Hessian for `symmetric=True`, a fixed-point
        residual $T(y) - y$ (with Jacobian near $-I$) for `symmetric=False`.
    - `dtype`: the floating-point type of the problem, which sets the tolerance of
        `"gmres"` and `"cg"` (`1e-10` in float64, `1e-5` otherwise).

    **Returns:**

    A `lineax.AbstractLinearSolver`.
    """
    if adjoint is None:
        adjoint = "cg" if symmetric else "direct"
    if isinstance(adjoint, str):
        tol = default_tolerance(dtype)
        if adjoint == "direct":
            return lx.LU()
        if adjoint == "gmres":
            return lx.GMRES(rtol=tol, atol=tol)
        if adjoint == "cg":
            if not symmetric:
                raise ValueError(
                    '`adjoint="cg"` needs a symmetric positive semidefinite Jacobian: '
                    "pass `symmetric=True` (for a gradient residual), or choose "
                    '"direct", "gmres" or "neumann" for a general residual.'
                )
            return lx.CG(rtol=tol, atol=tol)
        if adjoint == "neumann":
            return Neumann(DEFAULT_NEUMANN_STEPS, 1.0, negative=not symmetric)
        if adjoint == "identity":
            return Neumann(0, 1.0, negative=not symmetric)
        raise ValueError(
            f"Unknown `adjoint` {adjoint!r}: expected one of {ADJOINT_NAMES} or a "
            "`lineax.AbstractLinearSolver`."
        )
    if isinstance(adjoint, lx.AbstractLinearSolver):
        if _uses_cg(adjoint) and not symmetric:
            raise ValueError(
                "A CG `adjoint` needs a symmetric positive semidefinite Jacobian: pass "
                "`symmetric=True`, or use GMRES / LU / Neumann for a general residual."
            )
        return adjoint
    raise TypeError(
        f"`adjoint` must be None, one of {ADJOINT_NAMES}, or a "
        f"`lineax.AbstractLinearSolver`; got {type(adjoint).__name__}."
    )
