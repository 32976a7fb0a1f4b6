"""`AgentState` and `init_agent`."""

from typing import Any

import equinox as eqx
import jax.random as jr
import optax
from jaxtyping import Array, Int, PRNGKeyArray

from ._config import AgentConfig
from ._networks import DoubleQ, DynamicsModel, ValueEnsemble


class EnvSpec(eqx.Module):
    """The sizes an agent needs from an environment (any object with these attributes works).

    **Fields:**

    - `observation_size`: the flat observation dimension.
    - `num_actions`: the number of discrete actions.
    """

    observation_size: int = eqx.field(static=True)
    num_actions: int = eqx.field(static=True)


class AgentState(eqx.Module):
    """Everything an agent learns and carries between updates: a PyTree.

    **Fields:**

    - `q`: the double Q-network ([`omdx.agents.DoubleQ`][]).
    - `q_target`: its Polyak-averaged target copy.
    - `q_opt_state`: the inner (Q) optimiser state, persistent across updates.
    - `model`: the [`omdx.agents.DynamicsModel`][].
    - `model_opt_state`: the model's Adam state.
    - `value_ensemble`: VEP's fixed random value networks (present for every agent so that
        all three share one PyTree structure; only VEP uses it).
    - `key`: the PRNG key for model sampling.
    - `updates`: the number of updates taken.
    """

    q: DoubleQ
    q_target: DoubleQ
    q_opt_state: Any
    model: DynamicsModel
    model_opt_state: Any
    value_ensemble: ValueEnsemble
    key: PRNGKeyArray
    updates: Int[Array, ""]


def inner_optimiser(config: AgentConfig) -> optax.GradientTransformation:
    if config.inner_optimiser == "adam":
        return optax.adam(config.q_lr)
    return optax.sgd(config.q_lr)


def model_optimiser(config: AgentConfig) -> optax.GradientTransformation:
    return optax.adam(config.model_lr)


def init_agent(key: PRNGKeyArray, spec: Any, config: AgentConfig) -> AgentState:
    """Initialise an agent's networks and optimiser states from a key.

    **Arguments:**

    - `key`: PRNG key; the same key gives the same agent.
    - `spec`: an [`omdx.agents.EnvSpec`][] or any environment with `observation_size` and
        `num_actions` (discrete actions).
    - `config`: the [`omdx.agents.AgentConfig`][].

    **Returns:**

    An [`omdx.agents.AgentState`][].
    """
    if not isinstance(config, AgentConfig):
        raise TypeError(f"`config` must be an `omdx.AgentConfig`, got {type(config).__name__}.")
    obs_size = getattr(spec, "observation_size", None)
    num_actions = getattr(spec, "num_actions", None)
    if not isinstance(obs_size, int) or obs_size < 1:
        raise ValueError(f"`spec.observation_size` must be a positive int, got {obs_size!r}.")
    if not isinstance(num_actions, int) or num_actions < 2:
        raise ValueError(
            "`spec.num_actions` must be an int >= 2: the agents need discrete actions; got "
            f"{num_actions!r}."
        )
    return _init_agent(key, EnvSpec(obs_size, num_actions), config)


@eqx.filter_jit
def _init_agent(key: PRNGKeyArray, spec: EnvSpec, config: AgentConfig) -> AgentState:
    # Compiled once per (spec, config): eager orthogonal initialisation dispatches many
    # small QR decompositions, each compiled separately, which is slow.
    import jax.numpy as jnp

    obs_size, num_actions = spec.observation_size, spec.num_actions
    q_key, model_key, vep_key, state_key = jr.split(key, 4)
    q = DoubleQ(q_key, obs_size, num_actions, config.q_hidden, config.q_depth)
    model = DynamicsModel(
        model_key,
        obs_size,
        num_actions,
        config.model_hidden,
        config.model_depth,
        gaussian=config.model_noise == "gaussian",
    )
    ensemble = ValueEnsemble(vep_key, obs_size, config.vep_ensemble, config.vep_hidden)
    return AgentState(
        q=q,
        q_target=q,
        q_opt_state=inner_optimiser(config).init(eqx.filter(q, eqx.is_inexact_array)),
        model=model,
        model_opt_state=model_optimiser(config).init(eqx.filter(model, eqx.is_inexact_array)),
        value_ensemble=ensemble,
        key=state_key,
        updates=jnp.array(0),
    )
