"""The paper's CartPole misspecification study: OMD vs MLE vs VEP as the model shrinks and
as distracting dimensions are added.

Each setting (model hidden size, distractors) trains every agent on all seeds in one
compiled, vmapped run. A seed that diverges (a non-finite return or loss, which stops
`omdx.train`) is dropped from its setting and named in the table, with the step by which
it diverged; the study goes on.
Writes `benchmarks/results/cartpole_misspec.{md,csv}` and `cartpole_misspec.png` (final
return vs setting) plus one learning-curve plot per setting.

    python benchmarks/cartpole_misspec.py                      # CPU budget: 20k steps
    python benchmarks/cartpole_misspec.py --steps 200000       # the paper's budget (GPU)
    python benchmarks/cartpole_misspec.py --hidden 3 32 --distractors 0 10 --seeds 5
"""

import argparse
import pathlib
import shlex
import time

import numpy as np


RESULTS = pathlib.Path(__file__).parent / "results"
FINAL_EVALS = 5  # the final return averages the last evaluations: one is noisy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        default=[2, 3, 4, 8, 32],
        help="model hidden sizes (with no distractors); `--hidden` alone runs none",
    )
    parser.add_argument(
        "--distractors",
        type=int,
        nargs="*",
        default=[5, 10, 20],
        help="distractor counts (with the --distractor-hidden model); `--distractors` alone "
        "runs none",
    )
    parser.add_argument(
        "--distractor-hidden",
        type=int,
        default=32,
        help="the model hidden size of the distractor settings (default 32, the full model)",
    )
    parser.add_argument("--agents", nargs="+", default=["omd", "mle", "vep"])
    parser.add_argument("--adjoint", default="identity")
    parser.add_argument("--inner-steps", type=int, default=1, help="K inner Q steps per update")
    parser.add_argument(
        "--likelihood-weight",
        type=float,
        nargs="+",
        default=[0.0],
        help="beta: OMD and VEP train once per value, with beta times MLE's loss added to "
        "their model loss (labelled e.g. omd-beta0.1; MLE has none and trains once)",
    )
    parser.add_argument(
        "--bound-predictions",
        action="store_true",
        help="every arm squashes its model's next-state predictions into the box of the "
        "batch's real states (labelled e.g. omd-bounded)",
    )
    parser.add_argument(
        "--x64",
        action="store_true",
        help="float64, as the paper's code (default float32; arms labelled e.g. omd-x64)",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="CPU devices JAX shows (default: one per core); the seeds are split over them",
    )
    parser.add_argument(
        "--out", default=None, help="output prefix (default results/cartpole_misspec[_kK])"
    )
    args = parser.parse_args()
    if not args.hidden and not any(d > 0 for d in args.distractors):
        parser.error("--hidden and --distractors leave no setting to run")

    import jax

    from omdx.cli import _use_cpu_devices

    # Before any computation. Each seed's run is the same on any device split.
    _use_cpu_devices(args.cpu_devices)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import omdx
    from omdx._report import markdown_table, plot_curves, run_summary, write_csv

    if args.distractor_hidden < 1:
        parser.error(f"--distractor-hidden must be positive, got {args.distractor_hidden}")
    settings = [(h, 0) for h in args.hidden]
    settings += [(args.distractor_hidden, d) for d in args.distractors if d > 0]
    # Arms trained differently from the study's defaults are labelled, so that their CSV
    # pools with the defaults' as separate arms (same seeds, comparable by the p-value tools).
    suffix = ("-bounded" if args.bound_predictions else "") + ("-x64" if args.x64 else "")
    arms = [  # (label, agent, likelihood weight)
        ((agent if weight == 0 else f"{agent}-beta{weight:g}") + suffix, agent, weight)
        for agent in args.agents
        for weight in ([0.0] if agent == "mle" else args.likelihood_weight)
    ]
    labels = [label for label, _, _ in arms]
    train_config = omdx.TrainConfig(steps=args.steps, eval_every=1000, evals_per_chunk=5)
    rows, table, finals = [], [], {}
    default_name = "cartpole_misspec" + (f"_k{args.inner_steps}" if args.inner_steps != 1 else "")
    out = pathlib.Path(args.out or RESULTS / default_name)
    command = [
        "python benchmarks/cartpole_misspec.py",
        f"--steps {args.steps}",
        f"--seeds {args.seeds}",
        " ".join(["--hidden", *map(str, args.hidden)]),
        " ".join(["--distractors", *map(str, args.distractors)]),
        *([f"--distractor-hidden {args.distractor_hidden}"] * (args.distractor_hidden != 32)),
        " ".join(["--agents", *args.agents]),
        f"--inner-steps {args.inner_steps}",
        *(
            [" ".join(["--likelihood-weight", *(f"{w:g}" for w in args.likelihood_weight)])]
            if args.likelihood_weight != [0.0]
            else []
        ),
        *(["--bound-predictions"] if args.bound_predictions else []),
        *([f"--adjoint {args.adjoint}"] if args.adjoint != "identity" else []),
        *(["--x64"] if args.x64 else []),
        # As typed (relative or not): run as printed, the command rewrites these files.
        *([f"--out {shlex.quote(args.out)}"] if args.out is not None else []),
    ]
    header = (
        "# CartPole misspecification study\n\n"
        f"`{' '.join(command)}`: "
        f"per agent, the final return (mean of the last {FINAL_EVALS} evaluations of each seed, "
        f"10 greedy episodes each) and the mean return over the whole run (area under the "
        f"curve), mean ± 95% interval over {args.seeds} seeds, after {args.steps} environment "
        f"steps, adjoint `{args.adjoint}`, K = {args.inner_steps} inner steps, "
        f"{'float64' if args.x64 else 'float32'}, "
        f"jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, omdx at commit {_commit()}; `s` is the wall-clock "
        "seconds of each run (all seeds, "
        "compilation included). A seed whose return or loss turned non-finite is named in "
        "its setting's final-return cell, with the step by which it had (its first "
        "evaluation with a non-finite value); the statistics are then over the other seeds "
        "(and the CSV holds only theirs). The paper ran 200 000 steps (`--steps 200000`).\n\n"
        f"![final return]({out.name}.png)\n\n"
    )
    for hidden, distractors in settings:
        env = omdx.envs.make("CartPole-v1", distractors=distractors)
        curves, line = {}, {"model_hidden": hidden, "distractors": distractors}
        for label, agent, weight in arms:
            config = omdx.AgentConfig(
                agent=agent,
                model_hidden=hidden,
                adjoint=args.adjoint,
                inner_steps=args.inner_steps,
                likelihood_weight=weight,
                bound_predictions=args.bound_predictions,
            )
            start = time.perf_counter()
            try:
                result = omdx.train(
                    env, config, train_config, seeds=args.seeds, stop_on_divergence=False
                )
                note = ""
            except omdx.TrainingDiverged as error:
                # The seeds that stayed finite train to the end and are reported on their
                # own; the table names the others.
                result, note = _finite_seeds(
                    error.result, error.diverged, train_config.learning_starts
                )
                print(f"hidden={hidden} distractors={distractors} {label}: {error}", flush=True)
            seconds = time.perf_counter() - start
            if len(result.seeds) == 0:
                finals[(hidden, distractors, label)] = (np.nan, np.nan)
                line[f"{label} final"] = final_cell(np.nan, np.nan, note)
                line[f"{label} AUC"] = line[f"{label} model MSE"] = "-"
                line[f"{label} s"] = round(seconds)
                continue
            curves[label] = (result.eval_steps, result.eval_returns)
            summary = run_summary(result, FINAL_EVALS)
            mean, half = summary["final_return_mean"], summary["final_return_ci95"]
            auc_mean, auc_half = summary["auc_mean"], summary["auc_ci95"]
            finals[(hidden, distractors, label)] = (mean, half)
            line[f"{label} final"] = final_cell(mean, half, note)
            line[f"{label} AUC"] = f"{auc_mean:.1f} ± {auc_half:.1f}"
            line[f"{label} model MSE"] = f"{summary['final_model_error_mean']:.3g}"
            line[f"{label} s"] = round(seconds)
            for i, seed in enumerate(result.seeds):
                for j, step in enumerate(result.eval_steps):
                    rows.append(
                        {
                            "agent": label,
                            "likelihood_weight": weight,
                            "bound_predictions": args.bound_predictions,
                            "x64": args.x64,
                            "model_hidden": hidden,
                            "distractors": distractors,
                            "seed": int(seed),
                            "step": int(step),
                            "eval_return": float(result.eval_returns[i, j]),
                            "model_error": float(result.metrics["model_error"][i, j]),
                            # Bellman losses on model and on real transitions: where a
                            # run's Q-function blows up, without overflowing, they show it.
                            "q_model_loss": float(result.metrics["q_model_loss"][i, j]),
                            "q_real_loss": float(result.metrics["q_real_loss"][i, j]),
                        }
                    )
            print(
                f"hidden={hidden} distractors={distractors} {label}: final {mean:.1f} ± "
                f"{half:.1f}, AUC {auc_mean:.1f} ± {auc_half:.1f} ({seconds:.0f} s)",
                flush=True,
            )
        table.append(line)
        plot_curves(
            f"{out}_h{hidden}_d{distractors}.png",
            curves,
            title=f"CartPole-v1, model hidden {hidden}, {distractors} distractors",
        )
        # Written after every setting, so that an interrupted study keeps what it finished.
        write_csv(f"{out}.csv", rows)
        done = settings[: len(table)]
        _plot_finals(f"{out}.png", done, labels, finals)
        curve_links = "\n\n".join(f"![h={h}, d={d}]({out.name}_h{h}_d{d}.png)" for h, d in done)
        pathlib.Path(f"{out}.md").write_text(
            header + markdown_table(table) + "\n\nLearning curves:\n\n" + curve_links + "\n"
        )
    print(markdown_table(table))


def _finite_seeds(result, diverged: np.ndarray, learning_starts: int):
    """The runs of `result` (a `TrainResult`) that stayed finite, and a note naming the
    others and the step by which each diverged."""
    from omdx._train import _runs_of

    steps = divergence_steps(result, learning_starts)
    dropped = [(int(seed), steps[i]) for i, seed in enumerate(result.seeds) if diverged[i]]
    return _runs_of(result, ~diverged), diverged_note(dropped, len(result.seeds))


def divergence_steps(result, learning_starts: int) -> list[int | None]:
    """Per run of `result` (a `TrainResult`, or anything with its `eval_steps`,
    `eval_returns` and `metrics`), the step by which it diverged: its first evaluation with
    a non-finite return or loss, by `omdx.train`'s own check; `None` for a run that stayed
    finite. `learning_starts` is the `TrainConfig`'s: the windows that made no update
    hold NaN metrics by design and, as in `omdx.train`, are not counted."""
    from omdx._train import _non_finite, _updated_metrics, _updated_windows

    eval_steps = np.asarray(result.eval_steps)
    checked = _updated_metrics(result.metrics, _updated_windows(eval_steps, learning_starts))
    bad = np.any(list(_non_finite(np.asarray(result.eval_returns), checked).values()), axis=0)
    return [int(eval_steps[np.argmax(row)]) if row.any() else None for row in bad]


def diverged_note(dropped: list[tuple[int, int | None]], n_seeds: int) -> str:
    """`"seeds 3 and 4 of 10 diverged, by steps 112 000 and 154 000"` for `dropped` =
    `[(seed, step by which it diverged, or None if unknown), ...]`; "" for none."""
    if not dropped:
        return ""

    def listed(items):
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    seeds = listed([str(seed) for seed, _ in dropped])
    steps = listed(["?" if step is None else f"{step:,}".replace(",", " ") for _, step in dropped])
    plural = "s" if len(dropped) > 1 else ""
    return f"seed{plural} {seeds} of {n_seeds} diverged, by step{plural} {steps}"


def final_cell(mean: float, half: float, note: str = "") -> str:
    """A setting's final-return cell: mean ± 95% half-width, and the note on the seeds
    that diverged (the note alone when every seed did: there is no mean)."""
    if np.isnan(mean):
        return note or "-"
    return f"{mean:.1f} ± {half:.1f}" + (f" ({note})" if note else "")


def _commit() -> str:
    """The checked-out commit (initial weights depend on the code, not only the seed)."""
    import subprocess

    try:

        def git(*args):
            return subprocess.run(
                ["git", *args],
                cwd=pathlib.Path(__file__).parent,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        if git("status", "--porcelain", "--", "../omdx"):
            commit += " with uncommitted changes to omdx/"
        return commit
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _plot_finals(path, settings, agents, finals):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(settings))
    width = 0.8 / len(agents)
    for k, agent in enumerate(agents):
        means = [finals[(h, d, agent)][0] for h, d in settings]
        halves = [np.nan_to_num(finals[(h, d, agent)][1]) for h, d in settings]
        ax.bar(
            x + (k - (len(agents) - 1) / 2) * width,
            means,
            width,
            yerr=halves,
            label=agent,
            capsize=3,
        )
    ax.set_xticks(x, [f"h={h}" + (f"\nd={d}" if d else "") for h, d in settings])
    ax.set_ylabel("final evaluation return")
    ax.set_title("CartPole-v1: model capacity (h) and distractors (d)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
