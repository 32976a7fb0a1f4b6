"""Soft Q-learning losses, and the one seam where OMD, MLE and VEP differ: the model loss."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from .._transition import Transition
from ._config import AgentConfig
from ._networks import DoubleQ, DynamicsModel, ValueEnsemble


def state_value(
    q_values: Float[Array, "... 2 actions"], config: AgentConfig
) -> Float[Array, "..."]:
    r"""$V(s) = \alpha \log\sum_a \exp(\min(Q_1, Q_2)(s, a)/\alpha)$, or the hard max."""
    q_min = jnp.min(q_values, axis=-2)
    if config.soft:
        return config.temperature * jax.nn.logsumexp(q_min / config.temperature, axis=-1)
    return jnp.max(q_min, axis=-1)


def bellman_targets(
    q_target: DoubleQ,
    reward: Float[Array, " batch"],
    next_observation: Float[Array, "batch obs"],
    terminated: Bool[Array, " batch"],
    config: AgentConfig,
) -> Float[Array, " batch"]:
    r"""Soft Bellman targets $y = r + \gamma (1 - d) \bar V(s')$ from the target network.

    They carry gradients with respect to `reward` and `next_observation`: this is the only
    way the model reaches the Q-function, so OMD's implicit gradient flows through them.
    """
    next_value = state_value(jax.vmap(q_target)(next_observation), config)
    not_done = 1.0 - terminated.astype(reward.dtype)
    return reward + config.gamma * not_done * next_value


def regression_loss(
    q: DoubleQ,
    observation: Float[Array, "batch obs"],
    action: Int[Array, " batch"],
    targets: Float[Array, " batch"],
) -> Scalar:
    r"""Mean over the batch of $\frac12\sum_{i=1,2}(Q_i(s, a) - y)^2$."""
    q_values = jax.vmap(q)(observation)  # [B, 2, A]
    q_taken = jnp.take_along_axis(q_values, action[:, None, None], axis=-1)[..., 0]  # [B, 2]
    return 0.5 * jnp.mean(jnp.sum((q_taken - targets[:, None]) ** 2, axis=-1))


def bellman_loss(
    q: DoubleQ,
    q_target: DoubleQ,
    observation: Float[Array, "batch obs"],
    action: Int[Array, " batch"],
    reward: Float[Array, " batch"],
    next_observation: Float[Array, "batch obs"],
    terminated: Bool[Array, " batch"],
    config: AgentConfig,
) -> Scalar:
    r"""The Bellman loss: `regression_loss` onto `bellman_targets`."""
    targets = bellman_targets(q_target, reward, next_observation, terminated, config)
    return regression_loss(q, observation, action, targets)


def real_bellman_loss(q: DoubleQ, q_target: DoubleQ, batch: Transition, config: AgentConfig):
    """The Bellman loss on real transitions: OMD's outer objective."""
    return bellman_loss(
        q,
        q_target,
        batch.observation,
        batch.action,
        batch.reward,
        batch.next_observation,
        batch.terminated,
        config,
    )


def bound_to_batch(
    next_observation: Float[Array, "batch obs"], batch: Transition
) -> Float[Array, "batch obs"]:
    r"""Squash predicted next observations into the box the batch's real observations span.

    Per dimension, with $c$ and $h$ the centre and half-width of the range of the batch's
    observations and next observations, $\hat s' \mapsto c + h \tanh((\hat s' - c) / h)$:
    smooth and increasing (so gradients still reach the model), the identity to first
    order at the centre, and in no dimension outside the range of the states the
    Q-network is trained on. (The box is per dimension: a point inside it may still
    combine values no real state has.)

    **Arguments:**

    - `next_observation`: predicted next observations, one row per transition.
    - `batch`: the real transitions whose observations and next observations span the box.

    **Returns:**

    The predictions squashed into the box, with the shape of `next_observation`.
    """
    observed = jnp.concatenate([batch.observation, batch.next_observation])
    low, high = jnp.min(observed, axis=0), jnp.max(observed, axis=0)
    centre = 0.5 * (low + high)
    # A dimension constant over the batch has no width to squash into: keep a tiny one so
    # that the map stays finite (and pins predictions to that constant).
    half_width = jnp.maximum(0.5 * (high - low), jnp.finfo(observed.dtype).eps)
    return centre + half_width * jnp.tanh((next_observation - centre) / half_width)


def model_predictions(
    model: DynamicsModel,
    batch: Transition,
    config: AgentConfig,
    key: PRNGKeyArray | None = None,
) -> tuple[Float[Array, "batch obs"], Float[Array, " batch"]]:
    r"""The model's $(\hat s', \hat r)$ at the real $(s, a)$ of the batch. Every loss and
    metric reads the model through this.

    **Arguments:**

    - `model`: the [`omdx.agents.DynamicsModel`][].
    - `batch`: real transitions; their observations and actions are the model's inputs.
    - `config`: the [`omdx.agents.AgentConfig`][]; with `bound_predictions` the next
        observations are squashed by [`omdx.agents.bound_to_batch`][].
    - `key`: `None` for the model's mean; a PRNG key for a (reparametrised) sample.

    **Returns:**

    `(next_observation, reward)`, batched.
    """
    if key is None:
        next_obs, reward = jax.vmap(model)(batch.observation, batch.action)
    else:
        keys = jr.split(key, batch.reward.shape[0])
        next_obs, reward = jax.vmap(model.sample)(batch.observation, batch.action, keys)
    if config.bound_predictions:
        next_obs = bound_to_batch(next_obs, batch)
    return next_obs, reward


def model_targets(
    model: DynamicsModel,
    q_target: DoubleQ,
    batch: Transition,
    key: PRNGKeyArray,
    config: AgentConfig,
) -> Float[Array, " batch"]:
    r"""Bellman targets on model transitions: real $(s, a)$, model $(\hat r, \hat s')$, real
    termination flags."""
    next_obs, reward = model_predictions(model, batch, config, key)
    return bellman_targets(q_target, reward, next_obs, batch.terminated, config)


def model_bellman_loss(q, q_target, model, batch: Transition, key, config: AgentConfig):
    r"""The Bellman loss on model transitions (real $s, a$; model $\hat r, \hat s'$)."""
    return regression_loss(
        q, batch.observation, batch.action, model_targets(model, q_target, batch, key, config)
    )


class BellmanRegressionGradient(eqx.Module):
    r"""The inner residual: $\nabla_\varphi$ of the Bellman regression loss onto targets $y$.

    `args = (targets, observation, action)`. The model enters only through the targets
    (computed by [`omdx.agents.model_targets`][] outside the solve), so the implicit
    gradient's mixed derivative $\partial_y \nabla_\varphi L$ costs one backward pass of
    the Q-network instead of a second-order pass through the model and target network.
    With `config.q_weight_decay` $= \mu > 0$ the loss has $\frac{\mu}{2}\|\varphi\|^2$
    added. Returns `(gradient, loss)`, the loss without that penalty (the Bellman loss the
    metrics report): use it with `has_aux=True`.
    """

    q_static: PyTree
    q_weight_decay: float = eqx.field(static=True)

    def __init__(self, q_static: PyTree, config: AgentConfig):
        self.q_static = q_static
        # Only this (shape-like) setting: the rest of `config` may hold traced values.
        self.q_weight_decay = config.q_weight_decay

    def __call__(self, q_params, args):
        targets, observation, action = args

        def loss(params):
            q = eqx.combine(params, self.q_static)
            bellman = regression_loss(q, observation, action, targets)
            if self.q_weight_decay == 0:
                return bellman, bellman
            squares = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
            return bellman + 0.5 * self.q_weight_decay * squares, bellman

        (_, bellman), gradient = jax.value_and_grad(loss, has_aux=True)(q_params)
        return gradient, bellman


def prediction_errors(
    model: DynamicsModel, batch: Transition, config: AgentConfig
) -> tuple[Scalar, Scalar]:
    r"""The errors of the model's mean prediction of $s'$ and $r$ on real data (as the agent
    uses it: bounded when `config.bound_predictions`): the squared Euclidean error
    $\|\hat s' - s'\|^2$ and the squared reward error, each averaged over the batch. The
    first is the observation size times the per-coordinate mean in MLE's loss."""
    next_obs, reward = model_predictions(model, batch, config)
    return (
        jnp.mean(jnp.sum((next_obs - batch.next_observation) ** 2, axis=-1)),
        jnp.mean((reward - batch.reward) ** 2),
    )


# --- the model losses ----------------------------------------------------------------------
# Each is `(model, solve_q, state, batch, key, config) -> (loss, inner_solution or None)`:
# `solve_q(model)` runs the inner problem (the Q update on model data) through
# `omdx.solve_inner`. OMD differentiates through it; MLE and VEP do not use it, so their
# Q update runs afterwards, on the updated model.

ModelLoss = Callable[..., tuple[Scalar, Any]]


def omd_model_loss(model, solve_q, state, batch, key, config):
    """OMD: the real-data Bellman loss of the Q-network solved on the model's data."""
    del key
    solution = solve_q(model)
    q = eqx.combine(solution.value, eqx.filter(state.q, eqx.is_inexact_array, inverse=True))
    return real_bellman_loss(q, state.q_target, batch, config), solution


def mle_model_loss(model, solve_q, state, batch, key, config):
    """MLE: next-observation and reward MSE (Gaussian NLL for a Gaussian model)."""
    del solve_q, state, key
    next_obs, reward = model_predictions(model, batch, config)
    if model.log_std is None:
        loss = jnp.mean((next_obs - batch.next_observation) ** 2) + jnp.mean(
            (reward - batch.reward) ** 2
        )
        return loss, None
    mean = jnp.concatenate([next_obs, reward[:, None]], axis=-1)
    target = jnp.concatenate([batch.next_observation, batch.reward[:, None]], axis=-1)
    inv_var = jnp.exp(-2 * model.log_std)
    nll = 0.5 * jnp.sum((mean - target) ** 2 * inv_var + 2 * model.log_std, axis=-1)
    return jnp.mean(nll), None


def vep_model_loss(model, solve_q, state, batch, key, config):
    """VEP: fixed random value functions agree at predicted and real next states, plus the
    reward MSE."""
    del solve_q
    ensemble: ValueEnsemble = state.value_ensemble
    next_obs, reward = model_predictions(model, batch, config, key)
    predicted = jax.vmap(ensemble)(next_obs)
    real = jax.vmap(ensemble)(batch.next_observation)
    value_loss = jnp.mean(jnp.sum((predicted - real) ** 2, axis=-1))
    return value_loss + jnp.mean((reward - batch.reward) ** 2), None


def uses_likelihood_term(config: AgentConfig) -> bool:
    """Whether the model loss gets `config.likelihood_weight` times MLE's loss added: for
    OMD and VEP, unless the weight is a Python zero (a swept, traced weight always is)."""
    weight = config.likelihood_weight
    return config.agent != "mle" and not (isinstance(weight, (int, float)) and weight == 0)


MODEL_LOSSES: dict[str, ModelLoss] = {
    "omd": omd_model_loss,
    "mle": mle_model_loss,
    "vep": vep_model_loss,
}
