"""The agents a command-line run trained, saved beside its metrics so that they can be
evaluated, inspected or trained further in Python."""

import dataclasses
import json
import os
import pathlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Int, Shaped

from ._checkpoint import state_arrays, state_of, write_npz
from .agents import AgentConfig, AgentState, EnvSpec, init_agent
from .envs import AbstractEnv, HostEnv


# What the file is, so that another `.npz` of omdx (a checkpoint) is named as such.
_KIND, _FORMAT = "omdx agents", 1


class SavedAgents(eqx.Module):
    """The final agents of a command-line run (`omdx train`, `compare` or `demo`), as
    [`omdx.load_agents`][] reads them, with what is needed to use them.

    **Fields:**

    - `agents`: every run's final [`omdx.agents.AgentState`][], batched over runs (the
        seeds of each sweep point in turn, as `seeds` and `hyperparameters` list them).
    - `agent_config`: the run's [`omdx.AgentConfig`][omdx.agents.AgentConfig] (without
        a sweep's values).
    - `seeds`: each run's seed, `[runs]`.
    - `hyperparameters`: each swept name's value per run, `{name: [runs]}` (`{}` without a
        sweep).
    - `env_id`, `distractors`, `action_bins`, `host`: the environment's settings;
        `make_env()` builds it.
    """

    agents: AgentState
    agent_config: AgentConfig
    seeds: Int[np.ndarray, " runs"]
    hyperparameters: dict[str, Shaped[np.ndarray, " runs"]]
    env_id: str = eqx.field(static=True)
    distractors: int = eqx.field(static=True)
    action_bins: int | None = eqx.field(static=True)
    host: bool = eqx.field(static=True)

    def agent(self, run: int) -> AgentState:
        """Run `run`'s agent (an index into `seeds`), for [`omdx.evaluate`][] or the agent
        steps."""
        if not isinstance(run, int | np.integer) or not 0 <= run < len(self.seeds):
            raise IndexError(f"`run` must be an int in [0, {len(self.seeds)}), got {run!r}.")
        return jax.tree.map(lambda x: x[run] if eqx.is_array(x) else x, self.agents)

    def make_env(self) -> AbstractEnv | HostEnv:
        """The environment the agents were trained on: an [`omdx.envs.AbstractEnv`][] from
        [`omdx.envs.make`][], or an [`omdx.envs.HostEnv`][] for a run in the host loop
        (for [`omdx.evaluate_host`][])."""
        from .envs import make

        build = HostEnv if self.host else make
        return build(self.env_id, distractors=self.distractors, action_bins=self.action_bins)


def save_agents(
    path: pathlib.Path,
    env_settings: dict[str, Any],
    env: AbstractEnv | HostEnv,
    agent_config: AgentConfig,
    run_seeds: np.ndarray,
    run_values: dict[str, np.ndarray],
    agents: AgentState,
) -> None:
    """Write `agents` (batched over the runs of `run_seeds` and `run_values`) to `path`
    with what `load_agents` needs to read them: the environment's settings (`id`,
    `distractors`, `action_bins`, `host`) and sizes, and the agents' config."""
    settings = {
        "kind": _KIND,
        "format": _FORMAT,
        "env": env_settings,
        "observation_size": env.observation_size,
        "num_actions": env.num_actions,
        "float dtype": jnp.dtype(jnp.result_type(float)).name,
        "agent_config": dataclasses.asdict(agent_config),
        "seeds": [int(seed) for seed in run_seeds],
        "hyperparameters": {name: values.tolist() for name, values in run_values.items()},
    }
    arrays = state_arrays(agents)
    arrays["settings"] = np.array(json.dumps(settings))
    write_npz(path, arrays)


def stored_float_dtype(path: pathlib.Path) -> str | None:
    """The floating dtype of the agents at `path` (`None` if it cannot be read: then
    `load_agents` names the problem)."""
    try:
        with np.load(path) as data:
            return json.loads(str(data["settings"]))["float dtype"]
    except Exception:
        return None


def load_agents(path: str | os.PathLike) -> SavedAgents:
    """Read the agents a command-line run saved: `OUT/agents.npz` of `omdx train` (one
    per agent under `OUT/<agent>/` for `omdx compare` and `omdx demo`).

    ```python
    saved = omdx.load_agents("runs/omd/agents.npz")
    env = saved.make_env()
    returns = omdx.evaluate(env, saved.agent(0), jax.random.PRNGKey(0), 10)
    ```

    Load it with the floating dtype it was trained in (`jax_enable_x64` for `--x64`).
    In Python, a [`omdx.TrainResult`][]'s `final_state.agent` holds the same agents; save
    those with `eqx.tree_serialise_leaves`.

    **Arguments:**

    - `path`: the `agents.npz` file, or the folder that holds it.

    **Returns:**

    A [`omdx.SavedAgents`][].
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a path, got {type(path).__name__}.")
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "agents.npz"
    if not path.exists():
        raise ValueError(f"`path` {str(path)!r} does not exist.")
    not_ours = f"`path` {str(path)!r} is not an agents file of omdx"
    try:
        data = np.load(path)
    except Exception as error:
        raise ValueError(f"{not_ours} ({error}).") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_ours} (it holds one array, not an `.npz` archive).")
    with data:
        try:
            settings = json.loads(str(data["settings"]))
        except Exception as error:
            raise ValueError(f"{not_ours} ({error}).") from None
        if settings.get("kind") != _KIND or settings.get("format") != _FORMAT:
            what = (
                "a checkpoint" if "written by" in settings or "layout" in data else "another file"
            )
            raise ValueError(f"{not_ours} (it is {what}; a run's agents are in its agents.npz).")
        env_settings = settings["env"]
        run_seeds = np.asarray(settings["seeds"], dtype=np.int64)
        dtype = jnp.dtype(jnp.result_type(float)).name
        if settings["float dtype"] != dtype:
            flag = "on" if settings["float dtype"] == "float64" else "off"
            raise ValueError(
                f"`path` {str(path)!r} holds {settings['float dtype']} agents, and JAX "
                f"computes in {dtype}: turn `jax_enable_x64` {flag} first "
                f"(`jax.config.update('jax_enable_x64', {flag == 'on'})`)."
            )
        agent_config = AgentConfig(**settings["agent_config"])
        spec = EnvSpec(settings["observation_size"], settings["num_actions"])
        keys = jax.random.split(jax.random.PRNGKey(0), len(run_seeds))
        skeleton = eqx.filter_eval_shape(
            eqx.filter_vmap(lambda key: init_agent(key, spec, agent_config)), keys
        )
        agents = state_of(data, skeleton, f"`path` {str(path)!r}")
    return SavedAgents(
        agents=agents,
        agent_config=agent_config,
        seeds=run_seeds,
        hyperparameters={
            name: np.asarray(values) for name, values in settings["hyperparameters"].items()
        },
        env_id=env_settings["id"],
        distractors=env_settings["distractors"],
        action_bins=env_settings["action_bins"],
        host=env_settings["host"],
    )
