"""The Neumann solver: series value, transpose, jvp/vjp agreement, string resolution."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import omdx


def contraction_operator(key, n, radius=0.5):
    m = jax.random.normal(key, (n, n))
    m = radius * m / jnp.max(jnp.abs(jnp.linalg.eigvals(m)))
    return m


def test_neumann_series_value(getkey):
    n = 5
    m = contraction_operator(getkey(), n)
    a = jnp.eye(n) - m  # spectrum near 1
    b = jax.random.normal(getkey(), (n,))
    op = lx.MatrixLinearOperator(a)
    for steps in [0, 1, 7]:
        x = lx.linear_solve(op, b, omdx.Neumann(steps, 1.0)).value
        expected = sum(np.linalg.matrix_power(np.asarray(m), i) @ b for i in range(steps + 1))
        assert np.allclose(x, expected, rtol=1e-12)
    x = lx.linear_solve(op, b, omdx.Neumann(200, 1.0)).value
    assert np.allclose(x, jnp.linalg.solve(a, b), rtol=1e-10)
    # scale: alpha * sum (I - alpha A)^i b
    alpha = 0.3
    x = lx.linear_solve(op, b, omdx.Neumann(3, alpha)).value
    step = np.eye(n) - alpha * np.asarray(a)
    expected = alpha * sum(np.linalg.matrix_power(step, i) @ b for i in range(4))
    assert np.allclose(x, expected, rtol=1e-12)


def test_neumann_negative_is_series_on_minus_a(getkey):
    n = 4
    m = contraction_operator(getkey(), n)
    a = m - jnp.eye(n)  # a fixed-point Jacobian J_T - I
    b = jax.random.normal(getkey(), (n,))
    x = lx.linear_solve(lx.MatrixLinearOperator(a), b, omdx.Neumann(300, 1.0, negative=True))
    assert np.allclose(x.value, jnp.linalg.solve(a, b), rtol=1e-10)
    x0 = lx.linear_solve(lx.MatrixLinearOperator(a), b, omdx.Neumann(0, 1.0, negative=True))
    assert np.allclose(x0.value, -b)


@pytest.mark.parametrize("negative", [False, True])
def test_neumann_transpose_matches_transposed_operator(negative, getkey):
    n = 6
    m = contraction_operator(getkey(), n)
    a = (m - jnp.eye(n)) if negative else (jnp.eye(n) - m)
    op = lx.MatrixLinearOperator(a)
    solver = omdx.Neumann(9, 0.8, negative=negative)
    b = jax.random.normal(getkey(), (n,))
    state_t, options_t = solver.transpose(solver.init(op, {}), {})
    x_t, _, _ = solver.compute(state_t, b, options_t)
    x_direct, _, _ = solver.compute(solver.init(op.transpose(), {}), b, {})
    assert np.allclose(x_t, x_direct, rtol=1e-12)

    # Linear transpose of the solve, through Lineax's transpose rule.
    def solve(v):
        return lx.linear_solve(op, v, solver).value

    (x_lt,) = jax.linear_transpose(solve, b)(b)
    assert np.allclose(x_lt, x_direct, rtol=1e-12)
    # The matrix of the approximate inverse, transposed, is the transposed solve's matrix.
    forward_matrix = jax.vmap(solve)(jnp.eye(n)).T
    transposed_matrix = jax.vmap(lambda v: lx.linear_solve(op.T, v, solver).value)(jnp.eye(n)).T
    assert np.allclose(forward_matrix.T, transposed_matrix, rtol=1e-12)


def test_neumann_jvp_and_vjp_agree(getkey):
    n = 5
    a = jnp.eye(n) - contraction_operator(getkey(), n)
    solver = omdx.Neumann(6, 0.9)

    def fn(theta):
        b = jnp.sin(theta) * jnp.arange(1.0, n + 1)
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, solver).value

    theta = jax.random.normal(getkey(), (n,))
    u = jax.random.normal(getkey(), (n,))
    v = jax.random.normal(getkey(), (n,))
    _, jvp_v = jax.jvp(fn, (theta,), (v,))
    _, vjp = jax.vjp(fn, theta)
    (vjp_u,) = vjp(u)
    assert np.allclose(jnp.dot(u, jvp_v), jnp.dot(vjp_u, v), rtol=1e-12)


def test_neumann_works_on_pytrees(getkey):
    a = jnp.eye(3) - contraction_operator(getkey(), 3)

    def fn(tree):
        return {"x": 0.5 * tree["x"], "y": a @ tree["y"]}

    structure = {
        "x": jax.ShapeDtypeStruct((2,), jnp.float64),
        "y": jax.ShapeDtypeStruct((3,), jnp.float64),
    }
    op = lx.FunctionLinearOperator(fn, structure)
    b = {"x": jnp.ones(2), "y": jnp.ones(3)}
    x = lx.linear_solve(op, b, omdx.Neumann(400, 1.0)).value
    assert np.allclose(x["x"], 2.0)
    assert np.allclose(x["y"], jnp.linalg.solve(a, jnp.ones(3)), rtol=1e-10)


def test_resolve_adjoint_names():
    assert isinstance(omdx.resolve_adjoint(None, symmetric=False), lx.LU)
    assert isinstance(omdx.resolve_adjoint(None, symmetric=True), lx.CG)
    assert isinstance(omdx.resolve_adjoint("gmres", symmetric=False), lx.GMRES)
    identity = omdx.resolve_adjoint("identity", symmetric=False)
    assert identity.steps == 0 and identity.negative
    identity = omdx.resolve_adjoint("identity", symmetric=True)
    assert identity.steps == 0 and not identity.negative
    assert omdx.resolve_adjoint("neumann", symmetric=True).steps > 0
    custom = omdx.Neumann(3, 0.1)
    assert omdx.resolve_adjoint(custom, symmetric=True) is custom
