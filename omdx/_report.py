"""Writing results: CSV, JSON and markdown tables, and the statistics over seeds they
report (intervals, permutation tests)."""

import csv
import itertools
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """Convert JAX/NumPy scalars and arrays to JSON/CSV-friendly Python values."""
    if isinstance(value, (np.ndarray,)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_csv(path: str | pathlib.Path, rows: Sequence[Mapping[str, Any]]) -> pathlib.Path:
    """Write a list of flat dicts as CSV, columns in first-seen order."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(v) for k, v in row.items()})
    return path


def write_json(path: str | pathlib.Path, data: Any) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n")
    return path


def _format_cell(value: Any, precision: int) -> str:
    value = _plain(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** (-precision)):
            return f"{value:.{precision}e}"
        return f"{value:.{precision}f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, precision: int = 4
) -> str:
    """Format rows of dicts as a GitHub-flavoured markdown table."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(_format_cell(row.get(c, ""), precision) for c in columns) + " |"
        )
    return "\n".join(lines)


def mean_and_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation confidence interval over seeds.

    Uses Student's t quantile for small samples (table for n - 1 <= 30, else 1.96).
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    mean = float(x.mean())
    if n == 1:
        return mean, float("nan")
    if confidence != 0.95:
        raise ValueError(f"`confidence` must be 0.95, got {confidence}.")
    t_975 = [
        12.706,
        4.303,
        3.182,
        2.776,
        2.571,
        2.447,
        2.365,
        2.306,
        2.262,
        2.228,
        2.201,
        2.179,
        2.160,
        2.145,
        2.131,
        2.120,
        2.110,
        2.101,
        2.093,
        2.086,
        2.080,
        2.074,
        2.069,
        2.064,
        2.060,
        2.056,
        2.052,
        2.048,
        2.045,
        2.042,
    ]
    t = t_975[n - 2] if n - 1 <= len(t_975) else 1.96
    half_width = t * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, half_width


# The permutation test between two agents' seeds (`permutation_p_value`).
EXACT_LIMIT = 1_000_000  # relabellings enumerated; beyond, a seeded random sample of them
SAMPLES = 200_000  # the size of that sample


def permutation_is_exact(n_a: int, n_b: int) -> bool:
    """Whether `permutation_p_value` enumerates every relabelling of groups of `n_a` and
    `n_b` seeds (at most `EXACT_LIMIT` of them) rather than sampling `SAMPLES`."""
    return math.comb(n_a + n_b, n_a) <= EXACT_LIMIT


def permutation_p_value(a: np.ndarray, b: np.ndarray, samples: int = SAMPLES) -> float:
    """Two-sided permutation test of the difference in means: exact (every relabelling)
    when there are at most `EXACT_LIMIT` relabellings, else over `samples` random ones
    (seeded, so the same data give the same p)."""
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    if permutation_is_exact(len(a), len(b)):
        splits = np.array(list(itertools.combinations(range(len(pooled)), len(a))))
    else:
        rng = np.random.default_rng(0)
        splits = np.argsort(rng.random((samples, len(pooled))), axis=1)[:, : len(a)]
    in_a = np.zeros((len(splits), len(pooled)), bool)
    in_a[np.arange(len(splits))[:, None], splits] = True
    sum_a = in_a @ pooled
    diffs = sum_a / len(a) - (pooled.sum() - sum_a) / len(b)
    return float(np.mean(np.abs(diffs) >= observed - 1e-9))


SAMPLED_MARK = "†"  # on a p-value computed from a sample of the relabellings


def format_p(p: float, exact: bool = True) -> str:
    """A p-value to three decimals, or "< 0.001" where three decimals would show zero;
    marked "†" where it was sampled (`exact` false)."""
    return ("< 0.001" if p < 0.0005 else f"{p:.3f}") + ("" if exact else SAMPLED_MARK)


def p_value_method(exact: list[bool]) -> str:
    """How the p-values of one output were computed, given whether each was exact: "exact"
    only if every one was (`permutation_is_exact`), else how many were sampled, and from
    how many relabellings."""
    if all(exact):
        return "two-sided exact permutation test (every relabelling of the pooled seeds)"
    sampled = sum(not e for e in exact)
    return (
        "two-sided permutation test, exact (every relabelling of the pooled seeds) where "
        f"there are at most {_spaced(EXACT_LIMIT)} relabellings and otherwise over a seeded "
        f"random sample of {_spaced(SAMPLES)} of them: {sampled} of the {len(exact)} "
        f"p-values here {'was' if sampled == 1 else 'were'} sampled (marked {SAMPLED_MARK})"
    )


def _spaced(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def run_summary(result, final_evals: int = 1, blowup_loss: float | None = None) -> dict[str, Any]:
    """Final return, area under the curve and final model error of a training result, per
    seed and as mean ± 95% interval over seeds.

    The final return of a seed is the mean of its last `final_evals` evaluations (one
    evaluation of 10 episodes is noisy); the area under the curve is the trapezoidal mean
    of the evaluation return over the run.

    Where the result has the agents' `q_real_loss` metric, each seed's Bellman loss on
    real transitions in the last evaluation window is recorded too, and with
    `blowup_loss` the seeds whose loss ended above it are listed as `blown_up_seeds`. A
    Q-function that grows without bound stays finite in float64 (or for a while in
    float32) and its policy collapses; such seeds stay in the statistics, named.
    """
    returns = np.asarray(result.eval_returns, dtype=np.float64)
    steps = np.asarray(result.eval_steps)
    final = returns[:, -final_evals:].mean(axis=1)
    if steps.size > 1:
        auc = np.trapezoid(returns, steps, axis=1) / (steps[-1] - steps[0])
    else:
        auc = returns[:, 0]
    final_mean, final_half = mean_and_interval(final)
    auc_mean, auc_half = mean_and_interval(auc)
    summary = {
        "final_return_mean": final_mean,
        "final_return_ci95": final_half,
        "auc_mean": auc_mean,
        "auc_ci95": auc_half,
        "final_return_per_seed": final.tolist(),
        "auc_per_seed": auc.tolist(),
        "seeds": np.asarray(result.seeds).tolist(),
        "final_model_error_mean": float(np.mean(result.metrics["model_error"][:, -1])),
        "final_model_error_per_seed": np.asarray(result.metrics["model_error"][:, -1]).tolist(),
    }
    if "q_real_loss" in result.metrics:
        final_loss = np.asarray(result.metrics["q_real_loss"], dtype=np.float64)[:, -1]
        summary["final_q_real_loss_per_seed"] = final_loss.tolist()
        if blowup_loss is not None:
            seeds = np.asarray(result.seeds)
            summary["blown_up_seeds"] = seeds[final_loss > blowup_loss].tolist()
    return summary


class CsvAppender:
    """Append rows to a CSV file as they arrive (the header is fixed by the first rows)."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if self.columns is None:
            self.columns = list(rows[0])
            with self.path.open("w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writeheader()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            for row in rows:
                writer.writerow({k: _plain(v) for k, v in row.items()})


def pyplot():
    """`matplotlib.pyplot` on the Agg backend: figures are written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    path: str | pathlib.Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str = "",
    xlabel: str = "environment steps",
    ylabel: str = "evaluation return",
    hline: float | None = None,
) -> pathlib.Path:
    """Plot mean and 95% interval over seeds of each labelled `(x [n], y [seeds, n])` curve."""
    plt = pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (x, y) in curves.items():
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        stats = [mean_and_interval(y[:, i]) for i in range(y.shape[1])]
        mean = np.array([m for m, _ in stats])
        half = np.nan_to_num(np.array([h for _, h in stats]))
        (line,) = ax.plot(x, mean, label=f"{label} (n={y.shape[0]})")
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    if hline is not None:
        ax.axhline(hline, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
