import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omdx._buffer import buffer_add, buffer_init, buffer_sample, ReplayBuffer


def _item(i):
    """A transition-like item whose every leaf encodes `i`."""
    i = jnp.asarray(i)
    return {
        "obs": jnp.full((3,), i, jnp.float64) + 1e-12,
        "action": i.astype(jnp.int32),
        "done": i % 2 == 0,
    }


_add = jax.jit(buffer_add)
_sample = jax.jit(buffer_sample, static_argnums=2)


@functools.partial(jax.jit, static_argnums=1)
def _fill(buffer, num):
    def body(buffer, i):
        return buffer_add(buffer, _item(i)), None

    return jax.lax.scan(body, buffer, jnp.arange(num))[0]


def test_init_shapes_and_dtypes():
    buffer = buffer_init(5, _item(0))
    assert isinstance(buffer, ReplayBuffer) and buffer.capacity == 5
    assert buffer.storage["obs"].shape == (5, 3) and buffer.storage["obs"].dtype == jnp.float64
    assert buffer.storage["action"].dtype == jnp.int32
    assert buffer.storage["done"].dtype == jnp.bool_
    assert int(buffer.size) == 0 and int(buffer.position) == 0
    spec = buffer_init(2, jax.ShapeDtypeStruct((4,), jnp.float32))
    assert spec.storage.shape == (2, 4) and spec.storage.dtype == jnp.float32


def test_add_and_sample_under_jit(getkey):
    buffer = _fill(buffer_init(5, _item(0)), 3)
    assert int(buffer.size) == 3 and int(buffer.position) == 3
    batch = _sample(buffer, getkey(), 1000)
    assert batch["obs"].shape == (1000, 3) and batch["action"].shape == (1000,)
    # Only filled slots, all of them, and items stay whole.
    assert set(np.asarray(batch["action"]).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["action"] + 1e-12)
    np.testing.assert_array_equal(batch["done"], batch["action"] % 2 == 0)


def test_wrap_around(getkey):
    buffer = _fill(buffer_init(5, _item(0)), 7)
    assert int(buffer.size) == 5 and int(buffer.position) == 2
    np.testing.assert_array_equal(buffer.storage["action"], [5, 6, 2, 3, 4])
    batch = _sample(buffer, getkey(), 2000)
    counts = np.bincount(np.asarray(batch["action"]), minlength=7)
    assert counts[:2].sum() == 0 and np.all(counts[2:] > 300)


def test_float64_preserved(getkey):
    value = jnp.array([1.0 + 1e-15, -3.0e-300])
    buffer = _add(buffer_init(4, value), value)
    # A float32 item is cast to the stored float64.
    buffer = _add(buffer, value.astype(jnp.float32))
    assert buffer.storage.dtype == jnp.float64
    np.testing.assert_array_equal(buffer.storage[0], value)
    batch = _sample(buffer, getkey(), 8)
    assert batch.dtype == jnp.float64 and np.any(np.all(batch == value, axis=1))


def test_vmap_over_buffers_matches_loop(getkey):
    capacity, batch_size = 6, 16
    # Each seed writes a different number of items, so the buffers differ.
    nums = jnp.array([1, 4, 6, 9])

    def run(num, key):
        def body(buffer, i):
            new = buffer_add(buffer, _item(i))
            return jax.tree.map(lambda a, b: jnp.where(i < num, a, b), new, buffer), None

        buffer = jax.lax.scan(body, buffer_init(capacity, _item(0)), jnp.arange(10))[0]
        return buffer, buffer_sample(buffer, key, batch_size)

    keys = jax.random.split(getkey(), 4)
    batched = jax.jit(jax.vmap(run))(nums, keys)
    looped = [jax.jit(run)(num, key) for num, key in zip(nums, keys)]
    # Unfilled slots hold NaN: compare with NaN == NaN.
    jax.tree.map(
        np.testing.assert_array_equal, batched, jax.tree.map(lambda *xs: jnp.stack(xs), *looped)
    )
    buffers, batch = batched
    assert batch["obs"].shape == (4, batch_size, 3)
    assert buffers.storage["obs"].shape == (4, capacity, 3)
    np.testing.assert_array_equal(buffers.size, [1, 4, 6, 6])
    for num, actions in zip(nums, batch["action"]):
        assert set(np.asarray(actions).tolist()) <= set(range(max(0, int(num) - capacity), num))


def test_empty_buffer_sample_is_nan(getkey):
    batch = _sample(buffer_init(3, _item(0)), getkey(), 4)
    assert np.all(np.isnan(batch["obs"]))
    np.testing.assert_array_equal(batch["action"], 0)


def test_bad_arguments(getkey):
    for capacity in (0, -1, 2.0, True):
        # TypeError: from runtime type checking (`--jaxtyping-packages`), if on.
        with pytest.raises((TypeError, ValueError), match="capacity"):
            buffer_init(capacity, _item(0))
    buffer = buffer_init(3, _item(0))
    for batch_size in (0, 1.5, False):
        with pytest.raises((TypeError, ValueError), match="batch_size"):
            buffer_sample(buffer, getkey(), batch_size)
    with pytest.raises(ValueError, match="`example`"):
        buffer_init(3, {})
    with pytest.raises(ValueError, match="structure"):
        buffer_add(buffer, {"obs": jnp.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        buffer_add(buffer, {**_item(0), "obs": jnp.zeros(4)})
