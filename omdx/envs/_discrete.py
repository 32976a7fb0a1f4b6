"""Discrete actions for an environment with continuous ones, so that the OMD, MLE and VEP
agents (whose Q-networks score a finite set of actions) can train on it."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._base import AbstractEnv, default_float, EnvState, EnvStep


class DiscreteActions(AbstractEnv):
    """An environment with continuous actions, acted on through a finite table of them:
    the discrete action `i` is the continuous action `actions[i]`.

    Everything else (observations, rewards, episodes, the keys the wrapped environment
    receives) is the wrapped environment's. Actions are indices in `[0, num_actions)`, as
    the agents pick them; others are not checked (JAX's indexing clamps them, or wraps a
    negative one, where gymnasium's `DiscretizeAction` wraps them all). Create a grid of
    bin centres with
    [`omdx.envs.discretize_actions`][], or pass a table of your own:

    ```python
    pendulum = omdx.envs.make("Pendulum-v1")
    env = omdx.envs.DiscreteActions(pendulum, [[-2.0], [0.0], [2.0]])
    ```

    **Arguments:**

    - `env`: an [`omdx.envs.AbstractEnv`][] with continuous actions.
    - `actions`: the table, of shape `[num_actions, env.action_size]` (a 1-D table is
        taken as one action per entry when `env.action_size` is 1), with at least two
        finite rows inside `env`'s action bounds.
    """

    env: AbstractEnv
    actions: Float[Array, "num_actions action"]

    def __init__(self, env: AbstractEnv, actions: ArrayLike):
        if not isinstance(env, AbstractEnv):
            raise TypeError(f"`env` must be an `omdx.envs.AbstractEnv`, got {type(env).__name__}.")
        if env.num_actions is not None:
            raise ValueError(
                f"`env` already has {env.num_actions} discrete actions; `DiscreteActions` "
                "is for an environment with continuous ones."
            )
        actions = jnp.asarray(actions, dtype=default_float())
        if actions.ndim == 1 and env.action_size == 1:
            actions = actions[:, None]
        if actions.ndim != 2 or actions.shape[1] != env.action_size or actions.shape[0] < 2:
            raise ValueError(
                f"`actions` must have shape [num_actions >= 2, {env.action_size}] (one row "
                f"per discrete action, of `env.action_size` = {env.action_size}), got "
                f"{list(actions.shape)}."
            )
        if not isinstance(actions, jax.core.Tracer):  # a table made under jit is not checked
            table = np.asarray(actions)
            low, high = np.asarray(env.action_low), np.asarray(env.action_high)
            outside = ~np.isfinite(table) | (table < low) | (table > high)
            if outside.any():
                row = int(np.argwhere(outside)[0, 0])
                raise ValueError(
                    f"`actions[{row}]` = {table[row].tolist()} is not a finite action within "
                    f"`env`'s bounds [{low.tolist()}, {high.tolist()}]."
                )
        self.env = env
        self.actions = actions

    @property
    def observation_size(self) -> int:
        return self.env.observation_size

    @property
    def num_actions(self) -> int:
        return self.actions.shape[0]

    @property
    def action_size(self) -> int:
        return 1

    @property
    def action_low(self) -> None:
        return None

    @property
    def action_high(self) -> None:
        return None

    @property
    def max_episode_steps(self) -> int:
        return self.env.max_episode_steps

    def reset(self, key: PRNGKeyArray) -> tuple[EnvState, Float[Array, " obs"]]:
        """The wrapped environment's `reset`."""
        return self.env.reset(key)

    def step(
        self, state: EnvState, action: Int[Array, ""], key: PRNGKeyArray
    ) -> tuple[EnvState, EnvStep]:
        """The wrapped environment's `step` with the continuous action `actions[action]`."""
        return self.env.step(state, self.actions[action], key)


def action_bin_centres(
    low: ArrayLike, high: ArrayLike, bins: int | tuple[int, ...]
) -> Float[np.ndarray, "num_actions action"]:
    """The centres of `bins` equal bins per dimension of the box `[low, high]`, every
    combination, the last dimension varying fastest: the continuous actions of gymnasium's
    `DiscretizeAction(env, bins)`, in its order.

    **Arguments:**

    - `low`, `high`: the box's bounds (flat, finite).
    - `bins`: the number of bins per dimension, one for all or one per dimension.

    **Returns:**

    A NumPy array `[prod(bins), len(low)]`.
    """
    low, high = np.ravel(np.asarray(low, np.float64)), np.ravel(np.asarray(high, np.float64))
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(
            f"Discretising needs finite action bounds; got low={low.tolist()}, "
            f"high={high.tolist()}. Pass a table of actions to `omdx.envs.DiscreteActions`."
        )
    if isinstance(bins, int | np.integer):
        per_dimension = (bins,) * low.size
    elif isinstance(bins, tuple | list):
        per_dimension = tuple(bins)
    else:
        per_dimension = ()  # refused below
    if (
        len(per_dimension) != low.size
        or any(
            not isinstance(b, int | np.integer) or isinstance(b, bool) or b < 1
            for b in per_dimension
        )
        or np.prod(per_dimension) < 2
    ):
        raise ValueError(
            f"`bins` must be a positive int, or a tuple of {low.size} (one per action "
            f"dimension), giving at least two actions; got {bins!r}."
        )
    centres = []
    for lo, hi, b in zip(low, high, per_dimension):
        # Bin i's centre, (lo (2b - 2i - 1) + hi (2i + 1)) / 2b, rounded once: exact for
        # small integer bounds, so a symmetric box has 0 and symmetric actions. (Halving
        # the sum of linspace's edges gives 2e-16 for Pendulum's middle bin in float64;
        # gymnasium, in float32, gets 6e-8: the two tables agree to float32 rounding.)
        odd = 2 * np.arange(int(b)) + 1
        centres.append((lo * (2 * int(b) - odd) + hi * odd) / (2 * int(b)))
    grid = np.meshgrid(*centres, indexing="ij")
    return np.stack([axis.ravel() for axis in grid], axis=-1)


def discretize_actions(env: AbstractEnv, bins: int | tuple[int, ...]) -> DiscreteActions:
    r"""Discrete actions for `env`'s continuous ones: the centres of `bins` equal bins per
    action dimension, every combination (`prod(bins)` actions), in the order of gymnasium's
    `gymnasium.wrappers.DiscretizeAction(env, bins)` (to float32 rounding), so that an
    agent trained here acts the same through that wrapper on the host (see
    [`omdx.envs.HostEnv`][]'s `action_bins`).

    With `bins = 5`, Pendulum-v1's torque in $[-2, 2]$ becomes
    $\{-1.6, -0.8, 0, 0.8, 1.6\}$; the bounds themselves are not among the actions (pass
    your own table to [`omdx.envs.DiscreteActions`][] for those).

    **Arguments:**

    - `env`: an [`omdx.envs.AbstractEnv`][] with continuous, finitely bounded actions.
    - `bins`: the number of bins per action dimension: one int for all, or one per
        dimension.

    **Returns:**

    A [`omdx.envs.DiscreteActions`][] with `num_actions = prod(bins)`.
    """
    if not isinstance(env, AbstractEnv):
        raise TypeError(
            f"`env` must be an `omdx.envs.AbstractEnv`, got {type(env).__name__}; for a "
            "host-loop gymnasium environment use `omdx.envs.HostEnv(..., action_bins=n)`."
        )
    if env.num_actions is not None:
        raise ValueError(
            f"`env` already has {env.num_actions} discrete actions; there is nothing to discretise."
        )
    return DiscreteActions(env, action_bin_centres(env.action_low, env.action_high, bins))
