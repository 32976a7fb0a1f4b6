"""The paper's three tabular studies, as functions returning one row per run."""

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._report import mean_and_interval
from ._mdp import polytope_mdp, TabularMDP
from ._operators import expected_return, soft_bellman_operator, solve_q
from ._train import Method, train, TrainResult


PAPER_BOUNDS: tuple[float, ...] = tuple(float(b) for b in np.linspace(0, 6, 20))
PAPER_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.logspace(-3, 0.5, 30))
PAPER_SEEDS = 10
PAPER_STEPS = 10_000


def optimal_return(mdp: TabularMDP, temperature: float = 0.01) -> float:
    """$J^*$: the return of the greedy policy of the MDP's soft $Q^*$ (1.0272727 for the
    paper's MDP).

    **Arguments:**

    - `mdp`: the MDP.
    - `temperature`: $\\tau$ of the soft Bellman operator that defines $Q^*$.

    **Returns:**

    A float.
    """
    q_star = solve_q(mdp, temperature=temperature).value
    return float(expected_return(mdp, q_star, 0))


def _base_rows(result: TrainResult) -> list[dict[str, Any]]:
    rows = []
    norms = np.asarray(
        jnp.sqrt(
            jnp.sum((result.model.logits / result.model.temperature) ** 2, axis=(-3, -2, -1))
            + jnp.sum(result.model.reward**2, axis=(-2, -1))
        )
    )
    returns = np.asarray(result.returns)
    errors = np.asarray(result.bellman_error)
    steps = np.asarray(result.steps)
    converged = np.asarray(result.converged)
    failures = np.asarray(result.inner_failures)
    for m, name in enumerate(result.methods):
        for b, bound in enumerate(np.asarray(result.bounds)):
            for n, noise in enumerate(np.asarray(result.noises)):
                for k, seed in enumerate(np.asarray(result.seeds)):
                    i = (m, b, n, k)
                    rows.append(
                        {
                            "method": name,
                            "bound": float(bound),
                            "sigma": float(noise),
                            "seed": int(seed),
                            "J": float(returns[i]),
                            "bellman_error": float(errors[i]),
                            "model_norm": float(norms[i]),
                            "steps": int(steps[i]),
                            "converged": bool(converged[i]),
                            "inner_failures": int(failures[i]),
                        }
                    )
    return rows


def _check_mdp(mdp):
    if mdp is None:
        return polytope_mdp()
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"`mdp` must be a `TabularMDP` or None, got {type(mdp).__name__}.")
    return mdp


def misspecification_study(
    mdp: TabularMDP | None = None,
    *,
    seeds: int | Sequence[int] = PAPER_SEEDS,
    bounds: Sequence[float] = PAPER_BOUNDS,
    steps: int = PAPER_STEPS,
    **train_kwargs,
) -> tuple[list[dict[str, Any]], TrainResult]:
    """Expected return of OMD and MLE models against the model norm bound.

    OMD maximises $J(\\pi_{Q^*_\\theta})$; MLE minimises [`omdx.tabular.mle_loss`][]; both
    under the bound $\\|(\\ell/\\tau_p, \\hat r)\\|_2 \\le b$.

    **Arguments:**

    - `mdp`: the true MDP (default [`omdx.tabular.polytope_mdp`][]).
    - `seeds`, `bounds`, `steps`: the grid and the step budget (the paper's by default).
    - `train_kwargs`: passed to [`omdx.tabular.train`][] (`lr`, `progress`, ...).

    **Returns:**

    `(rows, result)`: one dict per (method, bound, seed) and the
    [`omdx.tabular.TrainResult`][].
    """
    mdp = _check_mdp(mdp)
    result = train(
        mdp, methods=("omd", "mle"), seeds=seeds, bounds=bounds, steps=steps, **train_kwargs
    )
    return _base_rows(result), result


def bounds_study(
    mdp: TabularMDP | None = None,
    *,
    seeds: int | Sequence[int] = PAPER_SEEDS,
    bounds: Sequence[float] = PAPER_BOUNDS,
    steps: int = PAPER_STEPS,
    **train_kwargs,
) -> tuple[list[dict[str, Any]], TrainResult]:
    r"""$\max|Q^* - \hat Q|$ of OMD and MLE models against the two error bounds.

    As in the authors' notebook, OMD here minimises the true Bellman error of
    $\hat Q = Q^*_\theta$. Each row holds `q_error` $= \max_{s,a}|Q^* - \hat Q|$,
    the OMD bound $\epsilon / (1 - \gamma)$ with
    $\epsilon = \max_{s,a}|B^\theta \hat Q - B^{true} \hat Q|$ (evaluated at the learned
    $\hat Q$, as the notebook does), and the MLE bound
    $\epsilon_r / (1 - \gamma) + \gamma \epsilon_p r_{\max} / (2 (1 - \gamma)^2)$ with
    $\epsilon_r = \max|\hat r - r|$, $\epsilon_p = \max_{s,a} \|\hat P(\cdot|s,a) -
    P(\cdot|s,a)\|_1$ and $r_{\max} = \max|r|$, as the notebook computes them. Both bounds
    are computed for every run. The MLE bound assumes rewards in $[0, r_{\max}]$: with
    rewards of both signs it can fail unless $r_{\max}$ is the reward range (it held on
    the paper's MDP in every run of the benchmark).

    **Arguments:**

    - `mdp`: the true MDP (default [`omdx.tabular.polytope_mdp`][]).
    - `seeds`, `bounds`, `steps`: the grid and the step budget (the paper's by default).
    - `train_kwargs`: passed to [`omdx.tabular.train`][].

    **Returns:**

    `(rows, result)`.
    """
    mdp = _check_mdp(mdp)
    temperature = train_kwargs.get("temperature", 0.01)
    methods = (Method("omd", objective="bellman", label="OMD"), "mle")
    result = train(mdp, methods=methods, seeds=seeds, bounds=bounds, steps=steps, **train_kwargs)
    return bounds_rows(mdp, result, temperature), result


def bounds_rows(
    mdp: TabularMDP, result: TrainResult, temperature: float = 0.01
) -> list[dict[str, Any]]:
    """Per-run rows of a training result with the Q error and both error bounds.

    See [`omdx.tabular.bounds_study`][] for the columns.
    """
    rows = _base_rows(result)
    q_true = solve_q(mdp, temperature=temperature).value
    gamma = float(mdp.gamma)
    r_max = float(jnp.max(jnp.abs(mdp.rewards)))
    p_hat = np.asarray(result.model.transitions).reshape(-1, *mdp.transitions.shape)
    r_hat = np.asarray(result.model.reward).reshape(-1, *mdp.rewards.shape)
    q_hat = np.asarray(result.q).reshape(-1, *mdp.rewards.shape)
    for row, p, r, q in zip(rows, p_hat, r_hat, q_hat):
        model_mdp = TabularMDP(p, r, mdp.gamma, mdp.initial)
        eps = float(
            jnp.max(
                jnp.abs(
                    soft_bellman_operator(model_mdp, q, temperature)
                    - soft_bellman_operator(mdp, q, temperature)
                )
            )
        )
        eps_r = float(np.max(np.abs(r - np.asarray(mdp.rewards))))
        eps_p = float(np.max(np.sum(np.abs(p - np.asarray(mdp.transitions)), axis=-1)))
        row.update(
            q_error=float(np.max(np.abs(q - np.asarray(q_true)))),
            eps=eps,
            omd_bound=eps / (1 - gamma),
            eps_r=eps_r,
            eps_p=eps_p,
            mle_bound=eps_r / (1 - gamma) + gamma * eps_p * r_max / (2 * (1 - gamma) ** 2),
        )
    return rows


def noise_study(
    mdp: TabularMDP | None = None,
    *,
    seeds: int | Sequence[int] = PAPER_SEEDS,
    sigmas: Sequence[float] = PAPER_SIGMAS,
    steps: int = PAPER_STEPS,
    adjoints: Sequence[str] = ("direct", "identity"),
    bound: float = math.inf,
    **train_kwargs,
) -> tuple[list[dict[str, Any]], TrainResult]:
    r"""OMD's return when the inner solution is perturbed by $\mathcal{N}(0, \sigma^2)$ noise.

    As in the authors' notebook, OMD minimises the true Bellman error, without a norm
    bound, and the outer objective sees $Q^*_\theta + \sigma \xi$ at every step; the exact
    inverse Jacobian (`"direct"`) is compared with the identity approximation. `J` is the
    return of the final model's clean $Q^*_\theta$.

    **Arguments:**

    - `mdp`: the true MDP (default [`omdx.tabular.polytope_mdp`][]).
    - `seeds`, `sigmas`, `steps`: the grid and the step budget (the paper's by default).
    - `adjoints`: the adjoints to compare.
    - `bound`: the norm bound (none by default).
    - `train_kwargs`: passed to [`omdx.tabular.train`][].

    **Returns:**

    `(rows, result)`; the rows' `method` is `OMD (<adjoint>)`.
    """
    mdp = _check_mdp(mdp)
    if isinstance(adjoints, str) or not adjoints:
        raise ValueError(f"`adjoints` must be a non-empty sequence of names, got {adjoints!r}.")
    methods = tuple(
        Method("omd", objective="bellman", adjoint=a, label=f"OMD ({a})") for a in adjoints
    )
    result = train(
        mdp,
        methods=methods,
        seeds=seeds,
        bounds=(bound,),
        noises=sigmas,
        steps=steps,
        **train_kwargs,
    )
    return _base_rows(result), result


def summarise(
    rows: Sequence[dict[str, Any]], by: Sequence[str], values: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean and 95% interval half-width over seeds of `values`, grouped by the keys `by`.

    **Arguments:**

    - `rows`: per-run dicts.
    - `by`: the grouping keys, e.g. `("method", "bound")`.
    - `values`: the columns to average; each gives `<value>` (mean) and `<value>_ci95`.

    **Returns:**

    One dict per group, in first-seen order, with `n` the number of runs.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, key))
        entry["n"] = len(members)
        for value in values:
            mean, half = mean_and_interval([m[value] for m in members])
            entry[value] = mean
            entry[f"{value}_ci95"] = half
        out.append(entry)
    return out
