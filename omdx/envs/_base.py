"""The environment interface that compiled training runs against."""

import abc
import zlib
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree


EnvState: TypeAlias = PyTree
Action: TypeAlias = Int[Array, ""] | Float[Array, " action"]


class EnvStep(eqx.Module):
    """What one environment step returns, alongside the new environment state.

    Environments autoreset: when an episode ends (`terminated | truncated`), `observation`
    is the first observation of a fresh episode, while `next_observation` is still the real
    successor $s'$ of this transition. Store `(s, a, reward, next_observation, terminated)`
    in the replay buffer and act on `observation` next.

    **Arguments:**

    - `observation`: the observation the agent acts on next (after the autoreset, if the
        episode ended).
    - `reward`: the reward of this transition.
    - `terminated`: whether $s'$ is terminal (a true termination: do not bootstrap).
    - `truncated`: whether the episode hit its time limit at $s'$ (the episode ends, but
        bootstrapping from $s'$ continues). Both flags may be true at once, as in
        gymnasium's `TimeLimit`; `terminated` then decides the bootstrap.
    - `next_observation`: the observation of $s'$, before any reset.
    """

    observation: Float[Array, " obs"]
    reward: Float[Array, ""]
    terminated: Bool[Array, ""]
    truncated: Bool[Array, ""]
    next_observation: Float[Array, " obs"]


class AbstractEnv(eqx.Module):
    """A pure, functional environment with a flat observation vector and autoreset.

    `reset` and `step` are pure functions of their arguments: they jit, vmap (over keys,
    states and actions) and run inside `lax.scan`. Observations and rewards come in the
    default floating dtype (`float64` when `jax_enable_x64` is on).

    Subclasses provide:

    - `observation_size`: the length of the flat observation.
    - `num_actions`: the number of discrete actions, or `None` for continuous actions.
    - `action_size`: the length of a continuous action (`1` for discrete environments,
        where an action is an integer scalar).
    - `action_low`, `action_high`: the bounds of a continuous action (`None` when
        discrete).
    - `max_episode_steps`: the time limit at which episodes are truncated.
    """

    observation_size: eqx.AbstractVar[int]
    num_actions: eqx.AbstractVar[int | None]
    action_size: eqx.AbstractVar[int]
    action_low: eqx.AbstractVar[Float[Array, " action"] | None]
    action_high: eqx.AbstractVar[Float[Array, " action"] | None]
    max_episode_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def reset(self, key: PRNGKeyArray) -> tuple[EnvState, Float[Array, " obs"]]:
        """Start an episode.

        **Arguments:**

        - `key`: a PRNG key for the initial state (and any observation noise).

        **Returns:**

        A pair `(state, observation)`.
        """

    @abc.abstractmethod
    def step(self, state: EnvState, action: Action, key: PRNGKeyArray) -> tuple[EnvState, EnvStep]:
        """Take one step, resetting automatically when the episode ends.

        **Arguments:**

        - `state`: the environment state, from `reset` or a previous `step`.
        - `action`: an integer scalar for a discrete environment, else a vector of
            `action_size` floats.
        - `key`: a PRNG key for this step; the reset after an episode's end uses a key
            derived from it.

        **Returns:**

        A pair `(state, env_step)`: the state to continue from (a fresh episode's if this
        one ended) and an [`omdx.envs.EnvStep`][].
        """


def default_float() -> jnp.dtype:
    """The default floating dtype: `float64` with `jax_enable_x64`, else `float32`."""
    return jnp.result_type(float)


def cast_floats(tree: Any) -> Any:
    """Cast the floating-point leaves of `tree` to the default floating dtype."""

    def _cast(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(default_float())
        return x

    return jtu.tree_map(_cast, tree)


def select(pred: Bool[Array, ""], on_true: Any, on_false: Any) -> Any:
    """`jnp.where(pred, on_true, on_false)` leafwise over two PyTrees of one structure."""
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def fold_in_name(key: PRNGKeyArray, name: str) -> PRNGKeyArray:
    """A key derived from `key` and a fixed name, independent of `jax.random.split(key)`."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
