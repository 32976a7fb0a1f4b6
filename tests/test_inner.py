"""`solve_inner` against finite differences, closed forms, vmap/jit and bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import optimistix as optx
import pytest

import omdx

from .helpers import finite_difference_grad, relative_error, tree_allclose


TAU = 0.5  # smooth enough that central differences are accurate to ~1e-9


def soft_bellman_residual(q, args):
    """B^theta Q - Q for a model (transition logits, rewards) and a discount."""
    logits, reward, gamma = args["logits"], args["reward"], args["gamma"]
    p = jax.nn.softmax(logits, axis=-1)  # [A, S, S']
    v = TAU * jax.scipy.special.logsumexp(q / TAU, axis=1)  # [S]
    return reward + gamma * jnp.einsum("ast,t->sa", p, v) - q


def expected_return(q, true_mdp):
    """Exact J of softmax(Q/TAU) in a true MDP (P [A,S,S'], r [S,A], gamma, mu)."""
    p, r, gamma, mu = true_mdp
    pi = jax.nn.softmax(q / TAU, axis=1)  # [S, A]
    p_pi = jnp.einsum("sa,ast->st", pi, p)
    r_pi = jnp.sum(pi * r, axis=1)
    v = jnp.linalg.solve(jnp.eye(p.shape[1]) - gamma * p_pi, r_pi)
    return mu @ v


def random_problem(key, n_states, n_actions, gamma):
    keys = jax.random.split(key, 4)
    model = {
        "logits": jax.random.normal(keys[0], (n_actions, n_states, n_states)),
        "reward": jax.random.normal(keys[1], (n_states, n_actions)),
        "gamma": jnp.asarray(gamma),
    }
    true_p = jax.nn.softmax(2 * jax.random.normal(keys[2], (n_actions, n_states, n_states)))
    true_r = jax.random.normal(keys[3], (n_states, n_actions))
    mu = jnp.full(n_states, 1.0 / n_states)
    return model, (true_p, true_r, gamma, mu)


NEWTON = optx.Newton(rtol=1e-13, atol=1e-13)


def make_objective(true_mdp, adjoint, n_states, n_actions):
    def objective(params, gamma):
        args = dict(params, gamma=gamma)
        sol = omdx.solve_inner(
            soft_bellman_residual,
            jnp.zeros((n_states, n_actions)),
            args,
            solver=NEWTON,
            adjoint=adjoint,
        )
        return expected_return(sol.value, true_mdp)

    return jax.jit(objective)


PROBLEMS = [(2, 2, 0.5), (5, 3, 0.9), (8, 4, 0.99)]


def _exact_adjoints(gamma):
    steps = int(np.ceil(np.log(1e-13) / np.log(gamma)))
    return ["direct", "gmres", omdx.Neumann(steps, 1.0, negative=True)]


@pytest.mark.parametrize("n_states,n_actions,gamma", PROBLEMS)
def test_exact_adjoints_match_finite_differences(n_states, n_actions, gamma, getkey):
    model, true_mdp = random_problem(getkey(), n_states, n_actions, gamma)
    params = {"logits": model["logits"], "reward": model["reward"]}
    fd_objective = make_objective(true_mdp, "direct", n_states, n_actions)
    expected = finite_difference_grad(lambda p: fd_objective(p, model["gamma"]), params)
    for adjoint in _exact_adjoints(gamma):
        objective = make_objective(true_mdp, adjoint, n_states, n_actions)
        grad = jax.grad(objective)(params, model["gamma"])
        assert relative_error(grad, expected) < 1e-6, adjoint


@pytest.mark.parametrize("n_states,n_actions,gamma", PROBLEMS[1:2])
def test_identity_adjoint_matches_closed_form(n_states, n_actions, gamma, getkey):
    # With (df/dy)^{-1} ~ -I the implicit gradient is (df/dtheta)^T ybar + dO/dtheta.
    model, true_mdp = random_problem(getkey(), n_states, n_actions, gamma)
    params = {"logits": model["logits"], "reward": model["reward"]}
    grad = jax.grad(make_objective(true_mdp, "identity", n_states, n_actions))(
        params, model["gamma"]
    )
    args = dict(params, gamma=model["gamma"])
    q_star = omdx.solve_inner(
        soft_bellman_residual, jnp.zeros((n_states, n_actions)), args, solver=NEWTON
    ).value
    y_bar = jax.grad(expected_return)(q_star, true_mdp)
    _, residual_vjp = jax.vjp(lambda p: soft_bellman_residual(q_star, dict(p, gamma=gamma)), params)
    (closed_form,) = residual_vjp(y_bar)
    assert relative_error(grad, closed_form) < 1e-10
    # And it is not the exact gradient (otherwise this test could not fail).
    exact = jax.grad(make_objective(true_mdp, "direct", n_states, n_actions))(
        params, model["gamma"]
    )
    assert relative_error(grad, exact) > 1e-3


def quadratic_gradient(y, args):
    """Gradient of 0.5 y^T H y - b^T y with H = L L^T + I: symmetric positive definite."""
    h = args["l"] @ args["l"].T + jnp.eye(args["l"].shape[0])
    return h @ y - args["b"]


def test_cg_matches_direct_on_symmetric_problem(getkey):
    n = 6
    args = {"l": jax.random.normal(getkey(), (n, n)), "b": jax.random.normal(getkey(), (n,))}
    target = jax.random.normal(getkey(), (n,))

    def loss(a, adjoint):
        sol = omdx.solve_inner(
            quadratic_gradient, jnp.zeros(n), a, solver=NEWTON, adjoint=adjoint, symmetric=True
        )
        return jnp.sum((sol.value - target) ** 2)

    direct = jax.grad(loss)(args, "direct")
    for adjoint in ["cg", omdx.truncated_cg(steps=4 * n), omdx.Damped(lx.CG(1e-12, 1e-12), 0.0)]:
        assert relative_error(jax.grad(loss)(args, adjoint), direct) < 1e-8
    expected = finite_difference_grad(lambda a: loss(a, "direct"), args)
    assert relative_error(direct, expected) < 1e-6


MINIMISERS = [
    optx.BFGS(rtol=1e-10, atol=1e-10),
    optx.LevenbergMarquardt(rtol=1e-10, atol=1e-10),
    optx.GaussNewton(rtol=1e-10, atol=1e-10),
]


def linear_bellman_residual(q, args):
    """B^theta Q - Q for a fixed policy's transitions: linear in Q, so that every solver,
    BFGS on the residual's norm included, reaches the root."""
    p, reward, gamma = args
    return reward + gamma * p @ q - q


@pytest.mark.parametrize("solver", MINIMISERS, ids=lambda s: type(s).__name__)
def test_minimisers_differentiate_the_residual_as_root_finders_do(solver, getkey):
    # Optimistix differentiates a minimiser's or least-squares solver's optimality
    # condition (of a norm of the residual), not the residual: BFGS's gradient came out
    # zero and the identity adjoint's sign flipped. `solve_inner` must give a root
    # finder's gradient, adjoint by adjoint, approximate adjoints included.
    n = 5
    p = jax.nn.softmax(jax.random.normal(getkey(), (n, n)))
    args = (p, jax.random.normal(getkey(), (n,)), jnp.asarray(0.9))
    problems = [(linear_bellman_residual, args, jnp.zeros(n))]
    if not isinstance(solver, optx.BFGS):  # it stalls on the norm of a nonlinear residual
        model, _ = random_problem(getkey(), 5, 3, 0.9)
        problems.append((soft_bellman_residual, model, jnp.zeros((5, 3))))
    for residual, problem_args, y0 in problems:

        def loss(a, inner_solver, adjoint):
            value = omdx.solve_inner(
                residual, y0, a, solver=inner_solver, adjoint=adjoint, max_steps=1000
            ).value
            return jnp.sum(jnp.sin(value))

        for adjoint in ["direct", "gmres", "neumann", "identity"]:
            grad = jax.grad(loss)(problem_args, solver, adjoint)
            reference = jax.grad(loss)(problem_args, NEWTON, adjoint)
            assert relative_error(grad, reference) < 1e-6, (residual.__name__, adjoint)
    # The symmetric case, whose tags CG needs.
    args = {"l": jax.random.normal(getkey(), (n, n)), "b": jax.random.normal(getkey(), (n,))}

    def quadratic_loss(a, inner_solver, adjoint):
        sol = omdx.solve_inner(
            quadratic_gradient,
            jnp.zeros(n),
            a,
            solver=inner_solver,
            adjoint=adjoint,
            symmetric=True,
            max_steps=1000,
        )
        return jnp.sum(jnp.sin(sol.value))

    for adjoint in ["cg", omdx.truncated_cg(steps=4 * n), "identity"]:
        grad = jax.grad(quadratic_loss)(args, solver, adjoint)
        reference = jax.grad(quadratic_loss)(args, NEWTON, adjoint)
        assert relative_error(grad, reference) < 1e-6, adjoint
    # The solution and its report are the solver's own.
    sol = omdx.solve_inner(
        quadratic_gradient, jnp.zeros(n), args, solver=solver, symmetric=True, max_steps=1000
    )
    assert sol.result == optx.RESULTS.successful and int(sol.stats["num_steps"]) > 1


@pytest.mark.parametrize(
    "solver",
    [NEWTON, optx.FixedPointIteration(rtol=1e-12, atol=1e-12), MINIMISERS[1]],
    ids=lambda s: type(s).__name__,
)
def test_closed_over_arrays_get_the_same_gradient_as_args(solver, getkey):
    # Optimistix converts closures, so an array the residual closes over is differentiated
    # through as one passed in `args`, for every kind of solver.
    a = jnp.array([[1.5, 0.2], [0.2, 1.2]])
    b = jax.random.normal(getkey(), (2,))

    def residual_of(b):  # y = 0.5 tanh(y) + b - (a - I) y: a contraction's fixed point
        return lambda y, args: b + 0.5 * jnp.tanh(y) - a @ y

    def via_closure(b):
        sol = omdx.solve_inner(residual_of(b), jnp.zeros(2), None, solver=solver, adjoint="direct")
        return jnp.sum(jnp.sin(sol.value))

    def via_args(b):
        sol = omdx.solve_inner(
            lambda y, b: residual_of(b)(y, None), jnp.zeros(2), b, solver=solver, adjoint="direct"
        )
        return jnp.sum(jnp.sin(sol.value))

    expected = finite_difference_grad(via_args, b)
    assert relative_error(jax.grad(via_args)(b), expected) < 1e-6
    assert relative_error(jax.grad(via_closure)(b), expected) < 1e-6
    assert relative_error(jax.jit(jax.grad(via_closure))(b), expected) < 1e-6


def test_truncated_cg_spends_budget_without_raising(getkey):
    n = 20
    args = {"l": jax.random.normal(getkey(), (n, n)), "b": jax.random.normal(getkey(), (n,))}

    def loss(a):
        sol = omdx.solve_inner(
            quadratic_gradient,
            jnp.zeros(n),
            a,
            solver=NEWTON,
            adjoint=omdx.truncated_cg(steps=2, damping=1e-5),
            symmetric=True,
        )
        return jnp.sum(sol.value**2)

    grad = jax.grad(loss)(args)  # two CG steps cannot converge on a 20-dim problem
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    exact = jax.grad(
        lambda a: jnp.sum(
            omdx.solve_inner(
                quadratic_gradient, jnp.zeros(n), a, solver=NEWTON, symmetric=True
            ).value
            ** 2
        )
    )(args)
    assert relative_error(grad, exact) > 1e-4


def test_fixed_point_iteration_solver(getkey):
    model, true_mdp = random_problem(getkey(), 4, 2, 0.9)
    q0 = jnp.zeros((4, 2))
    vi = omdx.solve_inner(
        soft_bellman_residual,
        q0,
        model,
        solver=optx.FixedPointIteration(rtol=1e-12, atol=1e-12),
        max_steps=2000,
    )
    newton = omdx.solve_inner(soft_bellman_residual, q0, model, solver=NEWTON)
    assert tree_allclose(vi.value, newton.value, rtol=1e-9, atol=1e-9)

    def objective(m, solver):
        sol = omdx.solve_inner(soft_bellman_residual, q0, m, solver=solver, max_steps=2000)
        return expected_return(sol.value, true_mdp)

    g_vi = jax.grad(objective)(model, optx.FixedPointIteration(rtol=1e-12, atol=1e-12))
    g_newton = jax.grad(objective)(model, NEWTON)
    assert relative_error(g_vi, g_newton) < 1e-7


def test_vmap_and_jit_match_loop(getkey):
    problems = [random_problem(getkey(), 3, 2, 0.9)[0] for _ in range(4)]
    batched = jax.tree.map(lambda *xs: jnp.stack(xs), *problems)
    y0s = jax.random.normal(getkey(), (4, 3, 2))

    def solve(y0, args):
        return omdx.solve_inner(soft_bellman_residual, y0, args, solver=NEWTON).value

    def grad_fn(y0, args):
        return jax.grad(lambda a: jnp.sum(jnp.sin(solve(y0, a))))(args)

    looped = [solve(y0s[i], problems[i]) for i in range(4)]
    vmapped = jax.vmap(solve)(y0s, batched)
    jitted = jax.jit(jax.vmap(solve))(y0s, batched)
    for i in range(4):
        assert tree_allclose(vmapped[i], looped[i], rtol=1e-10)
        assert tree_allclose(jitted[i], looped[i], rtol=1e-10)
    grads = jax.vmap(grad_fn)(y0s, batched)
    for i in range(4):
        g_i = jax.tree.map(lambda g: g[i], grads)
        assert tree_allclose(g_i, grad_fn(y0s[i], problems[i]), rtol=1e-9)


def test_inside_scan_and_with_pytree_args(getkey):
    import equinox as eqx

    class Model(eqx.Module):
        logits: jax.Array
        reward: jax.Array

    def residual(q, args):
        model, gamma = args
        return soft_bellman_residual(
            q, {"logits": model.logits, "reward": model.reward, "gamma": gamma}
        )

    model = Model(jax.random.normal(getkey(), (2, 3, 3)), jax.random.normal(getkey(), (3, 2)))

    def body(q, scale):
        m = Model(model.logits, model.reward * scale)
        q = omdx.solve_inner(residual, q, (m, 0.9), solver=NEWTON).value
        return q, jnp.sum(q)

    _, sums = jax.lax.scan(body, jnp.zeros((3, 2)), jnp.array([1.0, 2.0, 3.0]))
    direct = [
        jnp.sum(
            omdx.solve_inner(
                residual,
                jnp.zeros((3, 2)),
                (Model(model.logits, model.reward * s), 0.9),
                solver=NEWTON,
            ).value
        )
        for s in [1.0, 2.0, 3.0]
    ]
    assert np.allclose(sums, direct, rtol=1e-10)
    g = jax.grad(
        lambda m: jnp.sum(
            omdx.solve_inner(residual, jnp.zeros((3, 2)), (m, 0.9), solver=NEWTON).value
        )
    )(model)
    assert isinstance(g, Model)


def test_warm_start_gets_no_gradient(getkey):
    args = {"l": jax.random.normal(getkey(), (3, 3)), "b": jax.random.normal(getkey(), (3,))}
    grad = jax.grad(
        lambda y0: jnp.sum(
            omdx.solve_inner(quadratic_gradient, y0, args, solver=NEWTON, symmetric=True).value
        )
    )(jnp.ones(3))
    assert np.allclose(grad, 0.0)


# --- bad input -------------------------------------------------------------------------


def test_bad_input_errors_name_the_argument():
    args = {"l": jnp.eye(3), "b": jnp.ones(3)}
    y0 = jnp.zeros(3)
    with pytest.raises(ValueError, match="`y0`"):
        omdx.solve_inner(lambda y, a: y[:2], y0, args, solver=NEWTON)
    with pytest.raises(ValueError, match=r"`residual\(y0, args\)` failed"):
        omdx.solve_inner(quadratic_gradient, jnp.zeros(4), args, solver=NEWTON)
    with pytest.raises(ValueError, match="`y0`"):
        omdx.solve_inner(lambda y, a: y[0], (y0, y0), args, solver=NEWTON)
    with pytest.raises(TypeError, match="`residual`"):
        omdx.solve_inner("not a function", y0, args, solver=NEWTON)
    with pytest.raises(ValueError, match="`adjoint`"):
        omdx.solve_inner(quadratic_gradient, y0, args, solver=NEWTON, adjoint="lu-ish")
    with pytest.raises(TypeError, match="`adjoint`"):
        omdx.solve_inner(quadratic_gradient, y0, args, solver=NEWTON, adjoint=3)
    with pytest.raises(ValueError, match='`adjoint="cg"`.*`symmetric=True`'):
        omdx.solve_inner(quadratic_gradient, y0, args, solver=NEWTON, adjoint="cg")
    with pytest.raises(ValueError, match="CG `adjoint`"):
        omdx.solve_inner(
            quadratic_gradient, y0, args, solver=NEWTON, adjoint=omdx.truncated_cg(5, 1e-3)
        )
    with pytest.raises(TypeError, match="`solver`"):
        omdx.solve_inner(quadratic_gradient, y0, args, solver=optax.adam(1e-3))
    with pytest.raises(ValueError, match="`max_steps`"):
        omdx.solve_inner(quadratic_gradient, y0, args, solver=NEWTON, max_steps=0)
    with pytest.raises(ValueError, match="takes 300 steps but `max_steps` is 256"):
        steps = omdx.GradientSteps(optax.sgd(0.1), steps=300)
        omdx.solve_inner(quadratic_gradient, y0, args, solver=steps)
    with pytest.raises(ValueError, match="`steps`"):
        omdx.Neumann(-1, 1.0)
    with pytest.raises(ValueError, match="`scale`"):
        omdx.Neumann(3, 0.0)
    with pytest.raises(ValueError, match="`scale`"):
        omdx.Neumann(3, -1.0)
    with pytest.raises(ValueError, match="`steps`"):
        omdx.GradientSteps(optax.sgd(0.1), steps=-2)
    with pytest.raises(TypeError, match="`optim`"):
        omdx.GradientSteps("adam", steps=1)
    with pytest.raises(ValueError, match="`damping`"):
        omdx.Damped(lx.CG(1e-6, 1e-6), -1.0)
    # NumPy and JAX scalars are checked too (only Python numbers were).
    for negative in [np.float32(-1.0), jnp.asarray(-0.5)]:
        with pytest.raises(ValueError, match="`scale` must be a positive finite number"):
            omdx.Neumann(3, negative)
        with pytest.raises(ValueError, match="`damping` must be a non-negative finite"):
            omdx.Damped(lx.LU(), negative)
        with pytest.raises(ValueError, match="`damping` must be a non-negative finite"):
            omdx.TruncatedCG(3, negative)
    with pytest.raises(ValueError, match="`steps`"):
        omdx.truncated_cg(0)
