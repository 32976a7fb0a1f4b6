"""Neural OMD, MLE and VEP agents as pure update steps."""

from ._config import AgentConfig as AgentConfig
from ._losses import (
    bellman_loss as bellman_loss,
    bellman_targets as bellman_targets,
    BellmanRegressionGradient as BellmanRegressionGradient,
    bound_to_batch as bound_to_batch,
    model_predictions as model_predictions,
    model_targets as model_targets,
    real_bellman_loss as real_bellman_loss,
    regression_loss as regression_loss,
    state_value as state_value,
)
from ._networks import (
    DoubleQ as DoubleQ,
    DynamicsModel as DynamicsModel,
    orthogonal_init as orthogonal_init,
    orthogonal_mlp as orthogonal_mlp,
    ValueEnsemble as ValueEnsemble,
)
from ._state import AgentState as AgentState, EnvSpec as EnvSpec, init_agent as init_agent
from ._steps import (
    agent_adjoint as agent_adjoint,
    agent_step as agent_step,
    mle_step as mle_step,
    model_gradient as model_gradient,
    omd_step as omd_step,
    vep_step as vep_step,
)
