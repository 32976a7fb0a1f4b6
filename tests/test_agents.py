"""Neural agents: implicit model gradients against finite differences, adjoint agreement,
and the shared step."""

import dataclasses
import functools as ft

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
from jax.flatten_util import ravel_pytree

import omdx
from omdx._transition import Transition
from omdx.agents import (
    agent_adjoint,
    agent_step,
    AgentConfig,
    bellman_targets,
    BellmanRegressionGradient,
    bound_to_batch,
    EnvSpec,
    init_agent,
    mle_step,
    model_gradient,
    model_targets,
    omd_step,
    real_bellman_loss,
    regression_loss,
    vep_step,
)


OBS, ACTIONS, BATCH = 3, 2, 48


def make_batch(key, batch=BATCH):
    k = jr.split(key, 5)
    return Transition(
        observation=jr.normal(k[0], (batch, OBS)),
        action=jr.randint(k[1], (batch,), 0, ACTIONS),
        reward=jr.normal(k[2], (batch,)),
        next_observation=jr.normal(k[3], (batch, OBS)),
        terminated=jr.uniform(k[4], (batch,)) < 0.1,
    )


SMALL = AgentConfig(
    q_hidden=5,
    q_depth=1,
    model_hidden=4,
    model_depth=1,
    inner_optimiser="sgd",
    q_lr=1e-9,
    adjoint="direct",
    damping=0.0,
    gamma=0.9,
    temperature=0.5,
    # Strong enough that Newton from a fresh network reaches a minimum with a positive
    # definite Hessian for every key tried (0-5); at 0.3 some keys end at saddles.
    q_weight_decay=1.0,
)


def converged_state(key, config):
    """An agent whose Q-network sits at the exact (Newton) root of the model-data loss."""
    state_key, batch_key, inner_key = jr.split(key, 3)
    state = init_agent(state_key, EnvSpec(OBS, ACTIONS), config)
    batch = make_batch(batch_key)
    q_params, q_static = eqx.partition(state.q, eqx.is_inexact_array)
    residual = BellmanRegressionGradient(q_static, config)

    def solve(model, q0):
        # With this much weight decay, Newton from the initial network converges in a few
        # steps to a minimum with a positive definite Hessian (checked below).
        targets = model_targets(model, state.q_target, batch, inner_key, config)
        args = (targets, batch.observation, batch.action)
        return optx.root_find(
            residual, optx.Newton(rtol=1e-13, atol=1e-13), q0, args, has_aux=True, max_steps=50
        ).value

    q_star = eqx.filter_jit(solve)(state.model, q_params)
    state = dataclasses.replace(state, q=eqx.combine(q_star, q_static))
    return state, batch, inner_key, solve, q_static


@pytest.mark.parametrize("bound", [False, True])
def test_omd_direct_gradient_matches_finite_differences(bound, getkey):
    config = dataclasses.replace(SMALL, bound_predictions=bound)
    state, batch, inner_key, solve, q_static = converged_state(jr.PRNGKey(0), config)
    # Compiled whole (8 s less than op by op, whose small operations each compile alone).
    loss, grads, solution = eqx.filter_jit(model_gradient)(
        state, batch, config, inner_key, getkey()
    )
    assert int(solution.result._value) == 0
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(model_params)
    q0 = eqx.filter(state.q, eqx.is_inexact_array)

    @eqx.filter_jit
    def outer(flat_params):
        model = eqx.combine(unravel(flat_params), model_static)
        q = eqx.combine(solve(model, q0), q_static)
        return real_bellman_loss(q, state.q_target, batch, config)

    assert np.isclose(outer(flat), loss, rtol=1e-10)
    flat_grad, _ = ravel_pytree(grads)
    eps = 1e-6
    for _ in range(4):
        direction = jr.normal(getkey(), flat.shape)
        fd = (outer(flat + eps * direction) - outer(flat - eps * direction)) / (2 * eps)
        assert np.isclose(jnp.dot(flat_grad, direction), fd, rtol=1e-6, atol=1e-9)


def test_omd_adjoints_agree_at_the_converged_solution(getkey):
    state, batch, inner_key, _, q_static = converged_state(jr.PRNGKey(0), SMALL)
    model_key = getkey()
    _, direct, _ = model_gradient(state, batch, SMALL, inner_key, model_key)
    direct_flat, _ = ravel_pytree(direct)
    # The Hessian at the root, to choose a convergent Neumann step size.
    q_params = eqx.filter(state.q, eqx.is_inexact_array)
    flat_q, unravel_q = ravel_pytree(q_params)
    residual = BellmanRegressionGradient(q_static, SMALL)

    def args_of(model):
        targets = model_targets(model, state.q_target, batch, inner_key, SMALL)
        return (targets, batch.observation, batch.action)

    args = args_of(state.model)
    hessian = jax.jacfwd(lambda f: ravel_pytree(residual(unravel_q(f), args)[0])[0])(flat_q)
    eigenvalues = np.linalg.eigvalsh(np.asarray(hessian))
    assert eigenvalues.min() > 0, "the test needs a strictly convex inner problem"
    scale = 1.0 / eigenvalues.max()
    steps = int(np.ceil(np.log(1e-12) / np.log(1 - scale * eigenvalues.min())))
    neumann = dataclasses.replace(
        SMALL, adjoint="neumann", adjoint_steps=min(steps, 200_000), adjoint_scale=float(scale)
    )
    cg = dataclasses.replace(SMALL, adjoint="cg", adjoint_steps=4 * flat_q.size)
    # A budget beyond the dimension: GMRES solves exactly, then meets a (happy) breakdown,
    # which must not fail the backward pass of a fixed-budget solve.
    gmres = dataclasses.replace(SMALL, adjoint="gmres", adjoint_steps=4 * flat_q.size)
    for config in [neumann, cg, gmres]:
        _, grads, _ = model_gradient(state, batch, config, inner_key, model_key)
        flat, _ = ravel_pytree(grads)
        assert np.allclose(flat, direct_flat, rtol=1e-6, atol=1e-9), config.adjoint

    # Identity: (df/dphi)^{-1} ~ scale * I gives -(df/dtheta)^T (scale * dL_out/dphi).
    identity = dataclasses.replace(SMALL, adjoint="identity", adjoint_scale=0.3)
    _, grads, _ = model_gradient(state, batch, identity, inner_key, model_key)
    out_grad = jax.grad(
        lambda p: real_bellman_loss(eqx.combine(p, q_static), state.q_target, batch, SMALL)
    )(q_params)
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)
    _, vjp = jax.vjp(
        lambda m: residual(q_params, args_of(eqx.combine(m, model_static)))[0], model_params
    )
    (closed_form,) = vjp(jax.tree.map(lambda g: -0.3 * g, out_grad))
    assert np.allclose(ravel_pytree(grads)[0], ravel_pytree(closed_form)[0], rtol=1e-10)


def test_bound_to_batch_squashes_into_the_batch_box(getkey):
    batch = make_batch(getkey())
    # The last dimension is constant over the batch: its box has no width.
    batch = dataclasses.replace(
        batch,
        observation=batch.observation.at[:, -1].set(0.5),
        next_observation=batch.next_observation.at[:, -1].set(0.5),
    )
    observed = np.concatenate([batch.observation, batch.next_observation])
    low, high = observed.min(axis=0), observed.max(axis=0)
    predictions = 10 * jr.normal(getkey(), (BATCH, OBS))
    bounded = np.asarray(bound_to_batch(predictions, batch))
    assert np.all(np.isfinite(bounded))
    assert np.all(bounded >= low - 1e-12) and np.all(bounded <= high + 1e-12)
    np.testing.assert_allclose(bounded[:, -1], 0.5, atol=1e-12)
    for dim in range(OBS):  # increasing in the prediction
        order = np.argsort(predictions[:, dim])
        assert np.all(np.diff(bounded[order, dim]) >= 0)
    # The identity to first order at the box's centre.
    centre = jnp.asarray(0.5 * (low + high))
    jacobian = jax.jacfwd(lambda x: bound_to_batch(x[None], batch)[0])(centre)
    np.testing.assert_allclose(jacobian, np.eye(OBS), atol=1e-12)
    np.testing.assert_allclose(bound_to_batch(centre[None], batch)[0], centre, atol=1e-12)


@pytest.mark.parametrize("agent", ["omd", "vep", "mle"])
def test_bound_predictions_bounds_every_use_of_the_model(agent, getkey):
    config = dataclasses.replace(SMALL, agent=agent, adjoint="identity")
    bounded = dataclasses.replace(config, bound_predictions=True)
    state = init_agent(getkey(), EnvSpec(OBS, ACTIONS), config)
    # A model that predicts far outside the batch's states, as OMD's come to.
    state = dataclasses.replace(
        state, model=jax.tree.map(lambda p: 20 * p if eqx.is_inexact_array(p) else p, state.model)
    )
    batch, inner_key, model_key = make_batch(getkey()), getkey(), getkey()
    next_obs, reward = jax.vmap(state.model)(batch.observation, batch.action)
    squashed = bound_to_batch(next_obs, batch)
    # The Bellman targets the Q-network learns from (every agent's).
    targets = model_targets(state.model, state.q_target, batch, inner_key, bounded)
    expected = bellman_targets(state.q_target, reward, squashed, batch.terminated, bounded)
    np.testing.assert_allclose(targets, expected, rtol=1e-12)
    unbounded = model_targets(state.model, state.q_target, batch, inner_key, config)
    assert not np.allclose(targets, unbounded)
    # The model loss (MLE's and VEP's written out; OMD's through those targets).
    loss, _, _ = model_gradient(state, batch, bounded, inner_key, model_key)
    if agent == "mle":
        expected_loss = jnp.mean((squashed - batch.next_observation) ** 2) + jnp.mean(
            (reward - batch.reward) ** 2
        )
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    elif agent == "vep":
        ensemble = state.value_ensemble
        gap = jax.vmap(ensemble)(squashed) - jax.vmap(ensemble)(batch.next_observation)
        expected_loss = jnp.mean(jnp.sum(gap**2, axis=-1)) + jnp.mean((reward - batch.reward) ** 2)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    # The `model_error` metric: the bounded predictions' error.
    step = {"omd": omd_step, "mle": mle_step, "vep": vep_step}[agent]
    _, metrics = step(state, batch, bounded)
    expected_error = jnp.mean(jnp.sum((squashed - batch.next_observation) ** 2, axis=-1))
    np.testing.assert_allclose(metrics["model_error"], expected_error, rtol=1e-12)
    assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("agent", ["omd", "vep", "mle"])
def test_likelihood_weight_adds_the_likelihood_gradient(agent, getkey):
    config = dataclasses.replace(SMALL, agent=agent, adjoint="identity")
    weighted = dataclasses.replace(config, likelihood_weight=0.7)
    state = init_agent(getkey(), EnvSpec(OBS, ACTIONS), config)
    batch, inner_key, model_key = make_batch(getkey()), getkey(), getkey()
    loss, grads, _ = model_gradient(state, batch, config, inner_key, model_key)
    weighted_loss, weighted_grads, _ = model_gradient(state, batch, weighted, inner_key, model_key)
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)

    def likelihood(params):  # MLE's loss of a deterministic model, written out
        model = eqx.combine(params, model_static)
        next_obs, reward = jax.vmap(model)(batch.observation, batch.action)
        return jnp.mean((next_obs - batch.next_observation) ** 2) + jnp.mean(
            (reward - batch.reward) ** 2
        )

    value, gradient = jax.value_and_grad(likelihood)(model_params)
    flat, flat_weighted = ravel_pytree(grads)[0], ravel_pytree(weighted_grads)[0]
    if agent == "mle":  # its loss is the likelihood already: the weight changes nothing
        assert weighted_loss == loss
        np.testing.assert_array_equal(flat_weighted, flat)
        return
    assert np.isclose(weighted_loss, loss + 0.7 * value, rtol=1e-12)
    np.testing.assert_allclose(
        flat_weighted, flat + 0.7 * ravel_pytree(gradient)[0], rtol=1e-10, atol=1e-12
    )
    # OMD's `q_real_loss` is then no longer its model loss: it is computed on its own.
    step = {"omd": omd_step, "vep": vep_step}[agent]
    new_state, metrics = step(state, batch, weighted)
    assert np.isclose(
        metrics["q_real_loss"], real_bellman_loss(new_state.q, state.q_target, batch, weighted)
    )
    assert np.isclose(metrics["model_loss"], weighted_loss)


@pytest.mark.parametrize("agent", ["omd", "mle"])
def test_bellman_loss_metrics_exclude_the_weight_decay(agent, getkey):
    # SMALL has q_weight_decay = 1: a penalty the inner problem minimises, not part of the
    # Bellman losses the metrics report.
    config = dataclasses.replace(SMALL, agent=agent, adjoint="identity")
    state = init_agent(getkey(), EnvSpec(OBS, ACTIONS), config)
    batch = make_batch(getkey())
    new_state, metrics = agent_step(state, batch, config)
    # K = 1: the loss before the inner step, on the data of the model that taught it (for
    # MLE the model after its step; the deterministic model ignores the key).
    model = state.model if agent == "omd" else new_state.model
    targets = model_targets(model, state.q_target, batch, getkey(), config)
    expected = regression_loss(state.q, batch.observation, batch.action, targets)
    assert np.isclose(metrics["q_model_loss"], expected, rtol=1e-12)
    assert np.isclose(
        metrics["q_real_loss"], real_bellman_loss(new_state.q, state.q_target, batch, config)
    )


def test_gmres_adjoint_spends_its_budget_on_krylov_vectors():
    # Lineax counts GMRES steps in restart cycles (its first only computes the residual);
    # `adjoint_steps` budgets Hessian-vector products, as for CG.
    diagonal = jnp.linspace(1.0, 2.0, 200)
    b = jnp.cos(jnp.arange(200.0))
    calls = []

    def mv(x):
        jax.debug.callback(lambda: calls.append(1))
        return diagonal * x

    operator = lx.FunctionLinearOperator(
        mv, jax.ShapeDtypeStruct((200,), diagonal.dtype), lx.symmetric_tag
    )
    residuals = []
    for adjoint_steps in [1, 5, 20, 45]:
        calls.clear()
        config = dataclasses.replace(SMALL, adjoint="gmres", adjoint_steps=adjoint_steps)
        solution = lx.linear_solve(operator, b, agent_adjoint(config), throw=False)
        jax.block_until_ready(solution.value)
        cycles = -(-adjoint_steps // 20)
        # One product per Krylov vector, one residual per cycle, one initial residual.
        assert len(calls) == adjoint_steps + cycles + 1, adjoint_steps
        assert solution.result == lx.RESULTS.successful
        residuals.append(np.linalg.norm(diagonal * solution.value - b) / np.linalg.norm(b))
        if adjoint_steps == 1:  # GMRES(1) from zero: the minimal-residual step along b
            ab = diagonal * b
            expected = jnp.dot(b, ab) / jnp.dot(ab, ab) * b
            assert np.allclose(solution.value, expected, rtol=1e-12)
    # Condition number 2: each Krylov vector gains accuracy; 20 reach float64 precision.
    assert residuals[0] > residuals[1] > residuals[2]
    assert residuals[2] < 1e-12 and residuals[3] < 1e-12


@pytest.mark.parametrize("step", [omd_step, mle_step, vep_step])
def test_steps_are_pure_and_vmappable(step, getkey):
    config = AgentConfig(q_hidden=8, model_hidden=8, vep_hidden=8)
    keys = jr.split(getkey(), 3)
    states = eqx.filter_vmap(lambda k: init_agent(k, EnvSpec(OBS, ACTIONS), config))(keys)
    batches = jax.vmap(make_batch)(jr.split(getkey(), 3))
    jitted = eqx.filter_jit(lambda s, b: step(s, b, config))
    new_states, metrics = eqx.filter_jit(eqx.filter_vmap(lambda s, b: step(s, b, config)))(
        states, batches
    )
    # Indexed and compared in NumPy: eager JAX indexing compiles a program per leaf shape.
    as_numpy = ft.partial(jax.tree.map, lambda x: np.asarray(x) if eqx.is_array(x) else x)
    states, batches, new_states, metrics = as_numpy((states, batches, new_states, metrics))
    for i in range(3):
        state_i = jax.tree.map(lambda x: x[i] if isinstance(x, np.ndarray) else x, states)
        batch_i = jax.tree.map(lambda x: x[i], batches)
        single, single_metrics = as_numpy(jitted(state_i, batch_i))
        again, _ = as_numpy(jitted(state_i, batch_i))
        assert bool(eqx.tree_equal(single, again))  # deterministic
        batched_i = jax.tree.map(lambda x: x[i] if isinstance(x, np.ndarray) else x, new_states)
        for a, b in zip(
            jax.tree.leaves(eqx.filter(single, eqx.is_inexact_array)),
            jax.tree.leaves(eqx.filter(batched_i, eqx.is_inexact_array)),
        ):
            assert np.allclose(a, b, rtol=1e-9, atol=1e-12)
        for name, value in single_metrics.items():
            assert np.allclose(value, metrics[name][i], rtol=1e-9, atol=1e-12), name
    assert set(metrics) >= {
        "model_loss",
        "model_error",
        "q_real_loss",
        "model_grad_norm",
        "inner_result",
    }
    assert np.all(np.asarray(metrics["inner_result"]) == 0)


def test_mle_step_fits_the_model(getkey):
    config = AgentConfig(q_hidden=8, model_hidden=16, model_lr=1e-2)
    state = init_agent(getkey(), EnvSpec(OBS, ACTIONS), config)
    batch = make_batch(getkey())
    batch = dataclasses.replace(
        batch, next_observation=0.5 * batch.observation, reward=batch.observation[:, 0]
    )
    step = eqx.filter_jit(lambda s: mle_step(s, batch, config))
    state, first = step(state)
    for _ in range(200):
        state, metrics = step(state)
    assert metrics["model_error"] < 0.2 * first["model_error"]


def test_gaussian_model_and_hard_max(getkey):
    config = AgentConfig(q_hidden=8, model_hidden=8, model_noise="gaussian", soft=False)
    state = init_agent(getkey(), EnvSpec(OBS, ACTIONS), config)
    assert state.model.log_std is not None
    for step in (omd_step, mle_step):
        new_state, metrics = eqx.filter_jit(lambda s, b: step(s, b, config))(
            state, make_batch(getkey())
        )
        assert all(np.isfinite(v) for v in metrics.values())


def test_a_batch_that_does_not_fit_the_agent_is_named(getkey):
    state = init_agent(getkey(), EnvSpec(OBS, ACTIONS), SMALL)
    good = make_batch(getkey(), batch=8)
    step = eqx.filter_jit(omd_step)
    bad_shapes = [
        (dataclasses.replace(good, observation=good.observation[:, :2]), "batch.observation"),
        (dataclasses.replace(good, reward=good.reward[:, None]), "batch.reward"),
        (
            dataclasses.replace(good, next_observation=good.observation[:3]),
            "batch.next_observation",
        ),
        (dataclasses.replace(good, terminated=good.terminated[:, None]), "batch.terminated"),
        (jax.tree.map(lambda x: x[0], good), "batch.observation"),  # unbatched
    ]
    for batch, name in bad_shapes:
        with pytest.raises(ValueError, match=f"`{name}` must have shape"):
            step(state, batch, SMALL)
    with pytest.raises(TypeError, match="`batch.action` must hold integers"):
        step(state, dataclasses.replace(good, action=good.action.astype(float)), SMALL)
    # At run time, compiled: actions outside [0, 2) (-1 would wrap to action 1 in the
    # Q-network and to no action in the model) and non-finite data.
    for action in [-1, ACTIONS]:
        batch = dataclasses.replace(good, action=good.action.at[3].set(action))
        with pytest.raises(eqx.EquinoxRuntimeError, match=r"must be in \[0, 2\)"):
            step(state, batch, SMALL)
    batch = dataclasses.replace(good, reward=good.reward.at[0].set(jnp.nan))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`batch` holds non-finite values"):
        step(state, batch, SMALL)
    step(state, good, SMALL)  # and a batch that fits goes through


def test_bad_agent_config_raises():
    with pytest.raises(ValueError, match="`agent`"):
        AgentConfig(agent="ppo")
    with pytest.raises(ValueError, match="`adjoint`"):
        AgentConfig(adjoint="lu")
    with pytest.raises(ValueError, match="`q_hidden`"):
        AgentConfig(q_hidden=0)
    with pytest.raises(ValueError, match="`model_hidden`"):
        AgentConfig(model_hidden=-3)
    with pytest.raises(ValueError, match="`gamma`"):
        AgentConfig(gamma=1.0)
    with pytest.raises(ValueError, match="`model_lr`"):
        AgentConfig(model_lr=0.0)
    with pytest.raises(ValueError, match="`inner_steps`"):
        AgentConfig(inner_steps=0)
    with pytest.raises(ValueError, match="`likelihood_weight`"):
        AgentConfig(likelihood_weight=-0.1)
    with pytest.raises(ValueError, match="`bound_predictions`"):
        AgentConfig(bound_predictions=1)
    with pytest.raises(ValueError, match="num_actions"):
        init_agent(jr.PRNGKey(0), EnvSpec(3, 1), AgentConfig())


@pytest.mark.parametrize("shape", [(64, 64), (64, 4), (2, 64), (7, 3), (1, 5)])
def test_orthogonal_init_matches_jax_without_xla_qr(shape, getkey):
    key = getkey()
    weight = omdx.agents.orthogonal_init(key, shape, 1.5, jnp.float64)
    expected = jax.nn.initializers.orthogonal(1.5)(key, shape, jnp.float64)
    assert jnp.allclose(weight, expected, atol=1e-12)
    # XLA's batched LAPACK QR deadlocks under vmap on CPU (jaxlib 0.10): none may be traced.
    batched = jax.make_jaxpr(jax.vmap(lambda k: omdx.agents.orthogonal_init(k, shape)))
    primitives = _primitive_names(batched(jax.random.split(key, 4)).jaxpr)
    assert not primitives & {"qr", "geqrf", "householder_product"}
    reference = jax.make_jaxpr(lambda k: jax.nn.initializers.orthogonal()(k, shape))(key)
    assert _primitive_names(reference.jaxpr) & {"qr", "geqrf", "householder_product"}


@pytest.mark.parametrize("sizes", [(4, 2, 32, 2), (6, 5, 16, 3), (40, 3, 8, 1)])
def test_orthogonal_mlp_weights_are_scaled_orthogonal(sizes, getkey):
    in_size, out_size, width, depth = sizes
    mlp = omdx.agents.orthogonal_mlp(getkey(), in_size, out_size, width, depth, last_scale=0.5)
    # Built from a shape-only skeleton: every placeholder must have been replaced.
    assert not any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(mlp))
    assert len(mlp.layers) == depth + 1
    for i, layer in enumerate(mlp.layers):
        scale = 0.5 if i == depth else 2**0.5
        weight = layer.weight / scale
        rows, cols = weight.shape
        gram = weight @ weight.T if rows <= cols else weight.T @ weight
        assert jnp.allclose(gram, jnp.eye(min(rows, cols)), atol=1e-5), i
        assert jnp.all(layer.bias == 0)
    assert mlp(jnp.ones(in_size)).shape == (out_size,)
    # Different keys give different networks; the same key the same one.
    key = getkey()
    first = omdx.agents.orthogonal_mlp(key, in_size, out_size, width, depth)
    again = omdx.agents.orthogonal_mlp(key, in_size, out_size, width, depth)
    other = omdx.agents.orthogonal_mlp(getkey(), in_size, out_size, width, depth)
    assert jnp.array_equal(first.layers[0].weight, again.layers[0].weight)
    assert not jnp.allclose(first.layers[0].weight, other.layers[0].weight)


def _primitive_names(jaxpr) -> set[str]:
    names = set()
    for equation in jaxpr.eqns:
        names.add(equation.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(equation.params):
            names |= _primitive_names(sub)
    return names
