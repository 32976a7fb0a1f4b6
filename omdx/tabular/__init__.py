"""Tabular OMD: MDPs, models, Bellman operators, OMD/MLE training and the paper's studies."""

from ._mdp import (
    from_gymnasium as from_gymnasium,
    garnet as garnet,
    polytope_mdp as polytope_mdp,
    TabularMDP as TabularMDP,
)
from ._operators import (
    bellman_error as bellman_error,
    bellman_operator as bellman_operator,
    expected_return as expected_return,
    init_model as init_model,
    mle_loss as mle_loss,
    policy as policy,
    policy_values as policy_values,
    soft_bellman_operator as soft_bellman_operator,
    solve_q as solve_q,
    TabularModel as TabularModel,
)
from ._studies import (
    bounds_study as bounds_study,
    misspecification_study as misspecification_study,
    noise_study as noise_study,
    optimal_return as optimal_return,
    PAPER_BOUNDS as PAPER_BOUNDS,
    PAPER_SIGMAS as PAPER_SIGMAS,
    summarise as summarise,
)
from ._train import (
    Method as Method,
    project_l2_ball as project_l2_ball,
    train as train,
    TrainResult as TrainResult,
    TrainState as TrainState,
)
