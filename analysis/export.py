"""Chrome / Perfetto trace-event JSON: one process per rank, collectives as slices, counters as tracks.

Open the file in https://ui.perfetto.dev or chrome://tracing. Times are microseconds from the run's
first event, on rank 0's clock (the recorder's measured offsets applied). An operation still in
flight when the trace was written is drawn to the end of the trace and marked ``in_flight``.
"""

from __future__ import annotations

import json
import os

import polars as pl

from analysis.load import Run, TraceError


def trace_events(run: Run) -> list[dict]:
    first, last = run.sql("SELECT min(t_start_ns), max(coalesce(t_end_ns, t_start_ns)) FROM collectives").row(0)
    if first is None:
        return []
    events: list[dict] = []
    hosts = {r: str(m.get("host", "?")) for r, m in run.ranks.items()}
    for rank in sorted(run.sql("SELECT DISTINCT rank FROM collectives").to_series().to_list()):
        events.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": rank,
                "tid": 0,
                "args": {"name": f"rank {rank} ({hosts.get(rank, '?')})"},
            }
        )
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
    rows = run.sql("""
        SELECT rank, pg, pg_desc, seq, op, bytes_in, bytes_out, dtype, peer, root, status, t_start_ns, t_end_ns, step
        FROM collectives ORDER BY rank, t_start_ns
    """)
    for r in rows.iter_rows(named=True):
        end = r["t_end_ns"] if r["t_end_ns"] is not None else last
        args = {k: r[k] for k in ("pg", "pg_desc", "seq", "bytes_in", "bytes_out", "dtype", "status")}
        for key in ("peer", "root", "step"):
            if r[key] is not None:
                args[key] = r[key]
        events.append(
            {
                "ph": "X",
                "name": r["op"],
                "cat": f"pg {r['pg']}",
                "pid": r["rank"],
                "tid": r["pg"],
                "ts": (r["t_start_ns"] - first) / 1e3,
                "dur": max(end - r["t_start_ns"], 0) / 1e3,
                "args": args,
            }
        )
    # A rate holds over its interval (t0, t1]: one counter event at t0 per interval and direction,
    # each direction its own track (the sampler's samples of tx and rx need not line up).
    throughput = run.sql("""
        SELECT host, device AS interface, CASE counter WHEN 'tx_bytes' THEN 'tx' ELSE 'rx' END AS direction,
               t0_ns, t1_ns, bytes * 8 / ((t1_ns - t0_ns) / 1e9) / 1e9 AS gbitps
        FROM counter_deltas
        WHERE source = 'net_dev' AND counter IN ('tx_bytes', 'rx_bytes') AND t1_ns > t0_ns
        ORDER BY host, device, direction, t0_ns
    """)
    busy = throughput.group_by(["host", "interface"]).agg(pl.col("gbitps").max()).filter(pl.col("gbitps") > 0)
    busy_interfaces = {(r["host"], r["interface"]) for r in busy.iter_rows(named=True)}
    host_pids: dict[str, int] = {}
    last_end: dict[tuple, int] = {}
    for r in throughput.iter_rows(named=True):
        if (r["host"], r["interface"]) not in busy_interfaces:
            continue
        pid = host_pids.setdefault(r["host"], 1_000_000 + len(host_pids))
        name = f"{r['interface']} {r['direction']} Gbit/s"
        events.append(
            {
                "ph": "C",
                "name": name,
                "pid": pid,
                "ts": (r["t0_ns"] - first) / 1e3,
                "args": {r["direction"]: round(r["gbitps"], 6)},
            }
        )
        last_end[(pid, name, r["direction"])] = r["t1_ns"]
    for (pid, name, direction), t1 in last_end.items():  # the series ends: back to zero
        events.append({"ph": "C", "name": name, "pid": pid, "ts": (t1 - first) / 1e3, "args": {direction: 0.0}})
    for host, pid in host_pids.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"host {host}"}})
    return events


def write(run: Run, path: str, overwrite: bool = False) -> int:
    """Write the trace to ``path`` (never over an existing file unless ``overwrite``); returns the event count."""
    if os.path.exists(path) and not overwrite:
        raise TraceError(f"{path} exists; choose another name or pass --force to replace it")
    events = trace_events(run)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(
            {
                "traceEvents": events,
                "displayTimeUnit": "ms",
                "otherData": {"run_id": run.run_id, "producer": "commtrace"},
            },
            fh,
        )
    os.replace(tmp, path)
    return len(events)
