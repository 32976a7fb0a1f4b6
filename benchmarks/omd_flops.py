"""Is OMD's update as cheap as its maths allows? XLA's FLOP count of one update of the
library (MLE, and OMD with the identity adjoint) beside a hand-derived OMD model gradient
that uses everything known about the problem's structure.

The hand-derived gradient is written out for the regression inner loss: the inner
residual is $\\nabla_\\varphi L$ with $L = \\frac{1}{2B}\\sum_i\\sum_h (Q_h(s_i, a_i) - y_i)^2$,
so with the identity adjoint ($A^{-1} \\approx \\alpha I$) the gradient reaching the
targets is $\\alpha J v / B$, one Jacobian-vector product of the Q-network at the
solution in the direction $v$ of the outer gradient, then one backward pass through the
targets to the model. The library gets the same gradient from `omdx.solve_inner`'s
generic implicit differentiation (Optimistix's `ImplicitAdjoint` with a Lineax solver).
The script first checks that the two gradients agree, then compares their cost; the
library's count covers the whole update (also the model's Adam step, the target update
and the metrics), the hand-derived one only the model gradient.

    python benchmarks/omd_flops.py          # float32, the paper's networks, batch 256

Writes `benchmarks/results/omd_flops.md`.
"""

import argparse
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from _common import xla_flops


RESULTS = pathlib.Path(__file__).parent / "results"


def mflops(fn, *args) -> float:
    from omdx._errors import errors_off

    with errors_off():  # as `omdx.train` compiles the updates: without runtime checks
        return xla_flops(fn, *args) / 1e6


def hand_model_gradient(state, batch, config, inner_key):
    """OMD's model gradient with the identity adjoint, derived by hand (see the module's
    docstring): `(real-data loss, model gradient)`."""
    from omdx.agents import model_targets, real_bellman_loss, regression_loss
    from omdx.agents._state import inner_optimiser

    q_params, q_static = eqx.partition(state.q, eqx.is_inexact_array)
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)

    def targets(params):
        model = eqx.combine(params, model_static)
        return model_targets(model, state.q_target, batch, inner_key, config)

    y, targets_vjp = jax.vjp(targets, model_params)

    def inner_loss(params):
        return regression_loss(eqx.combine(params, q_static), batch.observation, batch.action, y)

    updates, _ = inner_optimiser(config).update(
        jax.grad(inner_loss)(q_params), state.q_opt_state, q_params
    )
    solved = optax.apply_updates(q_params, updates)

    def outer_loss(params):
        return real_bellman_loss(eqx.combine(params, q_static), state.q_target, batch, config)

    loss, v = jax.value_and_grad(outer_loss)(solved)

    def taken_q_sum(params):  # sum over both heads of Q_h(s_i, a_i), per transition
        q_values = jax.vmap(eqx.combine(params, q_static))(batch.observation)
        taken = jnp.take_along_axis(q_values, batch.action[:, None, None], axis=-1)
        return taken[..., 0].sum(axis=-1)

    _, jv = jax.jvp(taken_q_sum, (solved,), (v,))
    (gradient,) = targets_vjp(config.adjoint_scale * jv / batch.reward.shape[0])
    return loss, gradient


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import omdx
    from omdx._report import markdown_table
    from omdx.agents import agent_step, model_gradient

    env = omdx.envs.make("CartPole-v1")
    keys = jr.split(jr.PRNGKey(0), 6)
    n, size = args.batch_size, env.observation_size
    batch = omdx.Transition(
        jr.normal(keys[0], (n, size)),
        jr.randint(keys[1], (n,), 0, env.num_actions),
        jr.normal(keys[2], (n,)),
        jr.normal(keys[3], (n, size)),
        jnp.zeros(n, bool),
    )
    configs = {agent: omdx.AgentConfig(agent=agent) for agent in ("mle", "omd")}
    states = {agent: omdx.init_agent(keys[4], env, c) for agent, c in configs.items()}
    rows = {}
    for agent, config in configs.items():  # OMD: the identity adjoint, K = 1

        def update(state, batch, config=config):
            new_state, metrics = agent_step(state, batch, config)
            return eqx.filter(new_state, eqx.is_array), metrics

        rows[f"{agent} update (library)"] = mflops(update, states[agent], batch)
    config, state = configs["omd"], states["omd"]

    def library_gradient(state, batch):
        loss, gradient, _ = model_gradient(state, batch, config, keys[5], keys[5])
        return loss, gradient

    def derived_gradient(state, batch):
        return hand_model_gradient(state, batch, config, keys[5])

    # The same numbers first: otherwise comparing their costs would mean nothing.
    library = eqx.filter_jit(library_gradient)(state, batch)
    derived = eqx.filter_jit(derived_gradient)(state, batch)
    flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (library, derived)]
    error = np.linalg.norm(flat[0] - flat[1]) / np.linalg.norm(flat[0])
    tolerance = 1e-10 if args.x64 else 1e-4
    if not error < tolerance:
        raise AssertionError(f"hand-derived and library gradients differ: relative {error:.2e}")
    rows["omd model gradient (library)"] = mflops(library_gradient, state, batch)
    rows["omd model gradient (hand-derived)"] = mflops(derived_gradient, state, batch)
    q_params, q_static = eqx.partition(state.q, eqx.is_inexact_array)
    rows["one Q-network forward pass (both heads)"] = mflops(
        lambda p: jax.vmap(eqx.combine(p, q_static))(batch.observation), q_params
    )
    model_params, model_static = eqx.partition(state.model, eqx.is_inexact_array)
    rows["one model forward pass"] = mflops(
        lambda p: jax.vmap(eqx.combine(p, model_static))(batch.observation, batch.action),
        model_params,
    )
    mle = rows["mle update (library)"]
    table = [
        {"computation": name, "MFLOP": f"{value:.2f}", "vs MLE update": f"{value / mle:.3f}"}
        for name, value in rows.items()
    ]
    text = (
        "# OMD's update cost against a hand-derived gradient\n\n"
        f"`python benchmarks/omd_flops.py{' --x64' if args.x64 else ''}`: XLA's FLOP count "
        "(cost analysis of the compiled function, compiled as `omdx.train` does, without "
        f"Equinox's runtime checks) at batch {n}, the paper's networks, "
        f"{'float64' if args.x64 else 'float32'}, jax {jax.__version__}. The hand-derived "
        "and library model gradients agree to a relative error of "
        f"{error:.1e} before their costs are compared.\n\n" + markdown_table(table) + "\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"omd_flops{'_x64' if args.x64 else ''}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
