"""Tabular models, Bellman operators, Q* through `solve_inner`, and the objectives."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .._adjoint import AdjointName
from .._inner import solve_inner
from .._small_lu import DIRECT_SMALL_LU_SIZE, direct_solver, small_solve
from ._mdp import _is_concrete, TabularMDP


class TabularModel(eqx.Module):
    r"""A learnable tabular model: transition logits $\ell$ and rewards $\hat r$.

    The model's transitions are $\hat P = \mathrm{softmax}(\ell / \tau_p)$ over next states.
    With the paper's $\tau_p = 0.01$ the optimiser works on $\ell$ itself, so that a step of
    0.01 in $\ell$ is a step of 1 in the logits $\ell / \tau_p$: this parametrisation is part
    of what the paper's results depend on.

    **Fields:**

    - `logits`: `[A, S, S]`, the transition logits $\ell$.
    - `reward`: `[S, A]`, the reward $\hat r$.
    - `temperature`: $\tau_p > 0$ (static), the softmax temperature of the transitions.
    """

    logits: Float[Array, "A S S"]
    reward: Float[Array, "S A"]
    temperature: float = eqx.field(static=True, default=0.01)

    def __check_init__(self):
        if self.logits.ndim != 3 or self.logits.shape[1] != self.logits.shape[2]:
            raise ValueError(f"`logits` must have shape [A, S, S], got {self.logits.shape}.")
        if self.reward.shape != (self.logits.shape[1], self.logits.shape[0]):
            raise ValueError(
                f"`reward` must have shape [S, A] = {self.logits.shape[1::-1]}, got "
                f"{self.reward.shape}."
            )
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"`temperature` must be a positive float, got {self.temperature!r}.")

    @property
    def transitions(self) -> Float[Array, "A S S"]:
        """$\\hat P = \\mathrm{softmax}(\\ell / \\tau_p)$ over the last axis."""
        return jax.nn.softmax(self.logits / self.temperature, axis=-1)

    def norm(self) -> Scalar:
        """$\\|(\\ell / \\tau_p, \\hat r)\\|_2$, the norm the capacity bound limits."""
        return jnp.sqrt(jnp.sum((self.logits / self.temperature) ** 2) + jnp.sum(self.reward**2))

    def to_mdp(self, gamma, initial=None) -> TabularMDP:
        """The model as a [`omdx.tabular.TabularMDP`][] with discount `gamma`."""
        return TabularMDP(self.transitions, self.reward, gamma, initial)


def init_model(
    key: PRNGKeyArray, n_states: int, n_actions: int, temperature: float = 0.01, dtype=None
) -> tuple[TabularModel, Float[Array, "S A"]]:
    """Random initial model and Q, as in the paper: $\\ell$, $\\hat r$ and Q ~ U[0, 1).

    `key` is split in three: Q, logits and reward (the paper's
    `jax.random.split(jax.random.PRNGKey(seed), 3)`).

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n_states`, `n_actions`: the sizes.
    - `temperature`: $\\tau_p$ of the model.
    - `dtype`: the floating-point type (default: JAX's default float).

    **Returns:**

    A pair `(model, q0)`.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    k_q, k_logits, k_reward = jax.random.split(key, 3)
    q0 = jax.random.uniform(k_q, (n_states, n_actions), dtype)
    logits = jax.random.uniform(k_logits, (n_actions, n_states, n_states), dtype)
    reward = jax.random.uniform(k_reward, (n_states, n_actions), dtype)
    return TabularModel(logits, reward, temperature), q0


def _checked_temperature(temperature):
    """`temperature`, with a clear error if it is negative or not finite (a negative one
    silently gives an anti-greedy policy): raised now for a value known now, at run time
    (by Equinox) for a traced one."""
    message = "`temperature` must be a finite number >= 0"
    if not _is_concrete(temperature):
        bad = ~(jnp.isfinite(temperature) & (temperature >= 0))
        return eqx.error_if(temperature, bad, message + ".")
    value = np.asarray(temperature)
    if not (np.issubdtype(value.dtype, np.number) and np.all(np.isfinite(value) & (value >= 0))):
        raise ValueError(f"{message}, got {temperature!r}.")
    return temperature


def _by_temperature(temperature, soft, hard):
    r"""`soft(temperature)` for $\tau > 0$, `hard()` for $\tau = 0$: chosen in Python for a
    Python number, per value for an array (a NumPy or JAX zero, or a traced or vmapped
    temperature), where the soft branch sees 1 in place of 0 so that neither it nor its
    gradient is NaN. The public operators check the temperature; this runs inside the
    solve's residual, where they already have."""
    if isinstance(temperature, (int, float)):
        return hard() if temperature == 0 else soft(temperature)
    positive = jnp.asarray(temperature) > 0
    value = jnp.where(positive, soft(jnp.where(positive, temperature, 1)), hard())
    # With Equinox's checks off (inside the tabular training loop) a negative or NaN
    # temperature gives NaN, which the loop reports, rather than the hard operator.
    return jnp.where(positive | (temperature == 0), value, jnp.nan)


def _soft_max(q: Float[Array, "S A"], temperature) -> Float[Array, " S"]:
    return _by_temperature(
        temperature,
        lambda t: t * jax.nn.logsumexp(q / t, axis=1),
        lambda: jnp.max(q, axis=1),
    )


def soft_bellman_operator(
    mdp: TabularMDP, q: Float[Array, "S A"], temperature: float | Scalar = 0.01
) -> Float[Array, "S A"]:
    r"""The soft Bellman optimality operator.

    $$(B_\tau Q)(s, a) = r(s, a) + \gamma \sum_{s'} P(s' | s, a)\,
    \tau \log \sum_{a'} \exp(Q(s', a') / \tau).$$

    With `temperature=0` it is the hard operator, [`omdx.tabular.bellman_operator`][].

    **Arguments:**

    - `mdp`: the MDP (or a model's, through `TabularModel.to_mdp`).
    - `q`: `[S, A]`.
    - `temperature`: $\tau \geq 0$.

    **Returns:**

    `[S, A]`, $B_\tau Q$.
    """
    return _soft_bellman(mdp, q, _checked_temperature(temperature))


def _soft_bellman(mdp: TabularMDP, q, temperature):
    v = _soft_max(q, temperature)
    return mdp.rewards + mdp.gamma * jnp.einsum("ast,t->sa", mdp.transitions, v)


def bellman_operator(mdp: TabularMDP, q: Float[Array, "S A"]) -> Float[Array, "S A"]:
    r"""The (hard) Bellman optimality operator $r + \gamma P \max_{a'} Q(\cdot, a')$.

    **Arguments:**

    - `mdp`: the MDP.
    - `q`: `[S, A]`.

    **Returns:**

    `[S, A]`, $BQ$.
    """
    return soft_bellman_operator(mdp, q, 0)


def _bellman_residual(q, args):
    mdp, temperature = args  # checked by `solve_q`
    return _soft_bellman(mdp, q, temperature) - q


def _default_tol(dtype) -> float:
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


SolverName = Literal["newton", "value_iteration"]


def make_solver(
    solver: SolverName | optx.AbstractRootFinder | optx.AbstractFixedPointSolver,
    dtype,
    size: int = DIRECT_SMALL_LU_SIZE + 1,
) -> optx.AbstractRootFinder | optx.AbstractFixedPointSolver:
    """Turn a solver name into an Optimistix solver with a tolerance for `dtype`; Newton's
    linear solves use [`omdx.SmallLU`][] for problems of at most 16 unknowns (`size`)."""
    if isinstance(solver, str):
        tol = _default_tol(dtype)
        if solver == "newton":
            return optx.Newton(rtol=tol, atol=tol, linear_solver=direct_solver(size))
        if solver == "value_iteration":
            return optx.FixedPointIteration(rtol=tol, atol=tol)
        raise ValueError(
            f"Unknown `solver` {solver!r}: expected 'newton', 'value_iteration' or an "
            "Optimistix root finder / fixed-point solver."
        )
    if isinstance(solver, (optx.AbstractRootFinder, optx.AbstractFixedPointSolver)):
        return solver
    raise TypeError(
        "`solver` must be 'newton', 'value_iteration' or an Optimistix root finder / "
        f"fixed-point solver, got {type(solver).__name__}."
    )


@eqx.filter_jit
def solve_q(
    mdp: TabularMDP,
    q0: Float[Array, "S A"] | None = None,
    *,
    temperature: float | Scalar = 0.01,
    solver: SolverName | optx.AbstractRootFinder | optx.AbstractFixedPointSolver = "newton",
    adjoint: AdjointName | lx.AbstractLinearSolver = "direct",
    max_steps: int = 1000,
    throw: bool = True,
) -> optx.Solution:
    r"""$Q^*$ of an MDP, the fixed point of the soft Bellman optimality operator.

    Solved by [`omdx.solve_inner`][] on the residual $B_\tau Q - Q$, so gradients of
    anything computed from `solution.value` flow implicitly into `mdp`'s arrays (and, for
    `mdp = model.to_mdp(gamma)`, into the model's logits and rewards).

    **Arguments:**

    - `mdp`: the MDP; for a learned model, `model.to_mdp(true_mdp.gamma)`.
    - `q0`: the warm start (default zeros); it receives no gradient.
    - `temperature`: $\tau$ of the soft operator (0 for the hard one).
    - `solver`: `"newton"` (default), `"value_iteration"`, or an Optimistix solver.
    - `adjoint`: the backward linear solve: `"direct"`, `"gmres"`, `"neumann"`,
        `"identity"` or a `lineax.AbstractLinearSolver`. `"direct"` is
        [`omdx.SmallLU`][] for up to 16 state-action pairs, `lineax.LU` above.
    - `max_steps`: the solver's step limit.
    - `throw`: raise on failure; pass `False` under `vmap` and read `solution.result`.

    **Returns:**

    An `optimistix.Solution` whose `.value` is $Q^*$, `[S, A]`.
    """
    dtype = mdp.transitions.dtype
    if q0 is None:
        q0 = jnp.zeros((mdp.n_states, mdp.n_actions), dtype)
    if jnp.shape(q0) != (mdp.n_states, mdp.n_actions):
        raise ValueError(
            f"`q0` must have shape [S, A] = {(mdp.n_states, mdp.n_actions)}, got {jnp.shape(q0)}."
        )
    temperature = _checked_temperature(temperature)
    temperature_arr = jnp.asarray(temperature, dtype)
    if isinstance(temperature, (int, float)) and temperature == 0:
        temperature_arr = 0
    size = mdp.n_states * mdp.n_actions
    if isinstance(adjoint, str) and adjoint == "direct":
        adjoint = direct_solver(size)
    return solve_inner(
        _bellman_residual,
        jnp.asarray(q0, dtype),
        (mdp, temperature_arr),
        solver=make_solver(solver, dtype, size),
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
    )


def policy(q: Float[Array, "S A"], temperature: float | Scalar = 0.01) -> Float[Array, "S A"]:
    """$\\pi = \\mathrm{softmax}(Q / \\tau)$ per state; greedy (one-hot argmax) for `temperature=0`.

    **Arguments:**

    - `q`: `[S, A]`.
    - `temperature`: $\\tau \\geq 0$.

    **Returns:**

    `[S, A]`, the action probabilities.
    """
    return _by_temperature(
        _checked_temperature(temperature),
        lambda t: jax.nn.softmax(q / t, axis=1),
        lambda: jax.nn.one_hot(jnp.argmax(q, axis=1), q.shape[1], dtype=q.dtype),
    )


def policy_values(mdp: TabularMDP, pi: Float[Array, "S A"]) -> Float[Array, " S"]:
    """The exact state values $V^\\pi = (I - \\gamma P_\\pi)^{-1} r_\\pi$ (a linear solve).

    **Arguments:**

    - `mdp`: the MDP.
    - `pi`: `[S, A]`, a stochastic policy.

    **Returns:**

    `[S]`, $V^\\pi$.
    """
    p_pi = jnp.einsum("ast,sa->st", mdp.transitions, pi)
    r_pi = jnp.sum(mdp.rewards * pi, axis=1)
    eye = jnp.eye(mdp.n_states, dtype=p_pi.dtype)
    if mdp.n_states <= DIRECT_SMALL_LU_SIZE:
        return small_solve(eye - mdp.gamma * p_pi, r_pi)
    return jnp.linalg.solve(eye - mdp.gamma * p_pi, r_pi)


def expected_return(
    mdp: TabularMDP, q: Float[Array, "S A"], temperature: float | Scalar = 0.01
) -> Scalar:
    r"""The exact expected return $J(\pi) = \mu^\top V^\pi$ of $\pi = \mathrm{softmax}(Q/\tau)$.

    **Arguments:**

    - `mdp`: the (true) MDP the policy acts in.
    - `q`: `[S, A]`, the Q-function defining the policy.
    - `temperature`: $\tau$; 0 for the greedy policy.

    **Returns:**

    A scalar, $J$.
    """
    return mdp.initial @ policy_values(mdp, policy(q, temperature))


def bellman_error(
    mdp: TabularMDP, q: Float[Array, "S A"], temperature: float | Scalar = 0.01
) -> Scalar:
    r"""The mean squared true Bellman error, mean over $(s, a)$ of $(B_\tau Q - Q)^2$.

    **Arguments:**

    - `mdp`: the (true) MDP.
    - `q`: `[S, A]`.
    - `temperature`: $\tau$ of the soft operator.

    **Returns:**

    A scalar.
    """
    return jnp.mean((soft_bellman_operator(mdp, q, temperature) - q) ** 2)


def mle_loss(model: TabularModel, mdp: TabularMDP) -> Scalar:
    r"""The MLE objective: mean KL$(P \| \hat P)$ over $(s, a)$ plus mean $(\hat r - r)^2$.

    Zero-probability true transitions contribute nothing to the KL term.

    **Arguments:**

    - `model`: the [`omdx.tabular.TabularModel`][].
    - `mdp`: the true MDP.

    **Returns:**

    A scalar.
    """
    p = mdp.transitions
    log_p_hat = jax.nn.log_softmax(model.logits / model.temperature, axis=-1)
    kl = jnp.sum(jax.scipy.special.xlogy(p, p) - jnp.where(p > 0, p * log_p_hat, 0), axis=-1)
    return jnp.mean(kl) + jnp.mean((model.reward - mdp.rewards) ** 2)
