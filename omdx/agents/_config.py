"""Agent hyperparameters, validated before any work is done."""

import math

import equinox as eqx


AGENTS = ("omd", "mle", "vep")
AGENT_ADJOINTS = ("identity", "neumann", "cg", "gmres", "direct")
MODEL_NOISES = ("deterministic", "gaussian")
INNER_OPTIMISERS = ("adam", "sgd")
# The fields that are PyTree leaves rather than static: they set no shape and no branch, so
# `omdx.train(..., sweep=...)` can run several values of them in one vmapped compilation.
SWEEPABLE_AGENT_FIELDS = (
    "gamma",
    "temperature",
    "target_update",
    "q_lr",
    "model_lr",
    "inner_steps",
    "likelihood_weight",
)


def _check_positive_int(name: str, value, minimum: int = 1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be a Python int >= {minimum}, got {value!r}.")


def _check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite Python number (int or float), got {value!r}.")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"`{name}` must be {'>' if low_open else '>='} {low}, got {value!r}.")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"`{name}` must be {'<' if high_open else '<='} {high}, got {value!r}.")


class AgentConfig(eqx.Module):
    """Hyperparameters of the OMD, MLE and VEP agents; defaults are the paper's CartPole ones.

    All fields are Python values, validated at construction. Those that set no shape and
    no branch (`gamma`, `temperature`, `target_update`, `q_lr`, `model_lr`,
    `likelihood_weight`, and `inner_steps`, a loop's trip count) are PyTree leaves, so that
    [`omdx.train`][]'s `sweep` can run several values in one compiled, vmapped run; the
    others are static.
    """

    agent: str = eqx.field(static=True, default="omd")
    q_hidden: int = eqx.field(static=True, default=32)
    q_depth: int = eqx.field(static=True, default=2)
    model_hidden: int = eqx.field(static=True, default=32)
    model_depth: int = eqx.field(static=True, default=2)
    model_noise: str = eqx.field(static=True, default="deterministic")
    gamma: float = 0.99
    temperature: float = 0.01
    soft: bool = eqx.field(static=True, default=True)
    target_update: float = 0.01
    q_lr: float = 3e-4
    model_lr: float = 1e-3
    inner_steps: int = 1
    likelihood_weight: float = 0.0
    bound_predictions: bool = eqx.field(static=True, default=False)
    q_weight_decay: float = eqx.field(static=True, default=0.0)
    inner_optimiser: str = eqx.field(static=True, default="adam")
    adjoint: str = eqx.field(static=True, default="identity")
    adjoint_steps: int = eqx.field(static=True, default=100)
    adjoint_scale: float = eqx.field(static=True, default=1.0)
    damping: float = eqx.field(static=True, default=1e-5)
    vep_ensemble: int = eqx.field(static=True, default=5)
    vep_hidden: int = eqx.field(static=True, default=32)

    def __check_init__(self):
        if self.agent not in AGENTS:
            raise ValueError(f"Unknown `agent` {self.agent!r}: expected one of {AGENTS}.")
        if self.adjoint not in AGENT_ADJOINTS:
            raise ValueError(
                f"Unknown `adjoint` {self.adjoint!r}: expected one of {AGENT_ADJOINTS}."
            )
        if self.model_noise not in MODEL_NOISES:
            raise ValueError(
                f"Unknown `model_noise` {self.model_noise!r}: expected one of {MODEL_NOISES}."
            )
        if self.inner_optimiser not in INNER_OPTIMISERS:
            raise ValueError(
                f"Unknown `inner_optimiser` {self.inner_optimiser!r}: expected one of "
                f"{INNER_OPTIMISERS}."
            )
        for name in (
            "q_hidden",
            "q_depth",
            "model_hidden",
            "model_depth",
            "vep_ensemble",
            "vep_hidden",
            "adjoint_steps",
        ):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("inner_steps", self.inner_steps, minimum=1)
        _check_number("gamma", self.gamma, low=0.0, high=1.0, high_open=True)
        _check_number("temperature", self.temperature, low=0.0, low_open=True)
        _check_number("target_update", self.target_update, low=0.0, high=1.0, low_open=True)
        _check_number("q_lr", self.q_lr, low=0.0, low_open=True)
        _check_number("model_lr", self.model_lr, low=0.0, low_open=True)
        _check_number("adjoint_scale", self.adjoint_scale, low=0.0, low_open=True)
        _check_number("damping", self.damping, low=0.0)
        _check_number("q_weight_decay", self.q_weight_decay, low=0.0)
        _check_number("likelihood_weight", self.likelihood_weight, low=0.0)
        for name in ("soft", "bound_predictions"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")


AgentConfig.__init__.__doc__ = r"""**Arguments:**

- `agent`: `"omd"` (model trained through the implicit gradient of the real-data Bellman
    loss), `"mle"` (model trained on next-observation and reward MSE, or Gaussian NLL),
    `"vep"` (value-equivalence: the model matches fixed random value functions).
- `q_hidden`, `q_depth`: width and number of hidden layers of each of the two Q-networks.
- `model_hidden`, `model_depth`: the model MLP's width and hidden layers (the
    misspecification study shrinks `model_hidden`).
- `model_noise`: `"deterministic"` or `"gaussian"` (a learned, state-independent log-std;
    model transitions are sampled with the reparametrisation trick; MLE uses the NLL).
- `gamma`: discount $\gamma \in [0, 1)$.
- `temperature`: soft Q-learning temperature $\alpha$: targets use
    $V(s') = \alpha \log\sum_a \exp(\min(Q_1, Q_2)(s', a)/\alpha)$ and actions are sampled
    from $\mathrm{softmax}(Q/\alpha)$.
- `soft`: `False` replaces the soft value by the hard max.
- `target_update`: Polyak coefficient $\tau$ of the target Q-network.
- `q_lr`: the inner optimiser's learning rate (Q-network).
- `model_lr`: the model's Adam learning rate.
- `inner_steps`: $K$, inner optimiser steps per update, from the warm start.
- `likelihood_weight`: $\beta \ge 0$: OMD's and VEP's model loss gets $\beta$ times
    MLE's loss added (next-observation and reward MSE, or the Gaussian NLL), which anchors
    the model's predictions to the real next states. 0 (the paper's) leaves OMD's model
    free to predict anything that serves the Q-function. MLE's loss is the likelihood
    already: MLE ignores it.
- `bound_predictions`: squash the model's next-observation predictions, wherever they
    are used (Bellman targets, every model loss, the `model_error` metric), into the box
    spanned by the batch's real observations ([`omdx.agents.bound_to_batch`][]), so that
    the Q-network's bootstrap targets stay, in every dimension, within the range of the
    states it is trained on. `False` (the paper's) leaves them unbounded.
- `q_weight_decay`: an L2 penalty $\frac{\mu}{2}\|\varphi\|^2$ added to the inner
    (model-data) loss. ReLU networks are invariant to rescaling a hidden unit's input and
    output weights, so without it the inner Hessian is singular at every solution and the
    exact implicit gradient is ill-posed; a small $\mu$ makes it well-posed.
- `inner_optimiser`: `"adam"` (persistent state across updates, as the paper) or `"sgd"`.
- `adjoint`: OMD's backward pass: `"identity"` (the paper's default, inverse Hessian
    $\approx$ `adjoint_scale` $\cdot I$), `"neumann"` (`adjoint_steps` terms with step
    `adjoint_scale`), `"cg"` (`adjoint_steps` CG iterations on $H + \lambda I$, the paper's
    "inverse Jacobian"), `"gmres"` (GMRES on $H + \lambda I$ with `adjoint_steps`
    Krylov vectors in all, in cycles of at most 20), or `"direct"` (dense LU on
    $H + \lambda I$: small networks only).
- `adjoint_steps`, `adjoint_scale`, `damping`: see `adjoint`; `damping` is $\lambda$.
- `vep_ensemble`, `vep_hidden`: VEP's number and width of fixed random value networks.
"""
