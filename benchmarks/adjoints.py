"""Benchmark of the implicit adjoints (issue 2): backward cost, memory and gradient quality.

Two inner problems, each differentiated with every adjoint of `omdx.solve_inner` and,
for comparison, by backpropagating through K unrolled inner steps:

- tabular: Q in R^{S x A} solves the soft Bellman equation of a random model (transition
  logits, rewards) = theta; the outer objective is the exact expected return of
  softmax(Q/tau) in a random "true" MDP. float64; the reference gradient is `"direct"` (LU).
- network: the parameters phi of an MLP Q-network (about 10k of them) minimise the Bellman
  loss on transitions whose next states and rewards come from a model network theta; the
  residual is the gradient of that loss (symmetric=True); the outer objective is the
  Bellman loss on "real" transitions. float32; the reference gradient is a long, damped CG
  solve.

For each method: the forward time (the jitted inner solve, value only), the forward+backward
time (the jitted `jax.grad` of the outer objective with respect to theta), backward =
difference, the ratio backward / forward, XLA's compiled temp memory of the gradient
function, and cosine similarity / relative error of the gradient to the reference.

    .venv/bin/python benchmarks/adjoints.py           # full run, writes results/adjoints.*
    .venv/bin/python benchmarks/adjoints.py --quick   # smoke run, prints only
"""

import argparse
import math
import os
import pathlib
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optimistix as optx  # noqa: E402
from _common import (  # noqa: E402
    compile_fn,
    cosine_and_relative_error,
    flat,
    machine_description,
    median_difference,
    MIB,
    time_round_robin,
)

import omdx  # noqa: E402
from omdx._report import markdown_table, write_csv  # noqa: E402


SYMMETRIC = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
RESULTS = pathlib.Path(__file__).parent / "results"
COLUMNS = [
    "problem",
    "method",
    "fwd_ms",
    "fwd_bwd_ms",
    "bwd_ms",
    "bwd_over_fwd",
    "bwd_alone_ms",
    "grad_temp_mib",
    "cosine",
    "rel_error",
    "note",
]


@dataclass
class Method:
    """One way of getting d objective / d theta."""

    name: str
    forward: Callable  # (theta, data) -> inner solution (value only)
    objective: Callable  # (theta, data) -> scalar, differentiated with jax.grad
    max_temp_bytes: float = math.inf  # skip running it if it would need more scratch


@dataclass
class Problem:
    name: str
    theta: object
    data: object
    methods: list[Method]
    reference: str  # name of the method whose gradient is the reference
    notes: list[str]


# --------------------------------------------------------------------------- tabular


def soft_bellman_residual(q, args):
    """B^theta Q - Q for transition logits [A, S, S'], rewards [S, A] and a temperature."""
    p = jax.nn.softmax(args["theta"]["logits"], axis=-1)
    tau = args["tau"]
    v = tau * jax.scipy.special.logsumexp(q / tau, axis=1)
    return args["theta"]["reward"] + args["gamma"] * jnp.einsum("ast,t->sa", p, v) - q


def expected_return(q, true_mdp, tau):
    """Exact J of softmax(Q/tau) in the true MDP, by one linear solve."""
    p, r, gamma, mu = true_mdp["p"], true_mdp["r"], true_mdp["gamma"], true_mdp["mu"]
    pi = jax.nn.softmax(q / tau, axis=1)
    p_pi = jnp.einsum("sa,ast->st", pi, p)
    v = jnp.linalg.solve(jnp.eye(p.shape[1]) - gamma * p_pi, jnp.sum(pi * r, axis=1))
    return mu @ v


def tabular_problem(n_states, n_actions, gamma, tau, neumann_steps, unroll_steps, seed):
    keys = jax.random.split(jax.random.key(seed), 4)
    theta = {
        # Scale 3: each row of softmax(logits) puts its mass on a few states. With scale 1
        # the rows are nearly uniform, P is nearly rank one, and every series converges
        # after a handful of terms, which makes a poor benchmark.
        "logits": 3 * jax.random.normal(keys[0], (n_actions, n_states, n_states)),
        "reward": jax.random.normal(keys[1], (n_states, n_actions)),
    }
    data = {
        "gamma": jnp.asarray(gamma),
        "tau": jnp.asarray(tau),
        "true": {
            "p": jax.nn.softmax(3 * jax.random.normal(keys[2], (n_actions, n_states, n_states))),
            "r": jax.random.normal(keys[3], (n_states, n_actions)),
            "gamma": jnp.asarray(gamma),
            "mu": jnp.full(n_states, 1.0 / n_states),
        },
    }
    q0 = jnp.zeros((n_states, n_actions))
    newton = optx.Newton(rtol=1e-10, atol=1e-10)

    def implicit(adjoint):
        def forward(theta, data):
            args = {"theta": theta, "gamma": data["gamma"], "tau": data["tau"]}
            return omdx.solve_inner(
                soft_bellman_residual, q0, args, solver=newton, adjoint=adjoint
            ).value

        def objective(theta, data):
            return expected_return(forward(theta, data), data["true"], data["tau"])

        return forward, objective

    def unrolled(k):
        def forward(theta, data):
            args = {"theta": theta, "gamma": data["gamma"], "tau": data["tau"]}

            def step(q, _):  # value iteration: Q <- Q + f(Q) = B^theta Q
                return q + soft_bellman_residual(q, args), None

            return jax.lax.scan(step, q0, length=k)[0]

        def objective(theta, data):
            return expected_return(forward(theta, data), data["true"], data["tau"])

        return forward, objective

    adjoints = [("direct", "direct"), ("gmres", "gmres")]
    adjoints += [(f"neumann(k={k})", omdx.Neumann(k, 1.0, negative=True)) for k in neumann_steps]
    adjoints += [("identity", "identity")]
    methods = [Method(name, *implicit(adjoint)) for name, adjoint in adjoints]
    methods += [Method(f"unrolled VI (K={k})", *unrolled(k)) for k in unroll_steps]
    name = f"tabular S={n_states} A={n_actions} γ={gamma}"
    notes = [
        f"**{name}**: inner solver `optx.Newton(1e-10, 1e-10)` from Q0 = 0, soft Bellman "
        f"temperature τ = {tau}, theta = transition logits (3·N(0, 1)) + rewards "
        f"({flat(theta).size} numbers), float64. Reference: `direct`. Neumann uses scale 1, "
        "`negative=True` (the value-iteration series). Unrolled rows backpropagate through K "
        "value-iteration steps from the same Q0 = 0.",
    ]
    return Problem(name, theta, data, methods, "direct", notes)


# --------------------------------------------------------------------------- network


def mlp_init(key, sizes, dtype, last_scale=1.0):
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, sub = jax.random.split(key)
        scale = last_scale if i == len(sizes) - 2 else math.sqrt(2.0)
        w = jax.nn.initializers.orthogonal(scale)(sub, (n_in, n_out), dtype)
        params.append({"w": w, "b": jnp.zeros(n_out, dtype)})
    return params


def mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


N_ACTIONS = 2


def model_step(theta, obs, action):
    """The model network: (s, a) -> (s', r), predicting s' - s."""
    one_hot = jax.nn.one_hot(action, N_ACTIONS, dtype=obs.dtype)
    out = mlp(theta, jnp.concatenate([obs, one_hot], axis=1))
    return obs + out[:, :-1], out[:, -1]


def soft_value(target, obs, alpha):
    return alpha * jax.scipy.special.logsumexp(mlp(target, obs) / alpha, axis=1)


def bellman_loss(phi, target, obs, action, reward, next_obs, gamma, alpha):
    """0.5 mean (Q_phi(s, a) - r - gamma V_target(s'))^2, with a fixed target network."""
    q = jnp.take_along_axis(mlp(phi, obs), action[:, None], axis=1)[:, 0]
    y = reward + gamma * soft_value(target, next_obs, alpha)
    return 0.5 * jnp.mean((q - y) ** 2)


def model_loss(phi, args):
    """The inner loss: Bellman loss of Q_phi on model transitions (real s, a; model s', r)."""
    d = args["data"]
    next_obs, reward = model_step(args["theta"], d["obs"], d["action"])
    return bellman_loss(phi, d["target"], d["obs"], d["action"], reward, next_obs, 0.99, 0.01)


def model_residual(phi, args):
    return jax.grad(model_loss)(phi, args)


def real_loss(phi, data):
    return bellman_loss(
        phi,
        data["target"],
        data["obs"],
        data["action"],
        data["reward"],
        data["next_obs"],
        0.99,
        0.01,
    )


def largest_hessian_eigenvalue(phi, args, iterations=100):
    """Power iteration on the inner loss's Hessian at phi (for the Neumann step size)."""

    @jax.jit
    def power(phi, args):
        hvp = lx.JacobianLinearOperator(model_residual, phi, args).mv

        def step(v, _):
            hv = hvp(v)
            norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(hv)))
            return jax.tree.map(lambda x: x / norm, hv), norm

        n = sum(x.size for x in jax.tree.leaves(phi))
        v0 = jax.tree.map(lambda x: jnp.ones_like(x) / math.sqrt(n), phi)
        return jax.lax.scan(step, v0, length=iterations)[1][-1]

    return float(power(phi, args))


def backward_solve_residuals(phi, args, data, solver, damping):
    """Relative residuals of the backward solve w of (H + damping I) w = ybar at phi.

    Returns ||(H + damping I) w - ybar|| / ||ybar|| (how well the damped system is solved)
    and ||H w - ybar|| / ||ybar|| (how far that is from solving the undamped one).
    """

    @jax.jit
    def solve(phi, args, data):
        op = lx.JacobianLinearOperator(model_residual, phi, args, tags=SYMMETRIC)
        y_bar = jax.grad(real_loss)(phi, data)
        w = lx.linear_solve(op, y_bar, solver, throw=False).value
        return w, op.mv(w), y_bar

    w, hw, y_bar = (flat(x) for x in solve(phi, args, data))
    norm = np.linalg.norm(y_bar)
    damped = np.linalg.norm(hw + float(damping) * w - y_bar) / norm
    return float(damped), float(np.linalg.norm(hw - y_bar) / norm)


def network_problem(
    hidden,
    model_hidden,
    batch,
    inner_steps,
    pretrain_steps,
    neumann_steps,
    cg_steps,
    reference_cg_steps,
    damping,
    unroll_steps,
    max_direct_gib,
    seed,
):
    dtype = jnp.float32
    obs_dim, n_actions = 4, N_ACTIONS
    keys = jax.random.split(jax.random.key(seed), 8)
    theta = mlp_init(keys[0], [obs_dim + n_actions, model_hidden, obs_dim + 1], dtype, 0.1)
    true_model = mlp_init(keys[1], [obs_dim + n_actions, model_hidden, obs_dim + 1], dtype, 0.5)
    target = mlp_init(keys[2], [obs_dim, hidden, hidden, n_actions], dtype, 0.01)
    phi_init = mlp_init(keys[3], [obs_dim, hidden, hidden, n_actions], dtype, 0.01)
    obs = jax.random.normal(keys[4], (batch, obs_dim), dtype)
    action = jax.random.randint(keys[5], (batch,), 0, n_actions)
    next_obs, reward = model_step(true_model, obs, action)
    data = {
        "obs": obs,
        "action": action,
        "reward": reward,
        "next_obs": next_obs,
        "target": target,
    }

    def args_of(theta, data):
        # Everything the residual reads travels in `args` (never closed over).
        inner = {k: data[k] for k in ("obs", "action", "target")}
        return {"theta": theta, "data": inner}

    # Warm start: Q-network trained (untimed) towards the model's Bellman target, as an agent's
    # Q-network would be after many environment steps.
    # eps_root keeps Adam differentiable where a gradient entry is exactly zero (dead ReLU
    # units); without it the unrolled gradients are NaN.
    optim = optax.adam(3e-4, eps_root=1e-8)

    @jax.jit
    def pretrain(phi, theta):
        args = args_of(theta, data)
        state = optax.adam(1e-3).init(phi)

        def step(carry, _):
            phi, state = carry
            updates, state = optax.adam(1e-3).update(model_residual(phi, args), state, phi)
            return (optax.apply_updates(phi, updates), state), None

        return jax.lax.scan(step, (phi, state), length=pretrain_steps)[0][0]

    phi0 = pretrain(phi_init, theta)
    solver = omdx.GradientSteps(optim, inner_steps)

    def solve(theta, data, adjoint):
        return omdx.solve_inner(
            model_residual,
            phi0,
            args_of(theta, data),
            solver=solver,
            adjoint=adjoint,
            symmetric=True,
            max_steps=inner_steps,
            throw=False,
        ).value

    def implicit(adjoint):
        def forward(theta, data):
            return solve(theta, data, adjoint)

        def objective(theta, data):
            return real_loss(solve(theta, data, adjoint), data)

        return forward, objective

    def unrolled(k):
        def forward(theta, data):
            args = args_of(theta, data)

            def step(carry, _):
                phi, state = carry
                updates, state = optim.update(model_residual(phi, args), state, phi)
                return (optax.apply_updates(phi, updates), state), None

            return jax.lax.scan(step, (phi0, optim.init(phi0)), length=k)[0][0]

        def objective(theta, data):
            return real_loss(forward(theta, data), data)

        return forward, objective

    n_phi, n_theta = flat(phi0).size, flat(theta).size
    phi_star = jax.jit(lambda t, d: solve(t, d, "identity"))(theta, data)
    lam_max = largest_hessian_eigenvalue(phi_star, args_of(theta, data))
    scale = 1.0 / lam_max
    # Damping as a float32 array: a Python float becomes a float64 operator under x64 and
    # breaks CG's structure check on this float32 problem.
    damp = jnp.asarray(damping, dtype)
    reference = omdx.truncated_cg(reference_cg_steps, damp)
    damped_res, undamped_res = backward_solve_residuals(
        phi_star, args_of(theta, data), data, reference, damping
    )

    adjoints = [
        (f"reference: cg({reference_cg_steps}, λ={damping:g})", reference, math.inf),
        ("direct (LU, dense Hessian)", "direct", max_direct_gib * 2.0**30),
        ('"cg" (lx.CG tol 1e-5, undamped)', "cg", math.inf),
    ]
    adjoints += [
        (f"truncated_cg({k}, λ={damping:g})", omdx.truncated_cg(k, damp), math.inf)
        for k in cg_steps
    ]
    adjoints += [
        (f"neumann(k={k}, α=1/λmax)", omdx.Neumann(k, scale), math.inf) for k in neumann_steps
    ]
    adjoints += [("identity", "identity", math.inf)]
    methods = [Method(name, *implicit(adjoint), limit) for name, adjoint, limit in adjoints]
    methods += [Method(f"unrolled Adam (K={k})", *unrolled(k)) for k in unroll_steps]

    name = f"network {n_phi} params"
    notes = [
        f"**{name}**: Q-network 4 → {hidden} → {hidden} → 2 (ReLU, {n_phi} parameters); model "
        f"network 6 → {model_hidden} → 5 = theta ({n_theta} parameters); {batch} fixed "
        "transitions; fixed target network; soft value α = 0.01, γ = 0.99; float32. Inner "
        f"solver `omdx.GradientSteps(optax.adam(3e-4), {inner_steps})` from a warm start "
        f"pre-trained (untimed) with {pretrain_steps} Adam(1e-3) steps; `symmetric=True`. "
        f"Reference: `omdx.truncated_cg({reference_cg_steps}, damping={damping:g})`; its "
        f"backward solve leaves ||(H + λI)w − ȳ||/||ȳ|| = {damped_res:.1e} (converged) and "
        f"||Hw − ȳ||/||ȳ|| = {undamped_res:.2f}: that part of ȳ lies outside the Hessian's "
        f"range (the Hessian of a {n_phi}-parameter network on {batch} transitions has rank "
        f"at most about {batch}), so the undamped IFT system has no solution and the damping "
        "defines the gradient. Largest Hessian eigenvalue (power iteration) "
        f"λmax = {lam_max:.3g}, so Neumann's α = {scale:.3g}. `identity` is "
        "`Neumann(0, 1.0)` (the paper's default): its cosine is scale-free but its relative "
        "error is not. Unrolled rows backpropagate through K Adam(3e-4) steps from the same "
        "warm start.",
    ]
    return Problem(name, theta, data, methods, methods[0].name, notes)


# --------------------------------------------------------------------------- running


def load_average() -> float | None:
    """The 1-minute load average, or `None` where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_problem(problem: Problem, repeats: int, loads: list | None = None) -> list[dict]:
    """Compile every method, check it runs, then time them all round-robin. The 1-minute
    load average at the start and at the end of the timing is appended to `loads`."""
    rows, grads, timed = [], {}, []
    print(f"\n== {problem.name}", flush=True)
    for method in problem.methods:
        row = {"problem": problem.name, "method": method.name, "note": ""}
        rows.append(row)
        print(f"  {method.name} ...", end=" ", flush=True)
        try:
            fwd = compile_fn("fwd", method.forward, problem.theta, problem.data)
            both = compile_fn("grad", jax.grad(method.objective), problem.theta, problem.data)
        except Exception as e:  # e.g. out of memory while compiling a dense Jacobian
            row["note"] = f"failed to compile: {type(e).__name__}"
            print(row["note"], flush=True)
            continue
        row["grad_temp_mib"] = both.temp_bytes / MIB
        if both.temp_bytes > method.max_temp_bytes:
            row["note"] = f"skipped: needs {both.temp_bytes / 2**30:.1f} GiB scratch"
            print(row["note"], flush=True)
            continue
        try:
            grads[method.name] = jax.block_until_ready(both.call())
        except Exception as e:  # e.g. an adjoint solve that raises inside jax.grad
            row["note"] = f"raised {type(e).__name__} ({_lineax_reason(e)})"
            print(row["note"], flush=True)
            continue
        if not np.all(np.isfinite(flat(grads[method.name]))):
            row["note"] = "non-finite gradient"
        bwd = compile_backward(method.objective, problem.theta, problem.data)
        timed.append((row, fwd, both, bwd))
        print("ok", flush=True)

    print(f"  timing {len(timed)} methods round-robin, {repeats} rounds ...", flush=True)
    fns = [f.call for _, fwd, both, bwd in timed for f in (fwd, both, bwd)]
    if loads is not None:
        loads.append(load_average())
    samples = time_round_robin(fns, repeats)
    if loads is not None:
        loads.append(load_average())
    for i, (row, *_) in enumerate(timed):
        t_fwd, t_both, t_alone = samples[3 * i : 3 * i + 3]
        row["bwd_alone_ms"] = 1e3 * statistics.median(t_alone)
        t_bwd = median_difference(t_both, t_fwd)
        row.update(
            fwd_ms=1e3 * statistics.median(t_fwd),
            fwd_bwd_ms=1e3 * statistics.median(t_both),
            bwd_ms=1e3 * t_bwd,
            bwd_over_fwd=t_bwd / statistics.median(t_fwd),
        )
    reference = grads.get(problem.reference)
    for row in rows:
        if reference is not None and row["method"] in grads:
            row["cosine"], row["rel_error"] = cosine_and_relative_error(
                grads[row["method"]], reference
            )
    return rows


def compile_backward(objective, theta, data):
    """The backward pass alone: `jax.vjp`'s pullback, built once, applied under jit.

    The forward (and the residuals the pullback keeps) run once here, untimed; timing the
    compiled pullback then measures the backward pass without the forward's noise.
    """
    value, pullback = jax.jit(lambda t, d: jax.vjp(lambda t: objective(t, d), t))(theta, data)
    return compile_fn("bwd", lambda f, ct: f(ct), pullback, jnp.ones_like(value))


def _lineax_reason(error: Exception) -> str:
    """The first line of Lineax's/Equinox's message inside a runtime error, if any."""
    text = str(error)
    for marker in ("A linear solver returned", "The linear solver", "linear solve"):
        if marker in text:
            line = text[text.index(marker) :].splitlines()[0]
            return line[:90]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:90] if lines else ""


def build_problems(args) -> list[Problem]:
    if args.quick:
        problems = [tabular_problem(10, 3, 0.9, 0.1, [5, 20], [1, 10], args.seed)]
        problems.append(
            network_problem(
                hidden=16,
                model_hidden=16,
                batch=64,
                inner_steps=5,
                pretrain_steps=1000,
                neumann_steps=[5],
                cg_steps=[5],
                reference_cg_steps=50,
                damping=1e-3,
                unroll_steps=[1, 5],
                max_direct_gib=args.max_direct_gib,
                seed=args.seed,
            )
        )
        return problems
    problems = [
        tabular_problem(50, 4, gamma, 0.1, [10, 50, 200], [1, 10, 50], args.seed)
        for gamma in (0.9, 0.99)
    ]
    problems.append(
        network_problem(
            hidden=96,
            model_hidden=32,
            batch=256,
            inner_steps=args.inner_steps,
            pretrain_steps=3000,
            neumann_steps=[10, 100],
            cg_steps=[10, 100],
            reference_cg_steps=2000,
            damping=args.damping,
            unroll_steps=[1, 10, 50],
            max_direct_gib=args.max_direct_gib,
            seed=args.seed,
        )
    )
    return problems


def load_note(loads: list, cores: int | None) -> str:
    """What the load measured around the timing says about the times: the warning that
    the machine was shared only where the load exceeded the core count."""
    loads = [load for load in loads if load is not None]
    if not loads or not cores:
        return ""
    low, high = min(loads), max(loads)
    if high > cores:
        return (
            " The machine was shared with other jobs while this ran (1-minute load average up "
            f"to {high:.1f} at the start or end of a problem's timing, above its {cores} "
            "cores), so sub-millisecond times carry noise of tens of per cent; the memory, the "
            "cosines and the orders of magnitude of the ratios are the robust part."
        )
    span = f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f} to {high:.1f}"
    return (
        f" The 1-minute load average was {span} at the start and end of each problem's "
        f"timing ({cores} cores)."
    )


def write_results(rows, problems, args, out: pathlib.Path, loads: list = ()):
    command = " ".join(["`.venv/bin/python", "benchmarks/adjoints.py", *sys.argv[1:]]) + "`"
    header = [
        "# Adjoint benchmark (issue 2)",
        "",
        f"Machine: {machine_description()}. Reproduce with {command} from the repository root.",
        "",
        f"Times are medians of {args.repeats} calls after compilation and a warm-up call, each "
        "ending in `block_until_ready`; `fwd_ms`: the jitted inner solve (value only); "
        "`fwd_bwd_ms`: the jitted `jax.grad` of the outer objective with respect to theta; "
        "all methods of a problem are timed round-robin, one call of each per round. "
        "`bwd_ms`: the median of the paired differences (fwd+bwd − fwd, call by call) and "
        "`bwd_over_fwd` its ratio to the forward. `bwd_alone_ms`: the backward pass timed on "
        "its own (the compiled `jax.vjp` pullback applied to 1, its residuals computed "
        "beforehand), the cleaner number where the forward is long and noisy. "
        "`grad_temp_mib`: XLA's compiled temp (scratch) memory of the gradient function "
        "(`memory_analysis().temp_size_in_bytes`). `cosine` / `rel_error`: of the gradient "
        "against the problem's reference." + load_note(list(loads), os.cpu_count()),
        "",
    ]
    for problem in problems:
        header += problem.notes + [""]
    text = "\n".join(header) + "\n" + markdown_table(rows, COLUMNS, precision=4) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    write_csv(out.with_suffix(".csv"), rows)
    print(f"\nwrote {out} and {out.with_suffix('.csv')}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny problems: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per function")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inner-steps", type=int, default=10, help="network inner Adam steps")
    parser.add_argument("--damping", type=float, default=1e-3, help="CG damping (network)")
    parser.add_argument(
        "--max-direct-gib",
        type=float,
        default=4.0,
        help="skip the dense direct adjoint on the network if it needs more scratch",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="markdown output (default: results/adjoints.md; none for --quick)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    out = args.out or (None if args.quick else RESULTS / "adjoints.md")

    problems = build_problems(args)
    rows, loads = [], []
    for problem in problems:
        rows += run_problem(problem, args.repeats, loads)
    print()
    print(markdown_table(rows, COLUMNS, precision=4))
    print(load_note(loads, os.cpu_count()).strip())
    if out is not None:
        write_results(rows, problems, args, out, loads)


if __name__ == "__main__":
    main()
