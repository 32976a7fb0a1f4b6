"""What `omdx.train` spends besides training: compiling, and writing checkpoints.

1. Compilation. `omdx.train` passes `gamma`, `target_update`, `q_lr`, `model_lr` and
   `epsilon` as arrays, so calls that differ only in them share one compiled run; a new
   `temperature` (or network size) compiles again. A sequence of short OMD runs on
   CartPole, in one process, each with the XLA compilation time JAX reports for it.
2. Checkpoints. `checkpoint=` writes every seed's whole state (its replay buffer
   included) after each chunk. The paper's buffer (200 000 transitions) and networks,
   for 1 and 10 seeds: the file's size and the seconds to write it, beside the seconds of
   the chunk of 5 000 environment steps (the default `evals_per_chunk`) it follows.

    python benchmarks/run_overheads.py            # about 3 minutes on 2 CPU cores

Writes `benchmarks/results/run_overheads.md`.
"""

import argparse
import dataclasses
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine_description
from jax import monitoring


RESULTS = pathlib.Path(__file__).parent / "results"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_seconds = [0.0]


def _count_compilation(name: str, seconds: float, **kwargs) -> None:
    if name == _COMPILE_EVENT:
        _compile_seconds[0] += seconds


def compilation_table(env, steps: int) -> list[dict]:
    import omdx

    base = omdx.AgentConfig()
    run = omdx.TrainConfig(
        steps=steps, random_steps=1_000, eval_every=1_000, eval_episodes=2, evals_per_chunk=steps
    )
    calls = [
        ("first call (defaults)", base, run),
        ("q_lr 1e-3", dataclasses.replace(base, q_lr=1e-3), run),
        ("model_lr 3e-4, gamma 0.95", dataclasses.replace(base, model_lr=3e-4, gamma=0.95), run),
        ("target_update 0.005", dataclasses.replace(base, target_update=0.005), run),
        ("epsilon 0.2", base, dataclasses.replace(run, epsilon=0.2)),
        ("temperature 0.02 (a constant)", dataclasses.replace(base, temperature=0.02), run),
        ("model_hidden 8 (a shape)", dataclasses.replace(base, model_hidden=8), run),
    ]
    rows = []
    for name, agent_config, train_config in calls:
        _compile_seconds[0] = 0.0
        start = time.perf_counter()
        omdx.train(env, agent_config, train_config, seeds=1, progress=False)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "call": name,
                "seconds": f"{seconds:.2f}",
                "of which XLA compilation": f"{_compile_seconds[0]:.2f}",
            }
        )
        print(rows[-1])
    return rows


def checkpoint_table(env, seed_counts: list[int], chunk_steps: int, rounds: int) -> list[dict]:
    import omdx
    from omdx._checkpoint import save_checkpoint
    from omdx._train import _fresh_runs, _run_chunk, _RunPlan, errors_off

    rows = []
    for seeds in seed_counts:
        # The paper's run, 200 000 steps (so a 200 000-transition buffer per seed).
        run = omdx.TrainConfig(evals_per_chunk=chunk_steps // 1_000)
        agent_config = omdx.AgentConfig()
        plan = _RunPlan.of(seeds, None, agent_config, run)
        runner = plan.runner(env)
        runs = _fresh_runs(runner, plan)
        iterations = chunk_steps // run.eval_every
        chunk_seconds, save_seconds = [], []
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / "run.npz"
            history = np.zeros((seeds, 1))
            for chunk in range(rounds + 1):  # the first compiles (and starts with random steps)
                start = time.perf_counter()
                with errors_off():
                    first_step = jnp.asarray(chunk * chunk_steps)
                    runs, out = _run_chunk(runner, runs, first_step, iterations)
                    jax.block_until_ready(out)
                middle = time.perf_counter()
                save_checkpoint(path, {}, {}, runs, np.zeros(1), history, {})
                end = time.perf_counter()
                if chunk:
                    chunk_seconds.append(middle - start)
                    save_seconds.append(end - middle)
            size = path.stat().st_size
        chunk_s, save_s = statistics.median(chunk_seconds), statistics.median(save_seconds)
        rows.append(
            {
                "seeds": seeds,
                "checkpoint MB": f"{size / 1e6:.1f}",
                f"chunk of {chunk_steps} steps (s)": f"{chunk_s:.2f}",
                "writing the checkpoint (s)": f"{save_s:.3f}",
                "writing / chunk": f"{save_s / chunk_s:.3f}",
            }
        )
        print(rows[-1])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2_000, help="steps of each compile call")
    parser.add_argument("--seed-counts", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--chunk-steps", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3, help="timed chunks per seed count")
    parser.add_argument("--out", default=str(RESULTS / "run_overheads.md"))
    args = parser.parse_args()
    monitoring.register_event_duration_secs_listener(_count_compilation)

    import omdx
    from omdx._report import markdown_table

    env = omdx.envs.make("CartPole-v1")
    compiles = compilation_table(env, args.steps)
    checkpoints = checkpoint_table(env, args.seed_counts, args.chunk_steps, args.rounds)
    command = (
        f"python benchmarks/run_overheads.py --steps {args.steps} --seed-counts "
        + " ".join(map(str, args.seed_counts))
        + f" --chunk-steps {args.chunk_steps} --rounds {args.rounds}"
    )
    text = "\n".join(
        [
            "# What omdx.train spends besides training",
            "",
            f"`{command}`: {machine_description()}, float32.",
            "",
            f"## Compilation: OMD on CartPole, {args.steps} steps per call, one process, in order",
            "",
            "Each call's wall time and the XLA compilation time JAX reports within it. The "
            "calls after the first change only values `omdx.train` passes as arrays, until "
            "the temperature (compiled in as a constant) and a network size.",
            "",
            markdown_table(compiles),
            "",
            "## Checkpoints: the paper's run (200 000-transition buffer per seed)",
            "",
            f"Median of {args.rounds} chunks after the first: the chunk's seconds, then the "
            "seconds to write its checkpoint (to the system's temporary folder, flushed to "
            "disk), as `omdx.train(..., checkpoint=)` does after each chunk.",
            "",
            markdown_table(checkpoints),
            "",
        ]
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
