"""omdx: control-oriented model-based RL with implicit differentiation in JAX."""

from ._adjoint import (
    ADJOINT_NAMES as ADJOINT_NAMES,
    Damped as Damped,
    Neumann as Neumann,
    resolve_adjoint as resolve_adjoint,
    truncated_cg as truncated_cg,
    TruncatedCG as TruncatedCG,
)
from ._diagnostics import (
    adjoint_diagnostics as adjoint_diagnostics,
    AdjointDiagnostics as AdjointDiagnostics,
)
from ._inner import solve_inner as solve_inner
from ._solvers import (
    GradientSteps as GradientSteps,
    GradientStepsState as GradientStepsState,
)


__version__ = "0.1.0"
