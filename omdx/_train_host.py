"""Training on any gymnasium environment: the environments step in Python, every run's
agent steps in one jitted call.

The runs (seeds, and sweep points) go in lockstep. Each environment step is one Python
step of every run's environment and then one jitted call, `vmap`ped over runs, that adds
each run's transition to its buffer, makes its update and picks its next action. Each
evaluation runs every run's episodes side by side, one jitted call per step for all.
"""

import copy
import functools as ft
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._buffer import buffer_add, buffer_init, buffer_sample, ReplayBuffer
from ._checkpoint import load_checkpoint, pickled_envs, save_checkpoint
from ._errors import errors_off
from ._train import (
    _backend,
    _check_evaluation,
    _check_inputs,
    _diverged,
    _RunPlan,
    _swept_config,
    _updated_metrics,
    _updated_windows,
    _verified_checkpoint,
    RunState,
    select_action,
    TrainConfig,
    TrainResult,
)
from ._transition import Transition
from .agents._config import AgentConfig
from .agents._state import AgentState, EnvSpec, init_agent
from .agents._steps import agent_step
from .envs._host import HostEnv


class _Runs(eqx.Module):
    """Every run's learning state, runs on the leading axis."""

    agent: AgentState
    buffer: ReplayBuffer
    key: PRNGKeyArray
    hyperparameters: dict[str, Array]


class _Layout(eqx.Module):
    """How to rebuild `_Runs` from the flat list of its arrays. The list is what the jitted
    steps take and return: flattening the agent's PyTree on every call (as
    `eqx.filter_jit` does) costs more than the update of a small network."""

    treedef: Any = eqx.field(static=True)
    static_treedef: Any = eqx.field(static=True)
    static_leaves: tuple = eqx.field(static=True)


def _flatten(runs: _Runs) -> tuple[list[Array], _Layout]:
    arrays, static = eqx.partition(runs, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    static_leaves, static_treedef = jax.tree.flatten(static)
    return leaves, _Layout(treedef, static_treedef, tuple(static_leaves))


def _unflatten(layout: _Layout, leaves: list[Array]) -> _Runs:
    static = jax.tree.unflatten(layout.static_treedef, list(layout.static_leaves))
    return eqx.combine(jax.tree.unflatten(layout.treedef, leaves), static)


def _accumulate(window: dict[str, Array], metrics: dict[str, Array]) -> dict[str, Array]:
    """Running sums of the metrics over an evaluation window (the worst `inner_result`)."""
    return {
        name: jnp.maximum(window[name], value) if name == "inner_result" else window[name] + value
        for name, value in metrics.items()
    }


@ft.partial(
    jax.jit,
    static_argnames=("layout", "add", "learn", "batch_size", "num_actions", "config"),
    donate_argnums=(0, 1),
)
def _tick(
    leaves: list[Array],
    window: dict[str, Array],
    transitions: Transition | None,
    observations: Float[Array, "runs obs"],
    random_phase: Bool[Array, ""],
    *,
    layout: _Layout,
    add: bool,
    learn: bool,
    batch_size: int,
    num_actions: int,
    config: AgentConfig,
):
    """Every run's work between two environment steps: add its transition, make its
    update, pick its next action. The leaves and the window are donated, so each buffer
    is written in place rather than copied on every step."""

    def one_run(runs: _Runs, window, transition, observation):
        run_config = _swept_config(config, runs.hyperparameters)
        key, update_key, act_key = jr.split(runs.key, 3)
        buffer = buffer_add(runs.buffer, transition) if add else runs.buffer
        agent = runs.agent
        if learn:
            batch = buffer_sample(buffer, update_key, batch_size)
            agent, metrics = agent_step(agent, batch, run_config)
            window = _accumulate(window, metrics)
        explore = jnp.where(random_phase, 1.0, runs.hyperparameters["epsilon"])
        action = select_action(
            agent, observation, act_key, num_actions, explore_probability=explore, config=run_config
        )
        return _Runs(agent, buffer, key, runs.hyperparameters), window, action

    runs = _unflatten(layout, leaves)
    runs, window, actions = eqx.filter_vmap(one_run)(runs, window, transitions, observations)
    return _flatten(runs)[0], window, actions


@ft.partial(jax.jit, static_argnames="layout")
def _greedy(leaves: list[Array], observations: Float[Array, "runs episodes obs"], *, layout):
    """Each run's greedy actions (of min(Q1, Q2)) for its episodes' observations; `leaves`
    and `layout` are the flattened agents, runs on the leading axis."""

    def one_run(agent, observations):
        q = jax.vmap(agent.q)(observations)  # [episodes, 2, actions]
        return jnp.argmax(jnp.min(q, axis=1), axis=-1)

    return eqx.filter_vmap(one_run)(_unflatten(layout, leaves), observations)


def _spawn(env: HostEnv) -> HostEnv:
    """A fresh, independent copy of `env`: deep-copied, so that whatever was done to the
    instance (its attributes, the user's own wrappers) is copied too, or made again from
    its gymnasium spec when it cannot be deep-copied."""
    try:
        inner = copy.deepcopy(env.env)
    except Exception as copy_error:
        spec = getattr(env.env, "spec", None)
        try:
            if spec is None:
                raise ValueError("it has no gymnasium spec") from None
            inner = gymnasium.make(spec)
        except Exception as make_error:
            raise TypeError(
                "omdx steps a copy of the environment for each run and each evaluation "
                f"episode; this one cannot be deep-copied ({copy_error}) nor made "
                f"again from its spec ({make_error}). Register it with `gymnasium.register` "
                "and pass its id."
            ) from make_error
    return HostEnv(
        inner, distractors=env.distractors, max_episode_steps=env.max_episode_steps, dtype=env.dtype
    )


def _evaluate(
    eval_envs: list[list[HostEnv]],
    agents: AgentState,
    reset_seeds: np.ndarray,
    max_steps: int,
) -> np.ndarray:
    """Every run's mean greedy return over its episodes, run side by side: `agents` (runs
    on the leading axis) in `eval_envs` `[runs][episodes]`, each reset with its seed of
    `reset_seeds` `[runs, episodes]`."""
    leaves, layout = _flatten(agents)
    observations = np.stack(
        [
            [env.reset(seed=int(seed)) for env, seed in zip(envs, seeds)]
            for envs, seeds in zip(eval_envs, reset_seeds)
        ]
    )
    totals = np.zeros(reset_seeds.shape)
    done = np.zeros(reset_seeds.shape, bool)
    for _ in range(max_steps):
        actions = np.asarray(_greedy(leaves, observations, layout=layout))
        for i, j in zip(*np.nonzero(~done)):
            step = eval_envs[i][j].step(int(actions[i, j]))
            totals[i, j] += float(step.reward)
            done[i, j] = bool(step.terminated or step.truncated)
            observations[i, j] = step.next_observation
        if done.all():
            break
    return totals.mean(axis=1)


def _as_host_env(env: HostEnv | str, jax_alternative: str) -> HostEnv:
    """`env`, or a `HostEnv` of a gymnasium id; a `TypeError` for anything else names
    `jax_alternative`, the function for JAX environments."""
    if isinstance(env, str):
        return HostEnv(env)
    if not isinstance(env, HostEnv):
        raise TypeError(
            f"`env` must be an `omdx.envs.HostEnv` or a gymnasium id, got {type(env).__name__}; "
            f"for a JAX environment use `{jax_alternative}`."
        )
    return env


def evaluate_host(
    env: HostEnv | str, agent: AgentState, episodes: int = 10, *, seed: int = 0
) -> float:
    """Mean undiscounted return of the greedy policy of min(Q1, Q2) on a gymnasium
    environment stepped in Python, as [`omdx.train_host`][] evaluates: the episodes run
    side by side, each on its own copy of `env`, until their first termination or
    truncation. [`omdx.evaluate`][] does the same for a JAX environment, compiled.

    **Arguments:**

    - `env`: an [`omdx.envs.HostEnv`][] or a gymnasium id. It is copied, not stepped.
    - `agent`: one agent's state. A `TrainResult`'s `final_state.agent` holds every
        seed's: for seed `i`, pass
        `jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, agent)`.
    - `episodes`: the number of episodes.
    - `seed`: episode `i` resets with seed `seed + i`, so the same seed gives the same
        episodes.

    **Returns:**

    The mean return, a Python float.
    """
    env = _as_host_env(env, jax_alternative="omdx.evaluate")
    episodes = _check_evaluation(env, agent, episodes)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    agents = jax.tree.map(lambda x: x[None] if eqx.is_array(x) else x, agent)
    return float(evaluate_runs_host(env, agents, episodes, int(seed))[0])


def evaluate_runs_host(env: HostEnv, agents: AgentState, episodes: int, seed: int) -> np.ndarray:
    """Every run's mean greedy return (`agents` batched over runs): `episodes` episodes
    each, all side by side on copies of `env`, episode `i` of every run reset with seed
    `seed + i`. What `evaluate_host` computes for one run, and `omdx evaluate` for a
    host-loop run's saved agents."""
    runs = len(agents.updates)
    envs = [[_spawn(env) for _ in range(episodes)] for _ in range(runs)]
    reset_seeds = np.tile(seed + np.arange(episodes), (runs, 1))
    return _evaluate(envs, agents, reset_seeds, env.max_episode_steps)


@eqx.filter_jit
def _init_runs(
    run_seeds: Array,
    hyperparameters: dict[str, Array],
    spec: EnvSpec,
    example: Transition,
    agent_config: AgentConfig,
    capacity: int,
) -> _Runs:
    def one_run(seed, hyperparameters):
        agent_key, key = jr.split(jr.PRNGKey(seed))
        agent = init_agent(agent_key, spec, agent_config)
        return _Runs(agent, buffer_init(capacity, example), key, hyperparameters)

    return eqx.filter_vmap(one_run)(run_seeds, hyperparameters)


def train_host(
    env: HostEnv | str,
    agent_config: AgentConfig = AgentConfig(),
    train_config: TrainConfig = TrainConfig(),
    *,
    seeds: int | Sequence[int] = 1,
    sweep: dict[str, Sequence[float]] | None = None,
    progress: bool = True,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    stop_on_divergence: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> TrainResult | list[TrainResult]:
    """Train an agent on any `gymnasium.Env`, stepped in Python; acting and updates jitted.

    The same agent steps as [`omdx.train`][], for environments that are not written in JAX
    (MuJoCo through the `mujoco` package, Atari, your own). The seeds (and sweep points)
    run in lockstep, each with its own copy of the environment: every environment step
    is one Python step of each copy, then one jitted call that makes every run's update
    and picks its next action. Evaluations run all their episodes side by side.

    **Arguments:**

    - `env`: an [`omdx.envs.HostEnv`][] or a gymnasium id (discrete actions). The first
        run steps it; every other run and every evaluation episode steps its own deep
        copy (made again from the gymnasium spec when the instance cannot be copied).
    - `agent_config`, `train_config`: as for [`omdx.train`][].
    - `seeds`: a number of seeds (`0..n-1`) or a list of seeds. A seed seeds the agent,
        the environment's resets and the evaluation episodes; the same seed gives the
        same run, alone or with other seeds (to rounding).
    - `sweep`: several values of hyperparameters that set no shape, as for
        [`omdx.train`][]: every point runs every seed, in the same lockstep.
    - `progress`: show a progress bar over environment steps.
    - `on_chunk`: called after every `evals_per_chunk` evaluations with the dict that
        [`omdx.train`][] passes after a chunk, for streaming to disk.
    - `stop_on_divergence`: as for [`omdx.train`][].
    - `checkpoint`: a file (conventionally `.npz`) to keep every run's whole state and
        history in, as for [`omdx.train`][]: rewritten after each chunk, before
        `on_chunk`; when it exists, training continues from it (`on_chunk` first receives
        the history so far as one chunk) and computes exactly what an uninterrupted run
        computes. Besides the agents, replay buffers and keys, it holds each run's
        training environment mid-episode, pickled (the gymnasium environment with its
        random number generator, and the distractors' generator), and the action picked
        for the next step; a continued run steps those environments, not `env`. An
        environment that cannot be pickled is refused with a `ValueError` before any
        work. (The evaluation episodes start from their seeds, so their environments are
        not kept.) A run that stopped on a divergence stays stopped; a larger `steps`
        trains a finished run further (pass `buffer_size` if `steps` set it). The
        settings, seeds and sweep must be those the file was written with, and so must
        the environment: its wrappers, gymnasium id and the keyword arguments of
        `gymnasium.make`, `distractors`, `max_episode_steps`, `dtype` and sizes (an
        attribute changed by hand after `gymnasium.make` is not seen); a `ValueError`
        names any difference before any work. A checkpoint of [`omdx.train`][] is
        refused. Loading unpickles the environments: load only checkpoints you trust.

    **Returns:**

    An [`omdx.TrainResult`][] (with a `sweep`, one per point), runs on the leading axis
    (`final_state` too); `final_state.env_state` is `None`. The metrics of evaluation
    windows with no update (the random steps) are NaN.

    **Raises:**

    [`omdx.TrainingDiverged`][] if a run produced a non-finite return or loss, as for
    [`omdx.train`][].
    """
    env = _as_host_env(env, jax_alternative="omdx.train")
    _check_inputs(env, agent_config, train_config)
    tc = train_config
    plan = _RunPlan.of(seeds, sweep, agent_config, train_config)
    run_seeds = plan.run_seeds
    n_runs = len(run_seeds)
    start = 0
    if checkpoint is not None:
        checkpoint, settings, start = _verified_checkpoint(checkpoint, env, plan)
    # Every copy is made before any work, so that one that cannot be made fails first. A
    # continued run steps the training environments of its checkpoint instead.
    envs = None if start else [env] + [_spawn(env) for _ in range(n_runs - 1)]
    eval_envs = [[_spawn(env) for _ in range(tc.eval_episodes)] for _ in range(n_runs)]

    # The buffer takes the shapes and dtypes of this example, not its values.
    observation = jnp.asarray(np.zeros(env.observation_size, env.dtype))
    example = Transition(
        observation,
        jnp.array(0, jnp.int32),
        jnp.zeros((), env.dtype),
        observation,
        jnp.array(False),
    )
    # In the agent's dtype (JAX's default), not the observations': with a float32
    # environment under `jax_enable_x64`, float32 arrays would round the learning rates
    # and gamma before they meet the float64 agent. (The Python constants they replace
    # met the float32 rewards in float32 in `bellman_targets`; the float64 arrays keep
    # the agent's precision there, a change of about 1e-10 in the losses.)
    hyperparameters = plan.hyperparameters(jnp.result_type(float))
    compiled_config = plan.compiled_configs()[0]
    spec = EnvSpec(env.observation_size, env.num_actions)
    init_runs = ft.partial(
        _init_runs,
        jnp.asarray(run_seeds),
        hyperparameters,
        spec,
        example,
        compiled_config,
        tc.capacity,
    )
    diverged = ft.partial(_diverged, run_seeds=run_seeds, train_config=tc)
    # The history, one entry per evaluation.
    eval_steps, returns, metric_log = [], [], {}
    stopped = False
    if start:
        with errors_off():  # traced as a fresh run traces it
            skeleton = eqx.filter_eval_shape(init_runs)
        runs, past_steps, past_returns, past_metrics, saved = load_checkpoint(
            checkpoint, skeleton, _host_layout()
        )
        envs = _unpickled_envs(saved["envs"], checkpoint)
        observations, actions = saved["observations"], saved["actions"]
        eval_steps = past_steps.tolist()
        returns = list(past_returns.T)
        metric_log = {name: list(values.T) for name, values in past_metrics.items()}
        if on_chunk is not None:
            on_chunk(plan.streamed(past_steps, past_returns, past_metrics))
        # The run that wrote it stopped there, as an uninterrupted one does.
        stopped = stop_on_divergence and diverged(past_steps, past_returns, past_metrics)
    else:
        observations = np.stack([e.reset(seed=int(s)) for e, s in zip(envs, run_seeds)])
        with errors_off():
            runs = init_runs()
    leaves, layout = _flatten(runs)
    del runs  # its arrays are donated to the first step

    one_batch = jax.tree.map(lambda x: jnp.zeros((tc.batch_size, *x.shape), x.dtype), example)

    def first_run_metrics(leaves):
        agent = _unflatten(layout, leaves).agent
        agent = jax.tree.map(lambda x: x[0] if eqx.is_array(x) else x, agent)
        return agent_step(agent, one_batch, compiled_config)[1]

    with errors_off():  # tracing outside would cache Equinox's checks for the steps below
        metric_shapes = eqx.filter_eval_shape(first_run_metrics, leaves)

    def empty_window():
        return {k: jnp.zeros((n_runs,), s.dtype) for k, s in metric_shapes.items()}

    tick = ft.partial(
        _tick,
        layout=layout,
        batch_size=tc.batch_size,
        num_actions=env.num_actions,
        config=compiled_config,
    )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=tc.steps,
            initial=start,
            unit="step",
            desc=f"{agent_config.agent} (host) x{n_runs}",
        )
    window, window_updates = empty_window(), 0  # a chunk ends with an empty window
    evals_done = chunk_start = len(eval_steps)
    with errors_off():
        if not start:  # a checkpoint holds the action picked for its next step
            leaves, window, actions = tick(
                leaves,
                window,
                None,
                observations,
                np.bool_(tc.random_steps > 0),
                add=False,
                learn=False,
            )
        for t in range(start, start if stopped else tc.steps):
            actions = np.asarray(actions)
            steps = [e.step(int(a)) for e, a in zip(envs, actions)]
            transitions = Transition(
                observations,
                actions.astype(np.int32),
                np.stack([s.reward for s in steps]),
                np.stack([s.next_observation for s in steps]),
                np.stack([s.terminated for s in steps]),
            )
            observations = np.stack([s.observation for s in steps])
            learn = t >= tc.learning_starts
            # The action picked now is for step t + 1.
            leaves, window, actions = tick(
                leaves,
                window,
                transitions,
                observations,
                np.bool_(t + 1 < tc.random_steps),
                add=True,
                learn=learn,
            )
            window_updates += learn
            if bar is not None:
                bar.update(1)
            if (t + 1) % tc.eval_every:
                continue
            sums = {k: np.asarray(v) for k, v in window.items()}
            for name, values in sums.items():
                if window_updates == 0:
                    values = np.full(n_runs, np.nan)
                elif name != "inner_result":
                    values = values / window_updates
                metric_log.setdefault(name, []).append(values)
            window, window_updates = empty_window(), 0
            episodes = evals_done * tc.eval_episodes + 1 + np.arange(tc.eval_episodes)
            reset_seeds = run_seeds[:, None].astype(np.int64) * 1_000_003 + episodes
            agents = _unflatten(layout, leaves).agent
            returns.append(_evaluate(eval_envs, agents, reset_seeds, env.max_episode_steps))
            eval_steps.append(t + 1)
            evals_done += 1
            if bar is not None:
                bar.set_postfix(eval_return=f"{float(np.mean(returns[-1])):.1f}")
            if evals_done - chunk_start < tc.evals_per_chunk and t + 1 < tc.steps:
                continue
            chunk = slice(chunk_start, evals_done)
            chunk_start = evals_done
            chunk_steps = np.asarray(eval_steps[chunk])
            chunk_returns = np.stack(returns[chunk], axis=1)
            chunk_metrics = {k: np.stack(v[chunk], axis=1) for k, v in metric_log.items()}
            if checkpoint is not None:  # first: nothing `on_chunk` does can lose the chunk
                save_checkpoint(
                    checkpoint,
                    settings,
                    _host_layout(),
                    _unflatten(layout, leaves),
                    np.asarray(eval_steps),
                    np.stack(returns, axis=1),
                    {k: np.stack(v, axis=1) for k, v in metric_log.items()},
                    extra={
                        "observations": observations,
                        "actions": np.asarray(actions),
                        "envs": np.frombuffer(pickled_envs(envs), np.uint8),
                    },
                )
            if on_chunk is not None:
                on_chunk(plan.streamed(chunk_steps, chunk_returns, chunk_metrics))
            if stop_on_divergence and diverged(chunk_steps, chunk_returns, chunk_metrics):
                break
    if bar is not None:
        bar.close()
    runs = _unflatten(layout, leaves)
    result = TrainResult(
        seeds=run_seeds,
        eval_steps=np.asarray(eval_steps),
        eval_returns=np.stack(returns, axis=1),
        metrics={k: np.stack(v, axis=1) for k, v in metric_log.items()},
        final_state=RunState(
            runs.agent, None, jnp.asarray(observations), runs.buffer, runs.key, runs.hyperparameters
        ),
    )
    updated = _updated_windows(result.eval_steps, tc.learning_starts)
    return plan.finish(result, _updated_metrics(result.metrics, updated))


def _host_layout() -> dict[str, Any]:
    """How the host loop's work is laid out, for a checkpoint: every run vmapped together
    on the default device, whose backend sets the rounding."""
    return {"backend": _backend(jax.devices()[0])}


def _unpickled_envs(blob: np.ndarray, path) -> list[HostEnv]:
    """The training environments a checkpoint at `path` pickled into `blob`."""
    try:
        return pickle.loads(blob.tobytes())
    except Exception as error:
        raise ValueError(
            f"`checkpoint` {str(path)!r} holds environments that cannot be unpickled here "
            f"({type(error).__name__}: {error}): continue it where their classes can be "
            "imported."
        ) from None
