"""Tabular OMD: MDPs, operators, Q*, gradients, the training grid and bad input."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import omdx
from omdx import tabular as tb

from .helpers import finite_difference_grad, relative_error


Q_STAR = np.array([[0.16363807, 0.06282009], [1.89091046, 0.66282009]])
J_STAR = 1.0272727


# ------------------------------------------------------------------------------ MDPs


def test_polytope_q_star_and_optimal_return():
    mdp = tb.polytope_mdp()
    q_vi = tb.solve_q(mdp, solver="value_iteration", max_steps=5000).value
    assert np.allclose(q_vi, Q_STAR, atol=1e-6)
    q = tb.solve_q(mdp).value
    assert np.allclose(q, Q_STAR, atol=1e-6)
    assert abs(tb.optimal_return(mdp) - J_STAR) < 1e-6
    assert abs(float(tb.expected_return(mdp, q, 0)) - J_STAR) < 1e-6
    # The softmax(Q*/tau) policy is slightly worse than the greedy one.
    assert abs(float(tb.expected_return(mdp, q)) - 1.0272551) < 1e-6
    # Q* is the fixed point of the soft operator, and nearly one of the hard operator.
    assert np.allclose(tb.soft_bellman_operator(mdp, q), q, atol=1e-10)
    assert np.max(np.abs(tb.bellman_operator(mdp, q) - q)) < 0.01


def test_a_zero_temperature_array_is_the_hard_operator():
    # Python 0 chooses the hard operator in Python; a NumPy or JAX zero, or a traced
    # (vmapped) one, must too, not divide by zero into NaN.
    mdp = tb.polytope_mdp()
    q = jnp.asarray(Q_STAR)
    hard = tb.bellman_operator(mdp, q)
    greedy = np.array([[1.0, 0.0], [1.0, 0.0]])
    for zero in [np.float32(0.0), jnp.asarray(0.0), jnp.zeros(())]:
        assert np.allclose(tb.soft_bellman_operator(mdp, q, zero), hard, atol=1e-12)
        assert np.array_equal(tb.policy(q, zero), greedy)
        assert abs(float(tb.expected_return(mdp, q, zero)) - J_STAR) < 1e-6
        assert np.allclose(
            tb.solve_q(mdp, temperature=zero).value, tb.solve_q(mdp, temperature=0).value
        )
    # Vmapped over temperatures, zero among them: each as when called alone.
    temperatures = jnp.array([0.0, 0.01, 0.3])
    swept = jax.vmap(lambda t: tb.soft_bellman_operator(mdp, q, t))(temperatures)
    for row, t in zip(swept, [0, 0.01, 0.3]):
        assert np.allclose(row, tb.soft_bellman_operator(mdp, q, t), atol=1e-12)
    # A negative or non-finite temperature is an error, not an anti-greedy policy or the
    # hard operator: now when it is known, at run time when it is traced.
    for bad in [-0.01, float("nan"), float("inf"), np.float32(-1.0), jnp.asarray(-0.5)]:
        with pytest.raises(ValueError, match="`temperature` must be a finite number >= 0"):
            tb.expected_return(mdp, q, bad)
        # `solve_q` is compiled: a JAX array is traced there, so Equinox raises at run time.
        errors = (ValueError, eqx.EquinoxRuntimeError)
        with pytest.raises(errors, match="`temperature` must be a finite number >= 0"):
            tb.solve_q(mdp, temperature=bad)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`temperature` must be a finite"):
        eqx.filter_jit(lambda t: tb.soft_bellman_operator(mdp, q, t))(jnp.asarray(-0.5))
    # And the gradient through a zero temperature array is finite (the hard one's).
    grad = jax.grad(lambda q: tb.soft_bellman_operator(mdp, q, jnp.asarray(0.0)).sum())(q)
    expected = jax.grad(lambda q: tb.bellman_operator(mdp, q).sum())(q)
    assert np.allclose(grad, expected)


def test_expected_return_matches_hand_computation():
    mdp = tb.polytope_mdp()
    # Always action 0: P_pi = [[0.7, 0.3], [0.2, 0.8]], r_pi = [-0.45, 0.5].
    q = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    p = np.array([[0.7, 0.3], [0.2, 0.8]])
    v = np.linalg.solve(np.eye(2) - 0.9 * p, np.array([-0.45, 0.5]))
    assert abs(float(tb.expected_return(mdp, q, 0)) - 0.5 * v.sum()) < 1e-12
    # A uniform stochastic policy (equal Q): averages of P and r.
    p_u = 0.5 * (p + np.array([[0.99, 0.01], [0.99, 0.01]]))
    r_u = np.array([(-0.45 - 0.1) / 2, 0.5])
    v_u = np.linalg.solve(np.eye(2) - 0.9 * p_u, r_u)
    assert abs(float(tb.expected_return(mdp, jnp.zeros((2, 2)))) - 0.5 * v_u.sum()) < 1e-12


def test_mle_loss_is_zero_at_the_truth_and_bellman_error():
    mdp = tb.polytope_mdp()
    mle_loss = jax.jit(tb.mle_loss)
    model = tb.TabularModel(jnp.log(mdp.transitions) * 0.01, mdp.rewards)
    assert abs(float(mle_loss(model, mdp))) < 1e-12
    assert float(jax.jit(tb.bellman_error)(mdp, jnp.asarray(Q_STAR))) < 1e-14
    other = tb.TabularModel(jnp.zeros((2, 2, 2)), jnp.zeros((2, 2)))
    kl = np.sum(np.asarray(mdp.transitions) * np.log(np.asarray(mdp.transitions) / 0.5), -1)
    expected = kl.mean() + np.mean(np.asarray(mdp.rewards) ** 2)
    assert abs(float(mle_loss(other, mdp)) - expected) < 1e-12


def test_garnet_and_gymnasium_are_valid(getkey):
    mdp = tb.garnet(getkey(), 7, 3, 2, gamma=0.95)
    assert mdp.transitions.shape == (3, 7, 7) and mdp.rewards.shape == (7, 3)
    assert np.allclose(mdp.transitions.sum(-1), 1)
    assert np.all((np.asarray(mdp.transitions) > 0).sum(-1) == 2)
    lake = tb.from_gymnasium("FrozenLake-v1", gamma=0.95)
    # 16 cells + the absorbing state; the slippery lake moves three ways with p = 1/3.
    assert lake.transitions.shape == (4, 17, 17)
    assert np.isclose(float(lake.initial[0]), 1.0)
    assert np.allclose(lake.transitions[:, 16, 16], 1) and np.all(lake.rewards[16] == 0)
    assert np.isclose(np.max(np.asarray(lake.transitions[:, :16, :16])), 2 / 3)
    # Reaching the goal (cell 15, from cell 14 moving right) pays 1/3 in expectation.
    assert np.isclose(float(lake.rewards[14, 2]), 1 / 3)
    cliff = tb.from_gymnasium("CliffWalking-v1", gamma=0.9)
    assert cliff.transitions.shape == (4, 49, 49)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(transitions=np.ones((2, 2, 2))), "transitions.*sum to 1"),
        (dict(transitions=-np.ones((2, 2, 2)) + np.eye(2) * 2), "non-negative"),
        (dict(transitions=np.full((2, 2, 3), 1 / 3)), "transitions.*shape"),
        (dict(rewards=np.zeros((3, 2))), "rewards.*shape"),
        (dict(rewards=np.array([[np.nan, 0], [0, 0]])), "rewards.*finite"),
        (dict(gamma=1.0), "gamma"),
        (dict(gamma=-0.1), "gamma"),
        (dict(initial=np.array([0.7, 0.7])), "initial.*sum to 1"),
        (dict(initial=np.ones(3) / 3), "initial.*shape"),
    ],
)
def test_invalid_mdp_raises(kwargs, match):
    base = tb.polytope_mdp()
    args = dict(
        transitions=base.transitions, rewards=base.rewards, gamma=base.gamma, initial=base.initial
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tb.TabularMDP(**args)


def test_mdp_works_under_jit_and_vmap():
    base = tb.polytope_mdp()

    def build(scale):
        # Not a distribution when traced values are wrong: no check under tracing.
        return tb.TabularMDP(base.transitions * scale, base.rewards, base.gamma).transitions.sum()

    assert np.isclose(float(jax.jit(build)(1.0)), 4.0)
    assert jax.vmap(build)(jnp.ones(3)).shape == (3,)


def test_invalid_settings_raise(getkey):
    mdp = tb.polytope_mdp()
    with pytest.raises(ValueError, match="branching"):
        tb.garnet(getkey(), 3, 2, 4)
    with pytest.raises(TypeError, match="n_states"):
        tb.garnet(getkey(), 3.0, 2, 1)
    with pytest.raises(ValueError, match="transition table"):
        tb.from_gymnasium("CartPole-v1", gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        tb.from_gymnasium("FrozenLake-v1", gamma=1.5)
    with pytest.raises(ValueError, match="solver"):
        tb.solve_q(mdp, solver="bisection")
    with pytest.raises(ValueError, match="q0"):
        tb.solve_q(mdp, jnp.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        tb.TabularModel(jnp.zeros((2, 2, 2)), jnp.zeros((2, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="radius"):
        tb.project_l2_ball(-1.0)
    bad = [
        (dict(methods=("sgd",)), ValueError, "kind"),
        (dict(methods=(3,)), TypeError, "methods"),
        (dict(bounds=(-1.0,)), ValueError, "bounds"),
        (dict(noises=(math.inf,)), ValueError, "noises"),
        (dict(seeds=0), ValueError, "seeds"),
        (dict(seeds=[1.5]), ValueError, "seeds"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=1.5), TypeError, "steps"),
        (dict(lr=-0.1), ValueError, "lr"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(tol=-1.0), ValueError, "tol"),
        (dict(methods=("omd", "omd")), ValueError, "distinct"),
    ]
    for kwargs, error, match in bad:
        with pytest.raises(error, match=match):
            tb.train(mdp, **{"steps": 2, **kwargs})
    with pytest.raises(TypeError, match="mdp"):
        tb.train("FrozenLake-v1")
    with pytest.raises(ValueError, match="objective"):
        tb.Method("omd", objective="likelihood")
    with pytest.raises(ValueError, match="adjoint"):
        tb.Method("omd", adjoint="cg")


def test_projection_is_an_optax_transformation():
    params = {"a": jnp.array([3.0, 4.0])}
    opt = optax.chain(optax.sgd(0.0), tb.project_l2_ball(1.0))
    updates, _ = opt.update({"a": jnp.zeros(2)}, opt.init(params), params)
    assert np.allclose(optax.apply_updates(params, updates)["a"], [0.6, 0.8])
    opt = tb.project_l2_ball(10.0)
    updates, _ = opt.update({"a": jnp.ones(2)}, opt.init(params), params)
    assert np.allclose(updates["a"], 1.0)


# ------------------------------------------------------------------------------ gradients


def test_omd_gradient_matches_finite_differences(getkey):
    mdp = tb.polytope_mdp()
    temperature = 0.2  # smooth enough for central differences

    def objective(model, adjoint="direct"):
        sol = tb.solve_q(
            model.to_mdp(mdp.gamma, mdp.initial), temperature=temperature, adjoint=adjoint
        )
        return tb.expected_return(mdp, sol.value, temperature) - tb.bellman_error(
            mdp, sol.value, temperature
        )

    model = tb.TabularModel(
        0.2 * jax.random.uniform(getkey(), (2, 2, 2)),
        jax.random.uniform(getkey(), (2, 2)),
        temperature=0.3,
    )
    fn = jax.jit(objective)
    expected = finite_difference_grad(fn, model)
    grad = jax.jit(jax.grad(objective))(model)
    assert relative_error(grad, expected) < 1e-6


# ------------------------------------------------------------------------------ training

BOUNDS = (1.0, 6.0)
STEPS = 1500


@pytest.fixture(scope="module")
def grid():
    mdp = tb.polytope_mdp()
    return tb.train(mdp, methods=("omd", "mle"), seeds=10, bounds=BOUNDS, steps=STEPS)


def test_omd_beats_mle_under_a_small_bound_and_both_reach_j_star(grid):
    returns = np.asarray(grid.returns)[:, :, 0, :]  # [M, B, K]
    omd, mle = grid.index("OMD"), grid.index("MLE")
    assert returns[omd, 0].mean() > returns[mle, 0].mean() + 0.1
    assert abs(returns[omd, 1].mean() - J_STAR) < 1e-2
    assert abs(returns[mle, 1].mean() - J_STAR) < 1e-2
    # The bound is respected and the objective is recorded per step.
    norms = np.sqrt(
        np.sum((np.asarray(grid.model.logits) / 0.01) ** 2, axis=(-3, -2, -1))
        + np.sum(np.asarray(grid.model.reward) ** 2, axis=(-2, -1))
    )
    assert np.all(norms[:, 0] <= 1.0 + 1e-9)
    assert grid.objective.shape == (2, 2, 1, 10, STEPS)
    assert np.all(np.isfinite(grid.objective))
    assert np.all(np.asarray(grid.inner_failures) == 0)
    # OMD's objective is -J of its own Q*: it went down.
    assert grid.objective[omd, 0, 0, :, -1].mean() < grid.objective[omd, 0, 0, :, 0].mean()


def test_grid_equals_one_configuration_at_a_time(grid):
    mdp = tb.polytope_mdp()
    for b, bound in enumerate(BOUNDS):
        for k, seed in ((0, 1), (9, 10)):
            # One configuration (per method) at a time: a batch of one, compiled once.
            single = tb.train(
                mdp, methods=("omd", "mle"), seeds=[seed], bounds=[bound], steps=STEPS
            )
            for m in range(2):
                idx = (m, b, 0, k)
                assert int(single.steps[m, 0, 0, 0]) == int(grid.steps[idx])
                assert np.allclose(single.q[m, 0, 0, 0], grid.q[idx], rtol=1e-6, atol=1e-8)
                assert np.allclose(
                    single.model.logits[m, 0, 0, 0], grid.model.logits[idx], rtol=1e-6, atol=1e-9
                )
                assert np.allclose(single.objective[m, 0, 0, 0], grid.objective[idx], atol=1e-8)


def test_float32_runs_and_nan_is_never_silent():
    mdp32 = tb.polytope_mdp(jnp.float32)
    result = tb.train(mdp32, methods=("omd",), seeds=2, bounds=(1.0,), steps=20, chunk=10)
    assert result.q.dtype == jnp.float32 and np.all(np.isfinite(result.returns))
    # Finite rewards whose values overflow float32: Q* is infinite.
    huge = tb.TabularMDP(mdp32.transitions, jnp.full((2, 2), 3e38, jnp.float32), 0.9)
    with pytest.raises(FloatingPointError, match="non-finite"):
        tb.train(huge, methods=("omd",), seeds=2, bounds=(1.0,), steps=20, chunk=10)
    # A run that fails stops no other run of the grid: the error names exactly the runs
    # whose noise overflows Q* + noise, and its result holds the others, finite.
    with pytest.raises(omdx.TrainingDiverged, match=r"2 run\(s\).*noise=1e\+38") as caught:
        tb.train(mdp32, methods=("omd",), seeds=2, bounds=(1.0,), noises=(0.0, 1e38), steps=20)
    diverged = np.asarray(caught.value.diverged)  # [method, bound, noise, seed]
    np.testing.assert_array_equal(diverged, [[[[False, False], [True, True]]]])
    assert np.all(np.isfinite(np.asarray(caught.value.result.returns)[:, :, 0]))
