"""Environments for compiled training: gymnasium's functional JAX environments behind one
pure interface, distractor dimensions, discrete actions for continuous ones, and a
host-loop adapter for any gymnasium env."""

from ._base import AbstractEnv as AbstractEnv, EnvStep as EnvStep
from ._discrete import (
    DiscreteActions as DiscreteActions,
    discretize_actions as discretize_actions,
)
from ._distractors import Distractors as Distractors, distractors as distractors
from ._func import FuncEnvAdapter as FuncEnvAdapter, FuncEnvState as FuncEnvState, make as make
from ._host import HostEnv as HostEnv, HostStep as HostStep
