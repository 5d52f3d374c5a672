"""What the per-call benchmarks share: a recording and a plain group side by side on torch's fake
backend, and the timing of a batch of calls with caches warm or cold."""

from __future__ import annotations

import statistics
import time


def recording_and_plain_groups(world: int):
    """A recording group and a plain group of the same size and backend (recording must be on)."""
    import torch.distributed as dist

    from recorder import _state

    recorded = dist.new_group(list(range(world)))
    session, _state.session = _state.session, None
    try:
        plain = dist.new_group(list(range(world)))
    finally:
        _state.session = session
    return recorded, plain


def time_calls(call, group, calls: int, sweep=None) -> float:
    """Microseconds per ``call(group)``. Warm (no ``sweep``): the mean of back-to-back calls. Cold:
    ``sweep`` (a large tensor) is swept before each call, as a training step's kernels evict the
    caches between two collectives, and only the call is timed; the median call, since a cold call
    now and then also meets an interrupt or a page fault."""
    clock = time.perf_counter_ns
    if sweep is None:
        t0 = clock()
        for _ in range(calls):
            call(group)
        return (clock() - t0) / calls / 1e3
    each = []
    for _ in range(calls):
        sweep.add_(1.0)
        t0 = clock()
        call(group)
        each.append(clock() - t0)
    return statistics.median(each) / 1e3


def interleaved_medians(names: list[str], batch, calls: int, repeats: int) -> dict[str, float]:
    """The median of ``repeats`` batches of ``batch(name, calls)`` per name, after one short batch of
    each to warm up; the names take turns, so that a slow second of the machine hits all alike."""
    for name in names:
        batch(name, max(calls // 10, 1))
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(batch(name, calls))
    return {name: statistics.median(values) for name, values in times.items()}
