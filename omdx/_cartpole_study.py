"""The CartPole misspecification study of `omdx paper`, pooled from the `omdx compare`
folder of each setting: one CSV row per seed, one table, two figures."""

import json
import math
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ._report import (
    format_p,
    markdown_table,
    mean_and_interval,
    p_value_method,
    permutation_is_exact,
    permutation_p_value,
    pyplot,
    write_csv,
)


def setting_name(hidden: int, distractors: int) -> str:
    """The folder of a setting: `h<hidden>_d<distractors>`."""
    return f"h{hidden}_d{distractors}"


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


class CartpoleStudy(NamedTuple):
    """What [`cartpole_study`][] wrote: the table (markdown, with how its p-values were
    computed), the figures, the CSV, and whether any run continued from its checkpoint."""

    table: str
    figures: list[pathlib.Path]
    csv: pathlib.Path
    resumed: bool


def cartpole_study(
    folder: pathlib.Path, settings: Sequence[tuple[int, int]], agents: Sequence[str]
) -> CartpoleStudy:
    """Pool the CartPole runs under `folder` into `study.csv`, `study.md` and the figures
    `final_returns.png` and `likelihood_vs_return.png`.

    **Arguments:**

    - `folder`: holds one `omdx compare` folder per setting, `h<hidden>_d<distractors>`,
        each with one folder per agent holding its `summary.json`.
    - `settings`: the `(model hidden size, distractors)` of each setting, in table order.
    - `agents`: the agents of every setting, in column order.

    **Returns:**

    A `CartpoleStudy`. The table has, per setting and agent, the final return and area
    under the curve (mean ± 95% interval over the seeds that stayed finite, with the
    diverged and blown-up seeds counted) and the mean final model error; and, where MLE
    (the Dyna baseline) ran, each other agent's permutation-test p-value against it.
    `study.csv` has one row per setting, agent and seed (a diverged seed's without numbers).
    """
    arms = {
        (h, d, agent): _Arm.read(folder / setting_name(h, d) / agent)
        for h, d in settings
        for agent in agents
    }
    against_mle = [agent for agent in agents if agent != "mle"] if "mle" in agents else []
    rows, table, exact = [], [], []
    for h, d in settings:
        line = {"model hidden": h, "distractors": d}
        for agent in agents:
            arm = arms[(h, d, agent)]
            for seed, final, auc, error in zip(arm.seeds, arm.finals, arm.aucs, arm.model_errors):
                rows.append(
                    {"model_hidden": h, "distractors": d, "agent": agent, "seed": seed,
                     "final_return": final, "auc": auc, "final_model_error": error,
                     "diverged": False, "blown_up": seed in arm.blown_up}
                )  # fmt: skip
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
        for agent in against_mle:
            a, b = arms[(h, d, agent)].finals, arms[(h, d, "mle")].finals
            line[f"p, {agent} vs mle"] = "-"
            if min(a.size, b.size) >= 2:
                exact.append(permutation_is_exact(a.size, b.size))
                line[f"p, {agent} vs mle"] = format_p(permutation_p_value(a, b), exact[-1])
        table.append(line)
    csv = write_csv(folder / "study.csv", rows)
    text = markdown_table(table)
    if exact:
        text += (
            "\n\np: the p-value of the difference in mean final return from MLE's, by a "
            f"{p_value_method(exact)}."
        )
    (folder / "study.md").write_text(
        "# CartPole misspecification study\n\nFinal return (the last evaluation) and area "
        "under the curve (the mean evaluation return over the run), mean ± 95% interval "
        "over the seeds that stayed finite; model error: the squared error of the model's "
        "next-state prediction on real transitions at the end.\n\n" + text + "\n"
    )
    figures = [
        _plot_final_returns(folder / "final_returns.png", settings, agents, arms),
        _plot_likelihood(folder / "likelihood_vs_return.png", settings, agents, arms),
    ]
    resumed = any(arm.resumed for arm in arms.values())
    return CartpoleStudy(text, figures, csv, resumed)


def _cell(values: np.ndarray, arm: _Arm | None = None) -> str:
    """Mean ± 95% half-width of `values`, and what became of `arm`'s other seeds."""
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


def _plot_final_returns(path, settings, agents, arms) -> pathlib.Path:
    """Final return per setting and agent: the mean and 95% interval as a bar, each seed
    a dot (seeds that diverged are not drawn; the table counts them)."""
    plt = pyplot()
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
    scale): one panel for the model sizes, one for the distractor settings. A panel
    where no seed stayed finite says so."""
    plt = pyplot()
    groups = [
        ("model hidden size", [(h, d) for h, d in settings if d == 0], lambda h, d: f"h={h}"),
        ("distracting dimensions", [(h, d) for h, d in settings if d > 0], lambda h, d: f"d={d}"),
    ]
    groups = [g for g in groups if g[1]]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.6 * len(groups), 5.4), squeeze=False)
    markers = "os^vD<>px*"
    for ax, (title, group, label) in zip(axes[0], groups):
        drawn = False
        for k, agent in enumerate(agents):
            for m, (h, d) in enumerate(group):
                arm = arms[(h, d, agent)]
                # A log axis takes positive errors only (a perfect model would have none).
                keep = np.isfinite(arm.model_errors) & (arm.model_errors > 0)
                if not keep.any():
                    continue
                ax.scatter(arm.model_errors[keep], arm.finals[keep], color=f"C{k}",
                           marker=markers[m % len(markers)], alpha=0.7,
                           label=f"{agent.upper()}, {label(h, d)}")  # fmt: skip
                drawn = True
        ax.set_title(f"CartPole-v1: return vs likelihood ({title})")
        if not drawn:
            ax.text(0.5, 0.5, "no seed stayed finite", ha="center", transform=ax.transAxes)
            continue
        ax.set_xscale("log")
        ax.set_xlabel("model's squared error on real next states (log scale)")
        ax.set_ylabel("final evaluation return")
        ax.grid(alpha=0.3)
        # Below the axes: inside, it would hide the seeds.
        ax.legend(fontsize=7, ncol=len(agents), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pathlib.Path(path)
