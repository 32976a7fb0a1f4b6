"""The agents' networks: orthogonally initialised MLPs, double Q, dynamics model."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray


def _orthonormal_columns(matrix: Float[Array, "rows cols"]) -> Float[Array, "rows cols"]:
    """The Q of the QR decomposition of a tall `matrix`, with R's diagonal positive.

    Classical Gram-Schmidt applied twice per column (orthogonal to working precision), in
    plain JAX operations. Not `jnp.linalg.qr`: under `vmap` on CPU, jaxlib 0.10's batched
    LAPACK QR runs its batch on the XLA thread pool and deadlocks when two such calls run
    concurrently (as the independent layers of a vmapped initialisation do).
    """
    _, cols = matrix.shape
    index = jnp.arange(cols)

    def add_column(j, q):
        column = matrix[:, j]
        earlier = (index < j).astype(matrix.dtype)
        for _ in range(2):
            column = column - q @ ((q.T @ column) * earlier)
        return q.at[:, j].set(column / jnp.linalg.norm(column))

    return jax.lax.fori_loop(0, cols, add_column, jnp.zeros_like(matrix))


def orthogonal_init(
    key: PRNGKeyArray, shape: tuple[int, int], scale: float = 1.0, dtype=float
) -> Float[Array, "rows cols"]:
    """A random orthogonal `shape` matrix times `scale`: the same matrix as
    `jax.nn.initializers.orthogonal(scale)(key, shape, dtype)`, computed without LAPACK so
    that it is safe under `jax.vmap` on CPU.

    **Arguments:**

    - `key`: PRNG key.
    - `shape`: `(rows, cols)`; rows are orthonormal if `rows <= cols`, else columns are.
    - `scale`: multiplies the orthogonal matrix.
    - `dtype`: a floating dtype.

    **Returns:**

    The `shape` array.
    """
    rows, cols = shape
    tall = (cols, rows) if rows < cols else (rows, cols)
    q = _orthonormal_columns(jr.normal(key, tall, dtype))
    if rows < cols:
        q = q.T
    return scale * q


def orthogonal_mlp(
    key: PRNGKeyArray,
    in_size: int,
    out_size: int,
    width: int,
    depth: int,
    *,
    last_scale: float = 0.01,
) -> eqx.nn.MLP:
    """An ReLU MLP with orthogonal weights (scale $\\sqrt 2$, last layer `last_scale`), zero biases.

    **Arguments:**

    - `key`: PRNG key.
    - `in_size`, `out_size`: input and output sizes.
    - `width`, `depth`: hidden width and number of hidden layers.
    - `last_scale`: the orthogonal scale of the output layer.

    **Returns:**

    An `equinox.nn.MLP`.
    """
    mlp_key, *layer_keys = jr.split(key, depth + 2)
    mlp = eqx.nn.MLP(in_size, out_size, width, depth, activation=jax.nn.relu, key=mlp_key)
    new_layers = []
    for i, (layer, layer_key) in enumerate(zip(mlp.layers, layer_keys)):
        scale = last_scale if i == len(mlp.layers) - 1 else math.sqrt(2.0)
        weight = orthogonal_init(layer_key, layer.weight.shape, scale, layer.weight.dtype)
        layer = eqx.tree_at(
            lambda lin: (lin.weight, lin.bias), layer, (weight, jnp.zeros_like(layer.bias))
        )
        new_layers.append(layer)
    return eqx.tree_at(lambda m: m.layers, mlp, tuple(new_layers))


class DoubleQ(eqx.Module):
    """Two Q-networks $Q_1, Q_2$: observation $\\to$ one value per action.

    The two networks are stored stacked (every array has a leading axis of size 2) and
    evaluated with one `vmap`, so each layer is one batched matrix product instead of two
    (half the operations in the compiled update, which on CPU is dominated by small ones).
    """

    nets: eqx.nn.MLP  # vmapped: leading axis 2

    def __init__(self, key: PRNGKeyArray, obs_size: int, num_actions: int, width: int, depth: int):
        self.nets = eqx.filter_vmap(
            lambda k: orthogonal_mlp(k, obs_size, num_actions, width, depth)
        )(jr.split(key))

    def __call__(self, observation: Float[Array, " obs"]) -> Float[Array, "2 actions"]:
        return eqx.filter_vmap(lambda net: net(observation))(self.nets)


class DynamicsModel(eqx.Module):
    """A model of the environment: $(s, a) \\mapsto (\\hat s', \\hat r)$.

    One MLP on the observation and the one-hot action outputs the next observation and the
    reward. With `gaussian=True` a learned, state-independent log standard deviation per
    output makes it a diagonal Gaussian.
    """

    net: eqx.nn.MLP
    log_std: Float[Array, " out"] | None
    num_actions: int = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        obs_size: int,
        num_actions: int,
        width: int,
        depth: int,
        gaussian: bool = False,
    ):
        self.net = orthogonal_mlp(
            key, obs_size + num_actions, obs_size + 1, width, depth, last_scale=1.0
        )
        self.log_std = jnp.zeros(obs_size + 1) if gaussian else None
        self.num_actions = num_actions

    def __call__(
        self, observation: Float[Array, " obs"], action: Int[Array, ""]
    ) -> tuple[Float[Array, " obs"], Float[Array, ""]]:
        """The mean prediction: (next observation, reward)."""
        one_hot = jax.nn.one_hot(action, self.num_actions, dtype=observation.dtype)
        out = self.net(jnp.concatenate([observation, one_hot]))
        return out[:-1], out[-1]

    def sample(
        self, observation: Float[Array, " obs"], action: Int[Array, ""], key: PRNGKeyArray
    ) -> tuple[Float[Array, " obs"], Float[Array, ""]]:
        """A sample (reparametrised, so differentiable in the parameters); the mean if
        deterministic."""
        next_obs, reward = self(observation, action)
        if self.log_std is None:
            return next_obs, reward
        noise = jr.normal(key, (next_obs.shape[0] + 1,), next_obs.dtype) * jnp.exp(self.log_std)
        return next_obs + noise[:-1], reward + noise[-1]


class ValueEnsemble(eqx.Module):
    """VEP's fixed random value functions $V_1, \\dots, V_k$: observation $\\to$ $k$ values."""

    nets: eqx.nn.MLP  # vmapped: leading axis k

    def __init__(self, key: PRNGKeyArray, obs_size: int, size: int, width: int):
        keys = jr.split(key, size)
        self.nets = eqx.filter_vmap(
            lambda k: orthogonal_mlp(k, obs_size, 1, width, 2, last_scale=1.0)
        )(keys)

    def __call__(self, observation: Float[Array, " obs"]) -> Float[Array, " k"]:
        return eqx.filter_vmap(lambda net: net(observation)[0])(self.nets)
