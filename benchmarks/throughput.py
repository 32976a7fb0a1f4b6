"""Environment steps per second of OMD/MLE/VEP training on CartPole, five ways, side by side.

(a) the host loop (`omdx.train_host`): gymnasium `CartPole-v1` stepped in Python, one
    jitted update per step (the architecture of the authors' code); (b) the compiled run
    (`omdx.train`'s chunk function), one seed; (c) the compiled run vmapped over 4, 16, 64
    seeds (aggregate), on one device and split over the CPU devices (one per core); (d) the
    updates alone on a pre-filled buffer (the compute ceiling); and the cost of one update
    of each agent and adjoint relative to MLE.

    python benchmarks/throughput.py            # float32, paper settings, about 10 minutes
    python benchmarks/throughput.py --quick    # a smoke run
    python benchmarks/throughput.py --x64      # float64 (the paper's precision)
"""

import argparse
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import cpu_description, xla_flops


RESULTS = pathlib.Path(__file__).parent / "results"


def interleaved_seconds(timers: dict, rounds: int) -> dict:
    """Call each of `timers` (functions that run one timed call and return its seconds)
    once per round for `rounds` rounds, so that a slow spell of the machine hits every
    setting alike. Returns `{name: [seconds, ...]}`."""
    seconds = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timed in timers.items():
            seconds[name].append(timed())
    return seconds


RANDOM_STEPS = 1000


def prepared_compiled_run(
    env, agent_config, seeds: int, steps: int, rounds: int, train_config_kwargs, devices=1
):
    """(b)/(c): the compiled run vmapped over `seeds`, the seeds split over the first
    `devices` devices as `omdx.train` splits them, compiled and run past its random steps.
    Returns `timed_chunk`: each call runs the next chunk of `steps` environment steps (at
    most `rounds` calls) and returns its seconds."""
    from omdx._train import (
        _fresh_runs,
        _place_seeds,
        _run_chunk,
        _RunPlan,
        errors_off,
        TrainConfig,
    )

    warm_up = -(-RANDOM_STEPS // steps)  # chunks until every timed step has an update
    tc = TrainConfig(
        steps=(warm_up + rounds) * steps,
        eval_every=steps,
        random_steps=RANDOM_STEPS,
        evals_per_chunk=1,
        **train_config_kwargs,
    )
    plan = _RunPlan.of(seeds, None, agent_config, tc)  # as `omdx.train` sets a run up
    runner = plan.runner(env)
    runs = _fresh_runs(runner, plan)
    runs, shards = _place_seeds(runs, jax.local_devices()[:devices])
    chunk = 0

    def next_chunk():
        nonlocal runs, chunk
        with errors_off():
            runs, out = _run_chunk(runner, runs, jnp.asarray(chunk * steps), 1, shards)
            jax.block_until_ready(out)
        chunk += 1

    for _ in range(warm_up):  # compilation, and the buffer filled past `learning_starts`
        next_chunk()

    def timed_chunk():
        start = time.perf_counter()
        next_chunk()
        return time.perf_counter() - start

    return timed_chunk


def prepared_updates(env, agent_config, steps: int, batch_size: int):
    """(d): `steps` agent updates in a `lax.scan` on a pre-filled buffer, no environment,
    compiled. Returns `(timed, flops)`: `timed()` runs them once and returns the seconds;
    `flops` is XLA's count of floating-point operations in one update."""
    from omdx import buffer_add, buffer_init, buffer_sample, init_agent, Transition
    from omdx._train import errors_off, filter_scan
    from omdx.agents import agent_step

    key = jr.PRNGKey(0)
    obs_size = env.observation_size
    n = 10_000
    k = jr.split(key, 4)
    example = Transition(
        jnp.zeros(obs_size),
        jnp.array(0, jnp.int32),
        jnp.zeros(()),
        jnp.zeros(obs_size),
        jnp.array(False),
    )
    buffer = buffer_init(n, example)
    data = Transition(
        jr.normal(k[0], (n, obs_size)),
        jr.randint(k[1], (n,), 0, 2),
        jnp.ones(n),
        jr.normal(k[2], (n, obs_size)),
        jnp.zeros(n, bool),
    )
    buffer = jax.lax.fori_loop(
        0, n, lambda i, b: buffer_add(b, jax.tree.map(lambda x: x[i], data)), buffer
    )
    agent = init_agent(k[3], env, agent_config)

    @eqx.filter_jit
    def run(agent, buffer, key):
        def body(carry, key):
            agent = carry
            batch = buffer_sample(buffer, key, batch_size)
            agent, metrics = agent_step(agent, batch, agent_config)
            return agent, metrics["model_loss"]

        return filter_scan(body, agent, jr.split(key, steps))

    # XLA's cost analysis counts a loop body once, so count one update on its own.
    arrays, static = eqx.partition(agent, eqx.is_array)

    def one_update(arrays, batch):
        new_agent, metrics = agent_step(eqx.combine(arrays, static), batch, agent_config)
        return eqx.filter(new_agent, eqx.is_array), metrics

    batch = buffer_sample(buffer, key, batch_size)
    flops = xla_flops(one_update, arrays, batch)

    def timed():
        start = time.perf_counter()
        with errors_off():
            jax.block_until_ready(run(agent, buffer, key))
        return time.perf_counter() - start

    timed()  # compilation
    return timed, flops


def update_costs(env, configs: dict, steps: int, batch_size: int, rounds: int):
    """Seconds per update of each config, timed in interleaved rounds, and XLA's FLOP
    count of one update. Returns `{name: (median seconds, min seconds, flops)}`."""
    prepared = {name: prepared_updates(env, c, steps, batch_size) for name, c in configs.items()}
    seconds = interleaved_seconds({name: timed for name, (timed, _) in prepared.items()}, rounds)
    return {
        name: (np.median(seconds[name]) / steps, np.min(seconds[name]) / steps, flops)
        for name, (_, flops) in prepared.items()
    }


def host_loop(agent_config, steps: int, batch_size: int, seeds: int = 1):
    """(a): `omdx.train_host` on gymnasium `CartPole-v1`, stepped in Python with jitted
    acting and updates, `seeds` seeds in lockstep. Its rate over `steps` learning steps is
    the time of a run of `RANDOM_STEPS + 1 + steps` environment steps less that of a run of
    `RANDOM_STEPS + 1` (the same random steps and buffer size, compilation already cached),
    times `seeds` (aggregate). Each run ends with one evaluation episode per seed, which
    costs under 1% of the longer run."""
    from omdx import train_host, TrainConfig

    def seconds(learning_steps):
        total = RANDOM_STEPS + learning_steps
        tc = TrainConfig(
            steps=total,
            eval_every=total,
            eval_episodes=1,
            random_steps=RANDOM_STEPS,
            batch_size=batch_size,
            buffer_size=RANDOM_STEPS + 1 + steps,  # one buffer shape: one compilation
        )
        start = time.perf_counter()
        train_host("CartPole-v1", agent_config, tc, seeds=seeds, progress=False)
        return time.perf_counter() - start

    seconds(1)  # compilation
    rate = seeds * steps / (seconds(1 + steps) - seconds(1))
    print(f"  host loop, {seeds} seed(s): {rate:.0f} steps/s", flush=True)
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke run)")
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument("--model-hidden", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=None, help="timed steps per compiled run")
    parser.add_argument("--seed-counts", type=int, nargs="+", default=None)
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="CPU devices JAX shows (default: one per core); the '(c) ... devices' rows split "
        "the seeds over them",
    )
    parser.add_argument("--out", default=str(RESULTS / "throughput.md"))
    args = parser.parse_args()
    from omdx.cli import _use_cpu_devices

    # Before any computation. The other rows use the first device only.
    _use_cpu_devices(args.cpu_devices)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from omdx import AgentConfig
    from omdx._report import markdown_table
    from omdx._train import _shard_count, CPU_SEED_GROUP
    from omdx.envs import make

    env = make("CartPole-v1")
    quick = args.quick
    chunk = args.chunk or (500 if quick else 2000)
    host_steps = 200 if quick else 1000
    seed_counts = args.seed_counts or ([4, 16] if quick else [4, 16, 64])
    batch_size = 256
    rounds = 2 if quick else 3
    rows = []
    for agent in ["omd", "mle"]:
        config = AgentConfig(agent=agent, model_hidden=args.model_hidden)
        host = {
            f"(a) host loop, {n} seed{'s in lockstep (aggregate)' if n > 1 else ''}": host_loop(
                config, host_steps, batch_size, n
            )
            for n in (1, CPU_SEED_GROUP)
        }
        # Every compiled setting is prepared (compiled, warmed up) first and then timed in
        # `rounds` interleaved rounds, one chunk of each per round, so that a slow spell of
        # the machine hits every setting alike; each row is the median over the rounds.
        settings = {
            "(d) updates alone (ceiling)": (prepared_updates(env, config, chunk, batch_size)[0], 1)
        }
        compiled = [("(b) compiled run, 1 seed", 1, {}, 1)]
        compiled += [(f"(c) compiled run, {n} seeds (aggregate)", n, {}, 1) for n in seed_counts]
        if jax.local_device_count() > 1:  # the seeds split over the devices (the default)
            compiled += [
                (
                    f"(c) {n} seeds over {_shard_count(n, jax.local_devices())} devices "
                    "(aggregate)",
                    n,
                    {},
                    jax.local_device_count(),
                )
                for n in seed_counts
            ]
        # Every seed in one vmapped batch (the accelerator default).
        compiled += [
            (f"(c) {n} seeds in one vmapped batch (aggregate)", n, {"seed_group": n}, 1)
            for n in seed_counts
            if n > CPU_SEED_GROUP
        ]
        for name, seeds, extra, devices in compiled:
            timed = prepared_compiled_run(
                env, config, seeds, chunk, rounds, {"batch_size": batch_size, **extra}, devices
            )
            settings[name] = (timed, seeds)
        seconds = interleaved_seconds(
            {name: timed for name, (timed, _) in settings.items()}, rounds
        )
        rate = {
            name: chunk * seeds / float(np.median(seconds[name]))
            for name, (_, seeds) in settings.items()
        }
        ceiling = rate["(d) updates alone (ceiling)"]
        ordered = list(host) + [n for n in rate if not n.startswith("(d)")]
        rate.update(host)
        for name in ordered + ["(d) updates alone (ceiling)"]:
            rows.append(
                {
                    "agent": agent,
                    "setting": name,
                    "steps/s": rate[name],
                    "vs ceiling": rate[name] / ceiling,
                }
            )
        print(markdown_table([r for r in rows if r["agent"] == agent], precision=2), flush=True)

    variants = {
        (agent, adjoint): AgentConfig(
            agent=agent,
            adjoint=adjoint,
            model_hidden=args.model_hidden,
            adjoint_steps=10,
            adjoint_scale=0.1,
        )
        for agent, adjoint in [
            ("mle", "identity"),
            ("vep", "identity"),
            ("omd", "identity"),
            ("omd", "neumann"),
            ("omd", "cg"),
            ("omd", "gmres"),
        ]
    }
    costs = update_costs(env, variants, chunk // 2, batch_size, rounds=3 if quick else 7)
    mle_median, mle_min, mle_flops = costs[("mle", "identity")]
    cost_rows = [
        {
            "agent": agent,
            "adjoint": adjoint if agent == "omd" else "-",
            "ms / update (median)": 1e3 * median,
            "ms (fastest)": 1e3 * fastest,
            "time vs MLE (median)": median / mle_median,
            "time vs MLE (fastest)": fastest / mle_min,
            # XLA counts a loop body once: exact only where every loop runs once (one
            # inner step, no iterative adjoint).
            **(
                {
                    "MFLOP / update": flops / 1e6,
                    "FLOPs vs MLE": flops / mle_flops,
                    "GFLOP/s (fastest)": flops / fastest / 1e9,
                }
                if agent != "omd" or adjoint == "identity"
                else {"MFLOP / update": "-", "FLOPs vs MLE": "-", "GFLOP/s (fastest)": "-"}
            ),
        }
        for (agent, adjoint), (median, fastest, flops) in costs.items()
    ]
    print(markdown_table(cost_rows, precision=2))

    dtype = "float64" if args.x64 else "float32"
    header = (
        "# Training throughput on CartPole-v1\n\n"
        f"`python benchmarks/throughput.py{' --x64' if args.x64 else ''}"
        f"{' --quick' if quick else ''}{f' --chunk {args.chunk}' if args.chunk else ''}`: "
        f"jax {jax.__version__}, {jax.devices()[0].platform} "
        f"({cpu_description()}, {jax.local_device_count()} devices: "
        "rows without 'devices' use the first one only), "
        f"{dtype}, paper settings (double Q 2x32, model 2x{args.model_hidden}, batch "
        f"{batch_size}, one update per environment step; OMD with the identity adjoint). "
        f"Compiled rows (and the ceiling) are the median of {rounds} chunks of {chunk} steps "
        "after compilation and the random steps, timed in interleaved rounds (one chunk of "
        "each setting per round); on CPU the seeds "
        f"run vmapped in groups of {CPU_SEED_GROUP} (`TrainConfig.seed_group`'s default), "
        "and the 'one vmapped batch' rows vmap every seed at once; the host loop is "
        f"`omdx.train_host`, timed over {host_steps} learning steps after 1000 random ones "
        "(the difference of two runs). The authors' code runs OMD at about 90 steps/s on "
        "the 2-core machines of this project (MLE about 58, OMD-CG about 20), on a CPU not "
        "recorded; the CPUs of this machine kind differ by up to 4x on these updates.\n\n"
    )
    text = (
        header
        + markdown_table(rows, precision=2)
        + "\n\n## Cost of one update relative to MLE\n\nNeumann, CG and GMRES with 10 "
        "Hessian-vector products each (Neumann scale 0.1). Each update is timed as "
        f"{chunk // 2} updates in one compiled call, in {3 if quick else 7} interleaved "
        "rounds (one call of each agent per round). The FLOPs are XLA's cost analysis of "
        "one compiled update, which no timing noise touches; XLA counts a loop body once, "
        "so they are given only where every loop runs once (the iterative adjoints repeat "
        "theirs 10 times).\n\n" + markdown_table(cost_rows, precision=2) + "\n"
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
