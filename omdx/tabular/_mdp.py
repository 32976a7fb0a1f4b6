"""Tabular MDPs: the validated `TabularMDP` and its constructors."""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


def _as_float_array(x: Any, name: str) -> Array:
    if isinstance(x, jax.core.Tracer):
        array = x
    else:
        try:
            array = jnp.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"`{name}` must be an array of numbers, got {type(x).__name__}.") from e
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        if jnp.issubdtype(array.dtype, jnp.complexfloating) or array.dtype == jnp.bool_:
            raise TypeError(f"`{name}` must be real-valued, got dtype {array.dtype}.")
        array = array.astype(jnp.result_type(float))
    return array


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _row_tolerance(dtype) -> float:
    return 1e-6 if jnp.finfo(dtype).bits >= 64 else 1e-4


class TabularMDP(eqx.Module):
    r"""A finite MDP: transitions $P[a, s, s']$, rewards $r[s, a]$, discount and start.

    The arrays are checked at construction when their values are known (outside `jit` and
    `vmap`; under tracing only the shapes are checked): every row $P[a, s, \cdot]$ must be
    a probability distribution, rewards finite, $0 \le \gamma < 1$ and the initial
    distribution a probability vector. A `TabularMDP` is a PyTree, so it jits, vmaps and
    can be built from traced arrays (a learned model, for example).

    **Fields:**

    - `transitions`: `[A, S, S]`, the probability of $s'$ after action $a$ in state $s$.
    - `rewards`: `[S, A]`, the expected reward of action $a$ in state $s$.
    - `gamma`: the discount factor, a scalar array.
    - `initial`: `[S]`, the initial state distribution.
    """

    transitions: Float[Array, "A S S"]
    rewards: Float[Array, "S A"]
    gamma: Float[Array, ""]
    initial: Float[Array, " S"]

    def __init__(self, transitions, rewards, gamma, initial=None):
        self.transitions = _as_float_array(transitions, "transitions")
        self.rewards = _as_float_array(rewards, "rewards")
        self.gamma = _as_float_array(gamma, "gamma")
        if initial is None:
            n_states = self.transitions.shape[-1] if self.transitions.ndim == 3 else 1
            initial = jnp.full(n_states, 1.0 / n_states, dtype=self.transitions.dtype)
        self.initial = _as_float_array(initial, "initial")

    def __check_init__(self):
        p, r, g, mu = self.transitions, self.rewards, self.gamma, self.initial
        if p.ndim != 3 or p.shape[1] != p.shape[2]:
            raise ValueError(
                f"`transitions` must have shape [A, S, S] (actions, states, next states), "
                f"got {tuple(p.shape)}."
            )
        n_actions, n_states = p.shape[0], p.shape[1]
        if n_actions == 0 or n_states == 0:
            raise ValueError(f"`transitions` must be non-empty, got shape {tuple(p.shape)}.")
        if r.shape != (n_states, n_actions):
            raise ValueError(
                f"`rewards` must have shape [S, A] = {(n_states, n_actions)} to match "
                f"`transitions` {tuple(p.shape)}, got {tuple(r.shape)}."
            )
        if g.ndim != 0:
            raise ValueError(f"`gamma` must be a scalar, got shape {tuple(g.shape)}.")
        if mu.shape != (n_states,):
            raise ValueError(
                f"`initial` must have shape [S] = ({n_states},), got {tuple(mu.shape)}."
            )
        if not _is_concrete(p, r, g, mu):
            return
        p_np, r_np, g_np, mu_np = (np.asarray(x, dtype=np.float64) for x in (p, r, g, mu))
        tol = _row_tolerance(p.dtype)
        if not np.all(np.isfinite(p_np)) or np.any(p_np < 0):
            raise ValueError("`transitions` must be finite and non-negative.")
        row_error = np.max(np.abs(p_np.sum(-1) - 1.0))
        if row_error > tol:
            a, s = np.unravel_index(np.argmax(np.abs(p_np.sum(-1) - 1.0)), p_np.shape[:2])
            raise ValueError(
                f"`transitions` rows must sum to 1 (within {tol:g}); P[a={a}, s={s}, :] "
                f"sums to {p_np[a, s].sum():.10g}."
            )
        if not np.all(np.isfinite(r_np)):
            raise ValueError("`rewards` must be finite.")
        if not (np.isfinite(g_np) and 0 <= g_np < 1):
            raise ValueError(f"`gamma` must satisfy 0 <= gamma < 1, got {float(g_np)}.")
        if not np.all(np.isfinite(mu_np)) or np.any(mu_np < 0):
            raise ValueError("`initial` must be finite and non-negative.")
        if abs(mu_np.sum() - 1.0) > tol:
            raise ValueError(
                f"`initial` must sum to 1 (within {tol:g}), sums to {mu_np.sum():.10g}."
            )

    @property
    def n_states(self) -> int:
        return self.transitions.shape[-1]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[0]


def polytope_mdp(dtype=None) -> TabularMDP:
    """The 2-state, 2-action MDP of the paper's tabular study.

    From "The Value Function Polytope in Reinforcement Learning" (Dadashi et al., 2019,
    appendix A(d)), with $\\gamma = 0.9$ and a uniform initial distribution. With the soft
    Bellman operator at temperature 0.01 its $Q^*$ is about
    `[[0.16363807, 0.06282009], [1.89091046, 0.66282009]]` and the optimal policy's
    expected return is about 1.0272727.

    **Arguments:**

    - `dtype`: the floating-point type (default: JAX's default float).

    **Returns:**

    A [`omdx.tabular.TabularMDP`][].
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    transitions = jnp.array([[[0.7, 0.3], [0.2, 0.8]], [[0.99, 0.01], [0.99, 0.01]]], dtype=dtype)
    rewards = jnp.array([[-0.45, -0.1], [0.5, 0.5]], dtype=dtype)
    return TabularMDP(transitions, rewards, jnp.asarray(0.9, dtype), jnp.full(2, 0.5, dtype))


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def garnet(
    key: PRNGKeyArray,
    n_states: int,
    n_actions: int,
    branching: int,
    *,
    gamma: float = 0.9,
    dtype=None,
) -> TabularMDP:
    """A random Garnet MDP (Archibald et al., 1995).

    Each state-action pair leads to `branching` distinct next states chosen uniformly at
    random, with probabilities drawn from a flat Dirichlet distribution; rewards are
    uniform on [0, 1); the initial distribution is uniform.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n_states`, `n_actions`: the sizes ($\\geq 1$).
    - `branching`: the number of possible next states per pair, $1 \\le b \\le S$.
    - `gamma`: the discount factor, $0 \\le \\gamma < 1$.
    - `dtype`: the floating-point type (default: JAX's default float).

    **Returns:**

    A [`omdx.tabular.TabularMDP`][].
    """
    n_states = _check_positive_int(n_states, "n_states")
    n_actions = _check_positive_int(n_actions, "n_actions")
    branching = _check_positive_int(branching, "branching")
    if branching > n_states:
        raise ValueError(f"`branching` must be <= n_states = {n_states}, got {branching}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    transitions, rewards = _garnet_arrays(key, n_states, n_actions, branching, jnp.dtype(dtype))
    return TabularMDP(transitions, rewards, jnp.asarray(gamma, dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _garnet_arrays(key, n_states, n_actions, branching, dtype):
    k_next, k_prob, k_reward = jax.random.split(key, 3)
    shape = (n_actions, n_states)
    # `branching` distinct next states per pair: the first entries of a random ordering.
    order = jnp.argsort(jax.random.uniform(k_next, shape + (n_states,)), axis=-1)
    support = order[..., :branching]
    # Flat-Dirichlet probabilities: gaps between sorted uniform cut points.
    cuts = jnp.sort(jax.random.uniform(k_prob, shape + (branching - 1,), dtype), axis=-1)
    edges = jnp.concatenate(
        [jnp.zeros(shape + (1,), dtype), cuts, jnp.ones(shape + (1,), dtype)], axis=-1
    )
    weights = jnp.diff(edges, axis=-1)
    one_hot = jax.nn.one_hot(support, n_states, dtype=dtype)  # [A, S, b, S']
    transitions = jnp.einsum("asb,asbt->ast", weights, one_hot)
    rewards = jax.random.uniform(k_reward, (n_states, n_actions), dtype)
    return transitions, rewards


def from_gymnasium(env: Any, gamma: float, *, dtype=None, **make_kwargs) -> TabularMDP:
    """Convert a gymnasium toy-text environment with a transition table into a `TabularMDP`.

    Works for environments whose unwrapped form exposes `P[s][a] = [(prob, next_state,
    reward, terminated), ...]` (FrozenLake, CliffWalking, Taxi). Rewards become expected
    rewards $r(s, a) = \\sum p \\cdot \\text{reward}$. Terminal transitions lead to one
    extra absorbing state (the last index) with zero reward, so the MDP has $S + 1$ states
    whenever some transition terminates. The initial distribution is the environment's
    `initial_state_distrib` when it has one, else uniform.

    **Arguments:**

    - `env`: an environment id such as `"FrozenLake-v1"` (made with
        `gymnasium.make(env, **make_kwargs)`) or an environment instance.
    - `gamma`: the discount factor, $0 \\le \\gamma < 1$.
    - `dtype`: the floating-point type (default: JAX's default float).
    - `make_kwargs`: passed to `gymnasium.make`, e.g. `is_slippery=False`.

    **Returns:**

    A [`omdx.tabular.TabularMDP`][].
    """
    import gymnasium

    if isinstance(env, str):
        env = gymnasium.make(env, **make_kwargs)
    elif make_kwargs:
        raise ValueError("`make_kwargs` are only used when `env` is an environment id.")
    unwrapped = getattr(env, "unwrapped", env)
    table = getattr(unwrapped, "P", None)
    if table is None:
        raise ValueError(
            f"`env` ({type(unwrapped).__name__}) has no transition table `env.unwrapped.P`; "
            "only tabular toy-text environments (FrozenLake, CliffWalking, Taxi) convert."
        )
    spaces = (env.observation_space, env.action_space)
    if not all(isinstance(sp, gymnasium.spaces.Discrete) for sp in spaces):
        raise ValueError("`env` must have Discrete observation and action spaces.")
    n_states, n_actions = int(env.observation_space.n), int(env.action_space.n)
    terminal = any(bool(entry[3]) for s in table for a in table[s] for entry in table[s][a])
    total = n_states + int(terminal)
    transitions = np.zeros((n_actions, total, total))
    rewards = np.zeros((total, n_actions))
    for s in range(n_states):
        for a in range(n_actions):
            for prob, next_state, reward, done in table[s][a]:
                target = n_states if done else int(next_state)
                transitions[a, s, target] += prob
                rewards[s, a] += prob * reward
    if terminal:
        transitions[:, n_states, n_states] = 1.0
    initial = np.zeros(total)
    start = getattr(unwrapped, "initial_state_distrib", None)
    if start is not None:
        initial[:n_states] = np.asarray(start, dtype=np.float64)
    else:
        initial[:n_states] = 1.0 / n_states
    dtype = jnp.result_type(float) if dtype is None else dtype
    return TabularMDP(
        jnp.asarray(transitions, dtype),
        jnp.asarray(rewards, dtype),
        jnp.asarray(gamma, dtype),
        jnp.asarray(initial / initial.sum(), dtype),
    )
