"""A direct solver for small systems solved many at once (tabular MDPs, vmapped grids)."""

from typing import Any, TypeAlias

import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree


_SmallLUState: TypeAlias = tuple[Float[Array, "n n"], lx.AbstractLinearOperator]

# SmallLU's hard limit: beyond it the unrolled elimination takes too long to compile.
MAX_SMALL_LU_SIZE = 32
# Where `direct_solver` switches to LAPACK: the unrolled elimination compiles in time growing
# with n^2 (about 2 s at n = 8, 5 s at 16, 14 s at 32 for a gradient, against under 1 s
# for `lineax.LU`), so it pays only for small systems solved in large vmapped batches.
DIRECT_SMALL_LU_SIZE = 16


def small_solve(matrix: Float[Array, "n n"], vector: Float[Array, " n"]) -> Float[Array, " n"]:
    """Solve `matrix @ x = vector` by Gaussian elimination with partial pivoting, unrolled.

    Every step is an elementwise JAX operation, so under `jax.vmap` a batch of systems is
    solved by vector instructions over the batch. LAPACK (`jnp.linalg.solve`, `lx.LU`)
    instead loops over the batch one small factorisation at a time, which on CPU costs
    about as much per system as the solve itself.

    **Arguments:**

    - `matrix`: a square `(n, n)` array, `n` at most 32.
    - `vector`: the right-hand side, `(n,)`.

    **Returns:**

    The solution `x`, `(n,)`. A singular matrix gives non-finite values, as LAPACK does.
    """
    n = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape != (n, n) or vector.shape != (n,):
        raise ValueError(
            f"`matrix` must be square (n, n) and `vector` (n,), got {matrix.shape} and "
            f"{vector.shape}."
        )
    if n > MAX_SMALL_LU_SIZE:
        raise ValueError(f"`small_solve` is for n <= {MAX_SMALL_LU_SIZE}, got n = {n}.")
    dtype = jnp.result_type(matrix, vector)
    if not jnp.issubdtype(dtype, jnp.inexact):  # integers: eliminate in floating point
        dtype = jnp.result_type(dtype, float)
    a = jnp.concatenate([matrix, vector[:, None]], axis=1).astype(dtype)
    rows = jnp.arange(n)
    for k in range(n):
        # Partial pivoting: swap row k with the row below holding the largest |a[., k]|.
        pivot = k + jnp.argmax(jnp.abs(a[k:, k]))
        row_k, row_pivot = a[k], a[pivot]
        a = jnp.where((rows == k)[:, None], row_pivot, a)
        a = jnp.where((rows == pivot)[:, None] & (pivot != k), row_k, a)
        if k + 1 < n:
            factors = a[k + 1 :, k] / a[k, k]
            a = a.at[k + 1 :].add(-factors[:, None] * a[k])
    x = [None] * n
    for k in reversed(range(n)):
        total = a[k, n]
        for j in range(k + 1, n):
            total = total - a[k, j] * x[j]
        x[k] = total / a[k, k]
    return jnp.stack(x)


class SmallLU(lx.AbstractLinearSolver[_SmallLUState]):
    """A direct solver for small square systems, fast under `jax.vmap` on CPU.

    The same answer as `lineax.LU` (Gaussian elimination with partial pivoting), written
    out as elementwise operations (see [`omdx.small_solve`][]) instead of a LAPACK call.
    Use it for the Newton steps and the adjoint of tabular problems with up to a few
    dozen unknowns when many are solved at once: the whole grid of the tabular studies
    runs several times faster with it. For larger systems use `lineax.LU`.
    """

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if operator.in_size() != operator.out_size():
            raise ValueError(
                f"`SmallLU` needs a square operator, got {operator.out_size()} x "
                f"{operator.in_size()}."
            )
        if operator.in_size() > MAX_SMALL_LU_SIZE:
            raise ValueError(
                f"`SmallLU` is for systems of at most {MAX_SMALL_LU_SIZE} unknowns, got "
                f"{operator.in_size()}; use `lineax.LU()`."
            )
        return operator.as_matrix(), operator

    def compute(
        self, state: _SmallLUState, vector: PyTree[Array], options: dict[str, Any]
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        matrix, operator = state
        flat_vector, _ = ravel_pytree(vector)
        zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), operator.in_structure())
        _, unravel = ravel_pytree(zeros)
        return unravel(small_solve(matrix, flat_vector)), lx.RESULTS.successful, {}

    def transpose(self, state: _SmallLUState, options: dict[str, Any]):
        matrix, operator = state
        return (matrix.T, operator.transpose()), options

    def conj(self, state: _SmallLUState, options: dict[str, Any]):
        matrix, operator = state
        return (jnp.conj(matrix), lx.conj(operator)), options

    def assume_full_rank(self) -> bool:
        return True


SmallLU.__init__.__doc__ = """**Arguments:** none."""


def direct_solver(size: int) -> lx.AbstractLinearSolver:
    """The direct solver for a system of `size` unknowns: `SmallLU` up to 16, else LU."""
    return SmallLU() if size <= DIRECT_SMALL_LU_SIZE else lx.LU()
