"""OMD, MLE and VEP beyond CartPole: Pendulum-v1 through discrete torques.

Each setting is one `omdx compare` run (the command line, so its `compare.md` and
`curves.png` are the command's own), with `--action-bins 5` and the paper's CartPole
settings otherwise. Writes `benchmarks/results/pendulum.md` (every setting's table, the
command that made it, each seed's final return, the step at which each diverged seed
first went non-finite, and the model-loss statistics that explain OMD at K = 1) with one
`benchmarks/results/pendulum_<setting>.png` per setting, and a uniformly random policy's
return for scale. The runs' folders go under `--work` (agents, metrics, summaries).

    python benchmarks/pendulum.py                       # 100 000 steps, 4 seeds: ~40 min, 2 CPUs
    python benchmarks/pendulum.py --only k1 k5          # some settings
    python benchmarks/pendulum.py --steps 200000 --seeds 10   # a larger budget (GPU)
"""

import argparse
import csv
import math
import pathlib
import shutil
import time


RESULTS = pathlib.Path(__file__).parent / "results"
# name -> (what it asks, the `omdx compare` options beyond the shared ones)
SETTINGS = {
    "k1": ("the paper's K = 1, 32-unit model", []),
    "k5": ("K = 5, 32-unit model", ["--inner-steps", "5"]),
    "k5_h8": ("K = 5, 8-unit model", ["--agents", "omd", "mle", "--inner-steps", "5",
                                      "--model-hidden", "8"]),
    "k5_h4": ("K = 5, 4-unit model", ["--agents", "omd", "mle", "--inner-steps", "5",
                                      "--model-hidden", "4"]),
    "k5_h3": ("K = 5, 3-unit model", ["--agents", "omd", "mle", "--inner-steps", "5",
                                      "--model-hidden", "3"]),
    "k1_bounded": ("OMD at K = 1 with bounded predictions",
                   ["--agents", "omd", "--bound-predictions"]),
    "k1_cg": ("OMD at K = 1 with 10 steps of truncated CG",
              ["--agents", "omd", "--adjoint", "cg", "--adjoint-steps", "10"]),
}  # fmt: skip


def random_policy_returns(episodes: int) -> list[float]:
    """Undiscounted returns of uniformly random torques on gymnasium's Pendulum-v1, episode
    `i` reset with seed `i`."""
    import gymnasium

    env = gymnasium.make("Pendulum-v1")
    env.action_space.seed(0)
    returns = []
    for episode in range(episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def seed_details(agent_dir: pathlib.Path) -> list[str]:
    """One line per seed: its final return, or the step at which it first went
    non-finite (the run kept going, `--keep-going`), from the run's `metrics.csv`."""
    with (agent_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    random_steps = min(int(r["step"]) for r in rows)  # its window made no update: NaN
    lines = []
    for seed in sorted({int(r["seed"]) for r in rows}):
        mine = [r for r in rows if int(r["seed"]) == seed]
        broken = [
            int(r["step"])
            for r in mine
            if int(r["step"]) > random_steps
            and not all(math.isfinite(float(r[k])) for k in ("eval_return", "q_real_loss"))
        ]
        finite = [float(r["eval_return"]) for r in mine if math.isfinite(float(r["eval_return"]))]
        if broken:
            lines.append(
                f"seed {seed}: non-finite from step {min(broken)}; best return before: "
                f"{max(finite):.1f}"
            )
        else:
            lines.append(f"seed {seed}: final return {float(mine[-1]['eval_return']):.1f}")
    return lines


def metric_range(agent_dir: pathlib.Path, name: str) -> tuple[float, float]:
    """The smallest and largest finite value of a metric over seeds and evaluation
    windows after the first 10% of the run."""
    with (agent_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    last = max(int(r["step"]) for r in rows)
    values = [
        float(r[name])
        for r in rows
        if int(r["step"]) > last // 10 and math.isfinite(float(r[name]))
    ]
    return min(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--work", default="runs/pendulum", help="the runs' folders")
    parser.add_argument("--out", default=str(RESULTS / "pendulum.md"))
    args = parser.parse_args()

    from omdx.cli import main as omdx_main

    work, out = pathlib.Path(args.work), pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shared = ["--env", "Pendulum-v1", "--action-bins", "5", "--steps", str(args.steps)]
    shared += ["--seeds", str(args.seeds), "--keep-going", "--no-progress"]
    random_returns = random_policy_returns(100)
    mean = sum(random_returns) / len(random_returns)
    ordered = sorted(random_returns)
    sections = [
        "# Pendulum-v1 through 5 discrete torques\n",
        f"`python benchmarks/pendulum.py --steps {args.steps} --seeds {args.seeds}`; each "
        "setting is the `omdx compare` command given under it, and its table is that "
        "command's `compare.md`. With `--keep-going`, a seed that goes non-finite does not "
        "stop the others; its statistics leave it out, and the lines under the table give "
        "the step it went non-finite.\n",
        f"A uniformly random policy returns {mean:.1f} on average over 100 episodes (10% to "
        f"90% of them between {ordered[10]:.1f} and {ordered[89]:.1f}).\n",
    ]
    for name in args.only:
        question, options = SETTINGS[name]
        folder = work / name
        argv = ["compare", *shared, *options, "--out", str(folder)]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: omdx {' '.join(argv)}", flush=True)
        omdx_main(argv)
        table = (folder / "compare.md").read_text().split("\n", 1)[1].strip()
        sections.append(f"## {name}: {question}\n\n`omdx {' '.join(argv)}`\n\n{table}\n")
        agents = [
            folder / a for a in ("omd", "mle", "vep") if (folder / a / "metrics.csv").exists()
        ]
        for agent_dir in agents:
            details = "; ".join(seed_details(agent_dir))
            sections.append(f"- {agent_dir.name}: {details}.")
            if name == "k1":
                low, high = metric_range(agent_dir, "model_grad_norm")
                r_low, r_high = metric_range(agent_dir, "reward_error")
                sections.append(
                    f"  Model gradient norm {low:.3g} to {high:.3g}; reward error (squared) "
                    f"{r_low:.3g} to {r_high:.3g}."
                )
        sections.append("")
        shutil.copy(folder / "curves.png", out.parent / f"pendulum_{name}.png")
    out.write_text("\n".join(sections) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
