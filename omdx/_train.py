"""The whole training run compiled once: acting, environment, buffer, updates, evaluation.

A run is a `lax.scan` over *iterations*, each `eval_every` environment steps (one update
per step after the warm-up) followed by an evaluation. Iterations are grouped into chunks:
one compiled call per chunk, vmapped over seeds, so that a progress bar advances and metrics
stream out between chunks while the chunk itself runs without returning to Python.
"""

import dataclasses
import functools as ft
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._buffer import buffer_add, buffer_init, buffer_sample, ReplayBuffer
from ._checkpoint import (
    check_picklable,
    checkpoint_settings,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from ._errors import errors_off, TrainingDiverged
from ._transition import Transition
from .agents._config import (
    _check_number,
    _check_positive_int,
    AgentConfig,
    SWEEPABLE_AGENT_FIELDS,
)
from .agents._state import AgentState, init_agent
from .agents._steps import agent_step
from .envs import AbstractEnv, HostEnv, make


def filter_scan(f, init, xs):
    """`lax.scan` whose carry may hold non-array leaves (activation functions, ...), which
    stay fixed across iterations."""
    dynamic, static = eqx.partition(init, eqx.is_array)

    def body(carry, x):
        carry, out = f(eqx.combine(carry, static), x)
        return eqx.filter(carry, eqx.is_array), out

    dynamic, out = jax.lax.scan(body, dynamic, xs)
    return eqx.combine(dynamic, static), out


def filter_cond(pred, true_fn, false_fn, *operands):
    """`lax.cond` over operands that may hold non-array leaves."""
    dynamic, static = eqx.partition(operands, eqx.is_array)

    def wrap(fn):
        def wrapped(dyn):
            out = fn(*eqx.combine(dyn, static))
            out_dynamic, out_static = eqx.partition(out, eqx.is_array)
            return out_dynamic, eqxi.Static(out_static)

        return wrapped

    # Both branches must return the same static part; take it from an abstract trace.
    _, out_static = jax.eval_shape(wrap(true_fn), dynamic)
    out_dynamic = jax.lax.cond(
        pred, lambda d: wrap(true_fn)(d)[0], lambda d: wrap(false_fn)(d)[0], dynamic
    )
    return eqx.combine(out_dynamic, out_static.value)


class TrainConfig(eqx.Module):
    """Settings of a training run (the paper's CartPole defaults), validated at construction."""

    steps: int = eqx.field(static=True, default=200_000)
    random_steps: int = eqx.field(static=True, default=1_000)
    eval_every: int = eqx.field(static=True, default=1_000)
    eval_episodes: int = eqx.field(static=True, default=10)
    batch_size: int = eqx.field(static=True, default=256)
    buffer_size: int | None = eqx.field(static=True, default=None)
    epsilon: float = eqx.field(static=True, default=0.1)
    evals_per_chunk: int = eqx.field(static=True, default=5)
    seed_group: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        _check_positive_int("steps", self.steps, 1)
        _check_positive_int("random_steps", self.random_steps, 0)
        _check_positive_int("eval_every", self.eval_every, 1)
        _check_positive_int("eval_episodes", self.eval_episodes, 1)
        _check_positive_int("batch_size", self.batch_size, 1)
        _check_positive_int("evals_per_chunk", self.evals_per_chunk, 1)
        if self.buffer_size is not None:
            _check_positive_int("buffer_size", self.buffer_size, 1)
        if self.seed_group is not None:
            _check_positive_int("seed_group", self.seed_group, 1)
        if self.steps % self.eval_every != 0:
            raise ValueError(
                f"`steps` ({self.steps}) must be a multiple of `eval_every` ({self.eval_every})."
            )
        if self.batch_size > self.capacity:
            raise ValueError(
                f"`batch_size` ({self.batch_size}) is larger than the replay buffer "
                f"(`buffer_size` = {self.capacity})."
            )
        if self.learning_starts >= self.steps:
            name = "batch_size" if self.batch_size >= self.random_steps else "random_steps"
            raise ValueError(
                f"`{name}` ({getattr(self, name)}) is not below the number of environment "
                f"`steps` ({self.steps}): updates start after max(`random_steps`, "
                "`batch_size`) steps, so none could ever be made."
            )
        _check_number("epsilon", self.epsilon, low=0.0, high=1.0)

    @property
    def capacity(self) -> int:
        return self.buffer_size if self.buffer_size is not None else min(self.steps, 1_000_000)

    @property
    def learning_starts(self) -> int:
        return max(self.random_steps, self.batch_size)


TrainConfig.__init__.__doc__ = """**Arguments:**

- `steps`: environment steps per seed (a multiple of `eval_every`).
- `random_steps`: uniformly random actions first (no updates before
    `max(random_steps, batch_size)` steps).
- `eval_every`: environment steps between evaluations.
- `eval_episodes`: episodes per evaluation (greedy policy, run in parallel).
- `batch_size`: real transitions per update.
- `buffer_size`: replay capacity; defaults to `steps` (at most 10^6).
- `epsilon`: probability of a uniformly random action after the warm-up; otherwise
    actions are sampled from $\\mathrm{softmax}(\\min(Q_1, Q_2)/\\alpha)$.
- `evals_per_chunk`: evaluations per compiled call of [`omdx.train`][] (between progress
    updates), and per `on_chunk` call and divergence check of both `train` and
    [`omdx.train_host`][].
- `seed_group`: how many seeds run `vmap`ped together on each device; groups run one
    after another within the same compiled call (`jax.lax.map` with `batch_size`).
    `None` (default): every seed at once on an accelerator, groups of 4 on CPU, where the
    updates are compute-bound and one wide batch of 16 or 64 seeds falls out of cache
    (measured in `benchmarks/throughput.py`). Results do not depend on it beyond rounding.
"""


SWEEPABLE = SWEEPABLE_AGENT_FIELDS + ("epsilon",)
_INTEGER_SWEEPS = ("inner_steps",)
# Traced in every run, swept or not, so that a new value of one of them reuses the
# compiled run instead of compiling another. For each, a traced value (in JAX's default
# float) computes exactly what the constant does when the data are in that float too (the
# tests check this bit for bit), so a run does not depend on whether it was swept. With
# data in another float (a float32 `HostEnv` under `jax_enable_x64`), a Python constant
# took the data's precision and the array keeps the agent's. The others stay constants
# unless swept: a constant K bounds the inner loop, a constant zero `likelihood_weight`
# drops the likelihood term, and XLA computes `x / temperature` for a constant
# temperature to a different last bit.
_ALWAYS_TRACED = ("gamma", "target_update", "q_lr", "model_lr", "epsilon")


class RunState(eqx.Module):
    """One seed's whole training state: agent, environment, replay buffer, key, and the
    run's values of the hyperparameters [`omdx.train`][] passes as arrays (those it
    accepts in a `sweep`: always `gamma`, `target_update`, `q_lr`, `model_lr` and
    `epsilon`, and the others when swept)."""

    agent: AgentState
    env_state: PyTree
    observation: Float[Array, " obs"]
    buffer: ReplayBuffer
    key: PRNGKeyArray
    hyperparameters: dict[str, Array] = eqx.field(default_factory=dict)


class TrainResult(eqx.Module):
    """What [`omdx.train`][] returns (NumPy arrays, seeds on the leading axis).

    **Fields:**

    - `seeds`: the seeds, `[n_seeds]`.
    - `eval_steps`: environment steps at each evaluation, `[n_evals]`.
    - `eval_returns`: mean evaluation return, `[n_seeds, n_evals]`.
    - `metrics`: agent metrics averaged over each evaluation window (updates only; NaN
        for a window with no update, during the random steps), a dict of
        `[n_seeds, n_evals]` arrays.
    - `final_state`: the final [`omdx.RunState`][], batched over seeds.
    """

    seeds: np.ndarray
    eval_steps: np.ndarray
    eval_returns: np.ndarray
    metrics: dict[str, np.ndarray]
    final_state: RunState


def select_action(
    agent: AgentState,
    observation: Float[Array, " obs"],
    key: PRNGKeyArray,
    num_actions: int,
    *,
    explore_probability: Float[Array, ""] | float,
    config: AgentConfig,
) -> Int[Array, ""]:
    """With probability `explore_probability` a uniform action; otherwise a sample from
    softmax(min(Q1, Q2)/alpha) (the greedy action for hard Q-learning)."""
    policy_key, explore_key, random_key = jr.split(key, 3)
    q_min = jnp.min(agent.q(observation), axis=0)
    if config.soft:
        policy_action = jr.categorical(policy_key, q_min / config.temperature)
    else:
        policy_action = jnp.argmax(q_min)
    random_action = jr.randint(random_key, (), 0, num_actions)
    explore = jr.uniform(explore_key) < explore_probability
    return jnp.where(explore, random_action, policy_action).astype(jnp.int32)


def _as_env(env: AbstractEnv | str, host_alternative: str) -> AbstractEnv:
    """`env`, or the JAX environment of an id; a `TypeError` for anything else names
    `host_alternative`, the function for gymnasium environments stepped in Python."""
    if isinstance(env, str):
        return make(env)
    if not isinstance(env, AbstractEnv):
        raise TypeError(
            "`env` must be an `omdx.envs.AbstractEnv` or an id known to `omdx.envs.make`, "
            f"got {type(env).__name__}; for a gymnasium environment stepped in Python use "
            f"`{host_alternative}`."
        )
    return env


def _check_evaluation(env, agent: AgentState, episodes: int) -> int:
    """`evaluate`'s and `evaluate_host`'s checks: one agent, whose Q-network fits `env`
    (discrete actions), and a positive number of episodes, returned as an `int`."""
    if not isinstance(episodes, int | np.integer) or isinstance(episodes, bool) or episodes < 1:
        raise ValueError(f"`episodes` must be a positive int, got {episodes!r}.")
    if not isinstance(agent, AgentState):
        raise TypeError(f"`agent` must be an `omdx.AgentState`, got {type(agent).__name__}.")
    if jnp.ndim(agent.updates) != 0:
        raise ValueError(
            f"`agent` holds {jnp.shape(agent.updates)} runs (a `TrainResult`'s "
            "`final_state.agent` has every seed): pass one, e.g. "
            "`jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, agent)`, or map this "
            "function over them."
        )
    if env.num_actions is None:
        raise ValueError(
            "`env` has continuous actions; the agents' greedy policy needs discrete ones "
            "(the `omdx.envs.discretize_actions` or `action_bins` the agent was trained with)."
        )
    observation = jax.ShapeDtypeStruct((env.observation_size,), jnp.result_type(float))
    try:
        q_shape = jax.eval_shape(agent.q, observation).shape
    except (TypeError, ValueError):  # the first layer does not take this many inputs
        q_shape = None
    if q_shape != (2, env.num_actions):
        raise ValueError(
            f"`agent` does not fit `env`: its Q-network does not map `env`'s "
            f"{env.observation_size} observations to its {env.num_actions} actions (was it "
            "trained on another environment, or with another number of distractors?)."
        )
    return int(episodes)


def evaluate(env: AbstractEnv | str, agent: AgentState, key: PRNGKeyArray, episodes: int) -> Array:
    """Mean undiscounted return of the greedy policy of min(Q1, Q2) over `episodes`
    episodes run side by side (each stops at its first termination or truncation).

    **Arguments:**

    - `env`: an [`omdx.envs.AbstractEnv`][] or an id that [`omdx.envs.make`][] knows.
    - `agent`: the agent state.
    - `key`: PRNG key.
    - `episodes`: the number of episodes.

    **Returns:**

    A scalar: the mean return.
    """
    env = _as_env(env, host_alternative="omdx.evaluate_host")
    episodes = _check_evaluation(env, agent, episodes)
    reset_key, loop_key = jr.split(key)
    states, observations = jax.vmap(env.reset)(jr.split(reset_key, episodes))
    dtype = observations.dtype

    def greedy(observation):
        return jnp.argmax(jnp.min(agent.q(observation), axis=0)).astype(jnp.int32)

    def cond(carry):
        _, _, _, done, t, _ = carry
        return (t < env.max_episode_steps) & ~jnp.all(done)

    def body(carry):
        states, observations, returns, done, t, key = carry
        key, step_key = jr.split(key)
        actions = jax.vmap(greedy)(observations)
        states, steps = jax.vmap(env.step)(states, actions, jr.split(step_key, episodes))
        returns = returns + jnp.where(done, 0.0, steps.reward)
        done = done | steps.terminated | steps.truncated
        return states, steps.observation, returns, done, t + 1, key

    init = (
        states,
        observations,
        jnp.zeros(episodes, dtype),
        jnp.zeros(episodes, bool),
        jnp.array(0),
        loop_key,
    )
    _, _, returns, _, _, _ = jax.lax.while_loop(cond, body, init)
    return jnp.mean(returns)


def _swept_config(agent_config: AgentConfig, hyperparameters: dict[str, Array]) -> AgentConfig:
    """`agent_config` with a run's swept values (traced) in place of the static ones."""
    names = [name for name in hyperparameters if name in SWEEPABLE_AGENT_FIELDS]
    if not names:
        return agent_config
    return eqx.tree_at(
        lambda c: [getattr(c, name) for name in names],
        agent_config,
        [hyperparameters[name] for name in names],
    )


class _Runner(eqx.Module):
    """The pure functions of one seed's run, closed over static settings only."""

    env: AbstractEnv
    agent_config: AgentConfig = eqx.field(static=True)
    train_config: TrainConfig = eqx.field(static=True)

    def init(self, key: PRNGKeyArray) -> RunState:
        agent_key, env_key, run_key = jr.split(key, 3)
        agent = init_agent(agent_key, self.env, self.agent_config)
        env_state, observation = self.env.reset(env_key)
        example = Transition(
            observation=observation,
            action=jnp.array(0, jnp.int32),
            reward=jnp.zeros((), observation.dtype),
            next_observation=observation,
            terminated=jnp.array(False),
        )
        buffer = buffer_init(self.train_config.capacity, example)
        return RunState(agent, env_state, observation, buffer, run_key)

    def env_step(self, run: RunState, t: Int[Array, ""]):
        tc = self.train_config
        agent_config = _swept_config(self.agent_config, run.hyperparameters)
        key, act_key, env_key, sample_key = jr.split(run.key, 4)
        explore = jnp.where(t < tc.random_steps, 1.0, run.hyperparameters["epsilon"])
        action = select_action(
            run.agent,
            run.observation,
            act_key,
            self.env.num_actions,
            explore_probability=explore,
            config=agent_config,
        )
        env_state, step = self.env.step(run.env_state, action, env_key)
        transition = Transition(
            run.observation, action, step.reward, step.next_observation, step.terminated
        )
        buffer = buffer_add(run.buffer, transition)
        # The batch is drawn outside the branch: a buffer passed into `lax.cond` is copied
        # on every step (0.5 ms per step at 200k transitions), a batch costs nothing.
        batch = buffer_sample(buffer, sample_key, tc.batch_size)
        # `t` is not batched over seeds, so this stays a real branch under vmap.
        learn = t >= tc.learning_starts
        update = ft.partial(agent_step, config=agent_config)
        metric_shapes = eqx.filter_eval_shape(update, run.agent, batch)[1]

        def no_update(agent, batch):
            del batch
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
            return agent, zeros

        agent, metrics = filter_cond(learn, update, no_update, run.agent, batch)
        run = RunState(agent, env_state, step.observation, buffer, key, run.hyperparameters)
        return run, (metrics, learn)

    def iteration(self, run: RunState, start: Int[Array, ""]):
        tc = self.train_config
        ts = start + jnp.arange(tc.eval_every)
        run, (metrics, learned) = filter_scan(self.env_step, run, ts)
        count = jnp.sum(learned)
        weights = learned.astype(jnp.result_type(float)) / jnp.maximum(count, 1)
        window = {}
        for name, values in metrics.items():
            if name == "inner_result":  # any failure in the window shows
                window[name] = jnp.max(values)
            else:
                window[name] = jnp.sum(values * weights.astype(values.dtype))
        key, eval_key = jr.split(run.key)
        eval_return = evaluate(self.env, run.agent, eval_key, tc.eval_episodes)
        run = dataclasses.replace(run, key=key)
        return run, (eval_return, window)

    def chunk(self, run: RunState, start: Int[Array, ""], iterations: int):
        starts = start + self.train_config.eval_every * jnp.arange(iterations)
        return filter_scan(self.iteration, run, starts)


# Module-level and jitted on the runner, so that repeated `train` calls with the same
# environment and configs (and number of seeds) reuse one compilation.
@eqx.filter_jit
def _init_runs(runner: _Runner, keys: PRNGKeyArray) -> RunState:
    return eqx.filter_vmap(runner.init)(keys)


def _layout(runs: int, devices, train_config: TrainConfig) -> dict[str, Any]:
    """How the work of `runs` runs is laid out: not a setting of the runs, but a change
    of it between a checkpoint and its continuation changes their rounding. The seed
    group is the one in effect (`None`: every local seed in one vmapped batch)."""
    available, shards = _shards(runs, devices)
    group = _seed_group(train_config)
    local_seeds = runs // shards
    return {
        "backend": _backend(available[0]),
        "devices": shards,
        "seed group": None if group is None or group >= local_seeds else group,
    }


def _backend(device: jax.Device) -> str:
    """The backend and kind of `device`, where the runs compute: part of a layout."""
    return f"{jax.default_backend()} ({device.device_kind})"


def _verified_checkpoint(
    checkpoint, env: AbstractEnv | HostEnv, plan: "_RunPlan"
) -> tuple[pathlib.Path, dict[str, Any], int]:
    """`(path, settings, steps held)` of `train`'s or `train_host`'s `checkpoint` (by the
    type of `env`), checked (before any work) against the run `plan` describes on `env`;
    see `_checkpoint.verify_checkpoint`. A `HostEnv` must pickle, as its checkpoints
    hold it."""
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"`checkpoint` must be a path, got {type(checkpoint).__name__}.")
    if isinstance(env, HostEnv):  # before any work, rather than at the first chunk's end
        check_picklable(env)
    path = pathlib.Path(checkpoint)
    agent_config, train_config = plan.agent_config, plan.train_config
    settings = checkpoint_settings(env, agent_config, train_config, plan.seeds, plan.points)
    return path, settings, verify_checkpoint(path, settings, train_config.steps)


def _fresh_runs(runner: _Runner, plan: "_RunPlan") -> RunState:
    """Every run of `plan` at its start, with its traced hyperparameters; `runner` is
    `plan.runner(env)`."""
    runs = _init_runs(runner, jax.vmap(jr.PRNGKey)(jnp.asarray(plan.run_seeds)))
    return dataclasses.replace(runs, hyperparameters=plan.hyperparameters(jnp.result_type(float)))


CPU_SEED_GROUP = 4


def _seed_group(train_config: TrainConfig) -> int | None:
    if train_config.seed_group is not None:
        return train_config.seed_group
    return CPU_SEED_GROUP if jax.default_backend() == "cpu" else None


@eqx.filter_jit(donate="all-except-first")
def _run_chunk(
    runner: _Runner, runs: RunState, start: Int[Array, ""], iterations: int, shards: int = 1
):
    if shards == 1:
        return _run_local_seeds(runner, runs, start, iterations)
    seeds = runs.key.shape[0]

    # Seeds `[n]` become `[shards, n / shards]`: the leading axis is the one sharded over
    # devices (splitting it is a local reshape), and each device runs its own seeds exactly
    # as one device runs all of them.
    def over_devices(fn, arrays):
        split = jax.tree.map(lambda x: x.reshape(shards, seeds // shards, *x.shape[1:]), arrays)
        return jax.tree.map(lambda x: x.reshape(seeds, *x.shape[2:]), jax.vmap(fn)(split))

    return _map_over_seeds(
        over_devices, lambda run: _run_local_seeds(runner, run, start, iterations), runs
    )


def _run_local_seeds(runner: _Runner, runs: RunState, start: Int[Array, ""], iterations: int):
    group = _seed_group(runner.train_config)
    seeds = runs.key.shape[0]
    if group is None or group >= seeds:
        return eqx.filter_vmap(lambda run: runner.chunk(run, start, iterations))(runs)
    # `lax.map` with `batch_size` vmaps within groups and loops over them (and over any
    # remainder).
    return _map_over_seeds(
        lambda fn, arrays: jax.lax.map(fn, arrays, batch_size=group),
        lambda run: runner.chunk(run, start, iterations),
        runs,
    )


def _map_over_seeds(mapper: Callable, fn: Callable, runs: RunState):
    """`mapper(f, arrays)` (a `vmap` or `lax.map` over the leading axis) of `fn`, a
    function `run -> (new_run, logs)`, over the array leaves of `runs`; the non-array
    leaves (activation functions, ...) stay outside the map."""
    arrays, static = eqx.partition(runs, eqx.is_array)

    def on_arrays(run_arrays):
        new_run, logs = fn(eqx.combine(run_arrays, static))
        return eqx.filter(new_run, eqx.is_array), logs

    new_arrays, logs = mapper(on_arrays, arrays)
    return eqx.combine(new_arrays, static), logs


def _shard_count(seeds: int, devices: Sequence[jax.Device]) -> int:
    """The most devices that share `seeds` evenly."""
    return max(d for d in range(1, min(seeds, len(devices)) + 1) if seeds % d == 0)


def _shards(seeds: int, devices: Sequence[jax.Device] | None) -> tuple[list, int]:
    """`(available devices, how many of them share the seeds)`: the devices (default: all
    local ones) and the most of them that share `seeds` evenly."""
    available = jax.local_devices() if devices is None else list(devices)
    return available, _shard_count(seeds, available)


def _place_seeds(runs: RunState, devices: Sequence[jax.Device] | None) -> tuple[RunState, int]:
    """Split the runs' leading (seed) axis over the most of `devices` (default: all local
    devices) that share the seeds evenly, in contiguous blocks; returns the placed runs and
    the number of devices used. With the default devices and one shard, the runs stay
    where they are."""
    available, shards = _shards(runs.key.shape[0], devices)
    if devices is None and shards == 1:
        return runs, 1
    mesh = jax.sharding.Mesh(np.asarray(available[:shards]), ("seeds",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))
    runs = jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, runs)
    return runs, shards


def _as_seeds(seeds) -> np.ndarray:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"`seeds` must be a positive int or a list of ints, got {seeds}.")
        return np.arange(seeds)
    array = np.asarray(seeds)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`seeds` must be a positive int or a list of ints, got {seeds!r}.")
    return array


def _sweep_points(sweep, agent_config: AgentConfig, train_config: TrainConfig) -> dict:
    """`sweep` validated (every value through the configs' own checks) as
    `{name: array [points]}` (float64; int64 for `inner_steps`); `{}` for no sweep."""
    if sweep is None:
        return {}
    if not isinstance(sweep, dict) or not sweep:
        raise ValueError(f"`sweep` must be a non-empty dict {{name: [values]}}, got {sweep!r}.")
    points = {}
    for name, values in sweep.items():
        if name not in SWEEPABLE:
            raise ValueError(
                f"`sweep` cannot vary {name!r}: expected names from {SWEEPABLE} (the other "
                "settings change shapes or branches of the compiled run; train them separately)."
            )
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            array = None
        if array is None or array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"`sweep[{name!r}]` must be a non-empty list of numbers, got {values!r}."
            )
        if name in _INTEGER_SWEEPS:
            if not np.all(np.isfinite(array) & (array == np.round(array))):
                raise ValueError(f"`sweep[{name!r}]` must list integers, got {values!r}.")
            array = array.astype(np.int64)
        for value in array.tolist():
            try:
                if name == "epsilon":
                    dataclasses.replace(train_config, epsilon=value)
                else:
                    dataclasses.replace(agent_config, **{name: value})
            except ValueError as error:
                raise ValueError(f"`sweep[{name!r}]`: {error}") from None
        points[name] = array
    lengths = {name: array.size for name, array in points.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            "`sweep`'s lists must have one value per point, so equal lengths (for a grid, "
            f"list the product, e.g. with `itertools.product`), got lengths {lengths}."
        )
    return points


def _sweep_label(values: dict[str, float]) -> str:
    """A sweep point's values as `name=value, ...` (`""` for no sweep)."""
    return ", ".join(f"{name}={value:g}" for name, value in values.items())


def _chunk_plan(total: int, per_chunk: int) -> list[int]:
    full, rest = divmod(total, per_chunk)
    return [per_chunk] * full + ([rest] if rest else [])


def _check_inputs(env, agent_config, train_config) -> None:
    """The checks `train` and `train_host` share, before any work."""
    if env.num_actions is None:
        raise ValueError(
            "`env` has continuous actions; the OMD/MLE/VEP agents need discrete ones: "
            "discretise them with `omdx.envs.discretize_actions(env, bins)` (or "
            "`omdx.envs.make(id, action_bins=bins)`, `omdx.envs.HostEnv(id, action_bins=bins)`)."
        )
    if not isinstance(agent_config, AgentConfig):
        raise TypeError(f"`agent_config` must be an `AgentConfig`, got {type(agent_config)}.")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"`train_config` must be a `TrainConfig`, got {type(train_config)}.")


class _RunPlan(eqx.Module):
    """The runs of a `train` or `train_host` call: the seeds of each sweep point in turn
    (just the seeds without a sweep), with each run's swept values."""

    seeds: np.ndarray
    points: dict[str, np.ndarray]
    run_seeds: np.ndarray
    run_values: dict[str, np.ndarray]
    run_labels: list[str]

    traced_values: dict[str, np.ndarray]
    agent_config: AgentConfig
    train_config: TrainConfig

    @classmethod
    def of(cls, seeds, sweep, agent_config, train_config) -> "_RunPlan":
        seed_array = _as_seeds(seeds)
        points = _sweep_points(sweep, agent_config, train_config)
        n_points = len(next(iter(points.values()))) if points else 1
        run_values = {name: np.repeat(values, len(seed_array)) for name, values in points.items()}
        run_seeds = np.tile(seed_array, n_points)
        run_labels = [
            _sweep_label({name: values[i] for name, values in run_values.items()})
            for i in range(len(run_seeds))
        ]
        traced_values = {
            name: np.full(
                len(run_seeds),
                getattr(train_config if name == "epsilon" else agent_config, name),
                float,
            )
            for name in _ALWAYS_TRACED
        }
        traced_values.update(run_values)
        return cls(
            seed_array,
            points,
            run_seeds,
            run_values,
            run_labels,
            traced_values,
            agent_config,
            train_config,
        )

    def hyperparameters(self, float_dtype) -> dict[str, Array]:
        """Each run's values of the traced hyperparameters (swept or always traced), as
        arrays (`inner_steps` as integers)."""
        return {
            name: jnp.asarray(values, jnp.int32 if name in _INTEGER_SWEEPS else float_dtype)
            for name, values in self.traced_values.items()
        }

    def streamed(self, eval_steps, eval_returns, metrics) -> dict[str, Any]:
        """What `on_chunk` receives for these evaluations of every run."""
        return {
            "eval_steps": eval_steps,
            "eval_returns": eval_returns,
            "metrics": metrics,
            "seeds": self.run_seeds,
            "hyperparameters": self.run_values,
        }

    def runner(self, env: AbstractEnv) -> "_Runner":
        """The compiled run's functions for `env`, closed over `compiled_configs`."""
        return _Runner(env, *self.compiled_configs())

    def compiled_configs(self) -> tuple[AgentConfig, TrainConfig]:
        """The configs the compiled run closes over: the traced hyperparameters set to the
        defaults, so that runs differing only in them share one compilation. Their real
        values come from `hyperparameters`."""
        agent_defaults, train_defaults = AgentConfig(), TrainConfig()
        agent_fields = [name for name in _ALWAYS_TRACED if name != "epsilon"]
        agent_config = dataclasses.replace(
            self.agent_config, **{name: getattr(agent_defaults, name) for name in agent_fields}
        )
        train_config = dataclasses.replace(self.train_config, epsilon=train_defaults.epsilon)
        return agent_config, train_config

    def finish(self, result: TrainResult, checked_metrics: dict[str, np.ndarray] | None = None):
        """`result` (every run) as the call returns it, one per sweep point with a sweep.
        Raises `TrainingDiverged` with it if a run's return or loss (in `checked_metrics`,
        default `result.metrics`) is non-finite."""
        message, diverged = _divergence(
            result.eval_returns,
            result.metrics if checked_metrics is None else checked_metrics,
            self.run_seeds,
            result.eval_steps,
            self.run_labels,
        )
        n = len(self.seeds)
        n_points = len(self.run_seeds) // n
        by_point = [slice(i * n, (i + 1) * n) for i in range(n_points)]
        results = [_runs_of(result, p) for p in by_point] if self.points else result
        if message is not None:
            masks = [diverged[p] for p in by_point] if self.points else diverged
            raise TrainingDiverged(message, results, masks)
        return results


def train(
    env: AbstractEnv | str,
    agent_config: AgentConfig = AgentConfig(),
    train_config: TrainConfig = TrainConfig(),
    *,
    seeds: int | Sequence[int] = 1,
    sweep: dict[str, Sequence[float]] | None = None,
    progress: bool = True,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
    stop_on_divergence: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> TrainResult | list[TrainResult]:
    """Train an OMD, MLE or VEP agent on a JAX environment, all seeds in one compiled run.

    Each chunk of `evals_per_chunk` evaluation windows is one `jax.jit` call of a
    `lax.scan`, `jax.vmap`ped over seeds: acting, environment steps, the replay buffer, one
    update per step and the evaluations never leave the device. With several devices, the
    seeds are split evenly across them (each device runs its share as one device runs all).

    **Arguments:**

    - `env`: an [`omdx.envs.AbstractEnv`][] (e.g. `omdx.envs.make("CartPole-v1")`) or an
        id that [`omdx.envs.make`][] knows. Discrete actions only.
    - `agent_config`: the [`omdx.agents.AgentConfig`][] (which agent, networks, adjoint).
    - `train_config`: the [`omdx.TrainConfig`][].
    - `seeds`: a number of seeds (`0..n-1`) or a list of seeds; the same seed gives the
        same run.
    - `sweep`: several values of hyperparameters that set no shape, trained in the same
        compiled, vmapped run as the seeds: `{name: [value per point]}` with names from
        `gamma`, `temperature`, `target_update`, `q_lr`, `model_lr`, `inner_steps`,
        `likelihood_weight` (of `agent_config`) and `epsilon` (of `train_config`); the
        lists have one value per point (so equal lengths). Every point runs every seed,
        from the same initial networks. For a grid, list its product. Runs vmapped together
        with different `inner_steps` each take as long as the largest. Network sizes, the
        agent and the adjoint change the compiled program: train them in separate calls.
        Without a sweep, `gamma`, `target_update`, `q_lr`, `model_lr` and `epsilon` are
        passed as arrays all the same (computing exactly what constants would), so calls
        that differ only in them share one compilation.
    - `progress`: show a progress bar over environment steps.
    - `on_chunk`: called after each chunk with a dict: `eval_steps` `[k]`, `eval_returns`
        `[n_runs, k]`, `metrics` (dict of `[n_runs, k]`), `seeds` `[n_runs]` and
        `hyperparameters` (dict of `[n_runs]`, empty without a sweep), for streaming to
        disk; the runs are the seeds of each sweep point in turn (just the seeds without
        a sweep).
    - `devices`: the devices to split the seeds over; default `jax.local_devices()`. The
        seeds go to the largest number of them that divides the seed count evenly. On CPU,
        JAX shows one device unless asked for more before its first computation:
        `jax.config.update("jax_num_cpu_devices", 2)` gives two devices that run in
        parallel on two cores (`omdx train --cpu-devices`).
    - `stop_on_divergence`: stop every run at the end of the chunk in which one produces
        a non-finite return or loss (default), or train the others to the end (each run
        is computed on its own, so a diverged one does not touch the rest).
    - `checkpoint`: a file (conventionally `.npz`) to keep every run's whole state and
        history in, rewritten after each chunk, before `on_chunk` (beside it, then renamed
        over it, so that an interruption leaves the last one whole). When the file exists,
        training continues from it and returns the whole history; `on_chunk` first
        receives the history so far as one chunk. On the same devices and `seed_group`
        it computes exactly what an uninterrupted run computes; laid out otherwise, the
        same to rounding, with a warning. A run that stopped on a divergence stays
        stopped (with `stop_on_divergence=False` it goes on). A larger `steps` trains a
        finished run further (with the same replay capacity: pass `buffer_size` if
        `steps` set it). Every other setting, the environment (its parameters too), the
        seeds and the sweep must be those the file was written with, or a `ValueError`
        names the differences before any work (a checkpoint of [`omdx.train_host`][] is
        refused too).

    **Returns:**

    An [`omdx.TrainResult`][]; with a `sweep`, a list of them, one per point, in order.

    **Raises:**

    [`omdx.TrainingDiverged`][] (a `FloatingPointError`) if a run produced a non-finite
    return or loss: after the chunk where it did (and after `on_chunk` has received it), or
    with `stop_on_divergence=False` at the end. It names the seeds (and sweep values) and
    the first step, and holds every run's result up to its last evaluation.
    """
    env = _as_env(env, host_alternative="omdx.train_host")
    _check_inputs(env, agent_config, train_config)
    plan = _RunPlan.of(seeds, sweep, agent_config, train_config)
    run_seeds = plan.run_seeds
    if devices is not None:
        devices = list(devices)
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise TypeError(
                f"`devices` must be a non-empty list of `jax.Device`s, got {devices!r}."
            )
    runner = plan.runner(env)
    fresh_runs = ft.partial(_fresh_runs, runner, plan)
    layout = _layout(len(run_seeds), devices, train_config)

    eval_steps, returns, metric_log = [], [], {}
    start = 0
    diverged = ft.partial(_diverged, run_seeds=run_seeds, train_config=train_config)
    stopped = False
    if checkpoint is not None:
        checkpoint, settings, start = _verified_checkpoint(checkpoint, env, plan)
    if start:
        skeleton = eqx.filter_eval_shape(fresh_runs)
        runs, past_steps, past_returns, past_metrics, _ = load_checkpoint(
            checkpoint, skeleton, layout
        )
        eval_steps.append(past_steps)
        returns.append(past_returns)
        metric_log = {name: [values] for name, values in past_metrics.items()}
        if on_chunk is not None:
            on_chunk(plan.streamed(past_steps, past_returns, past_metrics))
        # The run that wrote it stopped there, as an uninterrupted one does.
        stopped = stop_on_divergence and diverged(past_steps, past_returns, past_metrics)
    else:
        runs = fresh_runs()
    runs, shards = _place_seeds(runs, devices)

    remaining_evals = 0 if stopped else (train_config.steps - start) // train_config.eval_every
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=train_config.steps,
            initial=start,
            unit="step",
            desc=f"{agent_config.agent} x{len(run_seeds)}",
        )
    for iterations in _chunk_plan(remaining_evals, train_config.evals_per_chunk):
        with errors_off():
            runs, (chunk_returns, chunk_metrics) = _run_chunk(
                runner, runs, jnp.asarray(start), iterations, shards
            )
        chunk_returns = np.asarray(chunk_returns)
        steps = start + train_config.eval_every * (1 + np.arange(iterations))
        chunk_updated = _updated_windows(steps, train_config.learning_starts)
        chunk_metrics = {  # no mean of no update
            k: np.where(chunk_updated, np.asarray(v), np.nan) for k, v in chunk_metrics.items()
        }
        eval_steps.append(steps)
        returns.append(chunk_returns)
        for name, values in chunk_metrics.items():
            metric_log.setdefault(name, []).append(values)
        start += iterations * train_config.eval_every
        if checkpoint is not None:  # first: nothing `on_chunk` does can lose the chunk
            save_checkpoint(
                checkpoint,
                settings,
                layout,
                runs,
                np.concatenate(eval_steps),
                np.concatenate(returns, axis=1),
                {name: np.concatenate(values, axis=1) for name, values in metric_log.items()},
            )
        if on_chunk is not None:
            on_chunk(plan.streamed(steps, chunk_returns, chunk_metrics))
        if bar is not None:
            bar.update(iterations * train_config.eval_every)
            bar.set_postfix(eval_return=f"{float(np.mean(chunk_returns[:, -1])):.1f}")
        if stop_on_divergence and diverged(steps, chunk_returns, chunk_metrics):
            break
    if bar is not None:
        bar.close()
    result = TrainResult(
        seeds=run_seeds,
        eval_steps=np.concatenate(eval_steps),
        eval_returns=np.concatenate(returns, axis=1),
        metrics={k: np.concatenate(v, axis=1) for k, v in metric_log.items()},
        final_state=runs,
    )
    updated = _updated_windows(result.eval_steps, train_config.learning_starts)
    return plan.finish(result, _updated_metrics(result.metrics, updated))


def _updated_windows(eval_steps, learning_starts: int) -> np.ndarray:
    """Which evaluation windows, ending at `eval_steps`, made an update: those whose last
    step did (updates start at step `learning_starts`, counting from 0)."""
    return np.asarray(eval_steps) - 1 >= learning_starts


def _diverged(steps, returns, metrics, *, run_seeds, train_config: TrainConfig) -> bool:
    """Whether a run produced a non-finite return or loss in these evaluations (at
    `steps`), which stops every run with `stop_on_divergence`: in a chunk, or in a
    checkpoint's history (the run that wrote it stopped there)."""
    checked = _updated_metrics(metrics, _updated_windows(steps, train_config.learning_starts))
    return _divergence(returns, checked, run_seeds, steps)[0] is not None


def _updated_metrics(metrics: dict[str, np.ndarray], updated) -> dict[str, np.ndarray]:
    """The metrics to check for divergence: the windows with no update (`updated` false,
    one per evaluation) hold NaN by design (zeros here), not by divergence."""
    no_update = ~np.asarray(updated, bool)
    return {name: np.where(no_update, 0.0, values) for name, values in metrics.items()}


def _runs_of(result: TrainResult, runs: slice | np.ndarray) -> TrainResult:
    """The runs `runs` (a slice or a boolean mask) of `result` (every array but
    `eval_steps` has runs leading)."""
    per_run = ft.partial(jax.tree.map, lambda x: x[runs] if eqx.is_array(x) else x)
    return TrainResult(
        seeds=result.seeds[runs],
        eval_steps=result.eval_steps,
        eval_returns=result.eval_returns[runs],
        metrics=per_run(result.metrics),
        final_state=per_run(result.final_state),
    )


def _non_finite(returns, metrics) -> dict[str, np.ndarray]:
    """Per quantity that a divergence is judged by (the evaluation return and the losses),
    which windows (runs x evaluations) are non-finite."""
    checked = {
        "eval_return": returns,
        **{k: v for k, v in metrics.items() if k in ("model_loss", "q_real_loss", "q_model_loss")},
    }
    return {name: ~np.isfinite(values) for name, values in checked.items()}


def _divergence(returns, metrics, seeds, steps, labels=None) -> tuple[str | None, np.ndarray]:
    """`(message, diverged)`: `diverged` marks the runs (rows) with a non-finite evaluation
    return or loss; `message` names them, the first quantity and its step (`None` if
    every run is finite)."""
    any_bad = np.zeros(np.shape(returns), bool)
    first = None
    for name, bad in _non_finite(returns, metrics).items():
        if bad.any():
            any_bad |= bad
            step = int(steps[np.nonzero(bad)[1].min()])
            if first is None or step < first[1]:
                first = (name, step)
    diverged = any_bad.any(axis=1)
    if first is None:
        return None, diverged
    where = f"seeds {sorted(set(seeds[diverged].tolist()))}"
    if labels is not None and any(labels):
        where += f" at {sorted(set(labels[i] for i in np.nonzero(diverged)[0]))}"
    runs = np.nonzero(diverged)[0]
    if len(runs) == 1:
        when = f"by step {first[1]}"
    else:  # each run's own first non-finite evaluation, not only the earliest

        def run_name(i):
            return f"seed {seeds[i]}" + (f" at {labels[i]}" if labels and labels[i] else "")

        each = ", ".join(f"{run_name(i)} by step {int(steps[np.argmax(any_bad[i])])}" for i in runs)
        when = f"({each})"
    message = (
        f"Training produced a non-finite `{first[0]}` for {where} {when}. "
        "Lower the learning rates; for OMD, try `bound_predictions=True`; for the Neumann "
        "adjoint, lower `adjoint_scale` below 1/(largest Hessian eigenvalue). The error's "
        "`result` holds every run up to the last evaluation made, and `diverged` marks these."
    )
    return message, diverged
