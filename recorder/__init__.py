"""commtrace's recorder: every collective of every rank, plus the host's network counters.

Zero code change: ``COMMTRACE_DIR=/path torchrun ... train.py``. Or explicitly::

    import recorder
    with recorder.recording("/path/to/traces"):
        ...                     # init_process_group, training
        recorder.step()         # once per training step, optional

Importing this package imports nothing heavy; torch is loaded only when recording starts.
"""

from __future__ import annotations

import contextlib
import os

from recorder import _state

__all__ = ["enable", "disable", "recording", "step", "is_enabled", "flush", "metrics"]


def enable(directory: str | os.PathLike | None = None, **settings: object) -> bool:
    """Record from now on into ``directory`` (default ``$COMMTRACE_DIR``).

    Call it before ``init_process_group``. Enabling twice is harmless (returns False, warns once).
    ``settings`` override ``COMMTRACE_*`` variables by the Config field names (``flush_s=0.5``).
    """
    from recorder import _session

    return _session.enable(directory, **settings)


def disable() -> None:
    """Stop recording, write what is buffered, and restore ``torch.distributed`` exactly."""
    from recorder import _session

    _session.disable()


@contextlib.contextmanager
def recording(directory: str | os.PathLike | None = None, **settings: object):
    """``with recording(dir): ...`` records the block and restores torch afterwards."""
    started = enable(directory, **settings)
    try:
        yield
    finally:
        if started:
            disable()


def step(number: int | None = None) -> int:
    """Mark the start of a training step; events carry it. Without an argument, count up by one."""
    if number is None:
        number = 0 if _state.step is None else _state.step + 1
    _state.step = int(number)
    _state.step_code = _state.step
    return _state.step


def is_enabled() -> bool:
    return _state.session is not None


def flush() -> None:
    """Write everything finished so far now (normally the writer does it every COMMTRACE_FLUSH_S)."""
    session = _state.session
    if session is not None:
        session.flush()


def metrics() -> dict[str, float]:
    """This rank's and this host's figures since the previous call, for the training loop's own
    dashboard: per op as called (``all_reduce/busbw_GBps``, ``/count``, ``/latency_ms``,
    ``/max_latency_ms``, ``/wait_ms``), ``comm_busy_s``, ``comm_share``, ``dropped_events``, and
    where this process samples its host, ``host/rx_Bps``, ``host/tx_Bps``, ``host/tcp_retrans_pct``,
    ``host/tcp_timeouts``, ``host/errors``, ``host/drops``. What they mean: recorder/tally.py.

    No disk read and no query (a few tens of microseconds: cheap enough every step); as of the last
    flush, at most ``COMMTRACE_FLUSH_S`` old (``as_of_s``). ``{}`` while nothing is recorded. Never
    raises."""
    session = _state.session
    if session is None:
        return {}
    try:
        return session.metrics()
    except Exception:
        return {}
