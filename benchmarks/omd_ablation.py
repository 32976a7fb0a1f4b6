"""Why does OMD trail MLE on CartPole? One agent setting changed at a time, same seeds.

Each variant overrides fields of `omdx.AgentConfig` (adjoint, inner steps K, learning
rates, ...) on top of a shared base (by default the misspecified model of the paper's study,
`model_hidden=3`), and trains all seeds in one compiled, vmapped run. Writes
`benchmarks/results/omd_ablation.{md,csv,png}`: final return (mean of the last 5
evaluations), area under the curve and the model's prediction error, per variant.

    python benchmarks/omd_ablation.py                          # CPU budget: 30k steps, 5 seeds
    python benchmarks/omd_ablation.py --steps 200000 --seeds 10   # the paper's budget (GPU)
    python benchmarks/omd_ablation.py --variants "omd" "omd adjoint=cg adjoint_steps=10"
"""

import argparse
import pathlib
import time


RESULTS = pathlib.Path(__file__).parent / "results"
FINAL_EVALS = 5
DEFAULT_VARIANTS = [
    "mle",
    "omd",
    "mle inner_steps=5",
    "omd inner_steps=5",
    "omd adjoint=cg adjoint_steps=10",
    "omd model_lr=0.0003",
    "omd model_lr=0.003",
]


def parse_variant(text: str) -> tuple[str, dict]:
    """`"omd adjoint=cg adjoint_steps=10"` -> `("omd", {"adjoint": "cg", "adjoint_steps": 10})`."""
    agent, *assignments = text.split()
    overrides = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if not value:
            raise ValueError(f"Variant {text!r}: expected name=value, got {assignment!r}.")
        if value in ("True", "False"):
            overrides[name] = value == "True"
            continue
        for cast in (int, float):
            try:
                overrides[name] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[name] = value
    return agent, overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--model-hidden", type=int, default=3)
    parser.add_argument("--distractors", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--out", default=str(RESULTS / "omd_ablation"))
    args = parser.parse_args()

    import jax

    import omdx
    from omdx._report import markdown_table, plot_curves, run_summary, write_csv

    variants = [(text, *parse_variant(text)) for text in args.variants]
    # Every variant's config is built (and validated) before the first run starts.
    configs = {
        text: omdx.AgentConfig(agent=agent, model_hidden=args.model_hidden, **overrides)
        for text, agent, overrides in variants
    }
    env = omdx.envs.make("CartPole-v1", distractors=args.distractors)
    train_config = omdx.TrainConfig(steps=args.steps, eval_every=1000, evals_per_chunk=5)
    out = pathlib.Path(args.out)
    header = (
        "# OMD ablation on CartPole-v1\n\n"
        f"`python benchmarks/omd_ablation.py --steps {args.steps} --seeds {args.seeds} "
        f"--model-hidden {args.model_hidden} --distractors {args.distractors}`: each row "
        "changes the named `AgentConfig` fields from the paper's defaults; final return is the "
        f"mean of the last {FINAL_EVALS} evaluations (10 greedy episodes each), AUC the mean "
        f"return over the run, mean ± 95% interval over {args.seeds} seeds (the same seeds "
        f"for every row); model MSE is the prediction error of s' on real data at the end; "
        f"`s` is wall-clock seconds including compilation. jax {jax.__version__} on "
        f"{jax.devices()[0].platform}.\n\n![curves](omd_ablation.png)\n\n"
    )
    rows, table, curves = [], [], {}
    for text, config in configs.items():
        start = time.perf_counter()
        result = omdx.train(env, config, train_config, seeds=args.seeds)
        seconds = time.perf_counter() - start
        summary = run_summary(result, FINAL_EVALS)
        curves[text] = (result.eval_steps, result.eval_returns)
        table.append(
            {
                "variant": text,
                "final return": (
                    f"{summary['final_return_mean']:.1f} ± {summary['final_return_ci95']:.1f}"
                ),
                "AUC": f"{summary['auc_mean']:.1f} ± {summary['auc_ci95']:.1f}",
                "model MSE": f"{summary['final_model_error_mean']:.3g}",
                "s": round(seconds),
            }
        )
        for i, seed in enumerate(result.seeds):
            for j, step in enumerate(result.eval_steps):
                rows.append(
                    {
                        "variant": text,
                        "seed": int(seed),
                        "step": int(step),
                        "eval_return": float(result.eval_returns[i, j]),
                        **{k: float(v[i, j]) for k, v in result.metrics.items()},
                    }
                )
        print(f"{text}: {table[-1]}", flush=True)
        # Written after every variant, so that an interrupted run keeps what it finished.
        write_csv(f"{out}.csv", rows)
        plot_curves(
            f"{out}.png",
            curves,
            title=f"CartPole-v1, model hidden {args.model_hidden}, {args.distractors} distractors",
        )
        pathlib.Path(f"{out}.md").write_text(header + markdown_table(table) + "\n")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
