"""The compiled training run: seeds, reproducibility, bad configuration, learning."""

import dataclasses
import functools as ft
import logging
import pickle
import threading
import warnings

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from gymnasium.envs.classic_control import CartPoleEnv

import omdx
from omdx import AgentConfig, TrainConfig
from omdx._train import _chunk_plan, _divergence, _shard_count, _swept_config, select_action
from omdx._train_host import _spawn
from omdx.agents import agent_step, EnvSpec, init_agent

from .test_agents import ACTIONS, make_batch, OBS


TINY_AGENT = AgentConfig(q_hidden=16, model_hidden=16, vep_hidden=8)
TINY_RUN = TrainConfig(
    steps=400, random_steps=200, eval_every=200, eval_episodes=2, batch_size=32, evals_per_chunk=1
)


@pytest.fixture(scope="module")
def cartpole():
    return omdx.envs.make("CartPole-v1")


def test_vmapped_seeds_equal_single_seed_runs(cartpole):
    devices = jax.devices("cpu")
    assert len(devices) == 2  # tests/conftest.py asks for two CPU devices
    seeds = [3, 4, 5, 6]
    chunks = []
    # The four seeds are split over the two devices, two vmapped on each.
    together = omdx.train(
        cartpole,
        TINY_AGENT,
        TINY_RUN,
        seeds=seeds,
        progress=False,
        on_chunk=chunks.append,
        devices=devices,
    )
    assert len(together.final_state.key.sharding.device_set) == 2
    assert together.eval_returns.shape == (4, 2)
    assert list(together.eval_steps) == [200, 400]
    # Every evaluation is streamed, chunk by chunk, as the result has it.
    assert [list(chunk["eval_steps"]) for chunk in chunks] == [[200], [400]]
    streamed = np.concatenate([chunk["eval_returns"] for chunk in chunks], axis=1)
    np.testing.assert_array_equal(streamed, together.eval_returns)
    # Groups of one seed on one device: each seed runs alone (a batch of one, as
    # `seeds=[seed]` runs it), one after another inside one compiled call, so one
    # compilation serves the four single-seed runs.
    alone = omdx.train(
        cartpole,
        TINY_AGENT,
        dataclasses.replace(TINY_RUN, seed_group=1),
        seeds=seeds,
        progress=False,
        devices=devices[:1],
    )
    assert len(alone.final_state.key.sharding.device_set) == 1
    np.testing.assert_allclose(alone.eval_returns, together.eval_returns, rtol=1e-5)
    for name, values in alone.metrics.items():
        np.testing.assert_allclose(
            values, together.metrics[name], rtol=1e-4, atol=1e-6, err_msg=name
        )
    again = omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=seeds, progress=False, devices=devices)
    np.testing.assert_array_equal(again.eval_returns, together.eval_returns)
    # Updates happened (the second window is after the warm-up) and were finite; the first
    # window had none, so it has no mean (NaN, as `train_host` reports it), not 0.
    assert np.all(together.metrics["model_grad_norm"][:, 1] > 0)
    assert np.all(together.metrics["inner_result"][:, 1] == 0)
    for name, values in together.metrics.items():
        assert np.all(np.isnan(values[:, 0])) and np.all(np.isfinite(values[:, 1])), name
        assert np.array_equal(chunks[0]["metrics"][name], values[:, :1], equal_nan=True), name


SWEEP = {
    "gamma": [0.99, 0.9],
    "temperature": [0.01, 0.1],
    "target_update": [0.01, 0.05],
    "q_lr": [3e-4, 1e-3],
    "model_lr": [1e-3, 3e-3],
    "epsilon": [0.1, 0.3],
    "inner_steps": [2, 3],
    "likelihood_weight": [0.0, 0.5],
}


def test_sweep_points_equal_separate_runs(cartpole):
    config = dataclasses.replace(TINY_AGENT, inner_steps=2)
    chunks = []
    swept = omdx.train(
        cartpole,
        config,
        TINY_RUN,
        seeds=[3, 4],
        sweep=SWEEP,
        progress=False,
        on_chunk=chunks.append,
    )
    assert len(swept) == 2
    # Streamed: the seeds of each point in turn, with their values.
    np.testing.assert_array_equal(chunks[0]["seeds"], [3, 4, 3, 4])
    np.testing.assert_allclose(chunks[0]["hyperparameters"]["q_lr"], [3e-4, 3e-4, 1e-3, 1e-3])
    # The second point (no default value in it) as a plain run: its own compilation, with
    # `inner_steps` and `likelihood_weight` constants.
    values = {name: point[1] for name, point in SWEEP.items()}
    epsilon = values.pop("epsilon")
    alone = omdx.train(
        cartpole,
        dataclasses.replace(config, **values),
        dataclasses.replace(TINY_RUN, epsilon=epsilon),
        seeds=[3, 4],
        progress=False,
    )
    result = swept[1]
    np.testing.assert_array_equal(result.seeds, [3, 4])
    np.testing.assert_array_equal(result.eval_steps, alone.eval_steps)
    np.testing.assert_array_equal(result.eval_returns, alone.eval_returns)
    for name, metric in alone.metrics.items():
        np.testing.assert_allclose(result.metrics[name], metric, rtol=1e-4, atol=1e-6, err_msg=name)
    assert result.final_state.hyperparameters["q_lr"].tolist() == pytest.approx([1e-3, 1e-3])
    # The values reach the updates: the two points' models differ.
    assert not np.allclose(swept[0].metrics["model_loss"], swept[1].metrics["model_loss"])


# Every hyperparameter that `train` passes as an array in every run, swept or not.
TRACED = {"gamma": 0.95, "target_update": 0.02, "q_lr": 1e-3, "model_lr": 3e-4}
EPSILON = 0.5  # and `TrainConfig.epsilon`, through `select_action`'s exploration


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("agent", ["omd", "mle", "vep"])
def test_traced_hyperparameters_compute_what_constants_do(agent, dtype, getkey):
    # What lets `train` pass these values as arrays without changing any run: the updates
    # and the actions are the same bit for bit as with the values compiled in.
    sizes = dict(agent=agent, q_hidden=8, model_hidden=8, vep_hidden=8)
    config = AgentConfig(**sizes, **TRACED)
    compiled = AgentConfig(**sizes)  # other values: they must not leak into the run

    def cast(tree):
        return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)

    state = cast(init_agent(getkey(), EnvSpec(OBS, ACTIONS), config))
    values = {name: jnp.asarray(value, dtype) for name, value in TRACED.items()}

    @eqx.filter_jit
    def with_constants(state, batch, key):
        state, metrics = agent_step(state, batch, config)
        action = select_action(
            state, batch.observation[0], key, ACTIONS, explore_probability=EPSILON, config=config
        )
        return state, metrics, action

    # As `train` makes it: in JAX's default float, whatever the data's.
    epsilon = jnp.asarray(EPSILON, jnp.result_type(float))

    @eqx.filter_jit
    def with_arrays(state, batch, key, values):
        swept = _swept_config(compiled, values)
        state, metrics = agent_step(state, batch, swept)
        action = select_action(
            state, batch.observation[0], key, ACTIONS, explore_probability=epsilon, config=swept
        )
        return state, metrics, action

    constant_state, array_state = state, state
    for batch_key, action_key in jr.split(getkey(), (3, 2)):
        batch = cast(make_batch(batch_key))
        constant_state, constant_metrics, constant_action = with_constants(
            constant_state, batch, action_key
        )
        array_state, array_metrics, array_action = with_arrays(
            array_state, batch, action_key, values
        )
        assert bool(eqx.tree_equal(array_state, constant_state))
        assert bool(eqx.tree_equal(array_metrics, constant_metrics))
        assert int(array_action) == int(constant_action)
    # Each array reaches the update: its default value instead gives another state.
    updated = with_arrays(state, batch, action_key, values)[0]
    for name in TRACED:
        default = {**values, name: jnp.asarray(getattr(compiled, name), dtype)}
        other = with_arrays(state, batch, action_key, default)[0]
        assert not bool(eqx.tree_equal(other, updated)), name


@pytest.mark.parametrize("loop", ["compiled", "host"])
def test_new_hyperparameter_values_reuse_the_compiled_run(loop, cartpole, caplog):
    if loop == "compiled":
        env, train, compiled_step = cartpole, omdx.train, "jit(_run_chunk)"
    else:
        env, train, compiled_step = "CartPole-v1", omdx.train_host, "jit(_tick)"
    run = dataclasses.replace(TINY_RUN, steps=300, random_steps=150, eval_every=150)

    def compilations(agent_config, train_config):
        caplog.clear()
        with jax.log_compiles(), caplog.at_level(logging.WARNING):
            result = train(env, agent_config, train_config, seeds=2, progress=False)
        messages = [record.getMessage() for record in caplog.records]
        return sum(f"Compiling {compiled_step}" in m for m in messages), result

    first_count, first = compilations(TINY_AGENT, run)
    new_values = dataclasses.replace(TINY_AGENT, **TRACED)
    count, second = compilations(new_values, dataclasses.replace(run, epsilon=0.3))
    assert first_count > 0 and count == 0
    assert not np.allclose(first.metrics["model_loss"][:, -1], second.metrics["model_loss"][:, -1])
    # A setting that changes the program compiles it again (the count can fail).
    assert compilations(dataclasses.replace(TINY_AGENT, q_hidden=8), run)[0] > 0


def test_bad_sweep_raises_before_training(cartpole):
    def run(sweep):
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, sweep=sweep, progress=False)

    with pytest.raises(ValueError, match="cannot vary 'q_hidden'"):
        run({"q_hidden": [8, 16]})
    with pytest.raises(ValueError, match="must list integers"):
        run({"inner_steps": [1, 2.5]})
    with pytest.raises(ValueError, match="`inner_steps` must be a Python int >= 1"):
        run({"inner_steps": [1, 0]})
    with pytest.raises(ValueError, match="equal lengths"):
        run({"q_lr": [1e-3, 3e-4], "model_lr": [1e-3]})
    with pytest.raises(ValueError, match="`q_lr` must be > 0"):
        run({"q_lr": [1e-3, -1.0]})
    with pytest.raises(ValueError, match="`epsilon` must be <= 1.0"):
        run({"epsilon": [0.1, 2.0]})
    with pytest.raises(ValueError, match=r"sweep\['gamma'\]` must be a non-empty list"):
        run({"gamma": []})
    with pytest.raises(ValueError, match=r"sweep\['gamma'\]` must be a non-empty list"):
        run({"gamma": "high"})
    with pytest.raises(ValueError, match="non-empty dict"):
        run({})


def test_a_diverging_run_loses_no_other_run(cartpole):
    # Plain SGD at a learning rate of 10^6 blows the Q-network up within the first updates.
    config = dataclasses.replace(TINY_AGENT, inner_optimiser="sgd")

    def diverging_sweep(train_config, **kwargs):
        with pytest.raises(
            omdx.TrainingDiverged, match=r"seeds \[3\] at \['q_lr=1e\+06'\]"
        ) as caught:
            omdx.train(
                cartpole,
                config,
                train_config,
                seeds=[3],
                sweep={"q_lr": [3e-4, 1e6]},
                progress=False,
                **kwargs,
            )
        return caught.value

    chunks = []
    error = diverging_sweep(TINY_RUN, on_chunk=chunks.append)
    assert isinstance(error, FloatingPointError)
    assert [list(mask) for mask in error.diverged] == [[False], [True]]
    finite, blown = error.result
    # Every evaluation up to the divergence is kept, as it was streamed.
    np.testing.assert_array_equal(finite.eval_steps, [200, 400])
    streamed = np.concatenate([chunk["eval_returns"] for chunk in chunks], axis=1)
    np.testing.assert_array_equal(
        np.concatenate([finite.eval_returns, blown.eval_returns]), streamed
    )
    for name in ("model_loss", "q_model_loss", "q_real_loss"):
        assert np.all(np.isfinite(finite.metrics[name][:, 1])), name
    assert not np.all(np.isfinite(blown.metrics["q_model_loss"][:, 1]))
    assert finite.final_state.hyperparameters["q_lr"].tolist() == [3e-4]
    # With `stop_on_divergence=False` the finite run goes on to the end (a step budget of
    # 600: the divergence, by step 400, is in the second of three chunks).
    longer = dataclasses.replace(TINY_RUN, steps=600)
    kept_going = diverging_sweep(longer, stop_on_divergence=False)
    assert [list(mask) for mask in kept_going.diverged] == [[False], [True]]
    went_on, _ = kept_going.result
    np.testing.assert_array_equal(went_on.eval_steps, [200, 400, 600])
    assert np.all(np.isfinite(went_on.metrics["q_real_loss"][:, 1:]))
    np.testing.assert_allclose(went_on.eval_returns[:, :2], finite.eval_returns, rtol=1e-5)
    assert int(went_on.final_state.agent.updates[0]) == 400


def test_shard_count_divides_the_seeds():
    devices = ["a", "b", "c", "d"]  # only their number matters
    assert [_shard_count(n, devices) for n in (1, 2, 3, 4, 6, 9, 10)] == [1, 2, 3, 4, 3, 3, 2]
    assert _shard_count(5, devices[:1]) == 1


def test_divergence_names_each_runs_first_non_finite_step():
    steps = np.array([1000, 2000, 3000])
    returns = np.array([[1.0, 2, 3], [1, 2, np.nan], [1, 2, np.inf]])
    # Run 2's loss turns non-finite before its return does.
    losses = {"model_loss": np.array([[1.0, 2, 3], [1, 2, 3], [1, np.nan, 3]])}
    message, diverged = _divergence(returns, losses, np.array([5, 6, 7]), steps)
    assert diverged.tolist() == [False, True, True]
    assert "`model_loss` for seeds [6, 7] (seed 6 by step 3000, seed 7 by step 2000)" in message
    message, _ = _divergence(returns[:2], {}, np.array([5, 6]), steps)
    assert "`eval_return` for seeds [6] by step 3000." in message
    message, diverged = _divergence(returns[:1], {}, np.array([5]), steps)
    assert message is None and not diverged.any()


def test_chunk_plan_ends_with_the_remainder():
    assert _chunk_plan(5, 2) == [2, 2, 1]
    assert _chunk_plan(4, 2) == [2, 2]
    assert _chunk_plan(3, 12) == [3]


def test_bad_configuration_raises_before_training(cartpole):
    with pytest.raises(ValueError, match="`batch_size`"):
        TrainConfig(batch_size=512, buffer_size=256)
    with pytest.raises(ValueError, match="`steps`"):
        TrainConfig(steps=0)
    # No update could be made: the random steps (or the first batch) fill the budget.
    with pytest.raises(ValueError, match="`random_steps` \\(400\\) is not below"):
        TrainConfig(steps=400, random_steps=400, eval_every=200, batch_size=32)
    with pytest.raises(ValueError, match="`batch_size` \\(400\\) is not below"):
        TrainConfig(steps=400, random_steps=100, eval_every=200, batch_size=400)
    with pytest.raises(ValueError, match="`eval_every`"):
        TrainConfig(steps=1500, eval_every=1000)
    with pytest.raises(ValueError, match="`epsilon`"):
        TrainConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="`seed_group`"):
        TrainConfig(seed_group=0)
    with pytest.raises(ValueError, match="`agent`"):
        AgentConfig(agent="sac")
    with pytest.raises(ValueError, match="`adjoint`"):
        AgentConfig(adjoint="inverse")
    with pytest.raises(ValueError, match="CartPole-v1"):
        omdx.train("NoSuchEnv-v0", TINY_AGENT, TINY_RUN, progress=False)
    with pytest.raises(ValueError, match="`seeds`"):
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=0, progress=False)
    with pytest.raises(TypeError, match="`devices`"):
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, progress=False, devices=[])
    with pytest.raises(TypeError, match="`devices`"):
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, progress=False, devices="cpu")
    with pytest.raises(ValueError, match="continuous"):
        omdx.train(omdx.envs.make("Pendulum-v1"), TINY_AGENT, TINY_RUN, progress=False)
    agent = omdx.init_agent(jax.random.PRNGKey(0), cartpole, TINY_AGENT)
    for episodes in [0, -1, 2.0]:
        with pytest.raises(ValueError, match="`episodes` must be a positive int"):
            omdx.evaluate(cartpole, agent, jax.random.PRNGKey(1), episodes)
    several = jax.tree.map(lambda x: jax.numpy.stack([x, x]) if eqx.is_array(x) else x, agent)
    with pytest.raises(ValueError, match=r"`agent` holds \(2,\) runs"):
        omdx.evaluate(cartpole, several, jax.random.PRNGKey(1), 2)


def test_host_loop_trains_on_a_gymnasium_env():
    run = TrainConfig(
        steps=300,
        random_steps=150,
        eval_every=150,
        eval_episodes=2,
        batch_size=32,
        evals_per_chunk=1,
    )
    streamed = []
    result = omdx.train_host(
        "CartPole-v1", TINY_AGENT, run, seeds=[1, 2], progress=False, on_chunk=streamed.append
    )
    assert result.eval_returns.shape == (2, 2)
    np.testing.assert_array_equal(result.seeds, [1, 2])
    np.testing.assert_array_equal(result.eval_steps, [150, 300])
    assert np.all(result.eval_returns >= 1)
    # The first window is all random steps: no update, no metric. Then 150 updates each.
    assert np.isnan(result.metrics["model_loss"][:, 0]).all()
    assert np.all(np.isfinite(result.metrics["model_loss"][:, 1]))
    np.testing.assert_array_equal(result.final_state.agent.updates, [150, 150])
    np.testing.assert_array_equal(result.final_state.buffer.size, [300, 300])
    # The seeds run in lockstep; every evaluation is streamed with all of them.
    assert [list(chunk["eval_steps"]) for chunk in streamed] == [[150], [300]]
    assert all(list(chunk["seeds"]) == [1, 2] for chunk in streamed)
    streamed_returns = np.concatenate([chunk["eval_returns"] for chunk in streamed], axis=1)
    np.testing.assert_array_equal(streamed_returns, result.eval_returns)
    # The seeds' runs differ; the same seeds give the same run; a seed alone gives its run
    # with the others (to rounding: a batch of one is not computed as a batch of two is).
    assert not np.array_equal(result.metrics["model_loss"][0], result.metrics["model_loss"][1])
    again = omdx.train_host("CartPole-v1", TINY_AGENT, run, seeds=[1, 2], progress=False)
    np.testing.assert_array_equal(again.eval_returns, result.eval_returns)
    np.testing.assert_array_equal(again.metrics["model_loss"], result.metrics["model_loss"])
    alone = omdx.train_host("CartPole-v1", TINY_AGENT, run, seeds=[2], progress=False)
    np.testing.assert_allclose(alone.eval_returns[0], result.eval_returns[1], rtol=1e-5)
    for name, values in alone.metrics.items():
        np.testing.assert_allclose(
            values[0], result.metrics[name][1], rtol=1e-4, atol=1e-6, err_msg=name
        )
    with pytest.raises(TypeError, match="`env`"):
        omdx.train_host(42, TINY_AGENT, run, progress=False)
    with pytest.raises(ValueError, match="`seeds`"):
        omdx.train_host("CartPole-v1", TINY_AGENT, run, seeds=0, progress=False)
    with pytest.raises(ValueError, match="cannot vary 'q_hidden'"):
        omdx.train_host("CartPole-v1", TINY_AGENT, run, sweep={"q_hidden": [8]}, progress=False)


def test_agents_train_on_a_continuous_env_through_discretised_actions():
    """Pendulum-v1 with 3 torques: the compiled run trains, explores every action, and its
    agent acts both in the JAX environment and through gymnasium's own wrapper."""
    env = omdx.envs.make("Pendulum-v1", action_bins=3)
    result = omdx.train(env, TINY_AGENT, TINY_RUN, seeds=2, progress=False)
    assert result.eval_returns.shape == (2, 2)
    assert np.all(np.isfinite(result.metrics["model_loss"][:, 1]))
    worst = -(np.pi**2 + 0.1 * 8**2 + 0.001 * 2**2) * 200  # Pendulum's lowest return
    assert np.all((result.eval_returns >= worst) & (result.eval_returns <= 0))
    buffer = result.final_state.buffer
    actions = np.asarray(buffer.storage.action)[:, : int(buffer.size[0])]
    assert set(np.unique(actions)) == {0, 1, 2}
    agent = jax.tree.map(lambda x: x[0] if eqx.is_array(x) else x, result.final_state.agent)
    assert jax.eval_shape(agent.q, jnp.zeros(3)).shape == (2, 3)
    # Its greedy policy acts the same in the JAX environment and through gymnasium's
    # `DiscretizeAction` (HostEnv's action_bins), from the same state.
    host = omdx.envs.HostEnv("Pendulum-v1", action_bins=3)
    host.reset(seed=0)
    state, observation = env.reset(jr.PRNGKey(3))
    host.env.unwrapped.state = np.asarray(state.state, np.float64)
    host_observation = np.asarray(observation)
    greedy = jax.jit(lambda obs: jnp.argmax(jnp.min(agent.q(obs), axis=0)))
    actions = []
    for _ in range(60):
        action = int(greedy(observation))
        assert int(greedy(jnp.asarray(host_observation))) == action
        state, out = env.step(state, jnp.asarray(action), jr.PRNGKey(0))
        host_out = host.step(action)
        np.testing.assert_allclose(out.next_observation, host_out.next_observation, atol=1e-5)
        np.testing.assert_allclose(out.reward, host_out.reward, atol=1e-5)
        observation, host_observation = out.observation, host_out.observation
        actions.append(action)
    assert len(set(actions)) > 1  # the policy does act: it is not one constant torque
    returns = omdx.evaluate(env, agent, jr.PRNGKey(0), 2)
    assert worst <= float(returns) <= 0


def test_host_loop_sweep_names_the_diverged_point_and_keeps_the_other():
    # SGD at 10^6 blows the Q-network up (as in `test_a_diverging_run_loses_no_other_run`);
    # at 10^-2 it trains. The diverged point is named; the other is the run it is alone.
    config = dataclasses.replace(TINY_AGENT, inner_optimiser="sgd")
    run = TrainConfig(steps=200, random_steps=100, eval_every=100, eval_episodes=1, batch_size=32)

    def diverging_sweep(train_config, **kwargs):
        with pytest.raises(
            omdx.TrainingDiverged, match=r"seeds \[4, 5\] at \['q_lr=1e\+06'\]"
        ) as caught:
            omdx.train_host(
                "CartPole-v1",
                config,
                train_config,
                seeds=[4, 5],
                sweep={"q_lr": [1e-2, 1e6]},
                progress=False,
                **kwargs,
            )
        return caught.value

    streamed = []
    error = diverging_sweep(run, on_chunk=streamed.append)
    finite, diverged = error.result
    np.testing.assert_array_equal(error.diverged[0], [False, False])
    np.testing.assert_array_equal(error.diverged[1], [True, True])
    assert not np.isfinite(diverged.metrics["q_real_loss"][:, -1]).any()
    # The chunk that diverged was streamed first, every run of it.
    np.testing.assert_array_equal(streamed[-1]["hyperparameters"]["q_lr"], [1e-2, 1e-2, 1e6, 1e6])
    np.testing.assert_array_equal(finite.final_state.hyperparameters["q_lr"], [1e-2, 1e-2])
    alone = omdx.train_host(
        "CartPole-v1", dataclasses.replace(config, q_lr=1e-2), run, seeds=[4, 5], progress=False
    )
    np.testing.assert_allclose(alone.eval_returns, finite.eval_returns, rtol=1e-5)
    np.testing.assert_allclose(
        alone.metrics["q_real_loss"], finite.metrics["q_real_loss"], rtol=1e-4, atol=1e-6
    )
    # Without stopping, the finite point trains to the end of a longer budget.
    longer = dataclasses.replace(run, steps=300, evals_per_chunk=1)
    went_on, _ = diverging_sweep(longer, stop_on_divergence=False).result
    np.testing.assert_array_equal(went_on.eval_steps, [100, 200, 300])
    assert np.all(np.isfinite(went_on.metrics["q_real_loss"][:, 1:]))
    np.testing.assert_array_equal(went_on.final_state.agent.updates, [200, 200])


class _Uncopyable(CartPoleEnv):
    def __deepcopy__(self, memo):
        raise RuntimeError("holds a live handle")


def test_host_loop_copies_the_environment_for_each_run():
    run = TrainConfig(steps=100, random_steps=99, eval_every=100, eval_episodes=2, batch_size=32)
    # Copies keep `gymnasium.make`'s keyword arguments: with Sutton and Barto's reward (0 a
    # step, -1 at the end) every return is -1 or 0.
    env = omdx.envs.HostEnv("CartPole-v1", sutton_barto_reward=True, max_episode_steps=20)
    result = omdx.train_host(env, TINY_AGENT, run, seeds=3, progress=False)
    assert np.all((-1 <= result.eval_returns) & (result.eval_returns <= 0))

    # A copy is the instance as it is now: attributes changed after `gymnasium.make` and
    # the user's own wrappers (which `make` could not rebuild from the spec) included.
    class DoubleReward(gymnasium.RewardWrapper):
        def reward(self, reward):
            return 2.0 * reward

    changed = gymnasium.make("CartPole-v1")
    changed.unwrapped.force_mag = 30.0
    doubled = DoubleReward(gymnasium.make("CartPole-v1"))
    for original in [omdx.envs.HostEnv(changed), omdx.envs.HostEnv(doubled)]:
        copied = _spawn(original)
        original.reset(seed=3)
        copied.reset(seed=3)
        a, b = original.step(1), copied.step(1)
        np.testing.assert_array_equal(a.next_observation, b.next_observation)
        assert a.reward == b.reward
    assert copied.step(1).reward == 2.0
    one_episode = dataclasses.replace(run, eval_episodes=1)
    result = omdx.train_host(original, TINY_AGENT, one_episode, seeds=2, progress=False)
    assert np.all(result.eval_returns % 2 == 0)  # every reward doubled, in every copy
    # An unregistered environment is deep-copied: each copy steps on its own.
    env = omdx.envs.HostEnv(CartPoleEnv(), max_episode_steps=15)
    copy = _spawn(env)
    assert copy.env is not env.env and copy.max_episode_steps == 15
    np.testing.assert_array_equal(env.reset(seed=1), copy.reset(seed=1))
    for _ in range(3):
        copy.step(0)
    assert not np.array_equal(env.step(0).observation, copy.step(0).observation)
    result = omdx.train_host(env, TINY_AGENT, run, seeds=2, progress=False)
    assert np.all((1 <= result.eval_returns) & (result.eval_returns <= 15))
    with pytest.raises(TypeError, match="Register it"):
        env = omdx.envs.HostEnv(_Uncopyable(), max_episode_steps=15)
        omdx.train_host(env, TINY_AGENT, run, seeds=2, progress=False)


def test_host_evaluation_steps_the_greedy_policy_in_gymnasium(getkey):
    # Against the same episodes stepped by hand: gymnasium's CartPole, reset with seed
    # `seed + i`, the argmax of min(Q1, Q2) at each step, until the episode ends.
    agent = init_agent(getkey(), EnvSpec(4, 2), TINY_AGENT)
    by_hand = []
    for episode in range(3):
        env = gymnasium.make("CartPole-v1", max_episode_steps=60)
        observation, _ = env.reset(seed=7 + episode)
        total, done = 0.0, False
        while not done:
            q = np.asarray(agent.q(jnp.asarray(observation, jnp.float64)))
            action = int(np.argmax(q.min(axis=0)))
            observation, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        by_hand.append(total)
    env = omdx.envs.HostEnv("CartPole-v1", max_episode_steps=60)
    mean_return = omdx.evaluate_host(env, agent, episodes=3, seed=7)
    assert isinstance(mean_return, float)
    assert mean_return == pytest.approx(np.mean(by_hand), abs=0)
    assert len(set(by_hand)) > 1  # the episodes differ, so the seeds reached the resets
    assert omdx.evaluate_host("CartPole-v1", agent, episodes=1, seed=7) == by_hand[0]

    several = jax.tree.map(lambda x: jnp.stack([x, x]) if eqx.is_array(x) else x, agent)
    with pytest.raises(ValueError, match="`agent` holds"):
        omdx.evaluate_host(env, several, episodes=2)
    with pytest.raises(ValueError, match="`episodes` must be a positive int"):
        omdx.evaluate_host(env, agent, episodes=0)
    with pytest.raises(ValueError, match="`seed`"):
        omdx.evaluate_host(env, agent, seed=-1)
    with pytest.raises(TypeError, match="omdx.evaluate`"):
        omdx.evaluate_host(omdx.envs.make("CartPole-v1"), agent)
    with pytest.raises(TypeError, match="omdx.evaluate_host"):
        omdx.evaluate(env, agent, jr.PRNGKey(0), 2)
    # NumPy integers are integers; an environment the agent does not fit is named.
    assert omdx.evaluate_host(env, agent, episodes=np.int64(1), seed=np.int64(7)) == by_hand[0]
    with pytest.raises(ValueError, match="continuous actions"):
        omdx.evaluate_host("Pendulum-v1", agent)
    with pytest.raises(ValueError, match="`agent` does not fit `env`: .* 6 observations"):
        omdx.evaluate_host(omdx.envs.HostEnv("CartPole-v1", distractors=2), agent)
    with pytest.raises(ValueError, match="`agent` does not fit `env`: .* 6 observations"):
        omdx.evaluate(omdx.envs.make("CartPole-v1", distractors=2), agent, jr.PRNGKey(0), 2)
    assert np.isfinite(omdx.evaluate("CartPole-v1", agent, jr.PRNGKey(0), 2))  # an id works


def test_host_loop_hyperparameters_keep_the_agents_precision():
    # A float32 environment under float64 (to halve the buffer): gamma and the learning
    # rates are made in the agent's float64, not rounded to the observations' float32.
    run = TrainConfig(steps=400, random_steps=200, eval_every=200, eval_episodes=1, batch_size=32)
    env = omdx.envs.HostEnv("CartPole-v1", dtype=np.float32)
    result = omdx.train_host(env, TINY_AGENT, run, progress=False)
    for name in ("gamma", "q_lr", "model_lr", "target_update", "epsilon"):
        value = result.final_state.hyperparameters[name]
        assert value.dtype == np.float64, name
    assert float(result.final_state.hyperparameters["gamma"][0]) == TINY_AGENT.gamma


def _streamed_run(train, env, run, checkpoint, interrupt_at=None):
    """`train(env, TINY_AGENT, run, seeds=2, checkpoint=checkpoint)` (`omdx.train` or
    `omdx.train_host`) and the evaluation steps of each chunk it streamed; interrupted
    (`KeyboardInterrupt`) when a chunk ends at `interrupt_at`."""
    streamed = []

    def on_chunk(chunk):
        streamed.append(chunk["eval_steps"].tolist())
        if streamed[-1][-1] == interrupt_at:
            raise KeyboardInterrupt

    result = train(
        env, TINY_AGENT, run, seeds=2, progress=False, checkpoint=checkpoint, on_chunk=on_chunk
    )
    return result, streamed


def _assert_same_run(result, whole):
    """`result` is `whole` bit for bit: history, metrics and final state. The states are
    compared on the host: where they are (split over the two CPU devices) a comparison is a
    cross-device reduction, which can stall on 2 busy cores."""
    np.testing.assert_array_equal(result.eval_steps, whole.eval_steps)
    np.testing.assert_array_equal(result.eval_returns, whole.eval_returns)
    for name, values in whole.metrics.items():
        np.testing.assert_array_equal(result.metrics[name], values, err_msg=name)
    leaves = [jax.tree.leaves(eqx.filter(r.final_state, eqx.is_array)) for r in (result, whole)]
    assert len(leaves[0]) == len(leaves[1])
    for got, expected in zip(*leaves):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_a_run_continues_from_its_checkpoint_as_if_never_stopped(cartpole, tmp_path):
    run = dataclasses.replace(TINY_RUN, steps=800, buffer_size=800)  # 4 chunks of 200
    whole = omdx.train(cartpole, TINY_AGENT, run, seeds=2, progress=False)
    path = tmp_path / "run.npz"

    def continued(interrupt_at=None):
        return _streamed_run(omdx.train, cartpole, run, path, interrupt_at)

    with pytest.raises(KeyboardInterrupt):  # the third chunk is saved before `on_chunk`
        continued(interrupt_at=600)
    resumed, chunks = continued()
    assert chunks == [[200, 400, 600], [800]]

    assert_same_run = ft.partial(_assert_same_run, whole=whole)
    assert_same_run(resumed)
    # A finished checkpoint is the finished run: nothing left to train.
    finished, chunks = continued()
    assert chunks == [[200, 400, 600, 800]]
    assert_same_run(finished)
    with pytest.raises(ValueError, match=r"holds 800 steps, more than `steps` \(600\)"):
        shorter = dataclasses.replace(run, steps=600)
        omdx.train(cartpole, TINY_AGENT, shorter, seeds=2, progress=False, checkpoint=path)
    # A shorter run, continued to more steps, is the longer run too.
    shorter = tmp_path / "shorter.npz"
    half = dataclasses.replace(run, steps=400)
    omdx.train(cartpole, TINY_AGENT, half, seeds=2, progress=False, checkpoint=shorter)
    assert_same_run(
        omdx.train(cartpole, TINY_AGENT, run, seeds=2, progress=False, checkpoint=shorter)
    )


class _ScaledReward(omdx.envs.AbstractEnv):
    """CartPole with its rewards scaled by a static setting."""

    env: omdx.envs.AbstractEnv
    scale: float = eqx.field(static=True)

    observation_size = property(lambda self: self.env.observation_size)
    num_actions = property(lambda self: self.env.num_actions)
    action_size = property(lambda self: self.env.action_size)
    action_low = property(lambda self: self.env.action_low)
    action_high = property(lambda self: self.env.action_high)
    max_episode_steps = property(lambda self: self.env.max_episode_steps)

    def reset(self, key):
        return self.env.reset(key)

    def step(self, state, action, key):
        state, step = self.env.step(state, action, key)
        return state, dataclasses.replace(step, reward=self.scale * step.reward)


def test_a_checkpoint_of_other_settings_is_refused(cartpole, tmp_path):
    path = tmp_path / "run.npz"
    omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=2, progress=False, checkpoint=path)

    def resume(agent=TINY_AGENT, run=TINY_RUN, seeds=2, **kwargs):
        omdx.train(cartpole, agent, run, seeds=seeds, progress=False, checkpoint=path, **kwargs)

    with pytest.raises(ValueError, match=r"agent_config.q_lr: 0.0003 in the checkpoint, 0.001 now"):
        resume(agent=dataclasses.replace(TINY_AGENT, q_lr=1e-3))
    with pytest.raises(ValueError, match=r"seeds: \[0, 1\] in the checkpoint, \[0, 5\] now"):
        resume(seeds=[0, 5])
    with pytest.raises(ValueError, match=r"\(sweep.q_lr: None in the checkpoint, \[0.0003\] now\)"):
        resume(sweep={"q_lr": [3e-4]})
    with pytest.raises(ValueError, match=r"buffer capacity: 400 in the checkpoint, 600 now"):
        resume(run=dataclasses.replace(TINY_RUN, steps=600))
    noisy = omdx.envs.make("CartPole-v1", distractors=1)
    with pytest.raises(ValueError, match=r"env: FuncEnvAdapter\(CartPoleFunctional\), obs"):
        omdx.train(noisy, TINY_AGENT, TINY_RUN, seeds=2, progress=False, checkpoint=path)
    # Other dynamics, same sizes: CartPole with a lighter gravity.
    light = eqx.tree_at(lambda env: env.params, cartpole, cartpole.params.replace(gravity=3.0))
    with pytest.raises(ValueError, match=r"env parameters \(digest\)"):
        omdx.train(light, TINY_AGENT, TINY_RUN, seeds=2, progress=False, checkpoint=path)
    # A setting in a static field (not a PyTree leaf) counts too.
    scaled = _ScaledReward(cartpole, scale=100.0)
    unscaled = omdx.envs.make("CartPole-v1")  # built again: the same digest
    omdx.train(unscaled, TINY_AGENT, TINY_RUN, seeds=2, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match=r"env parameters \(digest\)"):
        omdx.train(scaled, TINY_AGENT, TINY_RUN, seeds=2, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="the folder .* does not exist"):  # before training
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, checkpoint=tmp_path / "no" / "run.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not an omdx checkpoint"):
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, progress=False, checkpoint=junk)
    # The host loop does not continue it (nor `train` a checkpoint of `train_host`).
    written_by = r"was written by `omdx.train` \(a JAX environment\), not `omdx.train_host`"
    with pytest.raises(ValueError, match=written_by):
        omdx.train_host("CartPole-v1", TINY_AGENT, TINY_RUN, seeds=2, checkpoint=path)
    # The same settings, written differently, continue it: np.float64(3e-4) is 3e-4.
    same = dataclasses.replace(TINY_AGENT, q_lr=np.float64(3e-4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same layout: no warning
        again = omdx.train(cartpole, same, TINY_RUN, seeds=2, progress=False, checkpoint=path)
    assert again.eval_steps.tolist() == [200, 400]


def test_a_checkpoint_continued_on_another_layout_says_so(cartpole, tmp_path):
    # Two seeds on one device: vmapped together by default, one after the other in seed
    # groups of 1, which changes the rounding (not the settings): continued, with a warning.
    path, one_device = tmp_path / "run.npz", jax.devices()[:1]
    half = dataclasses.replace(TINY_RUN, buffer_size=600)
    run = dataclasses.replace(half, steps=600)

    def train(train_config, devices=one_device):
        kwargs = dict(seeds=2, progress=False, checkpoint=path, devices=devices)
        return omdx.train(cartpole, TINY_AGENT, train_config, **kwargs)

    train(half)
    regrouped = dataclasses.replace(run, seed_group=1)
    with pytest.warns(UserWarning, match=r"seed group: None in the checkpoint, 1 now"):
        assert train(regrouped).eval_steps.tolist() == [200, 400, 600]
    with pytest.warns(UserWarning, match=r"devices: 1 in the checkpoint, 2 now"):
        train(dataclasses.replace(run, seed_group=1), devices=jax.devices())
    # A group as large as the seeds is no group: the same computation, no warning.
    path.unlink()
    train(half)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(dataclasses.replace(run, seed_group=2))


def test_a_checkpoint_that_stopped_on_a_divergence_stays_stopped(cartpole, tmp_path):
    # SGD at 10^6 blows the Q-network up in the first window with updates. The run stops
    # there; running the same call again must not train on (once per retry).
    blowing_up = dataclasses.replace(TINY_AGENT, inner_optimiser="sgd", q_lr=1e6)
    run = dataclasses.replace(TINY_RUN, steps=800)
    path = tmp_path / "run.npz"
    for _ in range(2):
        with pytest.raises(omdx.TrainingDiverged) as error:
            omdx.train(cartpole, blowing_up, run, seeds=2, progress=False, checkpoint=path)
        assert error.value.result.eval_steps.tolist() == [200, 400]


# 6 evaluations of 75 steps, in chunks of 3: the chunks end at steps 225 and 450 (and 150
# for a run of 150 steps), in the middle of CartPole's ~20-step episodes.
HOST_RUN = TrainConfig(
    steps=450,
    random_steps=100,
    eval_every=75,
    eval_episodes=2,
    batch_size=32,
    buffer_size=450,
    evals_per_chunk=3,
)


def _distracted_cartpole(**kwargs):
    # The distractors draw from their own generator, which a checkpoint must keep too.
    return omdx.envs.HostEnv("CartPole-v1", distractors=2, **kwargs)


def test_a_host_run_continues_from_its_checkpoint_as_if_never_stopped(tmp_path):
    whole = omdx.train_host(_distracted_cartpole(), TINY_AGENT, HOST_RUN, seeds=2, progress=False)
    path = tmp_path / "run.npz"

    def continued(run=HOST_RUN, checkpoint=path, interrupt_at=None):
        # A fresh environment each time: a continued run steps its checkpoint's.
        return _streamed_run(omdx.train_host, _distracted_cartpole(), run, checkpoint, interrupt_at)

    assert_same_run = ft.partial(_assert_same_run, whole=whole)

    def assert_mid_episode(checkpoint):
        """The checkpoint caught both environments mid-episode: their state is needed."""
        with np.load(checkpoint) as data:
            envs = pickle.loads(data["extra_envs"].tobytes())
        assert [e.env._elapsed_steps > 0 for e in envs] == [True, True]

    with pytest.raises(KeyboardInterrupt):  # the first chunk is saved before `on_chunk`
        continued(interrupt_at=225)
    assert_mid_episode(path)
    resumed, chunks = continued()
    assert chunks == [[75, 150, 225], [300, 375, 450]]
    assert_same_run(resumed)
    # A finished checkpoint is the finished run: nothing left to train.
    finished, chunks = continued()
    assert chunks == [[75, 150, 225, 300, 375, 450]]
    assert_same_run(finished)
    with pytest.raises(ValueError, match=r"holds 450 steps, more than `steps` \(300\)"):
        continued(run=dataclasses.replace(HOST_RUN, steps=300))
    # A shorter run, continued to more steps, is the longer run too.
    shorter = tmp_path / "shorter.npz"
    continued(run=dataclasses.replace(HOST_RUN, steps=150), checkpoint=shorter)
    assert_mid_episode(shorter)
    longer, chunks = continued(checkpoint=shorter)
    assert chunks == [[75, 150], [225, 300, 375], [450]]
    assert_same_run(longer)


class _Locked(CartPoleEnv):
    """A CartPole holding a lock, which cannot be pickled; it counts its resets."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.resets = 0

    def reset(self, **kwargs):
        self.resets += 1
        return super().reset(**kwargs)


class _LockedOnReset(CartPoleEnv):
    """A CartPole that takes a lock (which cannot be pickled) when it resets."""

    def reset(self, **kwargs):
        self.lock = threading.Lock()
        return super().reset(**kwargs)


def test_a_host_checkpoint_of_other_settings_is_refused(cartpole, tmp_path):
    path = tmp_path / "run.npz"
    run = TrainConfig(steps=100, random_steps=50, eval_every=50, eval_episodes=1, batch_size=32)
    kwargs = dict(seeds=2, progress=False, checkpoint=path)
    omdx.train_host(_distracted_cartpole(), TINY_AGENT, run, **kwargs)

    def resume(env, agent=TINY_AGENT, seeds=2):
        omdx.train_host(env, agent, run, seeds=seeds, progress=False, checkpoint=path)

    with pytest.raises(ValueError, match=r"\(env.distractors: 2 in the checkpoint, 1 now; env.obs"):
        resume(omdx.envs.HostEnv("CartPole-v1", distractors=1))
    limit = r"\(env.max_episode_steps: 500 in the checkpoint, 100 now; env parameters"
    with pytest.raises(ValueError, match=limit):
        resume(_distracted_cartpole(max_episode_steps=100))
    # Another reward, same sizes: a keyword argument of `gymnasium.make`.
    with pytest.raises(ValueError, match=r"\(env parameters \(digest\): \w+ in the checkpoint"):
        resume(_distracted_cartpole(sutton_barto_reward=True))
    with pytest.raises(ValueError, match=r"env.id: CartPole-v1 in the checkpoint, Acrobot-v1 now"):
        resume(omdx.envs.HostEnv("Acrobot-v1", distractors=2))
    with pytest.raises(ValueError, match=r"env.dtype: float64 in the checkpoint, float32 now"):
        resume(_distracted_cartpole(dtype=np.float32))
    with pytest.raises(ValueError, match=r"agent_config.q_lr: 0.0003 in the checkpoint, 0.001 now"):
        resume(_distracted_cartpole(), agent=dataclasses.replace(TINY_AGENT, q_lr=1e-3))
    with pytest.raises(ValueError, match=r"seeds: \[0, 1\] in the checkpoint, \[0, 5\] now"):
        resume(_distracted_cartpole(), seeds=[0, 5])
    # The environment's settings count, not its state: one stepped before continues it.
    stepped = _distracted_cartpole()
    stepped.reset(seed=9)
    stepped.step(0)
    assert omdx.train_host(stepped, TINY_AGENT, run, **kwargs).eval_steps.tolist() == [50, 100]
    # `train` does not continue it (nor `train_host` a checkpoint of `train`: see
    # `test_a_checkpoint_of_other_settings_is_refused`).
    written_by = r"was written by `omdx.train_host` \(a gymnasium environment stepped in Python\)"
    with pytest.raises(ValueError, match=written_by + r", not `omdx.train`"):
        omdx.train(cartpole, TINY_AGENT, run, seeds=2, progress=False, checkpoint=path)
    # An environment that cannot be pickled cannot be saved: refused before any work.
    locked = _Locked()
    unpicklable = r"environment _Locked .* cannot be pickled .*_thread.lock.*cannot be saved"
    with pytest.raises(ValueError, match=unpicklable):
        omdx.train_host(
            omdx.envs.HostEnv(locked, max_episode_steps=50),
            TINY_AGENT,
            run,
            checkpoint=tmp_path / "locked.npz",
        )
    assert locked.resets == 0 and not (tmp_path / "locked.npz").exists()
    # Nor one that opens what cannot be pickled when it resets (checked on a copy).
    with pytest.raises(ValueError, match=r"_LockedOnReset .* cannot be pickled"):
        omdx.train_host(
            omdx.envs.HostEnv(_LockedOnReset(), max_episode_steps=50),
            TINY_AGENT,
            run,
            checkpoint=tmp_path / "locked.npz",
        )
    assert not (tmp_path / "locked.npz").exists()


def test_a_host_checkpoint_that_stopped_on_a_divergence_stays_stopped(tmp_path):
    # SGD at 10^6 blows the Q-network up in the first window with updates (steps 100 to
    # 200). The run stops there; running the same call again must not train on.
    blowing_up = dataclasses.replace(TINY_AGENT, inner_optimiser="sgd", q_lr=1e6)
    run = TrainConfig(steps=400, random_steps=100, eval_every=100, eval_episodes=1, batch_size=32)
    run = dataclasses.replace(run, evals_per_chunk=1)
    path = tmp_path / "run.npz"
    for attempt in range(2):
        streamed = []
        with pytest.raises(omdx.TrainingDiverged) as error:
            omdx.train_host(
                "CartPole-v1",
                blowing_up,
                run,
                seeds=2,
                progress=False,
                checkpoint=path,
                on_chunk=lambda chunk: streamed.append(chunk["eval_steps"].tolist()),
            )
        result = error.value.result
        assert result.eval_steps.tolist() == [100, 200]
        np.testing.assert_array_equal(result.final_state.agent.updates, [100, 100])
        # The second time, the history is streamed as one chunk and nothing is trained.
        assert streamed == ([[100], [200]] if attempt == 0 else [[100, 200]])
