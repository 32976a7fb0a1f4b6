"""Checkpoints of [`omdx.train`][]: every run's whole state and its history so far, in one
`.npz` file, so that a run continues where it stopped, computing exactly what an
uninterrupted run computes."""

import dataclasses
import hashlib
import json
import os
import pathlib
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


_FORMAT = 1


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


def _describe_env(env) -> str:
    """The environment's wrappers and sizes, e.g. `Distractors(FuncEnvAdapter(
    CartPoleFunctional)), observation_size=6, num_actions=2, max_episode_steps=500`."""
    names, layer = [], env
    while layer is not None:
        inner = getattr(layer, "func_env", None)
        names.append(type(layer).__name__)
        if inner is not None:
            names.append(type(inner).__name__)
        layer = getattr(layer, "env", None)
    return (
        "(".join(names)
        + ")" * (len(names) - 1)
        + f", observation_size={env.observation_size}, num_actions={env.num_actions}, "
        f"max_episode_steps={env.max_episode_steps}"
    )


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
    JSON: everything but the number of steps (which may grow) and how the work is split
    (chunks, seed groups, devices: `load_checkpoint` warns of those). The replay buffer's capacity
    is in it, since it sets the buffer's shape."""
    train_settings = {
        "random_steps": train_config.random_steps,
        "eval_every": train_config.eval_every,
        "eval_episodes": train_config.eval_episodes,
        "batch_size": train_config.batch_size,
        "buffer capacity": train_config.capacity,
        "epsilon": _as_json(train_config.epsilon),
    }
    return {
        "format": _FORMAT,
        "env": _describe_env(env),
        "env parameters (digest)": _env_digest(env),
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
) -> None:
    """Write `runs` (every run's state) and the history to `path`, with the `settings`
    and the `layout` of the work that wrote it. The file is written beside it, flushed to
    disk and then renamed over it, so that an interruption leaves the previous checkpoint
    whole."""
    arrays = state_arrays(runs)
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
    metrics)`. Warns when the work is laid out otherwise than `layout` (seed groups,
    devices): the runs then continue to rounding, not bit for bit."""
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
        metrics = {
            name.removeprefix("metric_"): data[name]
            for name in data.files
            if name.startswith("metric_")
        }
        return runs, data["eval_steps"], data["eval_returns"], metrics
