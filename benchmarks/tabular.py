"""Tabular OMD: the whole grid vmapped together vs a Python loop over configurations.

For each of the paper's three tabular studies this script times

- the grid form: `omdx.tabular.train` over every (method, bound or sigma, seed) at once,
  vmapped: a Python loop of jitted calls, each a `lax.scan` of one 500-step chunk of the
  whole grid (up to steps / 500 calls, 20 at the default 10 000 steps; `train` stops
  after the chunk in which every run has frozen). A first `train` call with `steps` =
  one chunk is timed apart as "grid compile + 500 steps": compilation plus a 500-step run
  of the whole grid (the step count is a runtime argument, so the timed run reuses the
  program);
- two loop forms: a Python loop over configurations, each the same `train` on a
  1 x 1 x 1 grid, either in the same jitted 500-step chunks (up to 20 calls per
  configuration; compiled once per method, by a first one-chunk call reported as "loop
  compile + 500 steps"), or, the authors' way, one jitted call per training step
  (`chunk=1`). Loops are timed on an evenly spread subset of configurations and
  extrapolated.

It writes `benchmarks/results/tabular.md` (the table, the paper-settings results and the
DESIGN.md check) and the three study plots and CSVs under `benchmarks/results/`.

    python benchmarks/tabular.py            # the paper's settings
    python benchmarks/tabular.py --quick    # a small smoke run
"""

import argparse
import math
import pathlib
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from omdx import tabular  # noqa: E402
from omdx._report import markdown_table, write_csv  # noqa: E402
from omdx.tabular import _plots  # noqa: E402


RESULTS = pathlib.Path(__file__).parent / "results"


def _time(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return time.perf_counter() - start, out


def bench_study(name, methods, grid_kwargs, steps, seeds, loop_subset, common):
    """Time one study both ways; returns (row, result)."""
    bounds = grid_kwargs.get("bounds", (math.inf,))
    noises = grid_kwargs.get("noises", (0.0,))
    mdp = tabular.polytope_mdp()
    chunk = min(common["chunk"], steps)

    def grid(n_steps):
        return tabular.train(
            mdp, methods=methods, seeds=seeds, steps=n_steps, **grid_kwargs, **common
        )

    compile_s, _ = _time(lambda: grid(chunk))
    grid_s, result = _time(lambda: grid(steps))
    configs = [
        (m, b, n, s) for m in methods for b in bounds for n in noises for s in range(1, seeds + 1)
    ]

    def single(config, n_steps, chunk=common["chunk"]):
        m, b, n, s = config
        kwargs = {**common, "chunk": chunk}
        return tabular.train(
            mdp, methods=(m,), seeds=[s], bounds=[b], noises=[n], steps=n_steps, **kwargs
        )

    def timed_loop(subset, chunk):
        # One compilation per method (each is a different program), then the subset.
        compile_s = sum(
            _time(lambda m=m: single(next(c for c in configs if c[0] is m), chunk, chunk))[0]
            for m in methods
        )
        run_s = sum(_time(lambda c=c: single(c, steps, chunk))[0] for c in subset)
        return compile_s, run_s * len(configs) / len(subset)

    subset_idx = np.unique(np.linspace(0, len(configs) - 1, min(loop_subset, len(configs))))
    subset = [configs[int(i)] for i in subset_idx.astype(int)]
    loop_compile_s, loop_s = timed_loop(subset, chunk)
    # The authors' notebook: one jitted call per training step, a Python loop around it.
    # The same subset: runs freeze after very different numbers of steps.
    _, per_step_s = timed_loop(subset, 1)
    row = {
        "study": name,
        "configs": len(configs),
        "steps": steps,
        # The first call: compilation and a `chunk`-step run of the whole grid.
        f"grid compile + {chunk} steps (s)": compile_s,
        "grid run (s)": grid_s,
        # Per method, compilation and a `chunk`-step run of one configuration, summed.
        f"loop compile + {chunk} steps (s)": loop_compile_s,
        "loop of compiled runs (s)": loop_s,
        "loop of per-step calls (s)": per_step_s,
        "loops timed on": f"{len(subset)} of {len(configs)}"
        + (" (extrapolated)" if len(subset) < len(configs) else ""),
        "speed-up vs compiled runs": loop_s / grid_s,
        "speed-up vs per-step calls": per_step_s / grid_s,
    }
    print(markdown_table([row], precision=2), flush=True)
    return row, result


def linear_solver_comparison(steps: int, seeds: int, bounds, repeats: int = 3):
    """The OMD sweep's grid with `omdx.SmallLU` (the default) vs `lineax.LU` for Newton's
    steps and the adjoint, timed alternately (tol = 0: every run takes every step)."""
    import lineax as lx
    import optimistix as optx

    mdp = tabular.polytope_mdp()
    variants = {
        "omdx.SmallLU": ("newton", "direct"),
        "lineax.LU": (optx.Newton(rtol=1e-10, atol=1e-10, linear_solver=lx.LU()), lx.LU()),
    }

    def run(solver, adjoint):
        return tabular.train(
            mdp,
            methods=[tabular.Method("omd", adjoint=adjoint)],
            seeds=seeds,
            bounds=bounds,
            steps=steps,
            solver=solver,
            tol=0.0,
            chunk=500,
            progress=False,
        )

    times = {name: [] for name in variants}
    for name, args in variants.items():  # compile and warm up
        run(*args)
    for _ in range(repeats):
        for name, args in variants.items():
            times[name].append(_time(lambda args=args: run(*args))[0])
    base = float(np.median(times["omdx.SmallLU"]))
    return [
        {
            "linear solver": name,
            "OMD sweep grid, s (median of 3)": float(np.median(t)),
            "relative to SmallLU": float(np.median(t)) / base,
        }
        for name, t in times.items()
    ]


def design_check(common):
    """DESIGN.md section 3's numbers: 3000 steps, 5 seeds, b in (0.5, 1, 1.5, 3, 6)."""
    bounds = (0.5, 1.0, 1.5, 3.0, 6.0)
    rows, _ = tabular.misspecification_study(seeds=5, bounds=bounds, steps=3000, **common)
    summary = tabular.summarise(rows, ("method", "bound"), ("J",))
    design = {
        ("OMD", 0.5): -0.54,
        ("OMD", 1.0): -0.45,
        ("OMD", 1.5): -0.16,
        ("OMD", 3.0): 0.92,
        ("OMD", 6.0): 1.0268,
        ("MLE", 0.5): -0.83,
        ("MLE", 1.0): -0.73,
        ("MLE", 1.5): -0.52,
        ("MLE", 3.0): 0.61,
        ("MLE", 6.0): 1.0272,
    }
    out = []
    for b in bounds:
        entry = {"bound": b}
        for method in ("OMD", "MLE"):
            row = next(r for r in summary if r["method"] == method and r["bound"] == b)
            entry[f"{method} J (ours)"] = row["J"]
            entry[f"{method} J (DESIGN)"] = design[(method, b)]
        out.append(entry)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grids and budgets")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--loop-subset", type=int, default=None, help="configs timed in the loop")
    parser.add_argument("--studies", default="misspec,bounds,noise,solvers")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--no-design-check", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    seeds = args.seeds or (3 if quick else 10)
    steps = args.steps or (500 if quick else 10_000)
    loop_subset = args.loop_subset or (2 if quick else 6)
    bounds = tuple(np.linspace(0, 6, 5 if quick else 20).tolist())
    sigmas = tuple(np.logspace(-3, 0.5, 4 if quick else 30).tolist())
    common = dict(chunk=500, tol=1e-6, progress=False)  # timed: no bar per run
    out = args.out
    studies = [s for s in args.studies.split(",") if s]
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, float64", flush=True)

    mdp = tabular.polytope_mdp()
    j_star = tabular.optimal_return(mdp)
    rows, sections = [], []
    omd, mle = tabular.Method("omd"), tabular.Method("mle")
    if "misspec" in studies:
        row, _ = bench_study(
            "OMD norm sweep (misspec, OMD only)",
            (omd,),
            {"bounds": bounds},
            steps,
            seeds,
            loop_subset,
            common,
        )
        rows.append(row)
        row, result = bench_study(
            "misspec (OMD + MLE)",
            (omd, mle),
            {"bounds": bounds},
            steps,
            seeds,
            loop_subset,
            common,
        )
        rows.append(row)
        study_rows = tabular._studies._base_rows(result)
        summary = tabular.summarise(study_rows, ("method", "bound"), ("J",))
        write_csv(out / "tabular-misspec.csv", study_rows)
        _plots.plot_misspecification(summary, out / "tabular-misspec.png", j_star)
        sections.append(
            (
                "Expected return vs norm bound (misspec)",
                "tabular-misspec.png",
                summary,
                ["method", "bound", "n", "J", "J_ci95"],
            )
        )
    if "bounds" in studies:
        omd_b = tabular.Method("omd", objective="bellman", label="OMD")
        row, result = bench_study(
            "bounds (OMD-Bellman + MLE)",
            (omd_b, mle),
            {"bounds": bounds},
            steps,
            seeds,
            loop_subset,
            common,
        )
        rows.append(row)
        study_rows = tabular._studies.bounds_rows(mdp, result)
        summary = tabular.summarise(
            study_rows, ("method", "bound"), ("q_error", "omd_bound", "mle_bound")
        )
        write_csv(out / "tabular-bounds.csv", study_rows)
        _plots.plot_bounds(summary, out / "tabular-bounds.png")
        sections.append(
            (
                "Q error and error bounds (bounds)",
                "tabular-bounds.png",
                summary,
                ["method", "bound", "n", "q_error", "omd_bound", "mle_bound"],
            )
        )
    if "noise" in studies:
        methods = tuple(
            tabular.Method("omd", objective="bellman", adjoint=a, label=f"OMD ({a})")
            for a in ("direct", "identity")
        )
        row, result = bench_study(
            "noise (direct + identity)",
            methods,
            {"noises": sigmas},
            steps,
            seeds,
            loop_subset,
            common,
        )
        rows.append(row)
        study_rows = tabular._studies._base_rows(result)
        summary = tabular.summarise(study_rows, ("method", "sigma"), ("J", "bellman_error"))
        write_csv(out / "tabular-noise.csv", study_rows)
        _plots.plot_noise(summary, out / "tabular-noise.png", j_star)
        sections.append(
            (
                "Return under noisy inner solutions (noise)",
                "tabular-noise.png",
                summary,
                ["method", "sigma", "n", "J", "J_ci95", "bellman_error"],
            )
        )

    chunk = min(common["chunk"], steps)
    chunks = -(-steps // chunk)
    calls = f"up to {chunks} call" + ("s" if chunks != 1 else "")
    lines = [
        "# Tabular OMD benchmark",
        "",
        f"`python benchmarks/tabular.py{' --quick' if quick else ''}`: jax {jax.__version__}, "
        f"CPU ({jax.device_count()} device), float64, {seeds} seeds, up to {steps} steps, "
        "freezing tolerance 1e-6, inner solver Newton. Grid = `omdx.tabular.train` on every "
        f"configuration at once, vmapped, as a Python loop of jitted {chunk}-step chunks "
        f"(`lax.scan`; {calls}, stopping after the chunk in which every run has "
        "frozen); loops = a Python loop over configurations, each the same `train` on one "
        f"configuration, either in the same jitted {chunk}-step chunks ({calls} per "
        "configuration: 'compiled runs') or, as the authors' notebook ran, one "
        "jitted call per training step ('per-step calls'); loops are timed on an evenly "
        "spread subset of configurations and extrapolated where marked. Run times exclude "
        f"compilation. 'grid compile + {chunk} steps' is the first call of the grid, with "
        f"`steps` = one chunk: compilation plus a {chunk}-step run of every configuration "
        f"(the timed run reuses its program); 'loop compile + {chunk} steps' is the same "
        "for one configuration of each method (each method is its own program), summed. "
        "Inner linear solves use `omdx.SmallLU` (the default for tabular "
        "problems of up to 16 state-action pairs).",
        "",
        markdown_table(rows, precision=2),
        "",
    ]
    if "solvers" in studies:
        solver_steps = min(steps, 2000)
        solver_rows = linear_solver_comparison(solver_steps, seeds, bounds)
        text = "\n".join(
            [
                "# Tabular OMD: linear solver",
                "",
                f"`python benchmarks/tabular.py --studies solvers`: the OMD norm sweep grid "
                f"({len(bounds)} bounds x {seeds} seeds, {solver_steps} steps, no freezing) "
                "with `omdx.SmallLU` (the default) or `lineax.LU` for Newton's linear solves "
                f"and the adjoint, timed alternately; jax {jax.__version__}, CPU, float64.",
                "",
                markdown_table(solver_rows, precision=2),
                "",
            ]
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "tabular-solvers.md").write_text(text)
        print(text, flush=True)
        if studies == ["solvers"]:
            return 0
    if not args.no_design_check and not quick:
        check = design_check(common)
        lines += ["## DESIGN.md check (3000 steps, 5 seeds)", "", markdown_table(check), ""]
    for title, png, summary, columns in sections:
        lines += [f"## {title}", "", f"![{title}]({png})", "", markdown_table(summary, columns), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tabular.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
