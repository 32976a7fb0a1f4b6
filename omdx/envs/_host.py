"""A host-loop adapter: any gymnasium environment, stepped in Python with NumPy."""

import math
from typing import Any, NamedTuple

import gymnasium
import jax
import numpy as np
from gymnasium import spaces

from ._discrete import action_bin_centres


class HostStep(NamedTuple):
    """What [`omdx.envs.HostEnv.step`][] returns: the fields of [`omdx.envs.EnvStep`][],
    as NumPy values.

    **Arguments:**

    - `observation`: the observation to act on next (a fresh episode's after an autoreset).
    - `reward`: the reward of this transition (a NumPy scalar).
    - `terminated`: whether $s'$ is terminal (do not bootstrap).
    - `truncated`: whether the episode hit its time limit at $s'$.
    - `next_observation`: the observation of $s'$, before any reset.
    """

    observation: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_observation: np.ndarray


class HostEnv:
    r"""A gymnasium environment in a Python loop, with the conventions of
    [`omdx.envs.AbstractEnv`][]: flat floating observations, autoreset, and
    `next_observation` before the reset.

    This trains the same jitted agent updates on any gymnasium environment, including
    those not written in JAX (MuJoCo's `HalfCheetah-v5`, ...): step it in Python, and pass
    the NumPy arrays to the jitted functions. It is stateful (unlike
    [`omdx.envs.AbstractEnv`][]) and not a PyTree.

    ```python
    env = omdx.envs.HostEnv("CartPole-v1", distractors=2)
    obs = env.reset(seed=0)
    for _ in range(1000):
        out = env.step(env.action_space.sample())
        obs = out.observation
    ```

    **Arguments:**

    - `env`: a gymnasium id (passed to `gymnasium.make`) or a `gymnasium.Env` instance.
        Its observation space must be a `Box` (observations are flattened); its action
        space a `Discrete` or a `Box`.
    - `distractors`: the number of $\mathcal{N}(0, 1)$ dimensions appended to every
        observation, as [`omdx.envs.distractors`][] does. Seeded by `reset(seed)`.
    - `action_bins`: for continuous (`Box`) actions, that many discrete actions per action
        dimension, by gymnasium's `DiscretizeAction` wrapper: the bin centres of
        [`omdx.envs.discretize_actions`][], in the same order. `None` keeps the actions.
    - `max_episode_steps`: the time limit. For an id, passed to `gymnasium.make` (default:
        the id's registered limit). For an instance, wraps it in gymnasium's `TimeLimit`
        when given (at most the limit of a `TimeLimit` already in it), else read from
        `env.spec`.
    - `dtype`: the floating dtype of observations and rewards. Defaults to JAX's default
        floating dtype (`float64` with `jax_enable_x64`), so that jitted functions see the
        same dtypes as with [`omdx.envs.make`][].
    - `**make_kwargs`: passed to `gymnasium.make` with an id.
    """

    def __init__(
        self,
        env: str | gymnasium.Env,
        *,
        distractors: int = 0,
        max_episode_steps: int | None = None,
        dtype: Any = None,
        action_bins: int | tuple[int, ...] | None = None,
        **make_kwargs: Any,
    ):
        if not isinstance(distractors, int) or isinstance(distractors, bool) or distractors < 0:
            raise ValueError(f"`distractors` must be a non-negative int, got {distractors!r}.")
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, int)
            or isinstance(max_episode_steps, bool)
            or max_episode_steps < 1
        ):
            raise ValueError(
                f"`max_episode_steps` must be a positive int or None, got {max_episode_steps!r}."
            )
        if isinstance(env, str):
            env = gymnasium.make(env, max_episode_steps=max_episode_steps, **make_kwargs)
        elif isinstance(env, gymnasium.Env):
            if make_kwargs:
                raise TypeError("Keyword arguments for `gymnasium.make` need an env id.")
            if max_episode_steps is not None:
                inner = _shortest_time_limit(env)
                if inner is not None and inner < max_episode_steps:
                    raise ValueError(
                        f"`max_episode_steps` ({max_episode_steps}) is above the limit of the "
                        f"`TimeLimit` already around this instance ({inner}), which would end "
                        "every episode first. Pass the id with `max_episode_steps`, or make "
                        "the instance with `gymnasium.make(id, max_episode_steps="
                        f"{max_episode_steps})`."
                    )
                env = gymnasium.wrappers.TimeLimit(env, max_episode_steps)
        else:
            raise TypeError(
                f"`env` must be a gymnasium id or a `gymnasium.Env`, got {type(env).__name__}."
            )
        if max_episode_steps is None:
            max_episode_steps = env.spec.max_episode_steps if env.spec is not None else None
        if max_episode_steps is None:
            raise ValueError("The environment has no time limit: pass `max_episode_steps`.")
        if not isinstance(env.observation_space, spaces.Box):
            raise TypeError(
                "The observation space must be a `gymnasium.spaces.Box`, got "
                f"{type(env.observation_space).__name__}."
            )
        if not isinstance(env.action_space, spaces.Discrete | spaces.Box):
            raise TypeError(
                "The action space must be a `gymnasium.spaces.Discrete` or `Box`, got "
                f"{type(env.action_space).__name__}."
            )
        if action_bins is not None:
            if not isinstance(env.action_space, spaces.Box):
                raise ValueError(
                    f"`action_bins` is for continuous actions; this environment already has "
                    f"{env.action_space.n} discrete ones."
                )
            # Checked by omdx's own rule (bounds, counts), then gymnasium's wrapper acts; it
            # takes a Python int (not a NumPy one) as one count for every dimension.
            action_bin_centres(env.action_space.low, env.action_space.high, action_bins)
            if isinstance(action_bins, int | np.integer):
                action_bins = int(action_bins)
            else:
                action_bins = tuple(int(b) for b in action_bins)
            env = gymnasium.wrappers.DiscretizeAction(env, action_bins)
        self.env = env
        self.distractors = distractors
        self.max_episode_steps = int(max_episode_steps)
        if dtype is None:
            dtype = jax.dtypes.canonicalize_dtype(np.float64)
        self.dtype = np.dtype(dtype)
        self._rng = np.random.default_rng()
        self._needs_reset = True

    @property
    def action_space(self) -> spaces.Space:
        """The wrapped environment's action space (e.g. for `sample()`)."""
        return self.env.action_space

    @property
    def observation_size(self) -> int:
        return math.prod(self.env.observation_space.shape) + self.distractors

    @property
    def num_actions(self) -> int | None:
        space = self.env.action_space
        return int(space.n) if isinstance(space, spaces.Discrete) else None

    @property
    def action_size(self) -> int:
        space = self.env.action_space
        return 1 if isinstance(space, spaces.Discrete) else math.prod(space.shape)

    @property
    def action_low(self) -> np.ndarray | None:
        space = self.env.action_space
        return None if isinstance(space, spaces.Discrete) else np.ravel(space.low)

    @property
    def action_high(self) -> np.ndarray | None:
        space = self.env.action_space
        return None if isinstance(space, spaces.Discrete) else np.ravel(space.high)

    def _observe(self, observation) -> np.ndarray:
        observation = np.ravel(np.asarray(observation)).astype(self.dtype)
        if self.distractors:
            noise = self._rng.standard_normal(self.distractors).astype(self.dtype)
            observation = np.concatenate([observation, noise])
        return observation

    def _reset(self, seed: int | None) -> np.ndarray:
        observation, _ = self.env.reset(seed=seed)
        self._needs_reset = False
        return self._observe(observation)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode.

        **Arguments:**

        - `seed`: seeds the environment's and the distractors' random number generators
            (later autoresets continue from them); `None` keeps them going.

        **Returns:**

        The first observation, a flat array of `observation_size`.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        return self._reset(seed)

    def step(self, action) -> HostStep:
        """Take one step, resetting automatically when the episode ends.

        **Arguments:**

        - `action`: an integer for a discrete environment, else an array of
            `action_size` floats (a JAX array is fine).

        **Returns:**

        A [`omdx.envs.HostStep`][].
        """
        if self._needs_reset:
            raise RuntimeError("Call `reset` before the first `step`.")
        space = self.env.action_space
        if isinstance(space, spaces.Discrete):
            action = int(np.asarray(action))
        else:
            action = np.reshape(np.asarray(action, dtype=space.dtype), space.shape)
        observation, reward, terminated, truncated, _ = self.env.step(action)
        next_observation = self._observe(observation)
        if terminated or truncated:
            observation = self._reset(None)
        else:
            observation = next_observation
        return HostStep(
            observation=observation,
            reward=np.asarray(reward, dtype=self.dtype),
            terminated=np.asarray(bool(terminated)),
            truncated=np.asarray(bool(truncated)),
            next_observation=next_observation,
        )

    def close(self) -> None:
        """Close the wrapped environment."""
        self.env.close()

    def __enter__(self) -> "HostEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shortest_time_limit(env: gymnasium.Env) -> int | None:
    """The smallest limit of the `TimeLimit` wrappers in `env`, or `None` if it has none."""
    limits = []
    while isinstance(env, gymnasium.Wrapper):
        if isinstance(env, gymnasium.wrappers.TimeLimit):
            limits.append(env._max_episode_steps)
        env = env.env
    return min(limits, default=None)
