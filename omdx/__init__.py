"""omdx: control-oriented model-based RL with implicit differentiation in JAX."""

from . import agents as agents, envs as envs, tabular as tabular
from ._adjoint import (
    ADJOINT_NAMES as ADJOINT_NAMES,
    Damped as Damped,
    Neumann as Neumann,
    resolve_adjoint as resolve_adjoint,
    truncated_cg as truncated_cg,
    TruncatedCG as TruncatedCG,
)
from ._buffer import (
    buffer_add as buffer_add,
    buffer_init as buffer_init,
    buffer_sample as buffer_sample,
    ReplayBuffer as ReplayBuffer,
)
from ._diagnostics import (
    adjoint_diagnostics as adjoint_diagnostics,
    AdjointDiagnostics as AdjointDiagnostics,
)
from ._errors import TrainingDiverged as TrainingDiverged
from ._inner import solve_inner as solve_inner
from ._saved import load_agents as load_agents, SavedAgents as SavedAgents
from ._small_lu import small_solve as small_solve, SmallLU as SmallLU
from ._solvers import GradientSteps as GradientSteps, GradientStepsState as GradientStepsState
from ._train import (
    evaluate as evaluate,
    RunState as RunState,
    train as train,
    TrainConfig as TrainConfig,
    TrainResult as TrainResult,
)
from ._train_host import evaluate_host as evaluate_host, train_host as train_host
from ._transition import Transition as Transition
from .agents import (
    AgentConfig as AgentConfig,
    AgentState as AgentState,
    init_agent as init_agent,
    mle_step as mle_step,
    omd_step as omd_step,
    vep_step as vep_step,
)


__version__ = "0.1.0"
