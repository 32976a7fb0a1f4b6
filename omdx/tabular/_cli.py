"""`omdx tabular misspec|bounds|noise`: the paper's tabular studies, one command each."""

import argparse
import math
import pathlib
import time

import numpy as np

from .._help import HelpWithDefaults, positive_int


STUDIES = ("misspec", "bounds", "noise")


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(",", " ").split()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _common(parser: argparse.ArgumentParser, study: str) -> None:
    parser.add_argument("--seeds", type=positive_int, default=10, help="number of seeds, 1..N")
    parser.add_argument(
        "--steps", type=positive_int, default=10_000, help="maximum model (outer) steps"
    )
    parser.add_argument("--lr", type=_positive_float, default=0.01, help="the model's Adam lr")
    parser.add_argument(
        "--temperature", type=_positive_float, default=0.01, help="soft Bellman temperature tau"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-6,
        help="freeze a run once the model and Q move less than this (0: run every step)",
    )
    parser.add_argument(
        "--solver", choices=("newton", "value_iteration"), default="newton", help="inner solver"
    )
    parser.add_argument(
        "--chunk", type=positive_int, default=500, help="steps per compiled call (progress)"
    )
    parser.add_argument("--float32", action="store_true", help="run in float32 (not float64)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path(f"runs/tabular-{study}"),
        help="output directory",
    )


def _bounds_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bounds", type=_float_list, help="explicit norm bounds, e.g. 0.5,1,3")
    parser.add_argument("--bounds-min", type=float, default=0.0, help="smallest norm bound")
    parser.add_argument("--bounds-max", type=float, default=6.0, help="largest norm bound")
    parser.add_argument(
        "--bounds-num", type=positive_int, default=20, help="bounds, evenly spaced from min to max"
    )


def add_tabular_parser(subparsers) -> argparse.ArgumentParser:
    """Register `omdx tabular {misspec,bounds,noise}` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "tabular", help="the paper's tabular studies (OMD vs MLE on the 2-state MDP)"
    )
    studies = parser.add_subparsers(dest="study", required=True)
    with_defaults = {"formatter_class": HelpWithDefaults}
    misspec = studies.add_parser(
        "misspec", help="expected return vs model norm bound, OMD vs MLE", **with_defaults
    )
    _common(misspec, "misspec")
    _bounds_args(misspec)
    misspec.set_defaults(run=run_misspec)
    bounds = studies.add_parser(
        "bounds", help="max|Q* - Q_hat| and the error bounds vs norm bound", **with_defaults
    )
    _common(bounds, "bounds")
    _bounds_args(bounds)
    bounds.set_defaults(run=run_bounds)
    noise = studies.add_parser(
        "noise",
        help="return when Q* is perturbed by noise: exact vs identity adjoint",
        **with_defaults,
    )
    _common(noise, "noise")
    noise.add_argument("--sigmas", type=_float_list, help="explicit noise scales")
    noise.add_argument("--sigmas-min-exp", type=float, default=-3.0, help="log10 of the smallest")
    noise.add_argument("--sigmas-max-exp", type=float, default=0.5, help="log10 of the largest")
    noise.add_argument(
        "--sigmas-num", type=positive_int, default=30, help="noise scales, log-spaced"
    )
    noise.add_argument(
        "--adjoints",
        type=lambda s: [a for a in s.replace(",", " ").split() if a],
        default=["direct", "identity"],
        help="adjoints to compare, comma-separated",
    )
    noise.set_defaults(run=run_noise)
    return parser


def _setup(args):
    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    from ._mdp import polytope_mdp

    dtype = "float32" if args.float32 else "float64"
    return polytope_mdp(dtype), dict(
        seeds=args.seeds,
        steps=args.steps,
        lr=args.lr,
        temperature=args.temperature,
        tol=args.tol,
        solver=args.solver,
        chunk=args.chunk,
        progress=not args.no_progress,
    )


def _bound_list(args) -> list[float]:
    if args.bounds is not None:
        return args.bounds
    return [float(b) for b in np.linspace(args.bounds_min, args.bounds_max, args.bounds_num)]


def _finish(args, study, rows, summary, columns, plot) -> int:
    from .._report import markdown_table, write_csv, write_json

    out = pathlib.Path(args.out)
    write_csv(out / "results.csv", rows)
    write_csv(out / "summary.csv", summary)
    settings = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
    settings.pop("run", None)
    write_json(out / "settings.json", settings)
    png = plot(out / f"{study}.png")
    table = markdown_table(summary, columns)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / 'results.csv'}, {out / 'summary.csv'}, {png}")
    failures = sum(r["inner_failures"] for r in rows)
    if failures:
        print(f"warning: the inner solve failed in {failures} step(s); see results.csv")
    return 0


def run_misspec(args) -> int:
    from ._plots import plot_misspecification
    from ._studies import misspecification_study, optimal_return, summarise

    mdp, kwargs = _setup(args)
    start = time.perf_counter()
    rows, _ = misspecification_study(mdp, bounds=_bound_list(args), **kwargs)
    print(f"trained {len(rows)} runs in {time.perf_counter() - start:.1f} s")
    summary = summarise(rows, ("method", "bound"), ("J", "model_norm", "steps"))
    j_star = optimal_return(mdp, args.temperature)
    return _finish(
        args,
        "misspec",
        rows,
        summary,
        ["method", "bound", "n", "J", "J_ci95", "model_norm", "steps"],
        lambda p: plot_misspecification(summary, p, j_star),
    )


def run_bounds(args) -> int:
    from ._plots import plot_bounds
    from ._studies import bounds_study, summarise

    mdp, kwargs = _setup(args)
    start = time.perf_counter()
    rows, _ = bounds_study(mdp, bounds=_bound_list(args), **kwargs)
    print(f"trained {len(rows)} runs in {time.perf_counter() - start:.1f} s")
    summary = summarise(
        rows,
        ("method", "bound"),
        ("q_error", "omd_bound", "mle_bound", "J", "eps", "eps_r", "eps_p"),
    )
    return _finish(
        args,
        "bounds",
        rows,
        summary,
        ["method", "bound", "n", "q_error", "omd_bound", "mle_bound", "J"],
        lambda p: plot_bounds(summary, p),
    )


def run_noise(args) -> int:
    from ._plots import plot_noise
    from ._studies import noise_study, optimal_return, summarise

    mdp, kwargs = _setup(args)
    if args.sigmas is not None:
        sigmas = args.sigmas
    else:
        sigmas = [
            float(s) for s in np.logspace(args.sigmas_min_exp, args.sigmas_max_exp, args.sigmas_num)
        ]
    start = time.perf_counter()
    rows, _ = noise_study(mdp, sigmas=sigmas, adjoints=tuple(args.adjoints), **kwargs)
    print(f"trained {len(rows)} runs in {time.perf_counter() - start:.1f} s")
    summary = summarise(rows, ("method", "sigma"), ("J", "bellman_error"))
    j_star = optimal_return(mdp, args.temperature)
    return _finish(
        args,
        "noise",
        rows,
        summary,
        ["method", "sigma", "n", "J", "J_ci95", "bellman_error"],
        lambda p: plot_noise(summary, p, j_star),
    )
