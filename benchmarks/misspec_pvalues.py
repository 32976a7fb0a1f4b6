"""Two agents per setting of the misspecification study (OMD vs MLE by default): a
two-sided permutation test on the per-seed final returns written by `cartpole_misspec.py`.

    python benchmarks/misspec_pvalues.py benchmarks/results/cartpole_misspec_k5_small.csv
    # agents run into separate CSVs (same seeds, steps and K), pooled into one table:
    cd benchmarks/results
    python ../misspec_pvalues.py --agents vep mle --merge \
        cartpole_misspec_k5_vep.csv cartpole_misspec_k5_small.csv

The final return of a seed is the mean of its last 5 evaluations (as in the study's
tables). The test statistic is the difference of the two agents' mean final returns; the
p-value is the share of all relabellings of the pooled seeds (every split into two groups
of the original sizes; a seeded sample of 200 000 of them past a million) whose
difference is at least as large in absolute value.
"""

import argparse
import csv
import pathlib
import sys

import numpy as np

from omdx._report import (
    format_p,
    p_value_method,
    permutation_is_exact,
    permutation_p_value,
)


FINAL_EVALS = 5


def read_curves(path) -> dict:
    """`{(model_hidden, distractors, agent): {seed: [(step, return, real-data Bellman loss
    or None), ...] in step order}}` from one CSV written by `cartpole_misspec.py` (older
    CSVs have no loss column)."""
    curves = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (int(row["model_hidden"]), int(row["distractors"]), row["agent"])
            loss = row.get("q_real_loss")
            point = (
                int(row["step"]),
                float(row["eval_return"]),
                float(loss) if loss not in (None, "") else None,
            )
            curves.setdefault(key, {}).setdefault(int(row["seed"]), []).append(point)
    for seeds in curves.values():
        for curve in seeds.values():
            curve.sort(key=lambda point: point[0])
    return curves


def final_returns(path) -> dict:
    """`{(model_hidden, distractors, agent): per-seed final returns}` from one CSV."""
    return {
        key: np.array(
            [np.mean([r for _, r, _ in curve[-FINAL_EVALS:]]) for _, curve in sorted(seeds.items())]
        )
        for key, seeds in read_curves(path).items()
    }


def merged_final_returns(paths) -> dict:
    """`final_returns` of several CSVs pooled. A setting and agent in two of them is an
    error (which would be meant?), unless both hold the same per-seed final returns: a
    deterministic rerun of the same run, kept beside another setting of its study."""
    merged, source = {}, {}
    for path in paths:
        for key, values in final_returns(path).items():
            if key in merged and np.array_equal(merged[key], values):
                continue
            if key in merged:
                raise ValueError(
                    f"model_hidden={key[0]}, distractors={key[1]}, agent {key[2]!r} is in both "
                    f"{source[key]} and {path} with different final returns: pool only CSVs of "
                    "different agents or settings."
                )
            merged[key], source[key] = values, path
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="CSVs written by cartpole_misspec.py")
    parser.add_argument(
        "--agents", nargs=2, default=["omd", "mle"], metavar=("A", "B"), help="the two agents"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="pool the CSVs into one set of settings (default: each CSV on its own)",
    )
    parser.add_argument("--out", default=None, help="also write the table to this .md file")
    args = parser.parse_args()
    a, b = args.agents
    lines = [
        f"| results | model_hidden | distractors | {a} final | {b} final | {a} - {b} | p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    if args.merge:
        name = "+".join(pathlib.Path(p).stem for p in args.csv)
        groups = [(name, merged_final_returns(args.csv))]
    else:
        groups = [(pathlib.Path(p).stem, final_returns(p)) for p in args.csv]
    exact = []
    for name, finals in groups:
        for hidden, distractors in sorted({(h, d) for h, d, _ in finals}):
            first = finals.get((hidden, distractors, a))
            second = finals.get((hidden, distractors, b))
            if first is None or second is None:
                continue
            p = permutation_p_value(first, second)
            exact.append(permutation_is_exact(len(first), len(second)))
            lines.append(
                f"| {name} | {hidden} | {distractors} | {first.mean():.1f} | "
                f"{second.mean():.1f} | {first.mean() - second.mean():+.1f} | "
                f"{format_p(p, exact[-1])} |"
            )
    text = "\n".join(lines)
    description = p_value_method(exact)
    print(text)
    if not all(exact):
        print(f"\np: {description}.")
    if args.out:
        pathlib.Path(args.out).write_text(
            f"# {a.upper()} vs {b.upper()}: permutation tests\n\n"
            "`python benchmarks/misspec_pvalues.py "
            + " ".join(sys.argv[1:])
            + f"`: {description}, on the per-seed final returns (mean of "
            f"the last {FINAL_EVALS} evaluations).\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
