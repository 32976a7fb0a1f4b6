"""A functional replay buffer: fixed capacity, uniform sampling, inside `jit` and `vmap`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray, PyTree


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _empty_like(shape: tuple[int, ...], dtype) -> Array:
    # Floating slots start as NaN, so that sampling an empty buffer is loud (see
    # `buffer_sample`); filled slots are never NaN-initialised values.
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.full(shape, jnp.nan, dtype)
    return jnp.zeros(shape, dtype)


class ReplayBuffer(eqx.Module):
    """A ring buffer of transitions: a PyTree of arrays with a leading `capacity` axis.

    A `ReplayBuffer` is a PyTree, so it is carried through `lax.scan` and vmapped over
    seeds (one buffer per seed) like any other state. Create one with
    [`omdx.buffer_init`][], then use [`omdx.buffer_add`][] and [`omdx.buffer_sample`][].

    **Arguments:**

    - `storage`: a PyTree of arrays, each of shape `(capacity, ...)`.
    - `position`: the slot the next item is written to.
    - `size`: the number of filled slots, at most `capacity`.
    - `capacity`: the number of slots (static).
    """

    storage: PyTree[Array]
    position: Int[Array, ""]
    size: Int[Array, ""]
    capacity: int = eqx.field(static=True)


def buffer_init(capacity: int, example: PyTree[ArrayLike | jax.ShapeDtypeStruct]) -> ReplayBuffer:
    """An empty buffer for items shaped like `example`.

    **Arguments:**

    - `capacity`: the number of items kept; once full, the oldest is overwritten.
    - `example`: one item (e.g. a transition `(s, a, r, s', terminated)`), a PyTree of
        arrays (or `jax.ShapeDtypeStruct`s) whose shapes and dtypes the buffer stores.
        Its values are not stored. Python scalars take JAX's default dtypes.

    **Returns:**

    A [`omdx.ReplayBuffer`][] with `size = 0`.
    """
    _check_positive_int(capacity, "capacity")
    capacity = int(capacity)

    def _leaf(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            x = jnp.asarray(x)
        return _empty_like((capacity, *x.shape), x.dtype)

    leaves = jtu.tree_leaves(example)
    if not leaves:
        raise ValueError("`example` must contain at least one array.")
    storage = jtu.tree_map(_leaf, example)
    zero = jnp.zeros((), jnp.int32)
    return ReplayBuffer(storage=storage, position=zero, size=zero, capacity=capacity)


def buffer_add(buffer: ReplayBuffer, item: PyTree[ArrayLike]) -> ReplayBuffer:
    """Write one item at the buffer's position, overwriting the oldest item when full.

    **Arguments:**

    - `buffer`: a [`omdx.ReplayBuffer`][].
    - `item`: one item, with the structure and shapes of the buffer's `example` (values
        are cast to the stored dtypes).

    **Returns:**

    The updated [`omdx.ReplayBuffer`][].
    """
    item_struct = jtu.tree_structure(item)
    storage_struct = jtu.tree_structure(buffer.storage)
    if item_struct != storage_struct:
        raise ValueError(
            "`item` must have the PyTree structure of the buffer's `example`; got "
            f"{item_struct} and {storage_struct}."
        )

    def _write(slots, x):
        x = jnp.asarray(x)
        if x.shape != slots.shape[1:]:
            raise ValueError(
                f"`item` has a leaf of shape {x.shape} where the buffer stores {slots.shape[1:]}."
            )
        return slots.at[buffer.position].set(x.astype(slots.dtype))

    storage = jtu.tree_map(_write, buffer.storage, item)
    return ReplayBuffer(
        storage=storage,
        position=(buffer.position + 1) % buffer.capacity,
        size=jnp.minimum(buffer.size + 1, buffer.capacity),
        capacity=buffer.capacity,
    )


def buffer_sample(buffer: ReplayBuffer, key: PRNGKeyArray, batch_size: int) -> PyTree[Array]:
    """Sample items uniformly, with replacement, from the filled slots.

    !!! warning

        Sampling an empty buffer (`buffer.size == 0`) cannot raise inside `jit`; it returns
        NaN in every floating-point leaf (integer and boolean leaves are zeros), so any
        loss computed from it is NaN. Check `buffer.size` (e.g. sample only after a
        warm-up of random steps, or mask the update with `jnp.where(buffer.size >= n, ...)`).

    **Arguments:**

    - `buffer`: a [`omdx.ReplayBuffer`][].
    - `key`: a PRNG key.
    - `batch_size`: the number of items drawn.

    **Returns:**

    A PyTree with the structure of the buffer's `example`, each leaf of shape
    `(batch_size, ...)`.
    """
    _check_positive_int(batch_size, "batch_size")
    index = jax.random.randint(key, (int(batch_size),), 0, jnp.maximum(buffer.size, 1))
    return jtu.tree_map(lambda slots: slots[index], buffer.storage)
