"""Failures of a run, reported per run: Equinox's runtime checks switched off for the compiled
loops, and the error that names the runs that diverged."""

import contextlib


@contextlib.contextmanager
def errors_off():
    """Trace with Equinox's runtime checks switched off (`EQX_ON_ERROR=off`).

    Inside the compiled training loop, Equinox's runtime checks (Lineax always runs the
    backward linear solve with `throw=True`) are host callbacks that cost about a
    millisecond per update on CPU. Nor can they be NaNs (`EQX_ON_ERROR=nan`): Equinox
    reduces a check's predicate over `vmap`, so one diverging seed would turn every seed
    vmapped with it into NaNs. Off, a failure stays in its own run: the non-finite values
    it produces are found after the chunk and their runs named (`omdx.train`'s
    `_divergence`, `omdx.tabular.train`'s `_check_result`). Applies only to what is
    traced inside the context.
    """
    try:
        from equinox import _errors
    except ImportError:  # pragma: no cover - a future Equinox without this module
        yield
        return
    previous = getattr(_errors, "EQX_ON_ERROR", None)
    if previous is None:  # pragma: no cover
        yield
        return
    _errors.EQX_ON_ERROR = "off"
    try:
        yield
    finally:
        _errors.EQX_ON_ERROR = previous


class TrainingDiverged(FloatingPointError):
    """Raised by [`omdx.train`][] and [`omdx.train_host`][] when a run produces a
    non-finite evaluation return or loss, and by [`omdx.tabular.train`][] when a run of its
    grid produces a non-finite value. Nothing trained is lost with it.

    **Attributes:**

    - `result`: what the call would have returned (a [`omdx.TrainResult`][], or one per
        sweep point), up to the last evaluation made: that of the chunk that diverged; for
        [`omdx.tabular.train`][], its [`omdx.tabular.TrainResult`][] over the whole grid.
        Select the runs that stayed finite with `~diverged`.
    - `diverged`: which runs produced a non-finite value, a boolean array over
        `result.seeds` (one per sweep point with a sweep); for [`omdx.tabular.train`][],
        over `result.returns`' axes (method, bound, noise, seed).
    """

    def __init__(self, message: str, result, diverged):
        super().__init__(message)
        self.result = result
        self.diverged = diverged
