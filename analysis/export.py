"""Chrome / Perfetto trace-event JSON: one process per rank, collectives as slices, counters as tracks.

Open the file in https://ui.perfetto.dev or chrome://tracing. Times are microseconds from the run's
first event, on rank 0's clock (the recorder's measured offsets applied). An operation still in
flight when the trace was written is drawn to the end of the trace and marked ``in_flight``.
"""

from __future__ import annotations

import json
import os

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
    throughput = run.sql("""
        SELECT host, device AS interface, t1_ns,
               sum(bytes) FILTER (WHERE counter = 'tx_bytes') * 8 / ((t1_ns - any_value(t0_ns)) / 1e9) / 1e9 AS tx,
               sum(bytes) FILTER (WHERE counter = 'rx_bytes') * 8 / ((t1_ns - any_value(t0_ns)) / 1e9) / 1e9 AS rx
        FROM counter_deltas WHERE source = 'net_dev' AND counter IN ('tx_bytes', 'rx_bytes')
        GROUP BY host, device, t1_ns HAVING t1_ns > any_value(t0_ns)
        ORDER BY host, device, t1_ns
    """)
    host_pids: dict[str, int] = {}
    for r in throughput.iter_rows(named=True):
        if not (r["tx"] or r["rx"]):
            continue
        pid = host_pids.setdefault(r["host"], 1_000_000 + len(host_pids))
        events.append(
            {
                "ph": "C",
                "name": f"{r['interface']} Gbit/s",
                "pid": pid,
                "ts": (r["t1_ns"] - first) / 1e3,
                "args": {"tx": round(r["tx"] or 0.0, 6), "rx": round(r["rx"] or 0.0, 6)},
            }
        )
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
