"""`adjoint_diagnostics` on a tabular problem: exact adjoints score perfectly."""

import jax.numpy as jnp
import numpy as np
import optimistix as optx

import omdx

from .test_inner import expected_return, random_problem, soft_bellman_residual, TAU


def test_diagnostics_direct_vs_identity(getkey):
    model, true_mdp = random_problem(getkey(), 4, 2, 0.9)

    def objective(q, args):
        del args
        return expected_return(q, true_mdp)

    kwargs = dict(solver=optx.Newton(rtol=1e-12, atol=1e-12))
    y0 = jnp.zeros((4, 2))
    exact = omdx.adjoint_diagnostics(
        soft_bellman_residual, y0, model, objective=objective, adjoint="gmres", **kwargs
    )
    assert float(exact.linear_solve_residual) < 1e-8
    assert int(exact.num_steps) > 0
    assert np.isclose(float(exact.cosine_similarity), 1.0, atol=1e-10)
    assert float(exact.relative_error) < 1e-8

    rough = omdx.adjoint_diagnostics(
        soft_bellman_residual, y0, model, objective=objective, adjoint="identity", **kwargs
    )
    assert float(rough.linear_solve_residual) > 1e-3
    assert float(rough.relative_error) > 1e-3
    assert float(rough.cosine_similarity) < 1.0
    # The neumann series improves monotonically with more terms on this contraction.
    errors = [
        float(
            omdx.adjoint_diagnostics(
                soft_bellman_residual,
                y0,
                model,
                objective=objective,
                adjoint=omdx.Neumann(k, 1.0, negative=True),
                **kwargs,
            ).linear_solve_residual
        )
        for k in [0, 5, 40]
    ]
    assert errors[0] > errors[1] > errors[2]
    assert TAU > 0
