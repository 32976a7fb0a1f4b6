"""Adapting gymnasium's functional (`FuncEnv`) environments to [`omdx.envs.AbstractEnv`][]."""

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.experimental.functional import FuncEnv
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._base import (
    AbstractEnv,
    Action,
    cast_floats,
    default_float,
    EnvStep,
    select,
)
from ._discrete import discretize_actions
from ._distractors import distractors as add_distractors


class FuncEnvState(eqx.Module):
    """The state of a [`omdx.envs.FuncEnvAdapter`][].

    **Arguments:**

    - `state`: the wrapped `FuncEnv`'s own state.
    - `time`: the number of steps taken in the current episode.
    """

    state: PyTree[Array]
    time: Int[Array, ""]


class FuncEnvAdapter(AbstractEnv):
    """Any gymnasium functional environment (`gymnasium.experimental.functional.FuncEnv`)
    as a pure [`omdx.envs.AbstractEnv`][]: with an episode step counter, truncation at
    `max_episode_steps` and autoreset.

    The `FuncEnv`'s `initial`, `transition`, `observation`, `reward` and `terminal` must be
    written in JAX (like gymnasium's `CartPoleFunctional` and `PendulumFunctional` in
    `gymnasium.envs.phys2d`). One step calls `transition`, `observation`, `reward` and
    `terminal` with the same `rng`, as gymnasium's `FunctionalJaxEnv` does; the autoreset
    uses an independent key derived from the step's key. Floating-point leaves of the
    `FuncEnv`'s state are cast to the default floating dtype, so that the state has one
    dtype across steps and resets (gymnasium's CartPole `transition` returns `float32` even
    with `jax_enable_x64` on).

    ```python
    from gymnasium.envs.phys2d import PendulumFunctional

    env = omdx.envs.FuncEnvAdapter(PendulumFunctional(), max_episode_steps=200)
    state, obs = env.reset(key)
    state, out = env.step(state, jnp.array([0.5]), key2)
    ```

    **Arguments:**

    - `func_env`: the `FuncEnv` instance. Its observation space must be a `Box` (the
        observation is flattened); its action space a `Discrete` or a `Box`.
    - `max_episode_steps`: the time limit; the step that reaches it is `truncated`.
    - `params`: the environment parameters passed to every `FuncEnv` method (a PyTree,
        e.g. gymnasium's `CartPoleParams`). Defaults to `func_env.default_params`; when
        that is `None`, no `params` argument is passed and the methods use their own
        defaults.
    """

    func_env: FuncEnv = eqx.field(static=True)
    params: Any
    max_episode_steps: int = eqx.field(static=True)

    def __init__(self, func_env: FuncEnv, *, max_episode_steps: int, params: Any = None):
        if not isinstance(func_env, FuncEnv):
            raise TypeError(
                "`func_env` must be a `gymnasium.experimental.functional.FuncEnv` instance, "
                f"got {type(func_env).__name__}."
            )
        if not isinstance(func_env.observation_space, spaces.Box):
            raise TypeError(
                "`func_env.observation_space` must be a `gymnasium.spaces.Box`, got "
                f"{type(func_env.observation_space).__name__}."
            )
        if not isinstance(func_env.action_space, spaces.Discrete | spaces.Box):
            raise TypeError(
                "`func_env.action_space` must be a `gymnasium.spaces.Discrete` or `Box`, got "
                f"{type(func_env.action_space).__name__}."
            )
        if (
            not isinstance(max_episode_steps, int | np.integer)
            or isinstance(max_episode_steps, bool)
            or max_episode_steps < 1
        ):
            raise ValueError(
                f"`max_episode_steps` must be a positive int, got {max_episode_steps!r}."
            )
        if params is None:
            params = getattr(func_env, "default_params", None)
        self.func_env = func_env
        self.params = params
        self.max_episode_steps = int(max_episode_steps)

    @property
    def observation_size(self) -> int:
        return math.prod(self.func_env.observation_space.shape)

    @property
    def num_actions(self) -> int | None:
        space = self.func_env.action_space
        return int(space.n) if isinstance(space, spaces.Discrete) else None

    @property
    def action_size(self) -> int:
        space = self.func_env.action_space
        return 1 if isinstance(space, spaces.Discrete) else math.prod(space.shape)

    @property
    def action_low(self) -> Float[Array, " action"] | None:
        space = self.func_env.action_space
        if isinstance(space, spaces.Discrete):
            return None
        return jnp.asarray(np.ravel(space.low), dtype=default_float())

    @property
    def action_high(self) -> Float[Array, " action"] | None:
        space = self.func_env.action_space
        if isinstance(space, spaces.Discrete):
            return None
        return jnp.asarray(np.ravel(space.high), dtype=default_float())

    def _call(self, method: str, *args):
        fn = getattr(self.func_env, method)
        if self.params is None:
            return fn(*args)
        return fn(*args, params=self.params)

    def _observe(self, state, key) -> Float[Array, " obs"]:
        obs = jnp.asarray(self._call("observation", state, key))
        if obs.size != self.observation_size:  # shapes are known when tracing: no run cost
            raise ValueError(
                f"`func_env.observation` returned shape {obs.shape}, but "
                f"`func_env.observation_space` has shape "
                f"{self.func_env.observation_space.shape}: the agents' networks are sized "
                "from the space, so the two must have the same number of elements."
            )
        return jnp.ravel(obs).astype(default_float())

    def _scalar(self, method: str, value) -> Array:
        value = jnp.asarray(value)
        if value.size != 1:
            raise ValueError(
                f"`func_env.{method}` must return a scalar (one per step), got shape {value.shape}."
            )
        return jnp.reshape(value, ())

    def _action(self, action: Action):
        space = self.func_env.action_space
        action = jnp.asarray(action)
        shape = () if isinstance(space, spaces.Discrete) else space.shape
        if action.size != math.prod(shape):
            raise ValueError(
                f"`action` must have {math.prod(shape)} element(s) for this environment's "
                f"{type(space).__name__} action space, got shape {action.shape}."
            )
        return jnp.reshape(action, shape)

    def reset(self, key: PRNGKeyArray) -> tuple[FuncEnvState, Float[Array, " obs"]]:
        """Start an episode: `FuncEnv.initial` and `FuncEnv.observation`.

        **Arguments:**

        - `key`: a PRNG key.

        **Returns:**

        A pair `(state, observation)`, with `state.time = 0`.
        """
        initial_key, observation_key = jax.random.split(key)
        state = cast_floats(self._call("initial", initial_key))
        observation = self._observe(state, observation_key)
        return FuncEnvState(state=state, time=jnp.zeros((), jnp.int32)), observation

    def step(
        self, state: FuncEnvState, action: Action, key: PRNGKeyArray
    ) -> tuple[FuncEnvState, EnvStep]:
        """Take one step, resetting automatically when the episode ends.

        **Arguments:**

        - `state`: the state from `reset` or a previous `step`.
        - `action`: an integer scalar (discrete) or a vector of `action_size` floats.
        - `key`: a PRNG key.

        **Returns:**

        A pair `(state, env_step)`; see [`omdx.envs.EnvStep`][].
        """
        step_key, reset_key = jax.random.split(key)
        action = self._action(action)
        next_state = cast_floats(self._call("transition", state.state, action, step_key))
        next_observation = self._observe(next_state, step_key)
        reward = self._call("reward", state.state, action, next_state, step_key)
        reward = self._scalar("reward", reward).astype(default_float())
        terminated = self._call("terminal", next_state, step_key)
        terminated = self._scalar("terminal", terminated).astype(bool)
        time = state.time + 1
        truncated = time >= self.max_episode_steps
        done = terminated | truncated
        reset_state, reset_observation = self.reset(reset_key)
        new_state = select(done, reset_state, FuncEnvState(state=next_state, time=time))
        observation = jnp.where(done, reset_observation, next_observation)
        env_step = EnvStep(
            observation=observation,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_observation=next_observation,
        )
        return new_state, env_step


@functools.cache
def _cartpole() -> tuple[FuncEnv, Any]:
    from gymnasium.envs.phys2d.cartpole import CartPoleFunctional, CartPoleParams

    # gymnasium 1.4's `CartPoleParams` defaults to `polemass_length = masspole + length`
    # (0.6); `CartPole-v1` (`gymnasium.envs.classic_control.CartPoleEnv`) uses
    # `masspole * length` (0.05). Pass the latter so the dynamics are CartPole-v1's.
    params = CartPoleParams(polemass_length=0.1 * 0.5)
    return CartPoleFunctional(), params


@functools.cache
def _pendulum() -> tuple[FuncEnv, Any]:
    from gymnasium.envs.phys2d.pendulum import PendulumFunctional, PendulumParams

    return PendulumFunctional(), PendulumParams()


# env id -> (factory of (FuncEnv, params), gymnasium's time limit)
_KNOWN_ENVS = {
    "CartPole-v1": (_cartpole, 500),
    "Pendulum-v1": (_pendulum, 200),
}


def make(
    env_id: str,
    *,
    distractors: int = 0,
    max_episode_steps: int | None = None,
    action_bins: int | tuple[int, ...] | None = None,
) -> AbstractEnv:
    r"""A pure JAX environment by gymnasium id, built on gymnasium's functional environments.

    Known ids:

    - `"CartPole-v1"`: 2 discrete actions, 4 observations, episodes truncated at 500 steps;
        the dynamics, rewards and terminations of gymnasium's `CartPole-v1`. Gymnasium's
        functional CartPole rounds its state to float32 after every step, so with
        `jax_enable_x64` the observations are float64 arrays of float32 values, and under
        the same actions a trajectory leaves `CartPole-v1`'s (float64 state) after about
        150 steps, as any two float precisions of this chaotic system do.
    - `"Pendulum-v1"`: a continuous 1-D action in $[-2, 2]$, 3 observations, episodes
        truncated at 200 steps. The agents need discrete actions: pass `action_bins`.

    For any other `FuncEnv`, use [`omdx.envs.FuncEnvAdapter`][]; for a gymnasium
    environment that is not written in JAX (e.g. MuJoCo), [`omdx.envs.HostEnv`][].

    **Arguments:**

    - `env_id`: one of the known ids above.
    - `distractors`: the number of $\mathcal{N}(0, 1)$ noise dimensions appended to every
        observation (see [`omdx.envs.distractors`][]).
    - `max_episode_steps`: overrides the id's time limit.
    - `action_bins`: for an id with continuous actions, that many discrete actions per
        action dimension (see [`omdx.envs.discretize_actions`][]); `None` keeps the
        actions as they are.

    **Returns:**

    An [`omdx.envs.AbstractEnv`][].
    """
    if env_id not in _KNOWN_ENVS:
        raise ValueError(
            f"Unknown `env_id` {env_id!r}; known ids: {', '.join(sorted(_KNOWN_ENVS))}. "
            "Wrap any other gymnasium `FuncEnv` with `omdx.envs.FuncEnvAdapter`, or run a "
            "gymnasium environment in a host loop with `omdx.envs.HostEnv`."
        )
    if not isinstance(distractors, int) or isinstance(distractors, bool) or distractors < 0:
        raise ValueError(f"`distractors` must be a non-negative int, got {distractors!r}.")
    factory, limit = _KNOWN_ENVS[env_id]
    func_env, params = factory()
    env = FuncEnvAdapter(
        func_env,
        max_episode_steps=limit if max_episode_steps is None else max_episode_steps,
        params=params,
    )
    if action_bins is not None:
        env = discretize_actions(env, action_bins)
    return add_distractors(env, distractors)
