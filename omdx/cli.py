"""The `omdx` console script.

- `omdx demo`: the README's main job, OMD vs MLE on CartPole with a too-small model.
- `omdx train`: one agent, many seeds (and `--sweep` values), one vmapped run; writes
    config, metrics, summary and curves.
- `omdx compare`: OMD, MLE and VEP on the same settings, with a table of final return and
    area under the curve.
- `omdx evaluate`: the agents a run saved, over more episodes.
- `omdx tabular {misspec,bounds,noise}`: the paper's tabular studies.
- `omdx paper`: every result of the paper that omdx reproduces, with one report.
"""

import argparse
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._help import HelpWithDefaults
from .agents._config import AGENTS


def _add_run_arguments(
    parser: argparse.ArgumentParser, *, steps: int, seeds: int, model_hidden: int, out: str
) -> None:
    from .agents._config import AGENT_ADJOINTS

    parser.add_argument(
        "--env",
        default="CartPole-v1",
        help="environment id: a JAX environment of omdx.envs.make (CartPole-v1, Pendulum-v1), "
        "or any gymnasium id, stepped in Python (see --host); continuous actions need "
        "--action-bins",
    )
    parser.add_argument(
        "--host",
        action="store_true",
        help="step the environment in Python, every seed in lockstep with one jitted update "
        "of all per step (omdx.train_host); automatic for ids that are not JAX environments",
    )
    parser.add_argument(
        "--seeds", type=int, default=seeds, help="number of seeds (vmapped, split over devices)"
    )
    parser.add_argument("--steps", type=int, default=steps, help="environment steps per seed")
    parser.add_argument(
        "--model-hidden",
        type=int,
        default=model_hidden,
        help="hidden units per model layer (small = misspecified)",
    )
    parser.add_argument(
        "--distractors", type=int, default=0, help="N(0, 1) dimensions appended to observations"
    )
    parser.add_argument(
        "--action-bins",
        type=int,
        default=None,
        help="for an environment with continuous actions (Pendulum-v1): that many discrete "
        "actions per action dimension, the bin centres (omdx.envs.discretize_actions)",
    )
    parser.add_argument(
        "--adjoint",
        default="identity",
        choices=AGENT_ADJOINTS,
        help="OMD's backward linear solve (identity: the paper's)",
    )
    parser.add_argument(
        "--adjoint-steps",
        type=int,
        default=100,
        help="Hessian-vector products of the neumann, cg and gmres adjoints",
    )
    parser.add_argument(
        "--adjoint-scale",
        type=float,
        default=1.0,
        help="alpha: the neumann series' step size, and the identity adjoint's H^-1 ~ alpha I "
        "(a constant scale that the model's Adam step all but ignores without a likelihood "
        "term)",
    )
    parser.add_argument(
        "--damping",
        type=float,
        default=1e-5,
        help="added to the Hessian's diagonal (cg, gmres, direct)",
    )
    parser.add_argument(
        "--inner-steps", type=int, default=1, help="K inner Adam steps of the Q-network"
    )
    parser.add_argument(
        "--likelihood-weight",
        type=float,
        default=0.0,
        help="beta: OMD's and VEP's model loss gets beta times MLE's added (0: the paper's)",
    )
    parser.add_argument(
        "--bound-predictions",
        action="store_true",
        help="squash the model's next-state predictions into the box of the batch's real "
        "states (default: unbounded, the paper's)",
    )
    parser.add_argument("--q-lr", type=float, default=3e-4, help="Q-network learning rate")
    parser.add_argument("--model-lr", type=float, default=1e-3, help="model learning rate")
    parser.add_argument("--q-hidden", type=int, default=32, help="hidden units per Q layer")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument(
        "--temperature", type=float, default=0.01, help="soft Q-learning temperature alpha"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="real transitions per update")
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="replay capacity (default: --steps, at most 10^6); fixed for a checkpointed run",
    )
    parser.add_argument(
        "--random-steps", type=int, default=1000, help="uniformly random actions first"
    )
    parser.add_argument(
        "--eval-every", type=int, default=1000, help="environment steps between evaluations"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=10, help="greedy episodes per evaluation"
    )
    parser.add_argument(
        "--epsilon", type=float, default=0.1, help="probability of a random action after those"
    )
    parser.add_argument(
        "--evals-per-chunk",
        type=int,
        default=5,
        help="evaluations per compiled call (between progress updates)",
    )
    parser.add_argument("--x64", action="store_true", help="run in float64 (the paper's)")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="CPU devices to split the seeds over (default: one per core; the host loop, "
        "--host, runs on one)",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2,...",
        help="train every seed at each value, all in one vmapped run (repeat for more names, "
        "one value per point each): q_lr, model_lr, gamma, temperature, target_update, "
        "inner_steps, likelihood_weight, epsilon",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="when a seed diverges, train the others to the end (default: stop them all at "
        "the end of that chunk)",
    )
    parser.add_argument(
        "--checkpoint",
        action="store_true",
        help="keep every seed's state in OUT/checkpoint.npz (per agent), rewritten after each "
        "chunk; the same command again continues an interrupted run, and with a larger "
        "--steps trains a finished one further (in the host loop, the environments are "
        "pickled)",
    )
    parser.add_argument(
        "--blowup-loss",
        type=float,
        default=1e6,
        help="name a seed whose Bellman loss on real transitions ends above this as blown up "
        "(in the table and summary.json; it stays in the statistics)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--out", default=out, help="output directory")


def _configs(args, agent: str):
    from ._train import TrainConfig
    from .agents._config import AgentConfig

    agent_config = AgentConfig(
        agent=agent,
        q_hidden=args.q_hidden,
        model_hidden=args.model_hidden,
        gamma=args.gamma,
        temperature=args.temperature,
        q_lr=args.q_lr,
        model_lr=args.model_lr,
        inner_steps=args.inner_steps,
        likelihood_weight=args.likelihood_weight,
        bound_predictions=args.bound_predictions,
        adjoint=args.adjoint,
        adjoint_steps=args.adjoint_steps,
        adjoint_scale=args.adjoint_scale,
        damping=args.damping,
    )
    train_config = TrainConfig(
        steps=args.steps,
        random_steps=args.random_steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        batch_size=args.batch_size,
        buffer_size=args.buffer_size,
        epsilon=args.epsilon,
        evals_per_chunk=args.evals_per_chunk,
    )
    return agent_config, train_config


def _parse_sweep(items: Sequence[str] | None) -> dict[str, list[float]] | None:
    """`--sweep NAME=V1,V2,...` (repeated) as `train`'s `sweep` dict; `None` if absent."""
    if not items:
        return None
    sweep = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            numbers = None
        if not name or numbers is None or name in sweep:
            raise ValueError(
                "`--sweep` expects NAME=V1,V2,... once per name (e.g. --sweep "
                f"model_lr=1e-3,3e-3), got {item!r}."
            )
        sweep[name] = numbers
    return sweep


def _use_cpu_devices(count: int | None) -> None:
    """Ask JAX for `count` CPU devices (default: one per core), over which `train` splits
    the seeds. JAX takes this only before its first computation: a process that has
    already computed keeps its devices, and an explicit `count` then raises."""
    import jax

    if count is not None and (isinstance(count, bool) or count < 1):
        raise ValueError(f"`--cpu-devices` must be a positive int, got {count}.")
    wanted = count or os.cpu_count() or 1
    if jax.config.jax_num_cpu_devices == wanted:
        return
    try:
        jax.config.update("jax_num_cpu_devices", wanted)
    except RuntimeError:
        if count is not None:
            raise ValueError(
                f"`--cpu-devices {count}`: JAX has already computed in this process, so its "
                "CPU devices are fixed; pass it to a fresh `omdx` process."
            ) from None


def _jax_env_ids() -> tuple[str, ...]:
    """The ids `omdx.envs.make` builds as JAX environments."""
    from .envs._func import _KNOWN_ENVS

    return tuple(_KNOWN_ENVS)


def _make_env(args) -> tuple[object, bool]:
    """The environment of `--env` (with `--distractors` and `--action-bins`), and whether
    it runs in the host loop: with `--host`, or for a gymnasium id that `omdx.envs.make`
    does not know."""
    import gymnasium

    from .envs import discretize_actions, HostEnv, make

    host = args.host or args.env not in _jax_env_ids()
    try:
        env = (
            HostEnv(args.env, distractors=args.distractors)
            if host
            else make(args.env, distractors=args.distractors)
        )
    except gymnasium.error.Error as error:
        raise ValueError(
            f"Unknown `--env` {args.env!r}: neither a JAX environment of omdx "
            f"({', '.join(_jax_env_ids())}) nor a registered gymnasium id ({error})."
        ) from None
    if args.action_bins is not None:
        try:  # the environment is valid: an error from here on is about the bins
            if host:  # gymnasium's wrapper goes inside, around the gymnasium environment
                env.close()
                env = HostEnv(args.env, distractors=args.distractors, action_bins=args.action_bins)
            else:
                env = discretize_actions(env, args.action_bins)
        except ValueError as error:
            raise ValueError(f"`--action-bins {args.action_bins}`: {error}") from None
    if env.num_actions is None:
        raise ValueError(
            f"`--env {args.env}` has continuous actions; the OMD/MLE/VEP agents need discrete "
            "ones: pass `--action-bins N` (N actions per action dimension)."
        )
    return env, host


class CheckedRun(NamedTuple):
    """A run of the command's settings, every part checked (see `checked_run`)."""

    agent_config: Any
    train_config: Any
    sweep: dict[str, list[float]] | None
    env: Any
    host: bool  # whether it runs in the host loop (`omdx.train_host`)
    plan: Any  # `_train._RunPlan`


def checked_run(args, agent: str) -> CheckedRun:
    """The configs, sweep, environment and run plan of `agent` on the command's settings,
    every one checked: what `run_agent` trains, and what a command of many runs checks
    before its first."""
    from ._train import _check_inputs, _RunPlan, _sweep_points

    if not args.blowup_loss > 0:
        raise ValueError(f"`--blowup-loss` must be a positive number, got {args.blowup_loss}.")
    agent_config, train_config = _configs(args, agent)
    sweep = _parse_sweep(args.sweep)
    _sweep_points(sweep, agent_config, train_config)  # a bad sweep fails before any file
    env, host = _make_env(args)
    _check_inputs(env, agent_config, train_config)
    plan = _RunPlan.of(args.seeds, sweep, agent_config, train_config)
    return CheckedRun(agent_config, train_config, sweep, env, host, plan)


def run_agent(args, agent: str, out: pathlib.Path) -> tuple[list[dict], dict, bool]:
    """Train one agent on the CLI's settings, streaming metrics to `out/metrics.csv`, then
    write `out/summary.json` and `out/curves.png`. Returns `_table_rows`' rows and curves,
    and whether a run diverged (then the others are reported without it)."""
    import equinox as eqx
    import jax
    import numpy as np

    from ._report import CsvAppender, plot_curves, run_summary, write_json
    from ._saved import save_agents
    from ._train import _runs_of, _verified_checkpoint, train, TrainingDiverged
    from ._train_host import train_host

    _use_cpu_devices(args.cpu_devices)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    agent_config, train_config, sweep, env, host, plan = checked_run(args, agent)
    checkpoint, resumed_from = None, 0
    if args.checkpoint:  # checked (a host-loop environment's pickling too) before any file
        out.mkdir(parents=True, exist_ok=True)
        checkpoint, _, resumed_from = _verified_checkpoint(out / "checkpoint.npz", env, plan)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "config.json",
        {
            "env": args.env,
            "host": host,
            "distractors": args.distractors,
            "action_bins": args.action_bins,
            "seeds": args.seeds,
            "x64": args.x64,
            "agent": dataclasses.asdict(agent_config),
            "train": dataclasses.asdict(train_config),
            "sweep": sweep,
        },
    )
    csv = CsvAppender(out / "metrics.csv")

    def on_chunk(chunk):
        rows = []
        for i, seed in enumerate(chunk["seeds"]):
            for j, step in enumerate(chunk["eval_steps"]):
                row = {
                    "agent": agent,
                    **{k: float(v[i]) for k, v in chunk["hyperparameters"].items()},
                    "seed": int(seed),
                    "step": int(step),
                    "eval_return": float(chunk["eval_returns"][i, j]),
                }
                row.update({k: float(v[i, j]) for k, v in chunk["metrics"].items()})
                rows.append(row)
        csv.append(rows)

    start = time.perf_counter()
    try:
        trainer = train_host if host else train
        result = trainer(
            env,
            agent_config,
            train_config,
            seeds=args.seeds,
            sweep=sweep,
            progress=not args.no_progress,
            on_chunk=on_chunk,
            stop_on_divergence=not args.keep_going,
            checkpoint=checkpoint,
        )
        diverged = None
    except TrainingDiverged as error:
        # Report the runs that stayed finite (up to the divergence) and name the others.
        print(f"warning: {agent}: {error}", file=sys.stderr)
        result, diverged = error.result, error.diverged
    seconds = time.perf_counter() - start
    points = result if sweep else [result]
    save_agents(
        out / "agents.npz",
        {
            "id": args.env,
            "distractors": args.distractors,
            "action_bins": args.action_bins,
            "host": host,
        },
        env,
        agent_config,
        plan.run_seeds,
        plan.run_values,
        jax.tree.map(
            lambda *runs: np.concatenate(runs) if eqx.is_array(runs[0]) else runs[0],
            *(p.final_state.agent for p in points),
        ),
    )
    if diverged is None:
        masks = [None] * len(points)
    else:
        masks = diverged if sweep else [diverged]
    summaries, finite_points = [], []
    for point, mask in zip(points, masks):
        dropped = mask is not None and mask.any()
        finite = _runs_of(point, ~mask) if dropped else point
        point_summary = run_summary(finite, blowup_loss=args.blowup_loss)
        if dropped:
            point_summary["diverged_seeds"] = point.seeds[mask].tolist()
            point_summary["last_eval_step"] = int(point.eval_steps[-1])
        if point_summary.get("blown_up_seeds"):
            print(
                f"warning: {agent}: seeds {point_summary['blown_up_seeds']} ended with a "
                f"Bellman loss on real transitions above --blowup-loss {args.blowup_loss:g}: "
                "their Q-functions blew up (they stay in the statistics).",
                file=sys.stderr,
            )
        summaries.append(point_summary)
        finite_points.append(finite)
    if sweep:
        summary = {
            "points": [
                {"hyperparameters": {name: values[i] for name, values in sweep.items()}}
                | point_summary
                for i, point_summary in enumerate(summaries)
            ]
        }
    else:
        summary = summaries[0]
    summary["wall_seconds"] = seconds
    # The steps made by this command: fewer than `--steps` when a divergence stopped the
    # runs, or when it continued a checkpoint.
    steps_made = int(points[0].eval_steps[-1]) - resumed_from
    if resumed_from:
        summary["resumed_from_step"] = resumed_from
    summary["env_steps_per_second"] = steps_made * args.seeds * len(points) / seconds
    # The devices the runs were split over.
    devices = set().union(*(p.final_state.key.sharding.device_set for p in points))
    summary["devices"] = sorted(str(d) for d in devices)
    write_json(out / "summary.json", summary)
    rows, curves = _table_rows(agent, finite_points, summary)
    plot_curves(
        out / "curves.png",
        curves,
        title=f"{agent} on {args.env} (model_hidden={args.model_hidden})",
    )
    return rows, curves, diverged is not None


def _pm(mean: float, half_width: float) -> str:
    return f"{mean:.1f} ± {half_width:.1f}"


def _table_rows(agent: str, points: list, summary: dict) -> tuple[list[dict], dict]:
    """One table row and one learning curve (label: `(eval_steps, eval_returns)`) per sweep
    point of one agent's run (one point without a sweep), from its `TrainResult`s and the
    summary `run_agent` writes: what `omdx train` and `omdx compare` print and plot."""
    from ._train import _sweep_label

    rows, curves = [], {}
    for point, point_summary in zip(points, summary.get("points", [summary])):
        values = point_summary.get("hyperparameters", {})
        label = f"{agent}, {_sweep_label(values)}" if values else agent
        curves[label] = (point.eval_steps, point.eval_returns)
        final = _pm(point_summary["final_return_mean"], point_summary["final_return_ci95"])
        if "diverged_seeds" in point_summary:
            dropped = ", ".join(map(str, point_summary["diverged_seeds"]))
            final += f" (seed {dropped} diverged by step {point_summary['last_eval_step']})"
        if point_summary.get("blown_up_seeds"):
            blown_up = ", ".join(map(str, point_summary["blown_up_seeds"]))
            final += f" (seed {blown_up} blew up)"
        rows.append(
            {
                "agent": agent,
                **{name: f"{value:g}" for name, value in values.items()},
                "final return": final,
                "AUC": _pm(point_summary["auc_mean"], point_summary["auc_ci95"]),
                "model error (MSE s')": point_summary["final_model_error_mean"],
                "seconds": summary["wall_seconds"],
            }
        )
    return rows, curves


# Options the table's heading names anyway, or that do not change what the runs compute
# or report.
_UNCHANGING_OPTIONS = {
    "command", "run", "parser", "agent", "agents", "env", "model_hidden", "distractors",
    "action_bins", "steps", "seeds", "adjoint", "sweep", "out", "no_progress", "checkpoint",
    "cpu_devices", "evals_per_chunk", "keep_going",
}  # fmt: skip


def _changed_settings(args) -> list[str]:
    """`name=value` for each option of the command that differs from its default (the
    settings a reader of the table could not otherwise know, e.g. `inner_steps=5`)."""
    return [
        f"{name}={value}"
        for name, value in vars(args).items()
        if name not in _UNCHANGING_OPTIONS and value != args.parser.get_default(name)
    ]


def _print_table(args, title: str, rows: list[dict]) -> str:
    """Print (and return) `title`, the run's settings and the markdown table of `rows`."""
    from ._report import markdown_table

    settings = [
        args.env,
        f"model_hidden={args.model_hidden}",
        f"distractors={args.distractors}",
        *([f"action_bins={args.action_bins}"] if args.action_bins is not None else []),
        f"{args.steps} steps",
        f"{args.seeds} seeds",
        f"adjoint={args.adjoint}",
        *_changed_settings(args),
    ]
    text = (
        f"{title}\n\n{', '.join(settings)}. Mean ± 95% interval over seeds.\n\n"
        + markdown_table(rows, precision=2)
        + "\n"
    )
    print(text)
    return text


def _cmd_train(args) -> int:
    out = pathlib.Path(args.out)
    rows, _, diverged = run_agent(args, args.agent, out)
    _print_table(args, f"# omdx train: {args.agent}", rows)
    print(f"Results in {out}/")
    return 1 if diverged else 0


def _compare(args, agents: Sequence[str], title: str) -> int:
    from ._report import plot_curves

    out = pathlib.Path(args.out)
    curves, rows, diverged = {}, [], False
    for agent in agents:
        agent_rows, agent_curves, agent_diverged = run_agent(args, agent, out / agent)
        rows += agent_rows
        curves.update(agent_curves)
        diverged |= agent_diverged
    (out / "compare.md").write_text(_print_table(args, title, rows))
    plot = plot_curves(
        out / "curves.png", curves, title=f"{args.env}, model_hidden={args.model_hidden}"
    )
    print(f"Wrote {out / 'compare.md'} and {plot}")
    return 1 if diverged else 0


def _cmd_compare(args) -> int:
    return _compare(args, args.agents, "# " + " vs ".join(a.upper() for a in args.agents))


def _cmd_demo(args) -> int:
    return _compare(args, ["omd", "mle"], "# omdx demo: OMD vs MLE with a misspecified model")


def _agents_files(runs: Sequence[str]) -> list[pathlib.Path]:
    """The `agents.npz` files of `runs`: each a file, a run's folder, or a folder of runs
    (`omdx compare`'s and `omdx demo`'s `--out`, in the order compare runs them)."""
    files = []
    for run in runs:
        path = pathlib.Path(run)
        if path.is_dir() and not (path / "agents.npz").exists():
            found = sorted(
                path.glob("*/agents.npz"),
                # In the order `omdx compare` runs its agents (AGENTS), others after.
                key=lambda f: (AGENTS + (f.parent.name,)).index(f.parent.name),
            )
            if not found:
                raise ValueError(
                    f"`{run}` holds no agents.npz, nor any folder that does: pass the --out "
                    "of an `omdx train`, `compare` or `demo` run."
                )
            files += found
        elif path.is_dir():
            files.append(path / "agents.npz")
        elif path.exists():
            files.append(path)
        else:
            raise ValueError(f"`{run}` does not exist.")
    return files


def _cmd_evaluate(args) -> int:
    import equinox as eqx
    import jax
    import numpy as np

    from ._report import markdown_table, mean_and_interval, write_csv
    from ._saved import load_agents, stored_float_dtype
    from ._train import evaluate
    from ._train_host import evaluate_runs_host

    if args.episodes < 1:
        raise ValueError(f"`--episodes` must be a positive int, got {args.episodes}.")
    if args.seed < 0:
        raise ValueError(f"`--seed` must be a non-negative int, got {args.seed}.")
    files = _agents_files(args.runs)
    # Every file is read and checked before any is evaluated, in one precision.
    dtypes = {stored_float_dtype(path) for path in files} - {None}
    if len(dtypes) > 1:
        raise ValueError(
            "The runs were trained in different precisions (float32 and float64, "
            "`--x64`): evaluate them in separate commands."
        )
    if dtypes == {"float64"}:
        jax.config.update("jax_enable_x64", True)  # a fresh process: nothing computed yet
    saved_runs = [load_agents(path) for path in files]
    table = []
    for path, saved in zip(files, saved_runs):
        env = saved.make_env()
        # A run whose agent holds non-finite values diverged: its greedy policy would act
        # on NaN Q-values (argmax picks the first), so it is named rather than scored.
        runs = len(saved.seeds)
        leaves = jax.tree.leaves(eqx.filter(saved.agents, eqx.is_inexact_array))
        finite = np.all(
            [np.isfinite(np.asarray(leaf)).reshape(runs, -1).all(axis=1) for leaf in leaves],
            axis=0,
        )
        returns = np.full(len(saved.seeds), np.nan)
        if finite.any():
            if saved.host:  # every run side by side
                scored = jax.tree.map(lambda x: x[finite] if eqx.is_array(x) else x, saved.agents)
                returns[finite] = evaluate_runs_host(env, scored, args.episodes, args.seed)
            else:  # the same key for every run: the same initial states
                key = jax.random.PRNGKey(args.seed)
                for i in np.flatnonzero(finite):
                    returns[i] = float(evaluate(env, saved.agent(int(i)), key, args.episodes))
        rows = [
            {
                "seed": int(seed),
                **{name: float(values[i]) for name, values in saved.hyperparameters.items()},
                "episodes": args.episodes,
                "mean_return": float(returns[i]),
                "diverged": not finite[i],
            }
            for i, seed in enumerate(saved.seeds)
        ]
        write_csv(path.parent / "evaluation.csv", rows)
        points = {}
        for row in rows:
            values = tuple((name, row[name]) for name in saved.hyperparameters)
            points.setdefault(values, []).append(row)
        for values, point_rows in points.items():
            scored = [row["mean_return"] for row in point_rows if not row["diverged"]]
            cell = _pm(*mean_and_interval(scored))
            dropped = [str(row["seed"]) for row in point_rows if row["diverged"]]
            if dropped:
                cell += f" (seed {', '.join(dropped)} diverged: not evaluated)"
            table.append(
                {
                    "run": str(path.parent),
                    "agent": saved.agent_config.agent,
                    **{name: f"{value:g}" for name, value in values},
                    "seeds": len(scored),
                    "mean return": cell,
                }
            )
    print(
        f"# omdx evaluate: {args.episodes} greedy episodes per seed (seed {args.seed}). "
        "Mean ± 95% interval over seeds.\n"
    )
    columns = list(dict.fromkeys(name for row in table for name in row))
    print(markdown_table(table, columns))
    print("\nWrote " + ", ".join(str(path.parent / "evaluation.csv") for path in files))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omdx", description="Control-oriented model-based RL with implicit differentiation."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    with_defaults = {"formatter_class": HelpWithDefaults}
    demo = subparsers.add_parser(
        "demo", help="OMD vs MLE on CartPole with a too-small model", **with_defaults
    )
    _add_run_arguments(demo, steps=20_000, seeds=4, model_hidden=3, out="runs/demo")
    demo.set_defaults(run=_cmd_demo, parser=demo)

    train = subparsers.add_parser("train", help="train one agent over many seeds", **with_defaults)
    train.add_argument("--agent", default="omd", choices=AGENTS, help="the agent")
    _add_run_arguments(train, steps=200_000, seeds=10, model_hidden=32, out="runs/train")
    train.set_defaults(run=_cmd_train, parser=train)

    compare = subparsers.add_parser(
        "compare", help="OMD, MLE and VEP on the same settings", **with_defaults
    )
    compare.add_argument(
        "--agents",
        nargs="+",
        default=list(AGENTS),
        choices=AGENTS,
        help="the agents, one run each",
    )
    _add_run_arguments(compare, steps=200_000, seeds=10, model_hidden=32, out="runs/compare")
    compare.set_defaults(run=_cmd_compare, parser=compare)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate the agents a run saved, over more episodes",
        **with_defaults,
    )
    evaluate.add_argument(
        "runs",
        nargs="+",
        help="the --out of an omdx train, compare or demo run (or its agents.npz files)",
    )
    evaluate.add_argument("--episodes", type=int, default=100, help="greedy episodes per seed")
    evaluate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the episodes' initial states, the same for every agent",
    )
    evaluate.set_defaults(run=_cmd_evaluate)

    from ._paper import add_paper_parser
    from .tabular._cli import add_tabular_parser

    add_tabular_parser(subparsers)
    add_paper_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
