"""One figure and one table for a whole misspecification study spread over several CSVs:
every arm's final return in every setting, each seed a dot, diverged seeds counted.

`cartpole_misspec.py` writes one CSV per invocation, and a study at the paper's budget
is many invocations (one per batch of settings or agents). This pools them (as
`misspec_pvalues.py --merge` does: an agent and setting in two CSVs must be the same
run) and writes `OUT.md` (final return, mean ± 95% interval over the seeds that stayed
finite, the number that diverged, and the p-value of each arm against the reference
agent) and `OUT.png`.

    cd benchmarks/results
    python ../misspec_summary.py --seeds 10 --agents mle omd omd-bounded vep vep-bounded \
        --out cartpole_misspec_full_k1_summary cartpole_misspec_full_k1*.csv

A seed missing from a CSV is one that diverged (`cartpole_misspec.py` writes only the
seeds that stayed finite), so `--seeds` must be the number each run started with; an
arm whose seeds all diverged has no rows, and is not shown.
"""

import argparse
import pathlib
import shlex
import sys
from typing import NamedTuple

import numpy as np
from misspec_pvalues import FINAL_EVALS, merged_final_returns, read_curves

from omdx._report import (
    format_p,
    p_value_method,
    permutation_is_exact,
    permutation_p_value,
)


# Arms in this order when present (others follow, sorted): the reference first.
PREFERRED_ORDER = ("mle", "omd", "omd-bounded", "vep", "vep-bounded")
# A seed whose real-data Bellman loss ends above this has blown up: returns near 500 come
# with losses of tens, and in float32 such a seed overflows, in float64 it runs on.
BLOWUP_LOSS = 1e6


class ArmSummary(NamedTuple):
    """One arm in one setting. `blown_up` is `None` where the CSV has no Q losses;
    `p_exact` whether `p` enumerated every relabelling (`None` with no `p`)."""

    mean: float
    half_width: float
    finals: np.ndarray
    diverged: int
    blown_up: int | None
    p: float | None
    p_exact: bool | None = None


def curve_ends(paths) -> dict:
    """`{(model_hidden, distractors, agent, seed): (last step, real-data Bellman loss
    there or None)}` over the CSVs."""
    return {
        (*key, seed): curve[-1][::2]
        for path in paths
        for key, seeds in read_curves(path).items()
        for seed, curve in seeds.items()
    }


def summarise(
    finals: dict,
    seeds: int,
    agents: list[str],
    reference: str,
    ends: dict | None = None,
    blowup_loss: float = BLOWUP_LOSS,
) -> dict:
    """`{(model_hidden, distractors, agent): ArmSummary}`; `ends` from `curve_ends` gives
    each seed's final Bellman loss, to count those above `blowup_loss`."""
    from omdx._report import mean_and_interval

    summary = {}
    for hidden, distractors in sorted({(h, d) for h, d, _ in finals}, key=_setting_order):
        for agent in agents:
            values = finals.get((hidden, distractors, agent))
            if values is None:
                continue
            if len(values) > seeds:
                raise ValueError(
                    f"model_hidden={hidden}, distractors={distractors}, agent {agent!r} has "
                    f"{len(values)} seeds, more than --seeds {seeds}."
                )
            mean, half = mean_and_interval(values)
            reference_values = finals.get((hidden, distractors, reference))
            p = p_exact = None
            if agent != reference and reference_values is not None and len(values) > 0:
                p = permutation_p_value(values, reference_values)
                p_exact = permutation_is_exact(len(values), len(reference_values))
            losses = [
                loss
                for (h, d, a, _), (_, loss) in (ends or {}).items()
                if (h, d, a) == (hidden, distractors, agent)
            ]
            blown_up = None
            if losses and None not in losses:
                blown_up = sum(loss > blowup_loss for loss in losses)
            summary[(hidden, distractors, agent)] = ArmSummary(
                mean, half, values, seeds - len(values), blown_up, p, p_exact
            )
    return summary


def _setting_order(setting):
    hidden, distractors = setting
    return (distractors > 0, hidden, distractors)


def markdown(summary, agents: list[str], reference: str) -> str:
    settings = sorted({(h, d) for h, d, _ in summary}, key=_setting_order)
    header = ["model hidden", "distractors"]
    for agent in agents:
        header.append(f"{agent} final")
        if agent != reference:
            header.append(f"p vs {reference}")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for hidden, distractors in settings:
        cells = [str(hidden), str(distractors)]
        for agent in agents:
            entry = summary.get((hidden, distractors, agent))
            if entry is None:
                cells += ["-"] + (["-"] if agent != reference else [])
                continue
            cell = f"{entry.mean:.1f}"
            if not np.isnan(entry.half_width):
                cell += f" ± {entry.half_width:.1f}"
            notes = [f"{entry.diverged} diverged"] if entry.diverged else []
            if entry.blown_up:
                notes.append(f"{entry.blown_up} blown up")
            if notes:
                cell += f" ({', '.join(notes)})"
            cells.append(cell)
            if agent != reference:
                cells.append("-" if entry.p is None else format_p(entry.p, entry.p_exact))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path, summary, agents: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(h, d) for h, d, _ in summary}, key=_setting_order)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(settings)), 4.5))
    width = 0.8 / len(agents)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rng = np.random.default_rng(0)  # horizontal jitter of the seed dots only
    for k, agent in enumerate(agents):
        colour = colours[k % len(colours)]
        labelled = False
        for i, setting in enumerate(settings):
            entry = summary.get((*setting, agent))
            if entry is None:
                continue
            x = i + (k - (len(agents) - 1) / 2) * width
            jitter = rng.uniform(-0.25, 0.25, len(entry.finals)) * width
            ax.scatter(x + jitter, entry.finals, s=9, color=colour, alpha=0.45, linewidths=0)
            if len(entry.finals):
                ax.errorbar(
                    x,
                    entry.mean,
                    yerr=None if np.isnan(entry.half_width) else entry.half_width,
                    fmt="o",
                    color=colour,
                    markersize=5,
                    capsize=3,
                    label=None if labelled else agent,
                )
                labelled = True
            marks = " ".join(
                [f"{entry.diverged}×"] * bool(entry.diverged)
                + [f"{entry.blown_up}↑"] * bool(entry.blown_up)
            )
            if marks:
                ax.text(x, -12, marks, ha="center", va="top", fontsize=7, color=colour)
    ax.axhline(0, color="0.6", linewidth=0.6)
    ax.set_xticks(
        np.arange(len(settings)), [f"h={h}" + (f"\nd={d}" if d else "") for h, d in settings]
    )
    ax.set_ylim(-45, None)
    ax.set_ylabel(f"final return (mean of last {FINAL_EVALS} evaluations)")
    blown_up = any(entry.blown_up for entry in summary.values())
    legend = "dots: seeds; n×: seeds that diverged" + ("; n↑: blown up" if blown_up else "")
    ax.set_title(f"{title}\n({legend})", fontsize=10)
    ax.legend(fontsize=8, ncol=len(agents), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="CSVs written by cartpole_misspec.py")
    parser.add_argument(
        "--seeds", type=int, required=True, help="seeds each run started with (10 for the study)"
    )
    parser.add_argument(
        "--agents", nargs="+", default=None, help="arms to show, in order (default: all)"
    )
    parser.add_argument("--reference", default="mle", help="the arm the p-values compare to")
    parser.add_argument(
        "--blowup-loss",
        type=float,
        default=BLOWUP_LOSS,
        help="a finite seed whose final real-data Bellman loss exceeds this is counted as "
        "blown up (CSVs with Q losses only)",
    )
    parser.add_argument("--title", default="CartPole-v1: final return by setting")
    parser.add_argument("--out", required=True, help="output prefix: writes OUT.md and OUT.png")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be positive, got {args.seeds}")
    ends = curve_ends(args.csv)
    steps = {step for step, _ in ends.values()}
    if len(steps) > 1:
        parser.error(
            f"the CSVs' runs end at different steps ({sorted(steps)}): pool one study's CSVs"
        )
    finals = merged_final_returns(args.csv)
    present = {agent for _, _, agent in finals}
    agents = args.agents or sorted(
        present,
        key=lambda a: (
            PREFERRED_ORDER.index(a) if a in PREFERRED_ORDER else len(PREFERRED_ORDER),
            a,
        ),
    )
    unknown = [agent for agent in agents if agent not in present]
    if unknown:
        parser.error(f"--agents {unknown} are in none of the CSVs (they hold {sorted(present)})")
    summary = summarise(finals, args.seeds, agents, args.reference, ends, args.blowup_loss)
    table = markdown(summary, agents, args.reference)
    out = pathlib.Path(args.out)
    plot(f"{out}.png", summary, agents, args.title)
    runs = len(summary)
    diverged = {agent: 0 for agent in agents}
    started = {agent: 0 for agent in agents}
    for (_, _, agent), entry in summary.items():
        diverged[agent] += entry.diverged
        started[agent] += args.seeds
    counts = ", ".join(f"{agent} {diverged[agent]} of {started[agent]}" for agent in agents)
    method = p_value_method([entry.p_exact for entry in summary.values() if entry.p is not None])
    text = (
        f"# {args.title}\n\n`python benchmarks/misspec_summary.py "
        + shlex.join(sys.argv[1:])
        + f"`: {runs} runs of {args.seeds} seeds, each ending at step {steps.pop()}. Final "
        f"return = mean of a seed's last {FINAL_EVALS} evaluations; mean ± 95% interval over "
        f"the seeds that stayed finite; p = {method}, on the per-seed "
        f"final returns against {args.reference}. Seeds that diverged (a non-finite value "
        f"stopped them): {counts}. Where the CSV has the Q losses, a finite seed whose "
        f"Bellman loss on real transitions ended above {args.blowup_loss:g} is counted as "
        "blown up (it is in the statistics).\n\n"
        f"![final return]({out.name}.png)\n\n" + table + "\n"
    )
    pathlib.Path(f"{out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
