"""`GradientSteps`: K Optax steps as a root finder, warm starts, never throwing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import omdx

from .helpers import finite_difference_grad, relative_error


def loss(y, args):
    return jnp.sum((args["a"] @ y - args["b"]) ** 2) + 0.1 * jnp.sum(y**2)


def gradient(y, args):
    return jax.grad(loss)(y, args)


def make_args(key, n=4):
    k1, k2 = jax.random.split(key)
    return {"a": jax.random.normal(k1, (n, n)), "b": jax.random.normal(k2, (n,))}


def test_k_steps_equal_manual_optax_loop(getkey):
    args = make_args(getkey())
    y0 = jax.random.normal(getkey(), (4,))
    optim = optax.adam(0.05)
    for k in [0, 1, 3, 10]:
        sol = omdx.solve_inner(
            gradient, y0, args, solver=omdx.GradientSteps(optim, k), symmetric=True
        )
        y, state = y0, optim.init(y0)
        for _ in range(k):
            updates, state = optim.update(gradient(y, args), state, y)
            y = optax.apply_updates(y, updates)
        assert np.allclose(sol.value, y, rtol=1e-12)
        assert int(sol.stats["num_gradient_steps"]) == k
        assert sol.result == omdx.solve_inner.__globals__["optx"].RESULTS.successful


def test_traced_step_counts_vmap_together(getkey):
    # `steps` as an integer array: runs with different K in one vmap, each stopping at its
    # own K, value and implicit gradient as the static-K solves give them.
    args = make_args(getkey())
    y0 = jax.random.normal(getkey(), (4,))
    optim = optax.adam(0.05)

    def solved(k, b):
        sol = omdx.solve_inner(
            gradient,
            y0,
            {"a": args["a"], "b": b},
            solver=omdx.GradientSteps(optim, k),
            symmetric=True,
            max_steps=None if isinstance(k, jax.Array) else max(k, 1),
            adjoint="direct",
        )
        return sol.value, sol.stats["num_gradient_steps"]

    def outer(k, b):
        return jnp.sum(solved(k, b)[0] ** 2)

    ks = jnp.array([0, 3])
    values, counts = jax.vmap(solved, in_axes=(0, None))(ks, args["b"])
    grads = jax.vmap(jax.grad(outer, argnums=1), in_axes=(0, None))(ks, args["b"])
    np.testing.assert_array_equal(counts, ks)
    for i, k in enumerate([0, 3]):
        np.testing.assert_allclose(values[i], solved(k, args["b"])[0], rtol=1e-12)
        np.testing.assert_allclose(grads[i], jax.grad(outer, argnums=1)(k, args["b"]), rtol=1e-12)
    with pytest.raises(ValueError, match="`steps` must be a scalar integer array"):
        omdx.GradientSteps(optim, jnp.array(1.5))


def test_opt_state_continues_across_calls(getkey):
    args = make_args(getkey())
    y0 = jax.random.normal(getkey(), (4,))
    solver = omdx.GradientSteps(optax.adam(0.05), 1)
    y, opt_state = y0, None
    for _ in range(3):
        sol = omdx.solve_inner(
            gradient, y, args, solver=solver, symmetric=True, options={"opt_state": opt_state}
        )
        y, opt_state = sol.value, sol.state.opt_state
    three = omdx.solve_inner(
        gradient, y0, args, solver=omdx.GradientSteps(optax.adam(0.05), 3), symmetric=True
    )
    assert np.allclose(y, three.value, rtol=1e-12)


def test_never_throws_and_converges_with_many_steps(getkey):
    args = make_args(getkey())
    y0 = jnp.zeros(4)
    few = omdx.solve_inner(
        gradient, y0, args, solver=omdx.GradientSteps(optax.sgd(0.01), 2), symmetric=True
    )
    assert not bool(few.stats["converged"])
    many = omdx.solve_inner(
        gradient,
        y0,
        args,
        solver=omdx.GradientSteps(optax.sgd(0.02), 5000, atol=1e-10),
        symmetric=True,
        max_steps=5000,
    )
    assert bool(many.stats["converged"])
    assert float(jnp.linalg.norm(gradient(many.value, args))) < 1e-9


def test_implicit_gradient_through_converged_steps_matches_fd(getkey):
    args = make_args(getkey(), n=3)
    target = jnp.array([1.0, -1.0, 0.5])

    def outer(a):
        sol = omdx.solve_inner(
            gradient,
            jnp.zeros(3),
            a,
            solver=omdx.GradientSteps(optax.sgd(0.02), 20000, atol=1e-12),
            symmetric=True,
            adjoint="direct",
            max_steps=20000,
        )
        return jnp.sum((sol.value - target) ** 2)

    grad = jax.grad(outer)(args)
    expected = finite_difference_grad(jax.jit(outer), args, eps=1e-5)
    assert relative_error(grad, expected) < 1e-5


def test_vmap_over_problems(getkey):
    keys = jax.random.split(getkey(), 3)
    batch = jax.vmap(make_args)(keys)
    solver = omdx.GradientSteps(optax.adam(0.1), 4)

    def solve(a):
        return omdx.solve_inner(gradient, jnp.zeros(4), a, solver=solver, symmetric=True).value

    vmapped = jax.vmap(solve)(batch)
    for i in range(3):
        assert np.allclose(vmapped[i], solve(jax.tree.map(lambda x: x[i], batch)), rtol=1e-12)
