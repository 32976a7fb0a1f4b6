"""The transition record stored in the replay buffer and passed to agent steps."""

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int


class Transition(eqx.Module):
    """One environment transition $(s, a, r, s', d)$, or a batch of them.

    **Fields:**

    - `observation`: $s$, shape `[obs]` (or `[batch, obs]`).
    - `action`: $a$: an integer for discrete actions, a vector for continuous ones.
    - `reward`: $r$.
    - `next_observation`: the real $s'$ (before any reset).
    - `terminated`: whether $s'$ is terminal (no bootstrapping from it). Time-limit
        truncation is *not* termination.
    """

    observation: Float[Array, "*batch obs"]
    action: Int[Array, "*batch"] | Float[Array, "*batch act"]
    reward: Float[Array, "*batch"]
    next_observation: Float[Array, "*batch obs"]
    terminated: Bool[Array, "*batch"]
