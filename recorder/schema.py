"""The on-disk contract between the recorder and the analysis: file names, columns, versions.

The analysis has its own copy of the names it needs (it never imports the recorder); a test checks
that the two agree.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1


def safe_name(text: str, limit: int = 64) -> str:
    """``text`` made safe for a file or folder name (run ids, host names): letters, digits, ``._-``."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)[:limit]


COLLECTIVES_PREFIX = "collectives"
INFLIGHT_PREFIX = "inflight"  # snapshots of the operations in flight (a hang, SIGUSR1, SIGTERM)
RANK_META_PREFIX = "rank"
RUN_META = "run.json"

COLLECTIVE_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("pg", pa.dictionary(pa.int32(), pa.string())),
        ("pg_desc", pa.dictionary(pa.int32(), pa.string())),
        ("pg_size", pa.int32()),
        ("seq", pa.int64()),
        ("op", pa.dictionary(pa.int32(), pa.string())),
        ("count", pa.int64()),
        ("bytes_in", pa.int64()),
        ("bytes_out", pa.int64()),
        ("dtype", pa.dictionary(pa.int32(), pa.string())),
        ("peer", pa.int32()),
        ("root", pa.int32()),
        ("t_start_ns", pa.int64()),
        ("t_end_ns", pa.int64()),
        ("gpu_duration_ns", pa.int64()),
        ("status", pa.dictionary(pa.int32(), pa.string())),
        ("async_op", pa.bool_()),
        ("coalesced", pa.bool_()),
        ("api", pa.dictionary(pa.int32(), pa.string())),
        ("backend", pa.dictionary(pa.int32(), pa.string())),
        ("device", pa.dictionary(pa.int32(), pa.string())),
        ("step", pa.int64()),
    ]
)
"""One row per operation. ``t_*_ns`` are wall-clock ns (``time.time_ns`` domain) of this rank's clock;
``t_end_ns`` is null for an operation still in flight when written. ``peer`` and ``root`` are global
ranks. ``seq`` counts collectives per process group (the same operation has the same seq on every
member) and, for send/recv, operations per (group, direction, peer)."""

# Columns that change little from row to row: delta encoding keeps them a few bits per row.
DELTA_COLUMNS = ("seq", "t_start_ns", "t_end_ns", "step")

SAMPLES_PREFIX = "nic"
HOST_META_PREFIX = "host"

SAMPLE_SCHEMA = pa.schema(
    [
        ("t_ns", pa.int64()),
        ("host", pa.dictionary(pa.int32(), pa.string())),
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("device", pa.dictionary(pa.int32(), pa.string())),
        ("port", pa.int32()),
        ("counter", pa.dictionary(pa.int32(), pa.string())),
        ("value", pa.int64()),
        ("text", pa.dictionary(pa.int32(), pa.string())),
    ]
)
"""One row per counter per sample: the raw cumulative value as the kernel shows it (``value``), or a
descriptive one (``text``, e.g. an interface's operstate). ``t_ns`` is wall-clock ns of the sample."""

PROBE_PREFIX = "probe"

PROBE_SCHEMA = pa.schema(
    [
        ("phase", pa.string()),
        ("round", pa.int32()),
        ("src_rank", pa.int32()),
        ("src_host", pa.string()),
        ("dst_rank", pa.int32()),
        ("dst_host", pa.string()),
        ("bytes", pa.int64()),
        ("repetitions", pa.int32()),
        ("transfer_s", pa.float64()),
        ("bandwidth_gbps", pa.float64()),
        ("latency_us", pa.float64()),
        ("t_ns", pa.int64()),
    ]
)
"""The link probe (``rank=*/probe-*.parquet``): one row per (phase, round) on each probing rank, for
the link from ``src`` to this rank (``dst``), measured where the data arrives. ``phase`` is
``start`` or ``end``; ``transfer_s`` is the fastest of ``repetitions`` transfers of ``bytes``,
``bandwidth_gbps`` = bytes / transfer_s / 1e9 (GB/s); ``latency_us`` the median time of
an 8-byte exchange in the same shift. ``t_ns``: wall-clock ns (this rank's clock) of the round."""
