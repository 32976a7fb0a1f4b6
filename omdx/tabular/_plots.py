"""Figures of the tabular studies (matplotlib, Agg backend). No maths here."""

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._report import pyplot


_STYLE = {"OMD": ("r", "^"), "MLE": ("b", "o")}


def _series(summary, method, x_key, value):
    rows = [r for r in summary if r["method"] == method]
    x = np.array([r[x_key] for r in rows])
    y = np.array([r[value] for r in rows])
    ci = np.array([r[f"{value}_ci95"] for r in rows])
    ci = np.where(np.isnan(ci), 0.0, ci)
    order = np.argsort(x)
    return x[order], y[order], ci[order]


def _methods(summary) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in summary))


def _style(method: str, i: int):
    colors = ["r", "b", "g", "m", "c", "k"]
    markers = ["^", "o", "s", "v", "D", "x"]
    return _STYLE.get(method, (colors[i % len(colors)], markers[i % len(markers)]))


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_misspecification(
    summary: Sequence[dict[str, Any]], path, j_star: float | None = None
) -> pathlib.Path:
    """Expected return against the model norm bound, mean and 95% interval per method.

    **Arguments:**

    - `summary`: rows with `method`, `bound`, `J`, `J_ci95`.
    - `path`: the PNG to write.
    - `j_star`: the optimal return, drawn as a dashed line.

    **Returns:**

    The path written.
    """
    return _plot_returns(
        summary, path, "bound", "Model parameter norm bound $b$", j_star, markersize=5
    )


def _plot_returns(summary, path, x_key, xlabel, j_star, *, markersize, log_x=False):
    """Expected return against `x_key`, mean and 95% interval per method, J* dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    for i, method in enumerate(_methods(summary)):
        x, y, ci = _series(summary, method, x_key, "J")
        color, marker = _style(method, i)
        ax.plot(x, y, marker=marker, color=color, label=method, markersize=markersize)
        ax.fill_between(x, y - ci, y + ci, color=color, alpha=0.15)
    if j_star is not None:
        ax.axhline(j_star, ls="--", color="k", label=f"Optimal ({j_star:.4f})")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Expected return $J$")
    ax.grid(True, alpha=0.4)
    ax.legend()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_bounds(summary: Sequence[dict[str, Any]], path) -> pathlib.Path:
    """$\\max|Q^* - \\hat Q|$ of OMD and MLE and their error bounds, against the norm bound.

    **Arguments:**

    - `summary`: rows with `method`, `bound`, `q_error`, `omd_bound`, `mle_bound` (and
        their `_ci95`).
    - `path`: the PNG to write.

    **Returns:**

    The path written.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    curves = [
        ("OMD", "q_error", "r", "^", "-", r"$\max|Q^* - \hat Q_{OMD}|$"),
        ("OMD", "omd_bound", "r", "s", "--", r"OMD bound $\epsilon / (1-\gamma)$"),
        ("MLE", "q_error", "b", "v", "-", r"$\max|Q^* - \hat Q_{MLE}|$"),
        (
            "MLE",
            "mle_bound",
            "b",
            "o",
            "--",
            r"MLE bound $\frac{\epsilon_r}{1-\gamma} + \frac{\gamma \epsilon_p r_{max}}"
            r"{2(1-\gamma)^2}$",
        ),
    ]
    methods = _methods(summary)
    for method, value, color, marker, ls, label in curves:
        if method not in methods:
            continue
        x, y, ci = _series(summary, method, "bound", value)
        ax.plot(x, y, marker=marker, color=color, ls=ls, label=label, markersize=5)
        ax.fill_between(x, np.maximum(y - ci, 1e-12), y + ci, color=color, alpha=0.1)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("Model parameter norm bound $b$")
    ax.set_ylabel("error")
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_noise(
    summary: Sequence[dict[str, Any]], path, j_star: float | None = None
) -> pathlib.Path:
    """Expected return against the noise scale $\\sigma$ of the inner solution, per adjoint.

    **Arguments:**

    - `summary`: rows with `method`, `sigma`, `J`, `J_ci95`.
    - `path`: the PNG to write.
    - `j_star`: the optimal return, drawn as a dashed line.

    **Returns:**

    The path written.
    """
    return _plot_returns(
        summary,
        path,
        "sigma",
        r"Noise scale $\sigma$ of $Q^*_\theta$",
        j_star,
        markersize=4,
        log_x=True,
    )
