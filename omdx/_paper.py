"""`omdx paper`: the paper's results that this library reproduces, in one command.

The three tabular studies (`omdx tabular misspec|bounds|noise`) and the CartPole
misspecification study (`omdx compare` at each model size and number of distracting
dimensions), each written where its own command writes it, then one report,
`OUT/README.md`, with every figure and table beside what the paper reports.
"""

import argparse
import json
import math
import pathlib
import shlex
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ._help import HelpWithDefaults, positive_int


PARTS = ("tabular", "cartpole")
AGENTS = ("omd", "mle", "vep")
TABULAR_STUDIES = ("misspec", "bounds", "noise")

# `--quick`: every figure, on a budget that shows the command working (minutes on two CPU
# cores), not one to draw conclusions from. Options given explicitly override it.
QUICK = {
    "steps": 5_000,
    "seeds": 3,
    "hidden": [3, 32],
    "distractors": [10],
    "tabular_seeds": 3,
    "tabular_steps": 2_000,
    "tabular_points": 7,
}
FULL = {
    "steps": 20_000,
    "seeds": 10,
    "hidden": [2, 3, 4, 8, 32],
    "distractors": [5, 10, 20],
    "tabular_seeds": 10,
    "tabular_steps": 10_000,
    "tabular_points": None,  # each study's own: 20 norm bounds, 30 noise scales
}

# What the paper reports beside each figure: its tabular figures as DESIGN.md describes
# them, and the poster's own words, so that the report reads each result beside its claim.
PAPER_SAYS = {
    "misspec": "Its figure: OMD's expected return is higher than MLE's when the model's "
    "norm is bounded tightly (small $b$); both reach the optimum $J^*$ (dashed) as $b$ grows.",
    "bounds": 'Its poster: "OMD enjoys a tighter bound", '
    "$\\epsilon/(1-\\gamma)$ against MLE's "
    "$\\epsilon_r/(1-\\gamma) + \\gamma\\epsilon_p r_{max}/(2(1-\\gamma)^2)$.",
    "noise": 'Its poster: "Approximate $Q^*$ works well", "Approximations to inverse work well".',
    "cartpole": "Its poster: \"OMD is preferable when: true model can't be represented "
    'accurately; some state components are uninformative".',
    "likelihood": 'Its poster: "MLE has high likelihood but bad for planning; OMD has low '
    'likelihood but good for planning. High likelihood is not needed for a useful model!"',
}


def add_paper_parser(subparsers) -> argparse.ArgumentParser:
    """Register `omdx paper` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "paper",
        help="every result of the paper this library reproduces, with one report",
        description="The tabular studies and the CartPole misspecification study (model "
        "sizes and distracting dimensions, OMD vs MLE vs VEP), then OUT/README.md with "
        "every figure and table. On two CPU cores the defaults take about 20 minutes and "
        "--quick under 2; the paper's CartPole budget, --steps 200000, 2 to 3 hours.",
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the studies to run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run of every figure, to see the command work: "
        + ", ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in QUICK.items())
        + " (options given explicitly win)",
    )
    cartpole = parser.add_argument_group("CartPole study")
    cartpole.add_argument(
        "--steps",
        type=positive_int,
        help=f"environment steps per seed (default {FULL['steps']}; the paper's: 200000)",
    )
    cartpole.add_argument(
        "--seeds", type=positive_int, help=f"seeds per agent and setting (default {FULL['seeds']})"
    )
    cartpole.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        help=f"model hidden sizes, without distractors (default {_shown(FULL['hidden'])})",
    )
    cartpole.add_argument(
        "--distractors",
        type=positive_int,
        nargs="*",
        help="numbers of N(0, 1) dimensions appended to the observations, with the "
        f"--distractor-hidden model (default {_shown(FULL['distractors'])}; none: "
        "`--distractors` alone)",
    )
    cartpole.add_argument(
        "--distractor-hidden",
        type=positive_int,
        default=32,
        help="the model hidden size of the distractor settings (32, the full model)",
    )
    cartpole.add_argument(
        "--agents", nargs="+", choices=AGENTS, default=list(AGENTS), help="the agents"
    )
    cartpole.add_argument("--x64", action="store_true", help="float64, as the paper's code")
    cartpole.add_argument(
        "--checkpoint",
        action="store_true",
        help="keep each run's state (omdx compare --checkpoint): the same command again "
        "continues an interrupted study, and skips the work of finished runs",
    )
    cartpole.add_argument(
        "--cpu-devices",
        type=positive_int,
        default=None,
        help="CPU devices to split the seeds over (default: one per core)",
    )
    tabular = parser.add_argument_group("tabular studies")
    tabular.add_argument(
        "--tabular-seeds",
        type=positive_int,
        help=f"seeds per point (default {FULL['tabular_seeds']})",
    )
    tabular.add_argument(
        "--tabular-steps",
        type=positive_int,
        help=f"maximum model steps per run (default {FULL['tabular_steps']})",
    )
    tabular.add_argument(
        "--tabular-points",
        type=positive_int,
        help="norm bounds (misspec, bounds) and noise scales (noise) per curve "
        "(default: the paper's 20 and 30)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--out", default="runs/paper", help="output directory")
    parser.add_argument(
        "compare_options",
        nargs=argparse.REMAINDER,
        metavar="-- COMPARE_OPTIONS",
        help="options after `--` go to every CartPole run's `omdx compare`, to run the study "
        "with other settings than the paper's (e.g. `-- --inner-steps 5`); not those that "
        "omdx paper sets itself",
    )
    parser.set_defaults(run=run_paper)
    return parser


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _settings(args) -> dict[str, Any]:
    """The study's settings: those given, then `--quick`'s or the full defaults."""
    preset = QUICK if args.quick else FULL
    return {name: getattr(args, name) if getattr(args, name) is not None else default
            for name, default in preset.items()}  # fmt: skip


def _tabular_argv(study: str, settings: dict[str, Any], args, out: pathlib.Path) -> list[str]:
    argv = ["tabular", study, "--out", str(out / f"tabular-{study}")]
    argv += ["--seeds", str(settings["tabular_seeds"]), "--steps", str(settings["tabular_steps"])]
    if settings["tabular_points"] is not None:
        points = "--sigmas-num" if study == "noise" else "--bounds-num"
        argv += [points, str(settings["tabular_points"])]
    return argv + (["--no-progress"] if args.no_progress else [])


def _cartpole_settings(settings: dict[str, Any], args) -> list[tuple[int, int]]:
    """`(model hidden size, distractors)` of each CartPole setting, in the order run."""
    pairs = [(h, 0) for h in settings["hidden"]]
    pairs += [(args.distractor_hidden, d) for d in settings["distractors"]]
    return list(dict.fromkeys(pairs))  # each once, however often given


# The `omdx compare` options that `omdx paper` sets for each CartPole run (their dests).
_SET_BY_PAPER = (
    "env", "host", "action_bins", "agents", "keep_going", "steps", "seeds", "model_hidden",
    "distractors", "sweep", "x64", "checkpoint", "cpu_devices", "no_progress", "out",
)  # fmt: skip


def _checked_compare_options(args, parser: argparse.ArgumentParser) -> list[str]:
    """The options given after `--`, for every CartPole run's `omdx compare`: parsed by
    its parser (which names a bad one), and refused where `omdx paper` sets the option."""
    options = list(args.compare_options)
    if options[:1] == ["--"]:
        options = options[1:]
    if not options:
        return []
    compare = parser.parse_args(["compare", *options])
    taken = [
        name for name in _SET_BY_PAPER if getattr(compare, name) != compare.parser.get_default(name)
    ]
    if taken:
        names = ", ".join(f"--{name.replace('_', '-')}" for name in taken)
        raise ValueError(
            f"`omdx paper -- {shlex.join(options)}`: {names} "
            f"{'is' if len(taken) == 1 else 'are'} set by omdx paper for each run (its own "
            "options, before `--`, or fixed: the study is on CartPole-v1 without a sweep)."
        )
    return options


def _compare_argv(hidden: int, distractors: int, settings, args, out) -> list[str]:
    argv = ["compare", *args.compare_options, "--agents", *args.agents, "--keep-going"]
    argv += ["--steps", str(settings["steps"]), "--seeds", str(settings["seeds"])]
    argv += ["--model-hidden", str(hidden), "--distractors", str(distractors)]
    argv += ["--out", str(out / "cartpole" / _setting_name(hidden, distractors))]
    if args.cpu_devices is not None:
        argv += ["--cpu-devices", str(args.cpu_devices)]
    flags = {"--x64": args.x64, "--checkpoint": args.checkpoint, "--no-progress": args.no_progress}
    return argv + [flag for flag, given in flags.items() if given]


def _setting_name(hidden: int, distractors: int) -> str:
    return f"h{hidden}_d{distractors}"


class _Part(NamedTuple):
    """One command of the study: its name (its folder), its `omdx` arguments, parsed."""

    name: str
    argv: list[str]
    args: argparse.Namespace


def _resolved_command(args, settings: dict[str, Any]) -> str:
    """The `omdx paper` command with every setting spelled out (`--quick`'s too)."""
    argv = ["omdx", "paper", "--parts", *args.parts]
    if "cartpole" in args.parts:
        argv += ["--steps", settings["steps"], "--seeds", settings["seeds"]]
        argv += ["--hidden", *settings["hidden"], "--distractors", *settings["distractors"]]
        argv += ["--distractor-hidden", args.distractor_hidden, "--agents", *args.agents]
        argv += ["--x64"] * args.x64
    if "tabular" in args.parts:
        argv += ["--tabular-seeds", settings["tabular_seeds"]]
        argv += ["--tabular-steps", settings["tabular_steps"]]
        if settings["tabular_points"] is not None:
            argv += ["--tabular-points", settings["tabular_points"]]
    argv += ["--out", args.out]
    if "cartpole" in args.parts and args.compare_options:
        argv += ["--", *args.compare_options]
    return shlex.join(map(str, argv))


def run_paper(args) -> int:
    """`omdx paper`: run the chosen parts, then write `OUT/README.md`."""
    import jax

    from .cli import _use_cpu_devices, build_parser, checked_run

    settings = _settings(args)
    args.agents = list(dict.fromkeys(args.agents))  # each once, however often given
    out = pathlib.Path(args.out)
    parser = build_parser()
    args.compare_options = _checked_compare_options(args, parser)

    def part(name: str, argv: list[str]) -> _Part:
        return _Part(name, argv, parser.parse_args(argv))

    # Every run's arguments are parsed and checked before the first run starts, so that a
    # bad option fails now rather than after the studies before it.
    tabular = []
    if "tabular" in args.parts:
        for study in TABULAR_STUDIES:
            tabular.append(part(study, _tabular_argv(study, settings, args, out)))
    cartpole = []
    if "cartpole" in args.parts:
        _use_cpu_devices(args.cpu_devices)  # before any computation
        for hidden, distractors in _cartpole_settings(settings, args):
            argv = _compare_argv(hidden, distractors, settings, args, out)
            cartpole.append(part(_setting_name(hidden, distractors), argv))
            for agent in args.agents:
                checked_run(cartpole[-1].args, agent)
    x64 = jax.config.jax_enable_x64  # the tabular studies switch it on: restored at the end
    seconds = {}
    try:
        for study in tabular:
            print(f"\n## omdx tabular {study.name}\n", flush=True)
            start = time.perf_counter()
            study.args.run(study.args)
            seconds[study.name] = time.perf_counter() - start
        if cartpole:
            jax.config.update("jax_enable_x64", args.x64)
        for setting in cartpole:
            print(f"\n## CartPole, {setting.name}\n", flush=True)
            start = time.perf_counter()
            setting.args.run(setting.args)  # non-zero where a seed diverged: reported
            seconds[setting.name] = time.perf_counter() - start
    finally:
        jax.config.update("jax_enable_x64", x64)
    settings_run = [(s.args.model_hidden, s.args.distractors) for s in cartpole]
    study = cartpole_study(out / "cartpole", settings_run, args.agents)
    report = write_report(out, args, settings, tabular, cartpole, study, seconds)
    print(f"\nWrote {report}")
    return 0


class _Arm(NamedTuple):
    """One agent in one CartPole setting, as its run's `summary.json` reports it: the
    seeds that stayed finite, each one's numbers, and the seeds named apart."""

    seeds: list[int]
    finals: np.ndarray
    aucs: np.ndarray
    model_errors: np.ndarray
    diverged: list[int]
    blown_up: list[int]
    resumed: bool  # continued from its checkpoint: its time is not its training's

    @classmethod
    def read(cls, folder: pathlib.Path) -> "_Arm":
        summary = json.loads((folder / "summary.json").read_text())
        return cls(
            summary["seeds"],
            np.asarray(summary["final_return_per_seed"], float),
            np.asarray(summary["auc_per_seed"], float),
            np.asarray(summary["final_model_error_per_seed"], float),
            summary.get("diverged_seeds", []),
            summary.get("blown_up_seeds", []),
            "resumed_from_step" in summary,
        )


def cartpole_study(folder: pathlib.Path, settings: Sequence[tuple[int, int]], agents):
    """Pool the CartPole runs under `folder` (one `omdx compare` folder per setting) into
    `study.csv` (one row per setting, agent and seed), `study.md` (final return and area
    under the curve per setting and agent, mean ± 95% interval over the seeds that stayed
    finite) and the figures `final_returns.png` and `likelihood_vs_return.png`.

    **Returns:**

    `{"table": markdown, "figures": [paths], "csv": path, "resumed": whether a run
    continued from its checkpoint}`, or `None` without settings.
    """
    from ._report import (
        format_p,
        markdown_table,
        p_value_method,
        permutation_is_exact,
        permutation_p_value,
        write_csv,
    )

    if not settings:
        return None
    arms = {
        (h, d, agent): _Arm.read(folder / _setting_name(h, d) / agent)
        for h, d in settings
        for agent in agents
    }
    rows, table, exact = [], [], []
    for h, d in settings:
        line = {"model hidden": h, "distractors": d}
        for agent in agents:
            arm = arms[(h, d, agent)]
            for seed, final, auc, error in zip(arm.seeds, arm.finals, arm.aucs, arm.model_errors):
                rows.append(
                    {
                        "model_hidden": h,
                        "distractors": d,
                        "agent": agent,
                        "seed": seed,
                        "final_return": final,
                        "auc": auc,
                        "final_model_error": error,
                        "diverged": False,
                        "blown_up": seed in arm.blown_up,
                    }
                )
            for seed in arm.diverged:
                rows.append(
                    {"model_hidden": h, "distractors": d, "agent": agent, "seed": seed,
                     "final_return": math.nan, "auc": math.nan, "final_model_error": math.nan,
                     "diverged": True, "blown_up": False}
                )  # fmt: skip
            line[f"{agent} final return"] = _cell(arm.finals, arm)
            line[f"{agent} AUC"] = _cell(arm.aucs)
            errors = arm.model_errors
            line[f"{agent} model error"] = f"{np.mean(errors):.3g}" if errors.size else "-"
        for agent in agents if "mle" in agents else []:  # each agent against MLE, Dyna
            a, b = arms[(h, d, agent)].finals, arms[(h, d, "mle")].finals
            if agent != "mle" and min(a.size, b.size) >= 2:
                exact.append(permutation_is_exact(a.size, b.size))
                line[f"p, {agent} vs mle"] = format_p(permutation_p_value(a, b), exact[-1])
            elif agent != "mle":
                line[f"p, {agent} vs mle"] = "-"
        table.append(line)
    csv = write_csv(folder / "study.csv", rows)
    text = markdown_table(table)
    if exact:
        text += (
            "\n\np: the p-value of the difference in mean final return from MLE's, by a "
            f"{p_value_method(exact)}."
        )
    (folder / "study.md").write_text(
        "# CartPole misspecification study\n\nFinal return (last evaluation, 10 greedy "
        "episodes) and area under the curve (mean evaluation return over the run), mean ± "
        "95% interval over the seeds that stayed finite; model error: squared error of the "
        "model's next-state prediction on real transitions at the end.\n\n" + text + "\n"
    )
    figures = [_plot_final_returns(folder / "final_returns.png", settings, agents, arms)]
    figures.append(_plot_likelihood(folder / "likelihood_vs_return.png", settings, agents, arms))
    resumed = any(arm.resumed for arm in arms.values())
    return {"table": text, "figures": figures, "csv": csv, "resumed": resumed}


def _cell(values: np.ndarray, arm: "_Arm | None" = None) -> str:
    from ._report import mean_and_interval

    if values.size == 0:
        text = "-"
    else:
        mean, half = mean_and_interval(values)
        text = f"{mean:.1f} ± {half:.1f}" if values.size > 1 else f"{mean:.1f}"
    notes = []
    if arm is not None and arm.diverged:
        notes.append(f"{len(arm.diverged)} of {len(arm.diverged) + arm.finals.size} diverged")
    if arm is not None and arm.blown_up:
        notes.append(f"{len(arm.blown_up)} blew up")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_final_returns(path, settings, agents, arms) -> pathlib.Path:
    """Final return per setting and agent: the mean and 95% interval as a bar, each seed
    a dot (seeds that diverged are not drawn; the table counts them)."""
    from ._report import mean_and_interval

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(settings) + 2), 4.2))
    width = 0.8 / len(agents)
    for k, agent in enumerate(agents):
        x = np.arange(len(settings)) + (k - (len(agents) - 1) / 2) * width
        stats = [mean_and_interval(arms[(h, d, agent)].finals) for h, d in settings]
        means = np.array([m for m, _ in stats])
        halves = np.nan_to_num(np.array([h for _, h in stats]))
        ax.bar(x, means, width, yerr=halves, capsize=3, alpha=0.7, label=agent.upper())
        for xi, (h, d) in zip(x, settings):
            finals = arms[(h, d, agent)].finals
            ax.plot(np.full(finals.size, xi), finals, "k.", markersize=3)
    labels = [f"h={h}" + (f"\nd={d}" if d else "") for h, d in settings]
    ax.set_xticks(np.arange(len(settings)), labels)
    ax.set_ylabel("final evaluation return")
    ax.set_title("CartPole-v1: model hidden units (h), distractors (d); dots: seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pathlib.Path(path)


def _plot_likelihood(path, settings, agents, arms) -> pathlib.Path:
    """Each seed's final return against its model's error on real next states (log
    scale): one panel for the model sizes, one for the distractor settings."""
    plt = _pyplot()
    groups = [
        ("model hidden size", [(h, d) for h, d in settings if d == 0], lambda h, d: f"h={h}"),
        ("distracting dimensions", [(h, d) for h, d in settings if d > 0], lambda h, d: f"d={d}"),
    ]
    groups = [g for g in groups if g[1]]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.6 * len(groups), 5.4), squeeze=False)
    markers = "os^vD<>px*"
    for ax, (title, group, label) in zip(axes[0], groups):
        for k, agent in enumerate(agents):
            color = f"C{k}"
            for m, (h, d) in enumerate(group):
                arm = arms[(h, d, agent)]
                ax.scatter(arm.model_errors, arm.finals, color=color,
                           marker=markers[m % len(markers)], alpha=0.7,
                           label=f"{agent.upper()}, {label(h, d)}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("model's squared error on real next states (log scale)")
        ax.set_ylabel("final evaluation return")
        ax.set_title(f"CartPole-v1: return vs likelihood ({title})")
        ax.grid(alpha=0.3)
        # Below the axes: inside, it would hide the seeds.
        ax.legend(fontsize=7, ncol=len(agents), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pathlib.Path(path)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _pivot(summary_csv: pathlib.Path, x: str, value: str, columns: dict[str, str]) -> str:
    """A markdown table of one tabular study: one row per `x`, one `value ± ci` column per
    method (`columns`: method -> heading)."""
    import csv

    from ._report import markdown_table

    with summary_csv.open() as f:
        rows = list(csv.DictReader(f))
    table: dict[float, dict[str, str]] = {}
    for row in rows:
        if row["method"] not in columns:
            continue
        cell = f"{float(row[value]):.4g}"
        if row.get(f"{value}_ci95") not in (None, "", "nan"):
            cell += f" ± {float(row[f'{value}_ci95']):.2g}"
        table.setdefault(float(row[x]), {x: f"{float(row[x]):.3g}"})[columns[row["method"]]] = cell
    return markdown_table([table[k] for k in sorted(table)], [x, *columns.values()])


def write_report(out, args, settings, tabular, cartpole, study, seconds) -> pathlib.Path:
    """`OUT/README.md`: the command, where and how long it ran, then each study's figure
    and table beside what the paper reports."""
    import jax

    from . import __version__

    lines = [
        "# The paper's results, reproduced by omdx",
        "",
        f"`{_resolved_command(args, settings)}`",
        "",
        f"omdx {__version__}, jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({len(jax.devices())} devices), {_duration(sum(seconds.values()))} in all. "
        "Each part is one `omdx` command, given with it, that writes its own folder.",
        "",
    ]
    titles = {
        "misspec": "Tabular: expected return against model capacity",
        "bounds": "Tabular: the error of Q against the bounds",
        "noise": "Tabular: an inexact inner solution, exact vs identity adjoint",
    }
    pivots = {
        "misspec": ("bound", "J", {"OMD": "OMD J", "MLE": "MLE J"}),
        "bounds": (
            "bound",
            "q_error",
            {"OMD": "OMD max abs(Q* - Q)", "MLE": "MLE max abs(Q* - Q)"},
        ),
        "noise": (
            "sigma",
            "J",
            {"OMD (direct)": "OMD J, exact inverse", "OMD (identity)": "OMD J, identity"},
        ),
    }
    for part in tabular:
        name = part.name
        folder = out / f"tabular-{name}"
        x, value, columns = pivots[name]
        lines += [
            f"## {titles[name]}",
            "",
            f"**The paper.** {PAPER_SAYS[name]}",
            "",
            f"`omdx {shlex.join(part.argv)}` ({_duration(seconds[name])}): the 2-state MDP of the "
            f"paper, float64, mean ± 95% interval over {settings['tabular_seeds']} seeds.",
            "",
            f"![{titles[name]}](tabular-{name}/{name}.png)",
            "",
            _pivot(folder / "summary.csv", x, value, columns),
            "",
        ]
    if study is not None:
        cartpole_seconds = sum(seconds[s.name] for s in cartpole)
        lines += [
            "## CartPole: a misspecified model and distracting dimensions",
            "",
            f"**The paper.** {PAPER_SAYS['cartpole']}",
            "",
            f"CartPole-v1, {settings['steps']} environment steps (the paper: 200 000), "
            f"{settings['seeds']} seeds, the paper's settings otherwise "
            + (
                f"except `{shlex.join(args.compare_options)}`"
                if args.compare_options
                else "(K = 1, identity adjoint)"
            )
            + f", {'float64' if args.x64 else 'float32'}; {_duration(cartpole_seconds)}. "
            "Final return: the last evaluation; AUC: the mean "
            "evaluation return over the run; model error: the squared error of the model's "
            "next-state prediction on real transitions at the end; mean ± 95% interval over "
            "the seeds that stayed finite (a seed whose return or loss turned non-finite is "
            "counted as diverged). Every seed's numbers are in `cartpole/study.csv`; each "
            "setting's learning curves, metrics and saved agents in its folder, written by "
            "its command:",
            "",
            *(
                [
                    "(Runs continued from their checkpoints, `--checkpoint`: the times are this "
                    "command's, not the whole training's.)",
                    "",
                ]
                if study["resumed"]
                else []
            ),  # fmt: skip
            "```",
            *(f"omdx {shlex.join(s.argv)}" for s in cartpole),
            "```",
            "",
            "![final returns](cartpole/final_returns.png)",
            "",
            study["table"],
            "",
            "## What does the model learn? Likelihood against return",
            "",
            f"**The paper.** {PAPER_SAYS['likelihood']}",
            "",
            "Each dot is one seed: its model's error on real next states at the end of the "
            "run (a low error is a high likelihood) against its final return.",
            "",
            "![likelihood vs return](cartpole/likelihood_vs_return.png)",
            "",
        ]
    report = out / "README.md"
    out.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    return report
