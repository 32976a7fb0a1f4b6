"""Shared helpers for the benchmarks: compiling, timing and compiled memory.

Timings are honest wall-clock medians: every function is compiled ahead of time (so no
compilation is timed), called once to warm up, and each call ends in
`jax.block_until_ready`. Functions compared with each other are timed in alternation in
the same process, so that drift in the machine's load hits them alike.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np


MIB = 2.0**20


@dataclass
class Compiled:
    """A function compiled once for fixed arguments, with its compiled memory statistics."""

    name: str
    call: Callable[[], Any]
    temp_bytes: float
    output_bytes: float


def compile_fn(name: str, fn: Callable, *args) -> Compiled:
    """`jax.jit(fn)` lowered and compiled for `args`; read XLA's memory analysis.

    `temp_bytes` is the scratch memory XLA allocates for one call (activations, Krylov
    vectors, a materialised Jacobian...), the part that differs between methods;
    `output_bytes` is the size of the result. NaN where the backend does not report it.
    """
    compiled = jax.jit(fn).lower(*args).compile()
    temp = output = float("nan")
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        stats = None
    if stats is not None:
        temp = float(stats.temp_size_in_bytes)
        output = float(stats.output_size_in_bytes)
    return Compiled(name, lambda: compiled(*args), temp, output)


def xla_flops(fn: Callable, *args) -> float:
    """XLA's FLOP count of `fn(*args)` compiled, the non-array leaves of `args` static.

    XLA counts a loop body once, so this is exact only where every loop runs once.
    """
    import equinox as eqx

    arrays, static = eqx.partition(args, eqx.is_array)
    compiled = jax.jit(lambda a: fn(*eqx.combine(a, static))).lower(arrays).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def time_round_robin(
    fns: Sequence[Callable[[], Any]], repeats: int, warmup: int = 1
) -> list[list[float]]:
    """Wall-clock seconds of `repeats` calls of each function, called in turn round by round.

    Each function is called `warmup` times first. Results are blocked on, so the time
    covers the computation and not just its dispatch. Calling every function once per
    round means that drift in the machine's load hits them all alike; pair samples of
    the same round to difference two functions.
    """
    for fn in fns:
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples[i].append(time.perf_counter() - start)
    return samples


def median_difference(later: Sequence[float], earlier: Sequence[float]) -> float:
    """Median of the paired differences `later[i] - earlier[i]`."""
    return statistics.median(b - a for a, b in zip(earlier, later))


def flat(tree) -> np.ndarray:
    """Concatenate a PyTree's leaves into one float64 NumPy vector."""
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in leaves])


def cosine_and_relative_error(grad, reference) -> tuple[float, float]:
    """Cosine similarity and relative error ||g - g_ref|| / ||g_ref|| of two PyTrees."""
    g, r = flat(grad), flat(reference)
    r_norm = np.linalg.norm(r)
    g_norm = np.linalg.norm(g)
    cosine = float(g @ r / (g_norm * r_norm)) if g_norm > 0 and r_norm > 0 else float("nan")
    return cosine, float(np.linalg.norm(g - r) / r_norm)


def cpu_description() -> str:
    """The CPU's model (family and model numbers on x86, which tell its generation when
    a virtual machine names only the brand), its widest vector unit, and its
    architecture: the same program runs several times faster on one CPU than another."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return ", ".join(filter(None, [name, vector, platform.machine()]))


def machine_description() -> str:
    """A one-line description of where the benchmark ran."""
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    cpu = cpu_description()
    return (
        f"{jax.default_backend().upper()} ({devices}; {cpu}, {os.cpu_count()} cores), "
        f"jax {jax.__version__}, Python {platform.python_version()}"
    )
