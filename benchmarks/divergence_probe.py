"""Why a seed diverges on CartPole: Q bootstraps from its own extrapolation.

The K = 5 misspecification study lost VEP's seed 1 with the 8-unit model: its Bellman
losses grew about tenfold per 1 000 steps and overflowed near step 19 000 (and OMD lost
seeds of the full 32-unit model at 200 000 steps the same way). This script reruns a
setting (the same seeds, split over the cores as the study split them) and probes every
seed's state part of the way in:

- The agent's model predicts next states that often lie outside CartPole's termination region
  (|x| > 2.4 or |theta| > 12 degrees) for transitions that did not terminate. Q is trained
  only at real states, which lie inside it, so the target network's value at such a model
  next state is the Q-network's extrapolation, which no loss constrains.
- The Q-learning targets on model data bootstrap from those values. Where the
  extrapolation lies above the real next state's value, each update raises Q at real
  states, which raises the extrapolation further.

The probe samples real transitions from each seed's buffer and reports, for the
non-terminal ones, the share whose model next state lies outside the region and the mean of
V(model s') - V(real s') (the target network's soft value) on either side of it. The
`--contrast` agents (MLE by default) are probed at the same step.

    python benchmarks/divergence_probe.py                # VEP: about 6 minutes on 2 CPU cores
    python benchmarks/divergence_probe.py --steps 6000   # a shorter trajectory
    python benchmarks/divergence_probe.py --agent omd --model-hidden 32 --inner-steps 1 \
        --likelihood-weight 0.1 --steps 65000 --probe-step 45000
"""

import argparse
import math
import pathlib


RESULTS = pathlib.Path(__file__).parent / "results"
PROBE_TRANSITIONS = 4096
# Per evaluation window, in the trajectory CSV: the Bellman losses on model and real data,
# the model's error on real next states and its gradient's norm (OMD's implicit gradient).
TRAJECTORY_METRICS = ("q_model_loss", "q_real_loss", "model_error", "model_grad_norm")


def probe(agent, buffer, key, config, x_threshold: float, theta_threshold: float):
    """Statistics of one seed's model and Q-network on `PROBE_TRANSITIONS` real
    transitions from its buffer (a dict of scalars)."""
    import jax
    import jax.numpy as jnp

    import omdx
    from omdx.agents import model_predictions, state_value

    batch = omdx.buffer_sample(buffer, key, PROBE_TRANSITIONS)
    # The next states as the agent uses them (bounded if its config bounds them).
    model_next, _ = model_predictions(agent.model, batch, config)

    def value(observations):
        return state_value(jax.vmap(agent.q_target)(observations), config)

    gap = value(model_next) - value(batch.next_observation)
    q_values = jnp.min(jax.vmap(agent.q)(batch.observation), axis=-2)
    q_taken = jnp.take_along_axis(q_values, batch.action[:, None], axis=-1)[:, 0]
    outside = (jnp.abs(model_next[:, 0]) > x_threshold) | (
        jnp.abs(model_next[:, 2]) > theta_threshold
    )
    live = ~batch.terminated

    def mean_over(mask, x):
        return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

    return {
        "Q(s, a)": jnp.mean(q_taken),
        "V(real s')": mean_over(live, value(batch.next_observation)),
        "model s' outside": jnp.sum(live & outside) / jnp.maximum(jnp.sum(live), 1),
        "V gap outside": mean_over(live & outside, gap),
        "V gap inside": mean_over(live & ~outside, gap),
        "model MSE": jnp.mean(jnp.sum((model_next - batch.next_observation) ** 2, axis=-1)),
    }


def probe_seeds(result, config, params) -> list[dict]:
    """`probe` on every seed of a `omdx.TrainResult` (`params`: CartPole's
    parameters, for the termination region): one dict of floats per seed."""
    import equinox as eqx
    import jax.random as jr
    import numpy as np

    state = result.final_state
    keys = jr.split(jr.PRNGKey(0), len(result.seeds))
    stats = eqx.filter_jit(
        eqx.filter_vmap(
            lambda agent, buffer, key: probe(
                agent,
                buffer,
                key,
                config,
                params.x_threshold,
                params.theta_threshold_radians,
            )
        )
    )(state.agent, state.buffer, keys)
    return [
        {k: float(np.asarray(v)[i]) for k, v in stats.items()} for i in range(len(result.seeds))
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="vep", choices=("omd", "vep"), help="the agent traced")
    parser.add_argument("--steps", type=int, default=20_000, help="length of the trajectory run")
    parser.add_argument("--probe-step", type=int, default=4_000, help="where the seeds are probed")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--model-hidden", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument(
        "--likelihood-weight", type=float, default=0.0, help="the traced agent's beta"
    )
    parser.add_argument(
        "--contrast", nargs="*", default=["mle"], help="agents probed beside the traced one"
    )
    parser.add_argument(
        "--out", default=None, help="output prefix (default results/AGENT_divergence)"
    )
    args = parser.parse_args()
    if args.probe_step % 1000 or not 0 < args.probe_step < args.steps:
        parser.error("--probe-step must be a multiple of 1000 below --steps")

    from omdx.cli import _use_cpu_devices

    _use_cpu_devices(None)  # one device per core, as the study ran
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import omdx
    from omdx._report import markdown_table, write_csv
    from omdx._train import _updated_windows
    from omdx.envs._func import _cartpole

    params = _cartpole()[1]  # the parameters of omdx's CartPole-v1: its termination region
    env = omdx.envs.make("CartPole-v1")
    traced = args.agent
    configs = {
        agent: omdx.AgentConfig(
            agent=agent,
            model_hidden=args.model_hidden,
            inner_steps=args.inner_steps,
            likelihood_weight=args.likelihood_weight if agent == traced else 0.0,
        )
        for agent in [traced, *args.contrast]
    }

    def train(config, steps):
        train_config = omdx.TrainConfig(steps=steps, eval_every=1000, evals_per_chunk=5)
        try:
            return omdx.train(env, config, train_config, seeds=args.seeds), None
        except omdx.TrainingDiverged as e:
            return e.result, e.diverged

    # The whole trajectory of the traced agent: which seeds diverge, and how their Q loss
    # grows.
    trajectory, diverged = train(configs[traced], args.steps)
    diverged = np.zeros(args.seeds, bool) if diverged is None else np.asarray(diverged)
    q_loss = trajectory.metrics["q_model_loss"]
    rows = []
    for agent, config in configs.items():
        probed, probe_diverged = train(config, args.probe_step)
        if probe_diverged is not None:
            raise SystemExit(f"{agent} diverged before --probe-step {args.probe_step}")
        for i, (seed, stats) in enumerate(zip(probed.seeds, probe_seeds(probed, config, params))):
            row = {"agent": agent, "seed": int(seed)}
            if agent == traced:  # the same seeds, in the same order, as `trajectory`
                values = [trajectory.eval_returns[i], *(v[i] for v in trajectory.metrics.values())]
                # The windows before the first update hold NaN by design.
                learning = _updated_windows(
                    trajectory.eval_steps, omdx.TrainConfig().learning_starts
                )
                bad = ~np.isfinite(np.stack(values)).all(axis=0) & learning
                row["diverged"] = (
                    f"by step {int(trajectory.eval_steps[bad][0])}" if diverged[i] else "no"
                )
                row[f"Q loss at {args.probe_step}"] = float(probed.metrics["q_model_loss"][i, -1])
                finite = np.isfinite(q_loss[i])
                row["largest finite Q loss"] = float(np.max(q_loss[i][finite]))
            rows.append({**row, **stats})
        print(markdown_table(rows[-len(probed.seeds) :], precision=3), flush=True)

    out = pathlib.Path(args.out or RESULTS / f"{traced}_divergence")
    write_csv(f"{out}.csv", rows)
    write_csv(
        f"{out}_trajectory.csv",
        [
            {
                "seed": int(seed),
                "step": int(step),
                "eval_return": float(trajectory.eval_returns[i, j]),
                **{name: float(trajectory.metrics[name][i, j]) for name in TRAJECTORY_METRICS},
            }
            for i, seed in enumerate(trajectory.seeds)
            for j, step in enumerate(trajectory.eval_steps)
        ],
    )
    figure, axis = plt.subplots(figsize=(7, 4))
    for seed in range(args.seeds):
        axis.semilogy(
            trajectory.eval_steps,
            np.where(q_loss[seed] > 0, q_loss[seed], np.nan),  # 0 before the first update
            color="tab:red" if diverged[seed] else "tab:gray",
            label=f"seed {seed} (diverged)" if diverged[seed] else None,
            alpha=1.0 if diverged[seed] else 0.6,
        )
    axis.set_xlabel("environment step")
    axis.set_ylabel("Q loss on model data (window mean)")
    beta = f", beta = {args.likelihood_weight:g}" if args.likelihood_weight else ""
    axis.set_title(
        f"{traced.upper()}, model hidden {args.model_hidden}, K = {args.inner_steps}{beta}"
    )
    if diverged.any():
        axis.legend()
    figure.tight_layout()
    figure.savefig(f"{out}.png", dpi=120)
    plt.close(figure)
    name = traced.upper()
    header = (
        f"# Why a {name} seed diverges\n\n"
        f"`python benchmarks/divergence_probe.py --agent {traced} --steps {args.steps} "
        f"--probe-step {args.probe_step} --seeds {args.seeds} --model-hidden "
        f"{args.model_hidden} --inner-steps {args.inner_steps} --likelihood-weight "
        f"{args.likelihood_weight:g}`: CartPole-v1, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}. {name} is trained for {args.steps} steps (its Q loss "
        f"on model data, per evaluation window, is plotted), and every agent is trained "
        f"again to step {args.probe_step}, where {PROBE_TRANSITIONS} real transitions from "
        "each seed's buffer are probed. On the non-terminal ones: `model s' outside` is the "
        "share whose model next state lies outside CartPole's termination region "
        f"(|x| > {params.x_threshold} or "
        f"|theta| > {math.degrees(params.theta_threshold_radians):.0f} degrees), where the "
        "Q-network was never trained; `V gap` is the mean of V(model s') - V(real s') (the "
        "target network's soft value) where the model's next state lies outside or inside "
        "the region. "
        "`Q(s, a)` is the mean of min(Q1, Q2) at the real (s, a); `model MSE` the squared "
        "error of the model's next state. "
        f"`{out.name}_trajectory.csv` holds each seed's return and window means of "
        f"{', '.join(TRAJECTORY_METRICS)} over the trajectory run.\n\n"
        f"![Q loss]({out.name}.png)\n\n"
    )
    out.with_suffix(".md").write_text(header + markdown_table(rows, precision=3) + "\n")
    print(f"wrote {out}.md, {out}.csv, {out}_trajectory.csv, {out}.png")


if __name__ == "__main__":
    main()
