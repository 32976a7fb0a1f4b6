"""`GradientSteps`: a fixed number of Optax steps as an Optimistix root finder."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import optax
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar


class GradientStepsState(eqx.Module):
    """The state of [`omdx.GradientSteps`][], available as `solution.state`.

    **Fields:**

    - `step`: how many optimiser steps have been taken.
    - `opt_state`: the Optax state after the last step; pass it back through
        `options={"opt_state": ...}` to continue from it (a persistent inner optimiser,
        as the paper's agents have).
    - `residual_norm`: the norm of the residual (the gradient) at the last evaluated
        point, i.e. before the last step.
    - `converged`: whether that norm fell below the solver's `atol`.
    """

    step: Int[Array, ""]
    opt_state: PyTree
    residual_norm: Scalar
    converged: Bool[Array, ""]


class GradientSteps(optx.AbstractRootFinder):
    r"""Take `steps` Optax steps on the loss whose gradient is the residual.

    For a residual $f(y) = \nabla_y L(y)$, each step feeds $f(y)$ to the optimiser as the
    gradient, starting from the warm start `y0`. This is the paper's inner loop: one Adam
    step per environment step from the previous Q-network. It does not converge, and
    is not meant to: it stops after `steps` steps (or earlier, if the residual's norm
    falls below `atol`) and reports success either way; `solution.stats` records the
    residual norm and whether it fell below `atol`.

    The optimiser state starts from `optim.init(y0)`, or from `options["opt_state"]`
    when given, and the final one is `solution.state.opt_state`.
    """

    optim: optax.GradientTransformation
    steps: int | Int[Array, ""]  # a leaf: traced when `omdx.train` sweeps `inner_steps`
    rtol: float = 0.0
    atol: float = 0.0
    norm: Callable[[PyTree], Scalar] = optx.two_norm

    def __init__(
        self,
        optim: optax.GradientTransformation,
        steps: int,
        atol: float = 0.0,
        norm: Callable[[PyTree], Scalar] = optx.two_norm,
    ):
        if not isinstance(optim, optax.GradientTransformation):
            raise TypeError(
                "`optim` must be an `optax.GradientTransformation` (for example "
                f"`optax.adam(3e-4)`), got {type(optim).__name__}."
            )
        if isinstance(steps, jax.Array):
            if steps.shape != () or not jnp.issubdtype(steps.dtype, jnp.integer):
                raise ValueError(f"`steps` must be a scalar integer array, got {steps!r}.")
        elif not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"`steps` must be a non-negative int, got {steps!r}.")
        if not atol >= 0:
            raise ValueError(f"`atol` must be non-negative, got {atol!r}.")
        # Optax transformations are closures; make them PyTrees so that jit/vmap see
        # any arrays inside (see optimistix.OptaxMinimiser).
        self.optim = eqxi.closure_to_pytree(optim)
        self.steps = steps
        self.rtol = 0.0
        self.atol = atol
        self.norm = norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, aux_struct, tags
        opt_state = options.get("opt_state") if options else None
        if opt_state is None:
            opt_state = self.optim.init(y)
        dtype = _residual_dtype(f_struct)
        return GradientStepsState(
            step=jnp.array(0),
            opt_state=opt_state,
            residual_norm=jnp.array(jnp.inf, dtype),
            converged=jnp.array(False),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        residual, aux = fn(y, args)
        updates, opt_state = self.optim.update(residual, state.opt_state, y)
        new_y = optax.apply_updates(y, updates)
        residual_norm = self.norm(residual)
        new_state = GradientStepsState(
            step=state.step + 1,
            opt_state=opt_state,
            residual_norm=residual_norm.astype(state.residual_norm.dtype),
            converged=residual_norm < self.atol,
        )
        return new_y, new_state, aux

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        done = (state.step >= self.steps) | state.converged
        return done, optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        stats = {
            "num_gradient_steps": state.step,
            "residual_norm": state.residual_norm,
            "converged": state.converged,
        }
        return y, aux, stats


def _residual_dtype(f_struct: PyTree[Any]):
    leaves = jax.tree.leaves(f_struct)
    return jnp.result_type(*[leaf.dtype for leaf in leaves]) if leaves else jnp.float32


GradientSteps.__init__.__doc__ = r"""**Arguments:**

- `optim`: the Optax optimiser, e.g. `optax.adam(3e-4)`.
- `steps`: how many optimiser steps to take ($K \geq 0$; $K = 1$ from a warm start is
    the paper's setting). `root_find`'s `max_steps` must be at least `steps`. It may be
    a (traced) integer array, so that runs with different $K$ can be vmapped together:
    each stops at its own $K$.
- `atol`: stop early once the residual's norm is below this (default 0: never).
- `norm`: the norm of the residual used for `atol` and the reported statistics.
"""
