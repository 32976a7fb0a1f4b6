"""`omdx paper`: the paper's results that this library reproduces, in one command.

The three tabular studies (`omdx tabular misspec|bounds|noise`) and the CartPole
misspecification study (`omdx compare` at each model size and number of distracting
dimensions), each written where its own command writes it, then one report,
`OUT/README.md`, with every figure and table beside what the paper reports.
"""

import argparse
import pathlib
import shlex
import time
from typing import Any, NamedTuple

from ._cartpole_study import cartpole_study, CartpoleStudy, setting_name
from ._help import HelpWithDefaults, positive_int
from .agents._config import AGENTS


PARTS = ("tabular", "cartpole")
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
        help="the model hidden size of the distractor settings (the full model)",
    )
    cartpole.add_argument(
        "--agents", nargs="+", choices=AGENTS, default=list(AGENTS), help="the agents"
    )
    cartpole.add_argument("--x64", action="store_true", help="float64, as the paper's code")
    cartpole.add_argument(
        "--checkpoint",
        action="store_true",
        help="keep each CartPole run's state (omdx compare --checkpoint): the same command "
        "again continues an interrupted study and skips the training of finished runs (the "
        "tabular studies, about a minute, run again)",
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


def _checked_compare_options(args) -> list[str]:
    """The options given after `--`, for every CartPole run's `omdx compare`: parsed by
    its parser (which names a bad one), and refused where `omdx paper` sets the option
    (given at all, abbreviated or not, whatever its value)."""
    from .cli import build_parser

    options = list(args.compare_options)
    if options[:1] == ["--"]:
        options = options[1:]
    if not options:
        return []
    if "cartpole" not in args.parts:
        raise ValueError(
            f"`omdx paper -- {shlex.join(options)}`: options after `--` are for the CartPole "
            "runs, and `--parts` leaves them out."
        )
    # A fresh compare parser whose defaults for these options are a marker: an option
    # left at it was not given.
    compare = build_parser().parse_args(["compare"]).parser
    unset = object()
    compare.set_defaults(**dict.fromkeys(_SET_BY_PAPER, unset))
    given = compare.parse_args(options)
    taken = [name for name in _SET_BY_PAPER if getattr(given, name) is not unset]
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
    argv += ["--out", str(out / "cartpole" / setting_name(hidden, distractors))]
    if args.cpu_devices is not None:
        argv += ["--cpu-devices", str(args.cpu_devices)]
    flags = {"--x64": args.x64, "--checkpoint": args.checkpoint, "--no-progress": args.no_progress}
    return argv + [flag for flag, given in flags.items() if given]


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
        flags = {"--x64": args.x64, "--checkpoint": args.checkpoint}
        argv += [flag for flag, given in flags.items() if given]
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

    from .cli import _use_cpu_devices, build_parser

    settings = _settings(args)
    args.agents = list(dict.fromkeys(args.agents))  # each once, however often given
    args.compare_options = _checked_compare_options(args)
    out = pathlib.Path(args.out)
    parser = build_parser()

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
            cartpole.append(part(setting_name(hidden, distractors), argv))
    x64 = jax.config.jax_enable_x64  # the tabular studies switch it on: restored at the end
    seconds = {}
    try:
        jax.config.update("jax_enable_x64", args.x64)  # a checkpoint is read in its precision
        for setting in cartpole:
            _check_cartpole_runs(setting, args.agents)
        for study in tabular:
            print(f"\n## omdx tabular {study.name}\n", flush=True)
            start = time.perf_counter()
            study.args.run(study.args)
            seconds[study.name] = time.perf_counter() - start
        jax.config.update("jax_enable_x64", args.x64)  # the tabular studies switched it on
        for setting in cartpole:
            print(f"\n## CartPole, {setting.name}\n", flush=True)
            start = time.perf_counter()
            setting.args.run(setting.args)  # non-zero where a seed diverged: reported
            seconds[setting.name] = time.perf_counter() - start
    finally:
        jax.config.update("jax_enable_x64", x64)
    study = None
    if cartpole:
        study = cartpole_study(out / "cartpole", _cartpole_settings(settings, args), args.agents)
    report = write_report(
        out, args, settings, tabular=tabular, cartpole=cartpole, study=study, seconds=seconds
    )
    print(f"\nWrote {report}")
    return 0


def _check_cartpole_runs(setting: _Part, agents: list[str]) -> None:
    """Check each agent's run of one CartPole setting as `omdx compare` would, and with
    `--checkpoint`, that a checkpoint already there can be continued by it."""
    from ._train import _verified_checkpoint
    from .cli import checked_run

    for agent in agents:
        run = checked_run(setting.args, agent)
        path = pathlib.Path(setting.args.out) / agent / "checkpoint.npz"
        if setting.args.checkpoint and path.exists():
            _verified_checkpoint(path, run.env, run.plan)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _pivot(summary_csv: pathlib.Path, x: str, columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of one tabular study's `summary.csv`: one row per value of `x`,
    one column per `(method, value, heading)` in `columns`, each cell its mean ± 95%
    half-width over seeds."""
    import csv

    from ._report import markdown_table

    with summary_csv.open() as f:
        rows = list(csv.DictReader(f))
    table: dict[float, dict[str, str]] = {}
    for row in rows:
        line = table.setdefault(float(row[x]), {x: f"{float(row[x]):.3g}"})
        for method, value, heading in columns:
            if row["method"] != method:
                continue
            cell = f"{float(row[value]):.4g}"
            if row.get(f"{value}_ci95") not in (None, "", "nan"):
                cell += f" ± {float(row[f'{value}_ci95']):.2g}"
            line[heading] = cell
    headings = [heading for _, _, heading in columns]
    return markdown_table([table[k] for k in sorted(table)], [x, *headings])


def write_report(
    out: pathlib.Path,
    args: argparse.Namespace,
    settings: dict[str, Any],
    *,
    tabular: list[_Part],
    cartpole: list[_Part],
    study: CartpoleStudy | None,
    seconds: dict[str, float],
) -> pathlib.Path:
    """Write `OUT/README.md`: the command, where and how long it ran, then each study's
    figure and table beside what the paper reports.

    **Arguments:**

    - `out`: the output folder of `omdx paper`.
    - `args`: its parsed arguments; `settings`: those `--quick` or the defaults filled in.
    - `tabular`, `cartpole`: the commands run, one per tabular study and CartPole setting.
    - `study`: what `cartpole_study` pooled from the CartPole runs (`None` without them).
    - `seconds`: the wall-clock time of each command, by its name.

    **Returns:**

    The report's path.
    """
    import jax

    from . import __version__

    devices = len(jax.devices())
    lines = [
        "# The paper's results, reproduced by omdx",
        "",
        f"`{_resolved_command(args, settings)}`",
        "",
        f"omdx {__version__}, jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({devices} device{'s' if devices > 1 else ''}), "
        f"{_duration(sum(seconds.values()))} in all. "
        "Each part is one `omdx` command, given with it, that writes its own folder.",
        "",
    ]
    titles = {
        "misspec": "Tabular: expected return against model capacity",
        "bounds": "Tabular: the error of Q against the bounds",
        "noise": "Tabular: an inexact inner solution, exact vs identity adjoint",
    }
    pivots = {
        "misspec": ("bound", [("OMD", "J", "OMD J"), ("MLE", "J", "MLE J")]),
        "bounds": (
            "bound",
            [
                ("OMD", "q_error", "OMD max abs(Q* - Q)"),
                ("OMD", "omd_bound", "OMD bound"),
                ("MLE", "q_error", "MLE max abs(Q* - Q)"),
                ("MLE", "mle_bound", "MLE bound"),
            ],
        ),
        "noise": (
            "sigma",
            [
                ("OMD (direct)", "J", "OMD J, exact inverse"),
                ("OMD (identity)", "J", "OMD J, identity"),
            ],
        ),
    }
    for part in tabular:
        name = part.name
        folder = out / f"tabular-{name}"
        x, columns = pivots[name]
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
            _pivot(folder / "summary.csv", x, columns),
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
                if study.resumed
                else []
            ),  # fmt: skip
            "```",
            *(f"omdx {shlex.join(s.argv)}" for s in cartpole),
            "```",
            "",
            "![final returns](cartpole/final_returns.png)",
            "",
            study.table,
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
