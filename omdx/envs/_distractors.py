"""Distractor dimensions: pure noise appended to every observation."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractEnv, Action, default_float, EnvState, EnvStep, fold_in_name


class Distractors(AbstractEnv):
    r"""An environment whose observations carry `n` extra dimensions of
    $\mathcal{N}(0, 1)$ noise, appended after the wrapped environment's own.

    The wrapped environment receives the same keys as it would unwrapped, so its part of
    every observation is unchanged; the noise comes from keys derived from the reset and
    step keys. Within an episode the observation the agent acts on next equals the
    transition's `next_observation` (same noise); after an autoreset the fresh episode's
    first observation gets fresh noise. Create with [`omdx.envs.distractors`][].

    **Arguments:**

    - `env`: the wrapped environment.
    - `n`: the number of noise dimensions, at least 1.
    """

    env: AbstractEnv
    n: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"`n` must be a positive int, got {self.n!r}.")

    @property
    def observation_size(self) -> int:
        return self.env.observation_size + self.n

    @property
    def num_actions(self) -> int | None:
        return self.env.num_actions

    @property
    def action_size(self) -> int:
        return self.env.action_size

    @property
    def action_low(self) -> Float[Array, " action"] | None:
        return self.env.action_low

    @property
    def action_high(self) -> Float[Array, " action"] | None:
        return self.env.action_high

    @property
    def max_episode_steps(self) -> int:
        return self.env.max_episode_steps

    def _noise(self, key: PRNGKeyArray, num: int) -> Float[Array, "num n"]:
        key = fold_in_name(key, "distractors")
        return jax.random.normal(key, (num, self.n), dtype=default_float())

    def reset(self, key: PRNGKeyArray) -> tuple[EnvState, Float[Array, " obs"]]:
        """As the wrapped environment's `reset`, with noise appended to the observation."""
        state, observation = self.env.reset(key)
        (noise,) = self._noise(key, 1)
        return state, jnp.concatenate([observation, noise])

    def step(self, state: EnvState, action: Action, key: PRNGKeyArray) -> tuple[EnvState, EnvStep]:
        """As the wrapped environment's `step`, with noise appended to both observations."""
        state, out = self.env.step(state, action, key)
        next_noise, reset_noise = self._noise(key, 2)
        noise = jnp.where(out.terminated | out.truncated, reset_noise, next_noise)
        out = EnvStep(
            observation=jnp.concatenate([out.observation, noise]),
            reward=out.reward,
            terminated=out.terminated,
            truncated=out.truncated,
            next_observation=jnp.concatenate([out.next_observation, next_noise]),
        )
        return state, out


def distractors(env: AbstractEnv, n: int) -> AbstractEnv:
    r"""Append `n` dimensions of $\mathcal{N}(0, 1)$ noise to every observation of `env`.

    This is the paper's distractor setting: the noise is in both `observation` and
    `next_observation` (so in the replay buffer too), for training and evaluation alike.

    **Arguments:**

    - `env`: an [`omdx.envs.AbstractEnv`][].
    - `n`: the number of noise dimensions; `0` returns `env` unchanged. On an
        environment that already has distractors, the result has `n` more.

    **Returns:**

    An [`omdx.envs.AbstractEnv`][] with `observation_size = env.observation_size + n`.
    """
    if not isinstance(env, AbstractEnv):
        raise TypeError(
            f"`env` must be an `omdx.envs.AbstractEnv`, got {type(env).__name__}; for a "
            "host-loop gymnasium environment use `omdx.envs.HostEnv(..., distractors=n)`."
        )
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n` must be a non-negative int, got {n!r}.")
    if n == 0:
        return env
    from ._discrete import DiscreteActions

    if isinstance(env, DiscreteActions):
        # Inside the table, which leaves observations alone: noise already under it then
        # grows by n (below) rather than being drawn a second time from the same keys.
        return DiscreteActions(distractors(env.env, n), env.actions)
    if isinstance(env, Distractors):
        # One layer of n + m: a second layer's noise, drawn from the same keys, would
        # repeat the first's.
        return Distractors(env.env, env.n + n)
    return Distractors(env, n)
