"""Checkpoints of [`omdx.train`][] and [`omdx.train_host`][]: every run's whole state and
its history so far, in one `.npz` file, so that a run continues where it stopped,
computing exactly what an uninterrupted run computes."""

import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .envs._host import HostEnv


_FORMAT = 1
# Which function wrote a checkpoint, so that the other one refuses it by name: their
# states differ (a JAX environment's state in the runs, or pickled gymnasium environments
# and the pending actions beside them). Files written before host checkpoints existed have
# no marker: `train` wrote them.
_COMPILED, _HOST = "omdx.train", "omdx.train_host"
_LOOPS = {_COMPILED: "a JAX environment", _HOST: "a gymnasium environment stepped in Python"}


def _is_state_array(x) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _as_json(value):
    """A setting as JSON, the same for equal numbers of any type (`1e-3`, `np.float64`)."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return repr(value)


def _layers(env) -> str:
    """The environment's wrappers, outermost first, e.g. `Distractors(FuncEnvAdapter(
    CartPoleFunctional))` or `HostEnv(TimeLimit(OrderEnforcing(PassiveEnvChecker(
    CartPoleEnv))))`."""
    names, layer = [], env
    while layer is not None:
        inner = getattr(layer, "func_env", None)
        names.append(type(layer).__name__)
        if inner is not None:
            names.append(type(inner).__name__)
        layer = getattr(layer, "env", None)
    return "(".join(names) + ")" * (len(names) - 1)


def _describe_env(env) -> str:
    """The environment's wrappers and sizes, e.g. `Distractors(FuncEnvAdapter(
    CartPoleFunctional)), observation_size=6, num_actions=2, max_episode_steps=500`."""
    return (
        f"{_layers(env)}, observation_size={env.observation_size}, "
        f"num_actions={env.num_actions}, max_episode_steps={env.max_episode_steps}"
    )


def _describe_host_env(env: HostEnv) -> dict[str, Any]:
    """A `HostEnv`'s settings, one entry each so that a difference is named: its wrappers,
    gymnasium id, `HostEnv` settings and sizes. Not its attributes, which hold the state
    of the episode and of its random number generators."""
    spec = env.env.spec
    return {
        "layers": _layers(env),
        "id": None if spec is None else spec.id,
        "distractors": env.distractors,
        "max_episode_steps": env.max_episode_steps,
        "dtype": env.dtype.name,
        "observation_size": env.observation_size,
        "num_actions": env.num_actions,
    }


def _host_env_digest(env: HostEnv) -> str:
    """A digest of a `HostEnv`'s gymnasium settings: its spec (the keyword arguments of
    `gymnasium.make` and of the wrappers it records) and its observation bounds. A change
    made to the instance after `gymnasium.make` (an attribute set by hand) is not seen."""
    space = env.env.observation_space
    return _env_digest({"spec": env.env.spec, "observation bounds": [space.low, space.high]})


def pickled_envs(envs: HostEnv | list[HostEnv]) -> bytes:
    """`envs` (one or a list), pickled: a host-loop checkpoint holds the training
    environments' state so. A `ValueError` names the environment if it cannot be."""
    try:
        return pickle.dumps(envs)
    except Exception as error:
        env = envs if isinstance(envs, HostEnv) else envs[0]
        spec = env.env.spec
        name = spec.id if spec is not None else type(env.env.unwrapped).__name__
        raise ValueError(
            f"`checkpoint`: the environment {name} ({_layers(env)}) cannot be pickled "
            f"({type(error).__name__}: {error}), so its state cannot be saved and a "
            "checkpoint is impossible for it. Train without `checkpoint`, or make the "
            "environment picklable (e.g. with `__getstate__` and `__setstate__`)."
        ) from None


def check_picklable(env: HostEnv) -> None:
    """A `ValueError` (from `pickled_envs`) if a host-loop checkpoint could not hold `env`:
    as given, or after a reset, which may open what cannot be pickled (a renderer, a
    simulator's handle); the reset is of a copy, so `env` is not touched."""
    probe = pickle.loads(pickled_envs(env))
    probe.reset(seed=0)
    pickled_envs(probe)
    probe.close()


def _env_digest(env) -> str:
    """A digest of the environment's settings: every number, string and array in it, its
    static fields and the attributes of the objects it holds (a gymnasium `FuncEnv`)
    included, so that a CartPole with another gravity has another digest."""
    digest = hashlib.sha256()
    _digest_into(digest, env, depth=8)
    return digest.hexdigest()[:16]


def _digest_into(digest, value, depth: int) -> None:
    if isinstance(value, bool | int | float | str | complex) or value is None:
        digest.update(repr(value).encode())
    elif eqx.is_array(value) or isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    elif depth == 0 or callable(value) and not dataclasses.is_dataclass(value):
        # Functions, and what lies too deep, count by their type only: their repr holds a
        # memory address, which differs between processes.
        digest.update(type(value).__name__.encode())
    elif isinstance(value, list | tuple):
        for item in value:
            _digest_into(digest, item, depth - 1)
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _digest_into(digest, value[key], depth - 1)
    elif dataclasses.is_dataclass(value):  # Equinox modules, with their static fields
        digest.update(type(value).__name__.encode())
        for field in dataclasses.fields(value):
            digest.update(field.name.encode())
            _digest_into(digest, getattr(value, field.name, None), depth - 1)
    elif hasattr(value, "__dict__"):  # plain objects, e.g. a gymnasium `FuncEnv`
        digest.update(type(value).__name__.encode())
        _digest_into(digest, vars(value), depth - 1)
    else:
        digest.update(type(value).__name__.encode())


def checkpoint_settings(env, agent_config, train_config, seeds, points) -> dict[str, Any]:
    """What a run continued from a checkpoint must share with the run that wrote it, as
    JSON: the function that wrote it (`train_host` for a `HostEnv`) and everything but the
    number of steps (which may grow) and how the work is split (chunks, seed groups,
    devices: `load_checkpoint` warns of those). The replay buffer's capacity is in it,
    since it sets the buffer's shape."""
    train_settings = {
        "random_steps": train_config.random_steps,
        "eval_every": train_config.eval_every,
        "eval_episodes": train_config.eval_episodes,
        "batch_size": train_config.batch_size,
        "buffer capacity": train_config.capacity,
        "epsilon": _as_json(train_config.epsilon),
    }
    host = isinstance(env, HostEnv)
    return {
        "format": _FORMAT,
        "written by": _HOST if host else _COMPILED,
        "env": _describe_host_env(env) if host else _describe_env(env),
        "env parameters (digest)": _host_env_digest(env) if host else _env_digest(env),
        "float dtype": jnp.dtype(jnp.result_type(float)).name,
        "agent_config": {
            field.name: _as_json(getattr(agent_config, field.name))
            for field in dataclasses.fields(agent_config)
        },
        "train_config": train_settings,
        "seeds": [int(seed) for seed in seeds],
        "sweep": {name: values.tolist() for name, values in points.items()},
    }


def _differences(stored: dict, expected: dict, prefix: str = "") -> list[str]:
    differences = []
    for name in sorted(set(stored) | set(expected)):
        old, new = stored.get(name), expected.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _differences(old, new, f"{prefix}{name}.")
        elif old != new:
            differences.append(f"{prefix}{name}: {old} in the checkpoint, {new} now")
    return differences


def verify_checkpoint(path: pathlib.Path, settings: dict[str, Any], steps: int) -> int:
    """The steps the checkpoint at `path` holds (0 when there is none yet), after checking,
    before any work, that a run of `settings` and `steps` can continue it (or write it).
    Raises `ValueError` naming the problem: not a checkpoint, other settings, more steps
    than `steps`, or a folder that does not exist."""
    if not path.exists():
        if not path.parent.is_dir():
            raise ValueError(
                f"`checkpoint` {str(path)!r}: the folder {str(path.parent)!r} does not exist."
            )
        return 0
    try:
        with np.load(path) as data:
            stored = json.loads(str(data["settings"]))
            held = int(data["eval_steps"][-1])
    except Exception as error:
        raise ValueError(
            f"`checkpoint` {str(path)!r} exists but is not an omdx checkpoint ({error})."
        ) from None
    written_by, now = stored.setdefault("written by", _COMPILED), settings["written by"]
    if written_by != now:
        raise ValueError(
            f"`checkpoint` {str(path)!r} was written by `{written_by}` "
            f"({_LOOPS.get(written_by, 'another loop')}), not `{now}` ({_LOOPS[now]}): "
            f"continue it with `{written_by}`, or train into a new file."
        )
    differences = _differences(stored, settings)
    if differences:
        raise ValueError(
            f"`checkpoint` {str(path)!r} was written by a run with other settings ("
            + "; ".join(differences)
            + "). Continue it with the settings it was written with, or train into a new file."
        )
    if held > steps:
        raise ValueError(
            f"`checkpoint` {str(path)!r} holds {held} steps, more than `steps` ({steps}): "
            f"pass `steps` >= {held} to continue it."
        )
    return held


def save_checkpoint(
    path: pathlib.Path,
    settings: dict[str, Any],
    layout: dict[str, Any],
    runs,
    eval_steps: np.ndarray,
    eval_returns: np.ndarray,
    metrics: dict[str, np.ndarray],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write `runs` (every run's state) and the history to `path`, with the `settings`
    and the `layout` of the work that wrote it, and any `extra` arrays (state kept outside
    `runs`; `load_checkpoint` returns them). The file is written beside it, flushed to
    disk and then renamed over it, so that an interruption leaves the previous checkpoint
    whole."""
    arrays = state_arrays(runs)
    arrays.update({f"extra_{name}": np.asarray(value) for name, value in (extra or {}).items()})
    arrays["eval_steps"] = np.asarray(eval_steps)
    arrays["eval_returns"] = np.asarray(eval_returns)
    arrays.update({f"metric_{name}": np.asarray(values) for name, values in metrics.items()})
    arrays["settings"] = np.array(json.dumps(settings))
    arrays["layout"] = np.array(json.dumps(layout))
    write_npz(path, arrays)


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` to a file beside `path`, flushed to disk and then renamed over it, so that
    an interruption leaves any previous file whole."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def state_arrays(tree) -> dict[str, np.ndarray]:
    """The arrays of `tree` as `{"state_<i>": array}`, in leaf order (see `state_of`)."""
    leaves = jax.tree.leaves(eqx.filter(tree, _is_state_array))
    return {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def state_of(data, skeleton, name: str):
    """The tree of `skeleton`'s structure (arrays or `jax.ShapeDtypeStruct`s) with the
    arrays `state_arrays` wrote into `data` (an open `.npz`), checking each one's shape and
    dtype; `name` names the file in the error."""
    arrays, static = eqx.partition(skeleton, _is_state_array)
    expected, treedef = jax.tree.flatten(arrays)
    leaves = []
    for i, shape in enumerate(expected):
        value = data[f"state_{i}"]
        if value.shape != shape.shape or value.dtype != shape.dtype:
            raise ValueError(
                f"{name} holds a state array of {value.dtype.name}"
                f"{list(value.shape)} where this run has {jnp.dtype(shape.dtype).name}"
                f"{list(shape.shape)}: it was written by another version of omdx."
            )
        leaves.append(jnp.asarray(value))
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def load_checkpoint(path: pathlib.Path, skeleton, layout: dict[str, Any]):
    """Read a checkpoint that `verify_checkpoint` accepted; `skeleton` is the runs'
    structure (from `eqx.filter_eval_shape`). Returns `(runs, eval_steps, eval_returns,
    metrics, extra)`, `extra` the dict `save_checkpoint` was given (`{}` without). Warns
    when the work is laid out otherwise than `layout` (seed groups, devices): the runs
    then continue to rounding, not bit for bit."""
    with np.load(path) as data:
        stored_layout = json.loads(str(data["layout"]))
        changed = _differences(stored_layout, layout)
        if changed:
            warnings.warn(
                f"`checkpoint` {str(path)!r} continues with its runs laid out otherwise ("
                + "; ".join(changed)
                + "): they compute what they would have to rounding, not bit for bit.",
                stacklevel=3,
            )
        runs = state_of(data, skeleton, f"`checkpoint` {str(path)!r}")
        metrics, extra = _prefixed(data, "metric_"), _prefixed(data, "extra_")
        return runs, data["eval_steps"], data["eval_returns"], metrics, extra


def _prefixed(data, prefix: str) -> dict[str, np.ndarray]:
    """The arrays of `data` (an open `.npz`) whose names start with `prefix`, without it."""
    return {name.removeprefix(prefix): data[name] for name in data.files if name.startswith(prefix)}
