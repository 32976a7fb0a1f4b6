import jax
import pytest


# Before any computation: two CPU devices, so that splitting seeds over devices is tested.
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """A fresh PRNG key each call, deterministic per test."""
    keys = iter(jax.random.split(jax.random.PRNGKey(5678), 1000))
    return lambda: next(keys)
