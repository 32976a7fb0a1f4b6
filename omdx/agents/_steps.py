"""The agent update, shared by OMD, MLE and VEP except for the model loss."""

import dataclasses
import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optax
from jaxtyping import PRNGKeyArray

from .._adjoint import _FixedBudget, Damped, Neumann, truncated_cg
from .._inner import solve_inner
from .._solvers import GradientSteps
from .._transition import Transition
from ._config import AgentConfig
from ._losses import (
    BellmanRegressionGradient,
    mle_model_loss,
    MODEL_LOSSES,
    model_targets,
    prediction_errors,
    real_bellman_loss,
    uses_likelihood_term,
)
from ._state import AgentState, inner_optimiser, model_optimiser


GMRES_RESTART = 20


def agent_adjoint(config: AgentConfig) -> lx.AbstractLinearSolver:
    """The Lineax solver for OMD's backward pass, from the config's `adjoint` name."""
    if config.adjoint == "identity":
        return Neumann(0, config.adjoint_scale)
    if config.adjoint == "neumann":
        return Neumann(config.adjoint_steps, config.adjoint_scale)
    if config.adjoint == "cg":
        return truncated_cg(config.adjoint_steps, config.damping)
    if config.adjoint == "gmres":
        # Lineax counts GMRES steps in restart cycles of `restart` Krylov vectors each,
        # and its first step only computes the initial residual. A budget of
        # `adjoint_steps` Hessian-vector products (as CG's) is that many Krylov vectors,
        # in cycles of at most 20. rtol = atol = 0 with a step budget: a fixed-budget
        # solve, which reports success even where it solves exactly and then breaks down.
        cycles = -(-config.adjoint_steps // GMRES_RESTART)
        restart = -(-config.adjoint_steps // cycles)
        gmres = lx.GMRES(
            rtol=0.0,
            atol=0.0,
            max_steps=cycles + 1,
            restart=restart,
            stagnation_iters=cycles + 2,
        )
        return Damped(_FixedBudget(gmres), config.damping)
    return Damped(lx.LU(), config.damping)


def _solve_q(model, state: AgentState, batch: Transition, key, config: AgentConfig):
    """The inner problem: `inner_steps` optimiser steps on the model-data Bellman loss from
    the current Q-network (warm start), with the persistent optimiser state."""
    q_params, q_static = eqx.partition(state.q, eqx.is_inexact_array)
    targets = model_targets(model, state.q_target, batch, key, config)
    return solve_inner(
        BellmanRegressionGradient(q_static, config),
        q_params,
        (targets, batch.observation, batch.action),
        solver=GradientSteps(inner_optimiser(config), config.inner_steps),
        adjoint=agent_adjoint(config),
        symmetric=True,
        has_aux=True,
        # A traced K (swept by `omdx.train`) has no static bound: the solver stops at K.
        max_steps=config.inner_steps if isinstance(config.inner_steps, int) else None,
        throw=False,
        options={"opt_state": state.q_opt_state},
    )


def _polyak(target, online, tau: float):
    return jax.tree.map(
        lambda t, o: (1 - tau) * t + tau * o if eqx.is_inexact_array(t) else t, target, online
    )


def _tree_norm(tree) -> jax.Array:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in leaves))


def model_gradient(
    state: AgentState,
    batch: Transition,
    config: AgentConfig,
    inner_key: PRNGKeyArray,
    model_key: PRNGKeyArray,
):
    """The model loss of `config.agent` and its gradient with respect to the model.

    For OMD this is the implicit gradient of the real-data Bellman loss of the Q-network
    obtained by [`omdx.solve_inner`][] on the model's data (with `config.adjoint`); for MLE
    and VEP it is an ordinary gradient. With `config.likelihood_weight` $\beta > 0$, OMD's
    and VEP's loss is their own plus $\beta$ times MLE's.

    **Arguments:**

    - `state`: the [`omdx.agents.AgentState`][].
    - `batch`: a batch of real transitions.
    - `config`: the [`omdx.agents.AgentConfig`][].
    - `inner_key`: PRNG key for the inner problem (a Gaussian model's samples).
    - `model_key`: PRNG key for the model loss's own samples (VEP).

    **Returns:**

    `(loss, gradient, solution)`: `gradient` has the structure of the model's arrays;
    `solution` is the inner `optimistix.Solution` for OMD, `None` otherwise.
    """
    loss, _, grads, solution = _model_gradient(state, batch, config, inner_key, model_key)
    return loss, grads, solution


def _model_gradient(state, batch, config, inner_key, model_key):
    """`model_gradient`, and the agent's own loss before any likelihood term is added (for
    OMD, the real-data Bellman loss of the solved Q-network)."""
    model_loss_fn = MODEL_LOSSES[config.agent]
    solve_q = ft.partial(_solve_q, state=state, batch=batch, key=inner_key, config=config)
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)

    def loss(params):
        model = eqx.combine(params, model_static)
        own, solution = model_loss_fn(model, solve_q, state, batch, model_key, config)
        value = own
        if uses_likelihood_term(config):
            likelihood, _ = mle_model_loss(model, solve_q, state, batch, model_key, config)
            value = own + config.likelihood_weight * likelihood
        return value, (own, solution)

    (model_loss, (own_loss, solution)), grads = jax.value_and_grad(loss, has_aux=True)(model_params)
    return model_loss, own_loss, grads, solution


def _check_batch(state: AgentState, batch: Transition) -> Transition:
    """`batch`, with a clear error if it does not fit the agent: its shapes and dtypes when
    traced, its actions' range when run (a check that costs about 1% of an update, and
    nothing inside `omdx.train`, which switches Equinox's runtime checks off)."""
    if not isinstance(batch, Transition):
        raise TypeError(f"`batch` must be an `omdx.Transition`, got {type(batch).__name__}.")
    obs_size, num_actions = state.q.nets.in_size, state.q.nets.out_size
    observation = jnp.shape(batch.observation)
    if len(observation) != 2 or observation[1] != obs_size:
        raise ValueError(
            f"`batch.observation` must have shape [batch, {obs_size}] (a batch of this "
            f"agent's observations), got {list(observation)}."
        )
    n = observation[0]
    expected = {
        "action": (n,),
        "reward": (n,),
        "next_observation": (n, obs_size),
        "terminated": (n,),
    }
    for name, shape in expected.items():
        got = jnp.shape(getattr(batch, name))
        if got != shape:
            raise ValueError(
                f"`batch.{name}` must have shape {list(shape)}, as `batch.observation`'s "
                f"{list(observation)}; got {list(got)}."
            )
    if not jnp.issubdtype(jnp.result_type(batch.action), jnp.integer):
        raise TypeError(
            "`batch.action` must hold integers (the agents' actions are discrete), got "
            f"dtype {jnp.result_type(batch.action)}."
        )
    out_of_range = (batch.action < 0) | (batch.action >= num_actions)
    action = eqx.error_if(
        batch.action,
        out_of_range,
        f"`batch.action` must be in [0, {num_actions}): the agent has {num_actions} actions.",
    )
    data = (batch.observation, batch.reward, batch.next_observation)
    action = eqx.error_if(
        action,
        ~jnp.all(jnp.stack([jnp.isfinite(x).all() for x in data])),
        "`batch` holds non-finite values (in `observation`, `reward` or `next_observation`).",
    )
    return eqx.tree_at(lambda b: b.action, batch, action)


def agent_step(
    state: AgentState, batch: Transition, config: AgentConfig
) -> tuple[AgentState, dict[str, jax.Array]]:
    """One update of the agent named by `config.agent`: a model step on its model loss,
    then the Q-network's inner solve on model transitions, then the target update.

    **Arguments:**

    - `state`: the [`omdx.agents.AgentState`][].
    - `batch`: a batch of real transitions ([`omdx.Transition`][] with a leading batch axis).
    - `config`: the [`omdx.agents.AgentConfig`][].

    **Returns:**

    `(new_state, metrics)`, metrics a dict of scalars: `model_loss` (the loss the model
    minimises), `model_error` and `reward_error` (the squared errors of the model's mean
    prediction of $s'$, summed over its coordinates, and of $r$, averaged over the real
    batch, before the model's step: the "likelihood" side),
    `q_model_loss` and `q_real_loss` (the Bellman loss on model transitions before the
    last of the `inner_steps` steps, so before the inner solve for $K = 1$, and on real
    transitions after the solve), `model_grad_norm` (for OMD, the implicit
    gradient's norm) and `inner_result` (the inner solve's Optimistix result code; 0 is
    success).

    **Raises:**

    `ValueError` / `TypeError` naming the field when `batch` does not fit the agent (its
    shapes, or non-integer actions), and an error at run time for an action outside
    `[0, num_actions)` or non-finite observations or rewards (not inside
    [`omdx.train`][], which switches these checks off and reports non-finite losses).
    """
    batch = _check_batch(state, batch)
    key, inner_key, model_key = jr.split(state.key, 3)
    model_loss, own_loss, grads, solution = _model_gradient(
        state, batch, config, inner_key, model_key
    )
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)
    updates, model_opt_state = model_optimiser(config).update(
        grads, state.model_opt_state, model_params
    )
    model = eqx.combine(optax.apply_updates(model_params, updates), model_static)
    if solution is None:  # MLE / VEP: the Q-network learns on the updated model's data
        solution = _solve_q(model, state, batch, inner_key, config)
    q_static = eqx.filter(state.q, eqx.is_inexact_array, inverse=True)
    q = eqx.combine(jax.lax.stop_gradient(solution.value), q_static)
    q_target = _polyak(state.q_target, q, config.target_update)

    # On the model before its step: the same forward pass as the model loss's (shared after
    # compilation), where the updated model's would cost a pass of its own.
    model_error, reward_error = prediction_errors(state.model, batch, config)
    if config.agent == "omd":  # its own loss is the real-data loss of the new Q
        q_real_loss = own_loss
    else:
        q_real_loss = real_bellman_loss(q, state.q_target, batch, config)
    metrics = {
        "model_loss": model_loss,
        "model_error": model_error,
        "reward_error": reward_error,
        "q_model_loss": solution.aux,
        "q_real_loss": q_real_loss,
        "model_grad_norm": _tree_norm(grads),
        "inner_result": jnp.asarray(solution.result._value, jnp.int32),
    }
    new_state = AgentState(
        q=q,
        q_target=q_target,
        q_opt_state=solution.state.opt_state,
        model=model,
        model_opt_state=model_opt_state,
        value_ensemble=state.value_ensemble,
        key=key,
        updates=state.updates + 1,
    )
    return new_state, metrics


def _step_for(agent: str):
    def step(state: AgentState, batch: Transition, config: AgentConfig):
        if config.agent != agent:
            config = dataclasses.replace(config, agent=agent)
        return agent_step(state, batch, config)

    return step


def omd_step(state: AgentState, batch: Transition, config: AgentConfig):
    """An OMD update: the model descends the implicit gradient of the real-data Bellman loss
    of the Q-network solved on its data. See [`omdx.agents.agent_step`][]."""
    return _step_for("omd")(state, batch, config)


def mle_step(state: AgentState, batch: Transition, config: AgentConfig):
    """An MLE (Dyna) update: the model fits next observations and rewards, then the
    Q-network learns on model data. See [`omdx.agents.agent_step`][]."""
    return _step_for("mle")(state, batch, config)


def vep_step(state: AgentState, batch: Transition, config: AgentConfig):
    """A value-equivalence update: the model matches fixed random value functions at real vs
    predicted next states, plus rewards. See [`omdx.agents.agent_step`][]."""
    return _step_for("vep")(state, batch, config)
