"""Environments for compiled training: gymnasium's functional JAX environments behind one
pure interface, distractor dimensions, and a host-loop adapter for any gymnasium env."""

from ._base import AbstractEnv as AbstractEnv, EnvStep as EnvStep
from ._distractors import Distractors as Distractors, distractors as distractors
from ._func import FuncEnvAdapter as FuncEnvAdapter, FuncEnvState as FuncEnvState, make as make
from ._host import HostEnv as HostEnv, HostStep as HostStep
