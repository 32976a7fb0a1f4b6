"""`omdx.SmallLU` / `omdx.small_solve`: the unrolled direct solver, against LAPACK."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import omdx

from .helpers import finite_difference_grad


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_small_solve_matches_lapack(n, getkey):
    matrix = jax.random.normal(getkey(), (n, n))
    vector = jax.random.normal(getkey(), (n,))
    np.testing.assert_allclose(
        omdx.small_solve(matrix, vector), jnp.linalg.solve(matrix, vector), rtol=1e-10, atol=1e-12
    )


def test_small_solve_pivots():
    # A zero leading entry: elimination without row exchanges would divide by zero.
    matrix = jnp.array([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    vector = jnp.array([1.0, 2.0, 3.0])
    x = omdx.small_solve(matrix, vector)
    np.testing.assert_allclose(matrix @ x, vector, atol=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(np.asarray(matrix), np.asarray(vector)))
    # Integers are solved in floating point, not eliminated in integer arithmetic.
    x = omdx.small_solve(matrix.astype(int), vector.astype(int))
    assert jnp.issubdtype(x.dtype, jnp.floating)
    np.testing.assert_allclose(x, np.linalg.solve(np.asarray(matrix), np.asarray(vector)))


def test_small_solve_batched_and_differentiable(getkey):
    matrices = jax.random.normal(getkey(), (16, 4, 4)) + 3 * jnp.eye(4)
    vectors = jax.random.normal(getkey(), (16, 4))
    batched = jax.vmap(omdx.small_solve)(matrices, vectors)
    np.testing.assert_allclose(batched, jnp.linalg.solve(matrices, vectors[..., None])[..., 0])

    def loss(matrix):
        return jnp.sum(jnp.sin(omdx.small_solve(matrix, vectors[0])))

    grad = jax.grad(loss)(matrices[0])
    np.testing.assert_allclose(grad, finite_difference_grad(loss, matrices[0]), rtol=1e-6)


def test_small_lu_is_a_lineax_solver(getkey):
    matrix = jax.random.normal(getkey(), (5, 5)) + 2 * jnp.eye(5)
    structure = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float64),
        "b": jax.ShapeDtypeStruct((3,), jnp.float64),
    }
    operator = lx.FunctionLinearOperator(
        lambda y: _split(matrix @ jnp.concatenate([y["a"], y["b"]])), structure
    )
    vector = {"a": jax.random.normal(getkey(), (2,)), "b": jax.random.normal(getkey(), (3,))}
    ours = lx.linear_solve(operator, vector, omdx.SmallLU()).value
    lapack = lx.linear_solve(operator, vector, lx.LU()).value
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-10), ours, lapack)

    # Reverse mode goes through `transpose`: gradients with respect to the operator agree.
    def loss(m, solver):
        op = lx.MatrixLinearOperator(m)
        return jnp.sum(lx.linear_solve(op, jnp.arange(5.0), solver).value ** 2)

    np.testing.assert_allclose(
        jax.grad(loss)(matrix, omdx.SmallLU()), jax.grad(loss)(matrix, lx.LU()), rtol=1e-9
    )


def test_small_lu_bad_input():
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.ones((2, 3))), jnp.ones(2), omdx.SmallLU())
    with pytest.raises(ValueError, match="at most 32"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.eye(40)), jnp.ones(40), omdx.SmallLU())
    with pytest.raises(ValueError, match="`matrix`"):
        omdx.small_solve(jnp.ones((2, 3)), jnp.ones(2))


def _split(x):
    return {"a": x[:2], "b": x[2:]}
