"""OMD and MLE training of tabular models: one compiled, vmapped call for a whole grid."""

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._adjoint import ADJOINT_NAMES
from .._errors import errors_off, TrainingDiverged
from ._mdp import TabularMDP
from ._operators import (
    bellman_error,
    expected_return,
    init_model,
    make_solver,
    mle_loss,
    solve_q,
    TabularModel,
)


# ----------------------------------------------------------------------------------------
# The capacity constraint as an Optax transformation.


def project_l2_ball(
    radius: float | Array, norm: Callable[[PyTree], Array] | None = None
) -> optax.GradientTransformation:
    r"""Project the parameters onto the ball $\{x : \mathrm{norm}(x) \le b\}$ after each update.

    Chain it after an optimiser, `optax.chain(optax.adam(lr), project_l2_ball(b))`: when the
    updated parameters $x$ have $\mathrm{norm}(x) > b$, every leaf is scaled by
    $b / \mathrm{norm}(x)$. With `norm = lambda m: m.norm()` on a
    [`omdx.tabular.TabularModel`][] this is the paper's constraint on
    $\|(\ell / \tau_p, \hat r)\|_2$, which scales both $\ell$ and $\hat r$. An infinite
    radius disables it; `radius` may be a traced array (one per vmapped run).

    **Arguments:**

    - `radius`: the bound $b \geq 0$.
    - `norm`: a function of the parameters returning a scalar norm (default: the global
        L2 norm of all leaves).

    **Returns:**

    An `optax.GradientTransformation` whose `update` needs `params`.
    """
    if isinstance(radius, (int, float)) and not radius >= 0:
        raise ValueError(f"`radius` must be >= 0, got {radius}.")
    norm_fn = optax.tree.norm if norm is None else norm

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "`project_l2_ball` needs `params` in `update(updates, state, params)`."
            )
        new = optax.apply_updates(params, updates)
        size = norm_fn(new)
        tiny = jnp.finfo(jnp.result_type(size)).tiny
        scale = jnp.where(size > radius, radius / jnp.maximum(size, tiny), 1.0)
        projected = jax.tree.map(lambda x: (x * scale).astype(x.dtype), new)
        return jax.tree.map(lambda x, p: x - p, projected, params), state

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------
# Methods, state and result.

Kind = Literal["omd", "mle"]
Objective = Literal["return", "bellman"]


class Method(eqx.Module):
    """What to train: OMD (with its outer objective and adjoint) or MLE.

    **Arguments:**

    - `kind`: `"omd"` (differentiate the true objective through $Q^*_\\theta$) or `"mle"`
        (minimise [`omdx.tabular.mle_loss`][]).
    - `objective`: for OMD, `"return"` (maximise $J(\\pi_{Q^*_\\theta})$) or `"bellman"`
        (minimise the true Bellman error of $Q^*_\\theta$).
    - `adjoint`: for OMD, the backward solve of [`omdx.solve_inner`][]: `"direct"`,
        `"gmres"`, `"neumann"`, `"identity"` or a `lineax.AbstractLinearSolver`.
    - `label`: the name in tables and plots (default: built from the fields).
    """

    kind: str = eqx.field(static=True, default="omd")
    objective: str = eqx.field(static=True, default="return")
    adjoint: Any = eqx.field(static=True, default="direct")
    label: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.kind not in ("omd", "mle"):
            raise ValueError(f"`kind` must be 'omd' or 'mle', got {self.kind!r}.")
        if self.objective not in ("return", "bellman"):
            raise ValueError(f"`objective` must be 'return' or 'bellman', got {self.objective!r}.")
        if isinstance(self.adjoint, str):
            if self.adjoint not in ADJOINT_NAMES or self.adjoint == "cg":
                raise ValueError(
                    f"`adjoint` must be one of 'direct', 'gmres', 'neumann', 'identity' or a "
                    f"`lineax.AbstractLinearSolver`, got {self.adjoint!r}."
                )
        elif not isinstance(self.adjoint, lx.AbstractLinearSolver):
            raise TypeError(
                f"`adjoint` must be a string or a lineax solver, got {type(self.adjoint).__name__}."
            )

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        if self.kind == "mle":
            return "MLE"
        name = "OMD"
        if self.objective != "return":
            name += f"-{self.objective}"
        if self.adjoint != "direct":
            adjoint = self.adjoint if isinstance(self.adjoint, str) else type(self.adjoint).__name__
            name += f" ({adjoint})"
        return name


def _as_method(method) -> Method:
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        return Method(kind=method)
    raise TypeError(f"`methods` must hold 'omd', 'mle' or `Method`s, got {type(method).__name__}.")


class TrainState(eqx.Module):
    """The state of one training run (vmapped: one per grid point)."""

    model: TabularModel
    opt_state: PyTree
    q: Float[Array, "S A"]
    step: Int[Array, ""]
    done: Bool[Array, ""]
    failures: Int[Array, ""]
    noise_key: Array


class TrainResult(eqx.Module):
    """The result of [`omdx.tabular.train`][] over a grid.

    Arrays have leading axes `[M, B, N, K]`: methods, norm bounds, noise scales, seeds.

    **Fields:**

    - `methods`: the methods' names (static).
    - `bounds`, `noises`, `seeds`: the grid's values, `[B]`, `[N]`, `[K]`.
    - `objective`: `[M, B, N, K, T]`, the minimised objective at each step ($-J$ or the
        true Bellman error for OMD, the MLE loss for MLE), at the parameters before that
        step's update; after a run freezes it repeats its last value.
    - `model`: the final [`omdx.tabular.TabularModel`][]s (leaves `[M, B, N, K, ...]`).
    - `q`: `[M, B, N, K, S, A]`, $Q^*$ of the final models.
    - `returns`: `[M, B, N, K]`, the exact $J$ of $\\mathrm{softmax}(Q/\\tau)$ in the true MDP.
    - `bellman_error`: `[M, B, N, K]`, the true mean squared Bellman error of `q`.
    - `steps`: `[M, B, N, K]`, the number of updates made (fewer than requested when the
        run froze because the model and Q stopped moving).
    - `converged`: `[M, B, N, K]`, whether the run froze before the step budget.
    - `inner_failures`: `[M, B, N, K]`, the number of steps whose inner solve failed.
    """

    methods: tuple[str, ...] = eqx.field(static=True)
    bounds: Float[Array, " B"]
    noises: Float[Array, " N"]
    seeds: Int[Array, " K"]
    objective: Float[Array, "M B N K T"]
    model: TabularModel
    q: Float[Array, "M B N K S A"]
    returns: Float[Array, "M B N K"]
    bellman_error: Float[Array, "M B N K"]
    steps: Int[Array, "M B N K"]
    converged: Bool[Array, "M B N K"]
    inner_failures: Int[Array, "M B N K"]

    def index(self, method: str) -> int:
        """The position of the method called `method` in the leading axis."""
        if method not in self.methods:
            raise ValueError(f"Unknown method {method!r}; this result has {self.methods}.")
        return self.methods.index(method)


# ----------------------------------------------------------------------------------------
# The compiled computation.


class _Config(NamedTuple):
    methods: tuple[Method, ...]
    chunk: int
    lr: float
    temperature: float
    model_temperature: float
    solver: Any
    tol: float
    max_steps: int
    noisy: bool


def _optimizer(config: _Config, bound) -> optax.GradientTransformation:
    return optax.chain(optax.adam(config.lr), project_l2_ball(bound, lambda m: m.norm()))


def _initial_values(config: _Config, true_mdp: TabularMDP, seeds: np.ndarray):
    """The paper's initial (model, Q) per seed, computed eagerly once per distinct seed.

    Eager evaluation caches one small compiled kernel per random op, which is much cheaper
    than compiling the threefry generator into every training program.
    """
    dtype = true_mdp.transitions.dtype
    unique, inverse = np.unique(seeds, return_inverse=True)
    inits = [
        init_model(
            jax.random.PRNGKey(int(seed)),
            true_mdp.n_states,
            true_mdp.n_actions,
            config.model_temperature,
            dtype,
        )
        for seed in unique
    ]
    noise_keys = [jax.random.fold_in(jax.random.PRNGKey(int(seed)), 2**31 - 1) for seed in unique]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs)[inverse], *inits)
    return stacked[0], stacked[1], jnp.stack(noise_keys)[inverse]


def _inner(config: _Config, method: Method, true_mdp: TabularMDP, model: TabularModel, q0):
    return solve_q(
        model.to_mdp(true_mdp.gamma, true_mdp.initial),
        q0,
        temperature=config.temperature,
        solver=config.solver,
        adjoint=method.adjoint,
        max_steps=config.max_steps,
        throw=False,
    )


def _outer_objective(method: Method, config: _Config, true_mdp: TabularMDP, q):
    if method.objective == "return":
        return -expected_return(true_mdp, q, config.temperature)
    return bellman_error(true_mdp, q, config.temperature)


def _step(config, method, true_mdp, bound, noise, total_steps, state: TrainState):
    model = state.model
    if method.kind == "omd":

        def loss(model):
            sol = _inner(config, method, true_mdp, model, state.q)
            q = sol.value
            key = jax.random.fold_in(state.noise_key, state.step)
            perturbed = q
            if config.noisy:
                perturbed = q + noise * jax.random.normal(key, q.shape, q.dtype)
            ok = sol.result == optx.RESULTS.successful
            return _outer_objective(method, config, true_mdp, perturbed), (q, ok)

        (value, (q, ok)), grads = jax.value_and_grad(loss, has_aux=True)(model)
    else:
        value, grads = jax.value_and_grad(mle_loss)(model, true_mdp)
        q, ok = state.q, jnp.ones((), bool)
    updates, opt_state = _optimizer(config, bound).update(grads, state.opt_state, model)
    new_model = optax.apply_updates(model, updates)
    # fax's convergence test: every leaf moved by less than tol * (1 + its size).
    moved = jnp.stack(
        [
            jnp.max(jnp.abs(a - b)) <= config.tol * (1 + jnp.max(jnp.abs(a)))
            for a, b in (
                (new_model.logits, model.logits),
                (new_model.reward, model.reward),
                (q, state.q),
            )
        ]
    )
    active = (~state.done) & (state.step < total_steps)
    new = TrainState(
        model=new_model,
        opt_state=opt_state,
        q=q,
        step=state.step + 1,
        done=jnp.all(moved),
        failures=state.failures + (~ok).astype(jnp.int32),
        noise_key=state.noise_key,
    )
    state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
    return state, value


def _run_chunk_impl(config: _Config, states, true_mdp, bounds, noises, total_steps):
    new_states, logs = [], []
    for method, state in zip(config.methods, states):

        def one(state, bound, noise, method=method):
            def body(s, _):
                return _step(config, method, true_mdp, bound, noise, total_steps, s)

            return jax.lax.scan(body, state, None, length=config.chunk)

        state, log = jax.vmap(one)(state, bounds, noises)
        new_states.append(state)
        logs.append(log)
    return tuple(new_states), tuple(logs)


_run_chunk = jax.jit(_run_chunk_impl, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _init(config: _Config, model, q0, noise_keys, bounds):
    def one(model, q0, noise_key, bound):
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            model=model,
            opt_state=_optimizer(config, bound).init(model),
            q=q0,
            step=zero,
            done=jnp.zeros((), bool),
            failures=zero,
            noise_key=noise_key,
        )

    state = jax.vmap(one)(model, q0, noise_keys, bounds)
    return tuple(state for _ in config.methods)


@functools.partial(jax.jit, static_argnums=0)
def _finalise(config: _Config, states, true_mdp):
    # One batched solve for every method's final model (the adjoint plays no part here).
    models = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[s.model for s in states])
    q0 = jnp.concatenate([s.q for s in states])
    failures = jnp.concatenate([s.failures for s in states])

    def one(model, q0):
        sol = _inner(config, Method("omd"), true_mdp, model, q0)
        q = sol.value
        failed = (sol.result != optx.RESULTS.successful).astype(jnp.int32)
        return (
            q,
            expected_return(true_mdp, q, config.temperature),
            bellman_error(true_mdp, q, config.temperature),
            failed,
        )

    q, returns, errors, failed = jax.vmap(one)(models, q0)
    n = len(config.methods)
    split = lambda x: jnp.split(x, n)  # noqa: E731
    return tuple(zip(split(q), split(returns), split(errors), split(failures + failed)))


# ----------------------------------------------------------------------------------------
# The public entry point.


def _float_list(values, name: str, *, allow_inf: bool) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1D sequence of numbers.")
    if np.any(np.isnan(array)) or np.any(array < 0) or (not allow_inf and np.any(np.isinf(array))):
        raise ValueError(f"`{name}` must hold non-negative numbers, got {array.tolist()}.")
    return array


def _seed_list(seeds) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"`seeds` must be >= 1 (a count) or a list of ints, got {seeds}.")
        return np.arange(1, int(seeds) + 1)
    array = np.atleast_1d(np.asarray(seeds))
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"`seeds` must be a positive int or a non-empty list of ints, got {seeds!r}."
        )
    return array.astype(np.int64)


def _positive(value, name: str, *, integer: bool = False, allow_zero: bool = False):
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float))
    if not ok_type or isinstance(value, bool):
        kind = "an int" if integer else "a number"
        raise TypeError(f"`{name}` must be {kind}, got {type(value).__name__}.")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value}.")
    return value


def train(
    mdp: TabularMDP,
    *,
    methods: Sequence[Kind | Method] = ("omd", "mle"),
    seeds: int | Sequence[int] = 10,
    bounds: float | Sequence[float] = (math.inf,),
    noises: float | Sequence[float] = (0.0,),
    steps: int = 10_000,
    lr: float = 0.01,
    temperature: float = 0.01,
    model_temperature: float | None = None,
    solver: str | optx.AbstractRootFinder | optx.AbstractFixedPointSolver = "newton",
    tol: float = 1e-6,
    max_inner_steps: int = 1000,
    chunk: int = 500,
    progress: bool = True,
) -> TrainResult:
    r"""Train tabular models by OMD and/or MLE over a grid of bounds, noise scales and seeds.

    Every run starts from the paper's initialisation (logits, rewards and Q ~ U[0, 1) from
    `jax.random.PRNGKey(seed)`), takes Adam steps on the model chained with
    [`omdx.tabular.project_l2_ball`][] (the capacity bound $\|(\ell/\tau_p, \hat r)\|_2 \le
    b$), and for OMD solves $Q^*_\theta$ by [`omdx.tabular.solve_q`][] each step,
    warm-started from the previous one, differentiating the true objective implicitly. For
    the noise study, $Q^*_\theta + \sigma\,\mathcal{N}(0, I)$ replaces $Q^*_\theta$ in the
    outer objective (the warm start stays the clean $Q^*_\theta$). A run freezes once the
    model and Q stop moving (every leaf changed by at most `tol` (1 + its size) in a step),
    as the authors' code stops.

    The whole grid (methods x bounds x noises x seeds) runs as one compiled, vmapped
    computation, `lax.scan` over steps in chunks of `chunk` steps (a progress bar advances
    between chunks; the run stops early once every run has frozen).

    **Arguments:**

    - `mdp`: the true [`omdx.tabular.TabularMDP`][].
    - `methods`: `"omd"`, `"mle"` or [`omdx.tabular.Method`][]s.
    - `seeds`: a count $n$ (seeds $1, \dots, n$, as in the paper) or a list of ints.
    - `bounds`: norm bounds $b \ge 0$; `inf` for no bound.
    - `noises`: standard deviations $\sigma \ge 0$ of the noise added to $Q^*_\theta$ (OMD).
    - `steps`: the maximum number of steps.
    - `lr`: Adam's learning rate.
    - `temperature`: $\tau$ of the soft Bellman operator and the policy.
    - `model_temperature`: $\tau_p$ of the model's softmax (default: `temperature`).
    - `solver`: the inner solver, `"newton"`, `"value_iteration"` or an Optimistix solver.
    - `tol`: the freezing tolerance; 0 runs every step.
    - `max_inner_steps`: the inner solver's step limit.
    - `chunk`: steps per compiled chunk.
    - `progress`: show a tqdm progress bar (as [`omdx.train`][] does by default).

    **Returns:**

    A [`omdx.tabular.TrainResult`][].

    **Raises:**

    [`omdx.TrainingDiverged`][] (a `FloatingPointError`) after the last step if any run
    produced a non-finite value, naming the runs; a failing run does not stop the others,
    and the error's `result` holds the whole grid.
    """
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"`mdp` must be a `TabularMDP`, got {type(mdp).__name__}.")
    if isinstance(methods, (str, Method)):
        methods = (methods,)
    methods = tuple(_as_method(m) for m in methods)
    if not methods:
        raise ValueError("`methods` must not be empty.")
    names = tuple(m.name for m in methods)
    if len(set(names)) != len(names):
        raise ValueError(f"`methods` must have distinct names, got {names}.")
    seed_list = _seed_list(seeds)
    bound_list = _float_list(bounds, "bounds", allow_inf=True)
    noise_list = _float_list(noises, "noises", allow_inf=False)
    steps = _positive(steps, "steps", integer=True)
    chunk = _positive(chunk, "chunk", integer=True)
    max_inner_steps = _positive(max_inner_steps, "max_inner_steps", integer=True)
    lr = float(_positive(lr, "lr"))
    temperature = float(_positive(temperature, "temperature"))
    model_temperature = temperature if model_temperature is None else model_temperature
    model_temperature = float(_positive(model_temperature, "model_temperature"))
    tol = float(_positive(tol, "tol", allow_zero=True))
    dtype = mdp.transitions.dtype
    config = _Config(
        methods=methods,
        chunk=min(int(chunk), int(steps)),
        lr=lr,
        temperature=temperature,
        model_temperature=model_temperature,
        solver=make_solver(solver, dtype, mdp.n_states * mdp.n_actions),
        tol=tol,
        max_steps=int(max_inner_steps),
        noisy=bool(np.any(noise_list > 0)),
    )
    grid_b, grid_n, grid_k = np.meshgrid(bound_list, noise_list, seed_list, indexing="ij")
    flat_b = jnp.asarray(grid_b.ravel(), dtype)
    flat_n = jnp.asarray(grid_n.ravel(), dtype)
    n_runs = flat_b.shape[0]
    model0, q0, noise_keys = _initial_values(config, mdp, grid_k.ravel())
    states = _init(config, model0, q0, noise_keys, flat_b)
    logs = [np.empty((n_runs, steps), dtype=np.dtype(dtype)) for _ in methods]
    total = jnp.asarray(steps, jnp.int32)
    done_steps = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="tabular " + "/".join(names), unit="step")
    try:
        while done_steps < steps:
            # Equinox's checks off (Lineax's backward solve would raise on one run's
            # non-finite input and abort the whole vmapped grid): a failing run keeps its
            # non-finite values to itself, and `_check_result` names it after the run.
            with errors_off():
                states, chunk_logs = _run_chunk(config, states, mdp, flat_b, flat_n, total)
            n = min(config.chunk, steps - done_steps)
            for log, chunk_log in zip(logs, chunk_logs):
                log[:, done_steps : done_steps + n] = np.asarray(chunk_log)[:, :n]
            done_steps += n
            if bar is not None:
                bar.update(n)
            if all(bool(jnp.all(s.done)) for s in states):
                for log in logs:
                    log[:, done_steps:] = log[:, done_steps - 1 : done_steps]
                if bar is not None:
                    bar.update(steps - done_steps)
                break
    finally:
        if bar is not None:
            bar.close()
    with errors_off():  # as the chunks: a failed run is named by `_check_result`
        finals = _finalise(config, states, mdp)

    shape = (len(methods), bound_list.size, noise_list.size, seed_list.size)

    def stack(xs):
        return jnp.stack(xs).reshape(shape + xs[0].shape[1:])

    model = jax.tree.map(lambda *xs: stack(xs), *[s.model for s in states])
    result = TrainResult(
        methods=names,
        bounds=jnp.asarray(bound_list, dtype),
        noises=jnp.asarray(noise_list, dtype),
        seeds=jnp.asarray(seed_list),
        objective=jnp.asarray(np.stack(logs).reshape(shape + (steps,))),
        model=model,
        q=stack([f[0] for f in finals]),
        returns=stack([f[1] for f in finals]),
        bellman_error=stack([f[2] for f in finals]),
        steps=stack([s.step for s in states]),
        converged=stack([s.done for s in states]),
        inner_failures=stack([f[3] for f in finals]),
    )
    _check_result(result)
    return result


def _describe_runs(result: TrainResult, mask: np.ndarray, limit: int = 5) -> str:
    idx = np.argwhere(mask)
    parts = [
        f"(method={result.methods[m]}, bound={float(result.bounds[b]):g}, "
        f"noise={float(result.noises[n]):g}, seed={int(result.seeds[k])})"
        for m, b, n, k in idx[:limit]
    ]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(parts) + more


def _check_result(result: TrainResult) -> None:
    leaves = [
        result.q,
        result.returns,
        result.bellman_error,
        result.objective,
        result.model.logits,
        result.model.reward,
    ]
    bad = np.zeros(result.returns.shape, bool)
    for leaf in leaves:
        leaf = np.asarray(leaf)
        bad |= ~np.isfinite(leaf.reshape(result.returns.shape + (-1,))).all(-1)
    if bad.any():
        raise TrainingDiverged(
            f"Tabular training produced non-finite values in {int(bad.sum())} run(s): "
            f"{_describe_runs(result, bad)}. Try a smaller `lr`, a larger `temperature`, "
            "float64 (`jax.config.update('jax_enable_x64', True)`), or a finite `bounds`. "
            "The error's `result` holds every run and `diverged` marks these.",
            result,
            bad,
        )
    failures = np.asarray(result.inner_failures)
    if failures.any():
        warnings.warn(
            f"The inner solve of Q* failed (hit `max_inner_steps` or diverged) in "
            f"{int(failures.sum())} step(s) over {int((failures > 0).sum())} run(s), e.g. "
            f"{_describe_runs(result, failures > 0, 3)}; see `TrainResult.inner_failures`.",
            RuntimeWarning,
            stacklevel=3,
        )
