"""Every setting of the recorder: one ``COMMTRACE_*`` environment variable each, parsed once.

The table in ``docs/configuration.md`` is generated from the constants below; keep the two in step.
A value that does not parse logs one warning and falls back to the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from recorder._log import warn_once

COMMTRACE_DIR = "COMMTRACE_DIR"
"""Directory that receives the traces. Setting it is what switches recording on."""

COMMTRACE_FLUSH_S = "COMMTRACE_FLUSH_S"
"""Seconds between segment flushes (default 1.0): a ``kill -9`` loses at most this much."""

COMMTRACE_FLUSH_EVENTS = "COMMTRACE_FLUSH_EVENTS"
"""Flush early once this many events are buffered (default 4096)."""

COMMTRACE_MAX_BUFFERED = "COMMTRACE_MAX_BUFFERED"
"""Events held in memory at most (default 32768, ~3 MB at 69 bytes an operation and 25 its
completion); beyond it events are dropped and counted."""

COMMTRACE_PENDING_S = "COMMTRACE_PENDING_S"
"""An operation not completed after this many seconds is written as in flight (default 600)."""

COMMTRACE_HANG_DUMP_S = "COMMTRACE_HANG_DUMP_S"
"""When no operation has completed for this many seconds while some are in flight, write what is in
flight to an ``inflight-*`` snapshot (default 60; 0 turns the watchdog off). SIGUSR1 writes one at
once, and so does SIGTERM, even while training is blocked inside a collective; the operations stay
in flight for the recorder, and are written again as completed if they complete."""

COMMTRACE_RUN_ID = "COMMTRACE_RUN_ID"
"""Name of the run directory; by default rank 0 chooses one and shares it through the job's store."""

COMMTRACE_CLOCK_SYNC = "COMMTRACE_CLOCK_SYNC"
"""Measure each rank's clock offset to rank 0 once its trace is set up, and again every
``COMMTRACE_CLOCK_INTERVAL_S`` (default 1; 0 turns it off). Measured on a thread of the recorder's,
through the job's store: neither the job's start nor its exit waits for it."""

COMMTRACE_CLOCK_INTERVAL_S = "COMMTRACE_CLOCK_INTERVAL_S"
"""Seconds between a rank's clock measurements after the first (default 120): the last one is kept
as the run's ``end`` offset, which bounds how far the clocks drifted apart."""

COMMTRACE_CLOCK_ROUNDS = "COMMTRACE_CLOCK_ROUNDS"
"""Ping-pong rounds per clock measurement; the round with the smallest round trip wins (default 5)."""

COMMTRACE_CUDA_TIMING = "COMMTRACE_CUDA_TIMING"
"""Time CUDA collectives with CUDA events (default 1); 0 records host-side issue times only."""

COMMTRACE_SAMPLE_HZ = "COMMTRACE_SAMPLE_HZ"
"""Samples per second of the host's NIC, TCP and RDMA counters (default 10; 0 turns the sampler off)."""

COMMTRACE_SAMPLE_FLUSH_S = "COMMTRACE_SAMPLE_FLUSH_S"
"""Seconds between writes of the counter samples (default 10): parsing and writing a segment costs
more than sampling, and cumulative counters lose only resolution, not totals, if the last interval is
lost."""

COMMTRACE_SAMPLE_LIVE_S = "COMMTRACE_SAMPLE_LIVE_S"
"""Seconds between updates of the host's latest counters (default 2; 0 turns them off):
``host=<host>/live.json`` for ``analyze-trace watch`` and the host figures of ``recorder.metrics()``,
so that a live view's host figures are at most this old while samples are written every
COMMTRACE_SAMPLE_FLUSH_S. Only the latest capture of the interfaces, TCP and RDMA counters is parsed."""

COMMTRACE_PROBE = "COMMTRACE_PROBE"
"""Set to 1 to measure point-to-point bandwidth and latency between hosts when the default group is
created and again before it is destroyed (default off). One rank per host takes part, in a few
shift rounds (host i sends to host i+k); the probe adds a few seconds to start-up and shutdown, more
on slow links. What it finds lets the analysis name a slow link, which collective timings cannot."""

COMMTRACE_PROBE_BYTES = "COMMTRACE_PROBE_BYTES"
"""Bytes of each bandwidth transfer of the link probe (default 4194304): large enough that a
shaper's burst or a TCP ramp does not flatter the figure."""

COMMTRACE_PROBE_ROUNDS = "COMMTRACE_PROBE_ROUNDS"
"""Shift rounds of the link probe (default 2): round k pairs host i with host i+k, so round 1 alone
puts every host's link under test in both directions."""

COMMTRACE_PROC_ROOT = "COMMTRACE_PROC_ROOT"
"""Where the sampler finds ``proc/net/...`` (default ``/``); tests point it at fixture trees."""

COMMTRACE_SYS_ROOT = "COMMTRACE_SYS_ROOT"
"""Where the sampler finds ``sys/class/...`` (default ``/``); tests point it at fixture trees."""

COMMTRACE_DISABLE = "COMMTRACE_DISABLE"
"""Set to 1 to keep the recorder off even where COMMTRACE_DIR is set (e.g. in a sub-launcher)."""

ALL_VARIABLES = (
    COMMTRACE_DIR,
    COMMTRACE_FLUSH_S,
    COMMTRACE_FLUSH_EVENTS,
    COMMTRACE_MAX_BUFFERED,
    COMMTRACE_PENDING_S,
    COMMTRACE_HANG_DUMP_S,
    COMMTRACE_RUN_ID,
    COMMTRACE_CLOCK_SYNC,
    COMMTRACE_CLOCK_ROUNDS,
    COMMTRACE_CLOCK_INTERVAL_S,
    COMMTRACE_CUDA_TIMING,
    COMMTRACE_SAMPLE_HZ,
    COMMTRACE_SAMPLE_FLUSH_S,
    COMMTRACE_SAMPLE_LIVE_S,
    COMMTRACE_PROBE,
    COMMTRACE_PROBE_BYTES,
    COMMTRACE_PROBE_ROUNDS,
    COMMTRACE_PROC_ROOT,
    COMMTRACE_SYS_ROOT,
    COMMTRACE_DISABLE,
)


@dataclass(frozen=True)
class Config:
    dir: str | None = None
    flush_s: float = 1.0
    flush_events: int = 4096
    max_buffered: int = 32768
    pending_s: float = 600.0
    hang_dump_s: float = 60.0
    run_id: str | None = None
    clock_sync: bool = True
    clock_rounds: int = 5
    clock_interval_s: float = 120.0
    cuda_timing: bool = True
    sample_hz: float = 10.0
    sample_flush_s: float = 10.0
    sample_live_s: float = 2.0
    probe: bool = False
    probe_bytes: int = 4 << 20
    probe_rounds: int = 2
    proc_root: str = "/"
    sys_root: str = "/"
    disabled: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "dir": self.dir,
            "flush_s": self.flush_s,
            "flush_events": self.flush_events,
            "max_buffered": self.max_buffered,
            "pending_s": self.pending_s,
            "hang_dump_s": self.hang_dump_s,
            "run_id": self.run_id,
            "clock_sync": self.clock_sync,
            "clock_rounds": self.clock_rounds,
            "clock_interval_s": self.clock_interval_s,
            "cuda_timing": self.cuda_timing,
            "sample_hz": self.sample_hz,
            "sample_flush_s": self.sample_flush_s,
            "sample_live_s": self.sample_live_s,
            "probe": self.probe,
            "probe_bytes": self.probe_bytes,
            "probe_rounds": self.probe_rounds,
            "proc_root": self.proc_root,
            "sys_root": self.sys_root,
        }


def _number(env: dict[str, str], name: str, default, kind, minimum):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        warn_once(
            f"config:{name}",
            "%s=%r is not a valid value (want %s >= %s); using %s",
            name,
            raw,
            kind.__name__,
            minimum,
            default,
        )
        return default
    return value


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    warn_once(f"config:{name}", "%s=%r is not a boolean (use 1 or 0); using %s", name, raw, int(default))
    return default


def from_env(env: dict[str, str] | None = None, **overrides: object) -> Config:
    """Parse the ``COMMTRACE_*`` variables of ``env`` (default: ``os.environ``) into a Config."""
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = {
        "dir": env.get(COMMTRACE_DIR) or None,
        "flush_s": _number(env, COMMTRACE_FLUSH_S, 1.0, float, 0.01),
        "flush_events": _number(env, COMMTRACE_FLUSH_EVENTS, 4096, int, 1),
        "max_buffered": _number(env, COMMTRACE_MAX_BUFFERED, 32768, int, 16),
        "pending_s": _number(env, COMMTRACE_PENDING_S, 600.0, float, 0.1),
        "hang_dump_s": _number(env, COMMTRACE_HANG_DUMP_S, 60.0, float, 0.0),
        "run_id": env.get(COMMTRACE_RUN_ID) or None,
        "clock_sync": _flag(env, COMMTRACE_CLOCK_SYNC, True),
        "clock_rounds": _number(env, COMMTRACE_CLOCK_ROUNDS, 5, int, 1),
        "clock_interval_s": _number(env, COMMTRACE_CLOCK_INTERVAL_S, 120.0, float, 0.1),
        "cuda_timing": _flag(env, COMMTRACE_CUDA_TIMING, True),
        "sample_hz": _number(env, COMMTRACE_SAMPLE_HZ, 10.0, float, 0.0),
        "sample_flush_s": _number(env, COMMTRACE_SAMPLE_FLUSH_S, 10.0, float, 0.01),
        "sample_live_s": _number(env, COMMTRACE_SAMPLE_LIVE_S, 2.0, float, 0.0),
        "probe": _flag(env, COMMTRACE_PROBE, False),
        "probe_bytes": _number(env, COMMTRACE_PROBE_BYTES, 4 << 20, int, 1024),
        "probe_rounds": _number(env, COMMTRACE_PROBE_ROUNDS, 2, int, 1),
        "proc_root": env.get(COMMTRACE_PROC_ROOT) or "/",
        "sys_root": env.get(COMMTRACE_SYS_ROOT) or "/",
        "disabled": _flag(env, COMMTRACE_DISABLE, False),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)  # type: ignore[arg-type]
