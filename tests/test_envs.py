import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.experimental.functional import FuncEnv

import omdx
from omdx.envs import (
    AbstractEnv,
    DiscreteActions,
    discretize_actions,
    distractors,
    EnvStep,
    FuncEnvAdapter,
    HostEnv,
    make,
)

from .helpers import tree_allclose


@eqx.filter_jit
def _rollout(env, policy, key, num_steps):
    """`lax.scan` rollout from `reset`: the first observation, the `EnvStep`s and the
    episode step counter after each step. Jitted once per (env, policy, num_steps)."""
    reset_key, key = jax.random.split(key)
    state, obs = env.reset(reset_key)

    def body(carry, key):
        state, obs = carry
        action_key, step_key = jax.random.split(key)
        state, out = env.step(state, policy(obs, action_key), step_key)
        return (state, out.observation), (out, state.time)

    _, (outs, times) = jax.lax.scan(body, (state, obs), jax.random.split(key, num_steps))
    return obs, outs, times


@eqx.filter_jit
def _reset(env, key):
    return env.reset(key)


@eqx.filter_jit
def _step(env, state, action, key):
    return env.step(state, action, key)


def _balance(obs, key):
    """A linear controller that keeps CartPole up for 500+ steps."""
    x, x_dot, theta, theta_dot = obs[0], obs[1], obs[2], obs[3]
    return (theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0).astype(jnp.int32)


def _random_discrete(obs, key):
    return jax.random.randint(key, (), 0, 2)


def _random_torque(obs, key):
    return jax.random.uniform(key, (1,), minval=-2.0, maxval=2.0)


def _push_right(obs, key):
    return jnp.array(2)


def test_cartpole_matches_gymnasium():
    env = make("CartPole-v1")
    assert isinstance(env, AbstractEnv)
    assert (env.observation_size, env.num_actions, env.action_size) == (4, 2, 1)
    assert env.max_episode_steps == 500
    assert env.action_low is None and env.action_high is None
    host = gymnasium.make("CartPole-v1")
    host.reset(seed=0)
    rng = np.random.default_rng(0)
    num_episodes = 0
    for key in jax.random.split(jax.random.PRNGKey(0), 4):
        reset_key, key = jax.random.split(key)
        state, obs = _reset(env, reset_key)
        assert obs.dtype == jnp.float64
        host.reset()
        host.unwrapped.state = np.asarray(state.state, dtype=np.float64)
        for t in range(500):
            action = int(rng.integers(2))
            key, step_key = jax.random.split(key)
            state, out = _step(env, state, jnp.asarray(action), step_key)
            host_obs, host_reward, host_terminated, host_truncated, _ = host.step(action)
            np.testing.assert_allclose(out.next_observation, host_obs, rtol=1e-5, atol=1e-5)
            assert float(out.reward) == host_reward
            assert bool(out.terminated) == host_terminated
            assert not out.truncated and not host_truncated
            if host_terminated:
                num_episodes += 1
                assert int(state.time) == 0
                assert not np.allclose(out.observation, out.next_observation)
                break
            np.testing.assert_array_equal(out.observation, out.next_observation)
            assert int(state.time) == t + 1
        else:
            pytest.fail("random actions should not balance CartPole for 500 steps")
    assert num_episodes == 4


def test_cartpole_truncation_and_autoreset(getkey):
    env = make("CartPole-v1")
    state, _ = _reset(env, getkey())
    key = getkey()
    # One step before the limit: not truncated.
    state_498 = eqx.tree_at(lambda s: s.time, state, jnp.array(498, jnp.int32))
    new_state, out = _step(env, state_498, jnp.array(1), key)
    assert not out.truncated and not out.terminated and int(new_state.time) == 499
    # The step that reaches 500 is truncated: next_observation is s', observation a new s0.
    state_499 = eqx.tree_at(lambda s: s.time, state, jnp.array(499, jnp.int32))
    new_state, out_499 = _step(env, state_499, jnp.array(1), key)
    assert out_499.truncated and not out_499.terminated
    np.testing.assert_array_equal(out_499.next_observation, out.next_observation)
    assert int(new_state.time) == 0
    np.testing.assert_array_equal(out_499.observation, new_state.state)
    assert np.all(np.abs(out_499.observation) <= 0.05)
    assert not np.allclose(out_499.observation, out_499.next_observation)
    # A terminating step: the pole falls past 12 degrees.
    falling = eqx.tree_at(lambda s: s.state, state, jnp.array([0.0, 0.0, 0.2, 1.0]))
    new_state, out = _step(env, falling, jnp.array(0), key)
    assert out.terminated and not out.truncated and float(out.reward) == 1.0
    assert out.next_observation[2] > 0.2
    assert int(new_state.time) == 0 and np.all(np.abs(out.observation) <= 0.05)


def test_scan_600_steps_truncates_at_500(getkey):
    env = make("CartPole-v1")
    _, outs, times = _rollout(env, _balance, getkey(), 600)
    assert outs.observation.shape == (600, 4) and outs.observation.dtype == jnp.float64
    assert not np.any(outs.terminated)
    np.testing.assert_array_equal(np.nonzero(np.asarray(outs.truncated))[0], [499])
    assert int(times[499]) == 0 and int(times[-1]) == 100 and int(times.max()) == 499


def test_random_scan_episode_bookkeeping(getkey):
    env = make("CartPole-v1")
    _, outs, times = _rollout(env, _random_discrete, getkey(), 600)
    done = np.asarray(outs.terminated | outs.truncated)
    assert done.sum() > 5 and not np.any(outs.truncated)
    np.testing.assert_array_equal(np.asarray(times) == 0, done)
    np.testing.assert_array_equal(outs.observation[~done], outs.next_observation[~done])
    assert np.all(np.asarray(outs.reward) == 1.0)


def test_jit_vmap_matches_loop():
    env = make("CartPole-v1")
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    batched = eqx.filter_jit(eqx.filter_vmap(_rollout, in_axes=(None, None, 0, None)))(
        env, _random_discrete, keys, 600
    )
    looped = [_rollout(env, _random_discrete, key, 600) for key in keys]
    assert tree_allclose(batched, jax.tree.map(lambda *xs: jnp.stack(xs), *looped))
    obs, outs, _ = batched
    assert isinstance(outs, EnvStep)
    assert obs.shape == (4, 4) and outs.observation.shape == (4, 600, 4)
    assert not np.allclose(outs.observation[0], outs.observation[1])


def test_distractors(getkey):
    n = 16
    plain = make("CartPole-v1")
    noisy = make("CartPole-v1", distractors=n)
    assert noisy.observation_size == 4 + n and noisy.num_actions == 2
    assert noisy.max_episode_steps == 500
    key = getkey()
    # The random policy ignores observations, so both runs take the same actions.
    obs_plain, outs_plain, _ = _rollout(plain, _random_discrete, key, 600)
    obs_noisy, outs_noisy, _ = _rollout(noisy, _random_discrete, key, 600)
    np.testing.assert_array_equal(obs_noisy[:4], obs_plain)
    np.testing.assert_array_equal(outs_noisy.observation[:, :4], outs_plain.observation)
    np.testing.assert_array_equal(outs_noisy.next_observation[:, :4], outs_plain.next_observation)
    np.testing.assert_array_equal(outs_noisy.reward, outs_plain.reward)
    np.testing.assert_array_equal(outs_noisy.terminated, outs_plain.terminated)
    noise = np.asarray(outs_noisy.next_observation[:, 4:])
    assert noise.dtype == np.float64
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    assert np.all(noise[1:] != noise[:-1])
    assert not np.allclose(obs_noisy[4:], noise[0])
    # Within an episode the observation acted on next is the transition's s' (same noise);
    # after an autoreset the fresh episode's observation has fresh noise.
    done = np.asarray(outs_noisy.terminated | outs_noisy.truncated)
    assert done.sum() > 5
    np.testing.assert_array_equal(outs_noisy.observation[~done], outs_noisy.next_observation[~done])
    assert np.all(outs_noisy.observation[done, 4:] != outs_noisy.next_observation[done, 4:])


def test_distractors_arguments():
    env = make("CartPole-v1")
    assert distractors(env, 0) is env
    assert make("CartPole-v1", distractors=0).observation_size == 4
    with pytest.raises(ValueError, match="`n`"):
        distractors(env, -1)
    with pytest.raises(ValueError, match="`distractors` must be a non-negative int"):
        make("CartPole-v1", distractors=-1)
    # Distractors on distractors: fresh noise in every added dimension (two layers drawing
    # from the same keys would repeat the first layer's columns).
    nested = distractors(make("CartPole-v1", distractors=2), 3)
    assert nested.observation_size == 4 + 5
    _, observation = nested.reset(jax.random.PRNGKey(0))
    noise = np.asarray(observation[4:])
    assert len(np.unique(noise)) == 5
    # TypeError: from runtime type checking (`--jaxtyping-packages`), if on.
    with pytest.raises((TypeError, ValueError), match="'n'|`n`"):
        distractors(env, 1.5)


def test_pendulum(getkey):
    env = make("Pendulum-v1")
    assert env.num_actions is None and env.action_size == 1 and env.observation_size == 3
    assert env.max_episode_steps == 200
    np.testing.assert_array_equal(env.action_low, [-2.0])
    np.testing.assert_array_equal(env.action_high, [2.0])

    _, outs, times = _rollout(env, _random_torque, getkey(), 450)
    assert outs.observation.shape == (450, 3) and outs.reward.dtype == jnp.float64
    assert not np.any(outs.terminated)
    np.testing.assert_array_equal(np.nonzero(np.asarray(outs.truncated))[0], [199, 399])
    assert int(times.max()) == 199
    assert np.all(np.asarray(outs.reward) <= 0.0)


def test_pendulum_matches_gymnasium(getkey):
    env = make("Pendulum-v1")
    host = gymnasium.make("Pendulum-v1")
    host.reset(seed=0)
    state, _ = _reset(env, getkey())
    host.unwrapped.state = np.asarray(state.state, dtype=np.float64)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.uniform(-2.5, 2.5, size=(1,)).astype(np.float32)
        state, out = _step(env, state, jnp.asarray(action), getkey())
        host_obs, host_reward, *_ = host.step(action)
        np.testing.assert_allclose(out.next_observation, host_obs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.reward, host_reward, rtol=1e-5, atol=1e-5)


class _TwoTorques(gymnasium.Env):
    """A gymnasium env with a 2-D action box, for the order of discretised actions."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Box(np.float32([-1.0, 0.0]), np.float32([1.0, 3.0]))


@pytest.mark.parametrize("bins", [5, 4, (2, 3)])
def test_discretized_actions_are_gymnasiums(bins):
    """`discretize_actions` gives the continuous actions of gymnasium's `DiscretizeAction`,
    in its order, and `HostEnv(action_bins=)` is that wrapper."""
    if isinstance(bins, tuple):
        box = _TwoTorques().action_space
        table = omdx.envs._discrete.action_bin_centres(box.low, box.high, bins)
        reference = gymnasium.wrappers.DiscretizeAction(_TwoTorques(), bins)
    else:
        env = make("Pendulum-v1", action_bins=bins)
        assert isinstance(env, DiscreteActions) and env.num_actions == bins
        assert (env.action_size, env.action_low, env.action_high) == (1, None, None)
        table = np.asarray(env.actions)
        reference = gymnasium.wrappers.DiscretizeAction(gymnasium.make("Pendulum-v1"), bins)
        host = HostEnv("Pendulum-v1", action_bins=bins)
        assert host.num_actions == bins and host.max_episode_steps == 200
        assert isinstance(host.env, gymnasium.wrappers.DiscretizeAction)
    expected = np.stack([reference.action(i) for i in range(reference.action_space.n)])
    assert table.shape == (reference.action_space.n, expected.shape[1])
    # gymnasium computes the centres in float32; omdx in float64, exact for these bounds.
    np.testing.assert_allclose(table, expected, rtol=0, atol=1e-6)
    if bins == 5:
        np.testing.assert_array_equal(table[:, 0], [-1.6, -0.8, 0.0, 0.8, 1.6])


def test_discrete_actions_step_the_wrapped_env_with_their_table(getkey):
    pendulum = make("Pendulum-v1")
    env = DiscreteActions(pendulum, [-2.0, 0.5, 2.0])
    assert env.actions.shape == (3, 1) and env.num_actions == 3
    state, obs = env.reset(key := getkey())
    np.testing.assert_array_equal(obs, pendulum.reset(key)[1])
    for index in [0, 2, 1, 1, 0]:
        key = getkey()
        state_wrapped, out = env.step(state, jnp.asarray(index), key)
        state_direct, direct = pendulum.step(state, env.actions[index], key)
        assert eqx.tree_equal(out, direct) and eqx.tree_equal(state_wrapped, state_direct)
        state = state_wrapped
    # Wrappers compose: distractors on top keep the table, the noise is appended. Noise
    # added over a table over noise is one layer of noise (two would repeat each other).
    noisy = distractors(env, 2)
    assert (noisy.num_actions, noisy.observation_size) == (3, 5)
    twice = distractors(discretize_actions(make("Pendulum-v1", distractors=2), 5), 3)
    assert (twice.num_actions, twice.observation_size) == (5, 8)
    noise = np.asarray(twice.reset(getkey())[1][3:])
    assert len(np.unique(noise)) == 5
    # Through gymnasium's own wrapper, the same index gives the same dynamics.
    env = make("Pendulum-v1", action_bins=5)
    host = gymnasium.wrappers.DiscretizeAction(gymnasium.make("Pendulum-v1"), 5)
    host.reset(seed=0)
    state, _ = _reset(env, getkey())
    host.unwrapped.state = np.asarray(state.state, dtype=np.float64)
    for index in np.random.default_rng(0).integers(0, 5, size=40):
        state, out = _step(env, state, jnp.asarray(index), getkey())
        host_obs, host_reward, *_ = host.step(int(index))
        np.testing.assert_allclose(out.next_observation, host_obs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.reward, host_reward, rtol=1e-5, atol=1e-5)


def test_discretizing_bad_input_is_named():
    pendulum = make("Pendulum-v1")
    with pytest.raises(ValueError, match="already has 2 discrete actions"):
        discretize_actions(make("CartPole-v1"), 3)
    with pytest.raises(ValueError, match="already has 2 discrete actions"):
        make("CartPole-v1", action_bins=3)
    with pytest.raises(ValueError, match="already has 3 discrete ones"):
        HostEnv("Acrobot-v1", action_bins=3)
    for bins in [1, 0, 2.5, (3, 3), True]:
        with pytest.raises(ValueError, match="`bins` must be a positive int"):
            discretize_actions(pendulum, bins)
    with pytest.raises(ValueError, match="`bins` must be a positive int"):
        HostEnv("Pendulum-v1", action_bins=(2, 2))
    assert HostEnv("Pendulum-v1", action_bins=np.int64(4)).num_actions == 4
    with pytest.raises(TypeError, match="HostEnv"):
        discretize_actions(HostEnv("Pendulum-v1"), 3)
    with pytest.raises(ValueError, match=r"shape \[num_actions >= 2, 1\]"):
        DiscreteActions(pendulum, [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"shape \[num_actions >= 2, 1\]"):
        DiscreteActions(pendulum, [1.0])
    with pytest.raises(ValueError, match=r"`actions\[1\]` = \[2.5\] is not a finite action"):
        DiscreteActions(pendulum, [0.0, 2.5])
    with pytest.raises(ValueError, match=r"`actions\[0\]` = \[nan\]"):
        DiscreteActions(pendulum, [np.nan, 0.0])
    unbounded = FuncEnvAdapter(_UnboundedPush(), max_episode_steps=10)
    with pytest.raises(ValueError, match="finite action bounds"):
        discretize_actions(unbounded, 3)
    # An unbounded box still takes a table of finite actions.
    assert DiscreteActions(unbounded, [-1.0, 1.0]).num_actions == 2


class _RandomWalk(FuncEnv):
    """A user-written FuncEnv: noisy 1-D walk, terminal outside [-1, 1]; no params."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
    action_space = spaces.Discrete(3)

    def initial(self, rng, params=None):
        return jnp.zeros(())

    def transition(self, state, action, rng, params=None):
        return state + 0.1 * (action - 1) + 0.05 * jax.random.normal(rng)

    def observation(self, state, rng, params=None):
        return state[None]

    def reward(self, state, action, next_state, rng, params=None):
        return -jnp.abs(next_state)

    def terminal(self, state, rng, params=None):
        return jnp.abs(state) > 1.0


class _UnboundedPush(_RandomWalk):
    """Continuous, unbounded actions."""

    action_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)

    def transition(self, state, action, rng, params=None):
        return state + 0.1 * action[0]


def test_user_func_env(getkey):
    env = FuncEnvAdapter(_RandomWalk(), max_episode_steps=30)
    assert env.num_actions == 3 and env.observation_size == 1 and env.params is None
    _, outs, times = _rollout(env, _push_right, getkey(), 100)
    assert np.any(outs.terminated) and int(times.max()) <= 29
    np.testing.assert_allclose(outs.reward, -np.abs(outs.next_observation[:, 0]))


class _WrongSpace(_RandomWalk):
    """Declares two observations but returns one."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)


class _VectorReward(_RandomWalk):
    def reward(self, state, action, next_state, rng, params=None):
        return jnp.stack([state, next_state])


def test_a_func_env_that_breaks_its_own_spaces_is_named(getkey):
    wrong = FuncEnvAdapter(_WrongSpace(), max_episode_steps=30)
    with pytest.raises(ValueError, match=r"`func_env.observation` returned shape \(1,\)"):
        wrong.reset(getkey())
    with pytest.raises(ValueError, match=r"`func_env.observation` returned shape \(1,\)"):
        omdx.train(wrong, omdx.AgentConfig(q_hidden=4, model_hidden=4), progress=False)
    env = FuncEnvAdapter(_VectorReward(), max_episode_steps=30)
    state, _ = env.reset(getkey())
    with pytest.raises(ValueError, match=r"`func_env.reward` must return a scalar"):
        env.step(state, jnp.array(1), getkey())
    pendulum = make("Pendulum-v1")
    state, _ = pendulum.reset(getkey())
    with pytest.raises(ValueError, match=r"`action` must have 1 element"):
        pendulum.step(state, jnp.array([0.5, 0.5]), getkey())
    pendulum.step(state, jnp.array(0.5), getkey())  # a scalar is the one element


def test_bad_arguments():
    with pytest.raises(ValueError, match="CartPole-v1, Pendulum-v1"):
        make("HalfCheetah-v5")
    with pytest.raises(ValueError, match="`max_episode_steps`"):
        FuncEnvAdapter(_RandomWalk(), max_episode_steps=0)
    with pytest.raises(TypeError, match="func_env"):
        FuncEnvAdapter(object(), max_episode_steps=10)


def test_host_env_cartpole():
    with HostEnv("CartPole-v1", distractors=2) as env:
        assert (env.observation_size, env.num_actions, env.max_episode_steps) == (6, 2, 500)
        obs = env.reset(seed=0)
        assert obs.shape == (6,) and obs.dtype == np.float64
        assert np.all(np.abs(obs[:4]) <= 0.05)
        env.action_space.seed(0)
        episodes, length = 0, 0
        for _ in range(400):
            out = env.step(env.action_space.sample())
            length += 1
            assert out.observation.shape == out.next_observation.shape == (6,)
            assert out.reward == 1.0 and out.reward.dtype == np.float64
            assert not out.truncated
            if out.terminated:
                episodes += 1
                assert np.all(np.abs(out.observation[:4]) <= 0.05)
                assert np.any(np.abs(out.next_observation[[0, 2]]) > [2.4, 0.2])
                length = 0
            else:
                np.testing.assert_array_equal(out.observation, out.next_observation)
            assert length < 500
        assert episodes > 5
        # Seeding makes runs reproducible, noise included.
        np.testing.assert_array_equal(env.reset(seed=3), env.reset(seed=3))


def test_host_env_truncation():
    env = HostEnv("Pendulum-v1")
    assert env.num_actions is None and env.action_size == 1
    np.testing.assert_array_equal(env.action_high, [2.0])
    env.reset(seed=0)
    truncated = [bool(env.step(np.array([0.0])).truncated) for _ in range(400)]
    np.testing.assert_array_equal(np.nonzero(truncated)[0], [199, 399])
    with pytest.raises(ValueError, match="`distractors`"):
        HostEnv("CartPole-v1", distractors=-1)
    with pytest.raises(RuntimeError, match="reset"):
        HostEnv("CartPole-v1").step(0)
    # An instance's own `TimeLimit` would end episodes before a longer one around it.
    with pytest.raises(ValueError, match=r"above the limit .* \(200\)"):
        HostEnv(gymnasium.make("CartPole-v1", max_episode_steps=200), max_episode_steps=500)
    env = HostEnv(gymnasium.make("CartPole-v1", max_episode_steps=200), max_episode_steps=100)
    assert env.max_episode_steps == 100
