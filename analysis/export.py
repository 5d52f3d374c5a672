"""Chrome / Perfetto trace-event JSON: one process per rank, collectives as slices, counters as tracks.

Open the file in https://ui.perfetto.dev or chrome://tracing. Times are microseconds from the run's
first event, on rank 0's clock (the recorder's measured offsets applied). An operation still in
flight when the trace was written is drawn to the end of the trace and marked ``in_flight``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

import polars as pl

from analysis import timelines
from analysis.load import Run, TraceError

SLICE_BATCH = 50_000  # rows of slices turned into Python objects at a time


def trace_events(run: Run) -> Iterator[dict]:
    """The trace's events, one at a time: the slices are streamed from DuckDB in batches, so that
    writing a run of millions of operations holds a batch of them in Python, not the run."""
    first, last = run.sql("SELECT min(t_start_ns), max(coalesce(t_end_ns, t_start_ns)) FROM collectives").row(0)
    if first is None:
        return
    yield from _rank_tracks(run)
    yield from _slices(run, first, last)
    yield from _throughput_counters(run)


def _rank_tracks(run: Run) -> Iterator[dict]:
    """A process per rank, named with its host, in rank order."""
    hosts = {r: str(m.get("host", "?")) for r, m in run.ranks.items()}
    for rank in sorted(run.sql("SELECT DISTINCT rank FROM collectives").to_series().to_list()):
        yield {
            "ph": "M",
            "name": "process_name",
            "pid": rank,
            "tid": 0,
            "args": {"name": f"rank {rank} ({hosts.get(rank, '?')})"},
        }
        yield {"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}}


def _slices(run: Run, first: int, last: int) -> Iterator[dict]:
    """A slice per operation, on its rank's track of its group; one still in flight lasts to ``last``."""
    # Read from the segments once, into a table of DuckDB's (spilled past its memory limit), so that
    # a damaged file is found and dropped here, before anything is streamed out.
    run.guarded(
        lambda: run.con.execute("""
            CREATE OR REPLACE TEMP TABLE export_slices AS
            SELECT rank, pg, pg_desc, seq, op, bytes_in, bytes_out, dtype, peer, root, status, t_start_ns, t_end_ns,
                   step
            FROM collectives
        """)
    )
    result = run.con.execute("SELECT * FROM export_slices ORDER BY rank, t_start_ns")
    names = [d[0] for d in result.description]
    while batch := result.fetchmany(SLICE_BATCH):
        for r in (dict(zip(names, row, strict=True)) for row in batch):
            end = r["t_end_ns"] if r["t_end_ns"] is not None else last
            args = {k: r[k] for k in ("pg", "pg_desc", "seq", "bytes_in", "bytes_out", "dtype", "status")}
            for key in ("peer", "root", "step"):
                if r[key] is not None:
                    args[key] = r[key]
            yield {
                "ph": "X",
                "name": r["op"],
                "cat": f"pg {r['pg']}",
                "pid": r["rank"],
                "tid": r["pg"],
                "ts": (r["t_start_ns"] - first) / 1e3,
                "dur": max(end - r["t_start_ns"], 0) / 1e3,
                "args": args,
            }
    run.con.execute("DROP TABLE export_slices")


def _throughput_counters(run: Run) -> Iterator[dict]:
    """Each busy host interface's throughput, one counter track per direction."""
    # A rate holds over its interval (t0, t1]: one counter event at t0 per interval and direction,
    # each direction its own track (the sampler's samples of tx and rx need not line up). Sample
    # times are on rank 0's clock, like the slices (timelines.host_series), in s since ``first``.
    throughput = (
        timelines.host_series(run)
        .filter(pl.col("series").is_in(["tx_gbitps", "rx_gbitps"]))
        .select(
            "host",
            "interface",
            pl.col("series").str.slice(0, 2).alias("direction"),
            (pl.col("t0_s") * 1e6).alias("t0_us"),
            (pl.col("t1_s") * 1e6).alias("t1_us"),
            pl.col("value").alias("gbitps"),
        )
        .sort(["host", "interface", "direction", "t0_us"])
    )
    busy = throughput.group_by(["host", "interface"]).agg(pl.col("gbitps").max()).filter(pl.col("gbitps") > 0)
    busy_interfaces = {(r["host"], r["interface"]) for r in busy.iter_rows(named=True)}
    host_pids: dict[str, int] = {}
    last_end: dict[tuple, int] = {}
    for r in throughput.iter_rows(named=True):
        if (r["host"], r["interface"]) not in busy_interfaces:
            continue
        if not all(isinstance(v, float) and math.isfinite(v) for v in (r["t0_us"], r["t1_us"], r["gbitps"])):
            continue  # samples nanoseconds apart, or counters beyond reason: no rate to draw (JSON has no NaN)
        pid = host_pids.setdefault(r["host"], 1_000_000 + len(host_pids))
        name = f"{r['interface']} {r['direction']} Gbit/s"
        yield {"ph": "C", "name": name, "pid": pid, "ts": r["t0_us"], "args": {r["direction"]: round(r["gbitps"], 6)}}
        last_end[(pid, name, r["direction"])] = r["t1_us"]
    for (pid, name, direction), t1 in last_end.items():  # the series ends: back to zero
        yield {"ph": "C", "name": name, "pid": pid, "ts": t1, "args": {direction: 0.0}}
    for host, pid in host_pids.items():
        yield {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"host {host}"}}


def check_new_file(path: str, overwrite: bool = False) -> None:
    """Raise TraceError unless ``path`` can be written: nothing may be there, not even a link to nothing
    (unless ``overwrite``), and its folder must exist. Checked before the work of making the output,
    so that a refusal costs nothing."""
    if os.path.lexists(path) and not overwrite:
        raise TraceError(f"{path} exists; choose another name or pass --force to replace it")
    if overwrite and os.path.isdir(path):
        raise TraceError(f"{path} is a folder; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TraceError(f"{folder}: no such directory")


def write_new_file(path: str, content: str | Callable[[IO[str]], None], overwrite: bool = False) -> None:
    """Write ``content`` (text, or a function that writes to the file) to ``path`` whole or not at all.

    It is written to a temporary file of an unpredictable name created in the same folder (so that a
    link planted under a name we would use cannot redirect the write); without ``overwrite`` it is then
    hard-linked into place, which fails rather than replace a file that appeared meanwhile, so nothing
    the user had is ever overwritten; with it, renamed over ``path`` (a link there is replaced, not
    followed).
    """
    check_new_file(path, overwrite)
    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise TraceError(f"{path}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have made, not mkstemp's owner-only 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise TraceError(f"{path} exists; choose another name or pass --force to replace it") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write(run: Run, path: str, overwrite: bool = False) -> int:
    """Write the trace to ``path`` (never over an existing file unless ``overwrite``), streaming its
    events; returns the event count. Strict JSON: a value JSON cannot hold (NaN) fails the write,
    which then leaves nothing behind."""
    check_new_file(path, overwrite)
    count = 0

    def stream(fh: IO[str]) -> None:
        nonlocal count
        fh.write('{"traceEvents": [')
        for event in trace_events(run):
            fh.write(",\n" if count else "\n")
            fh.write(json.dumps(event, allow_nan=False))
            count += 1
        other = {"run_id": run.run_id, "producer": "commtrace"}
        fh.write(f'\n], "displayTimeUnit": "ms", "otherData": {json.dumps(other)}}}\n')

    write_new_file(path, stream, overwrite)
    return count
