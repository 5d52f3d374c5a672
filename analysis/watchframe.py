"""One frame of ``analyze-trace watch``: the figures of a refresh, from the watcher's window, its
run-so-far aggregates and the ranks' live files (analysis.watch).

The frame is a dict (``--format json`` writes it as one line; its fields are only ever added):

    run_id, path, refresh, time_ns, state ("running" | "ended"), world_size, hosts, ranks_writing,
    progress:  [{pg, group, ranks, members, completed, issued, behind: [{rank, by}], per_rank, ops_per_s}]
    inflight:  [{rank, pg, seq, op, peer, for_s, inflight, group}]   each rank's oldest, longest first
    hang:      null | {pg, group, seq, op, for_s, stuck_ranks, never_issued, not_writing}
    bandwidth: [{pg, group, op, size_bucket, count, busbw_GBps, p50_ms, run_count, run_busbw_GBps}]
    late:      [{rank, host, mean_late_ms, times_last, run_mean_late_ms}]   this interval, most late first
    window:    {seconds, rows}   the latest rows kept: --window seconds, at most Options.window_ops_per_rank a rank
    stragglers, packet_loss: as diagnose's report, over the window
    host_figures: [{host, rx_Bps, tx_Bps, retrans_pct, retrans_source, errors, drops, newest_sample_ns}]
    recording: {dropped_events: {rank: n}, stopped_writing: [rank], closed: [rank], problems: [str]}
"""

from __future__ import annotations

import math
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from analysis import diagnose, formulas, text, views
from analysis.load import Run
from analysis.vocabulary import P2P_OPS_SQL

BINS_PER_E = 100  # busbw histogram bins per factor e: 1 % wide


def instances_sql(new_only: bool) -> str:
    """Complete collective instances (every member completed it, ok), sized as ``collectives`` does."""
    return f"""
        SELECT key, pg, op, family, pg_size, first_start_ns, last_start_ns, last_end_ns,
               {formulas.size_bucket_sql("size_bytes")} AS size_bucket, size_bytes,
               greatest(last_end_ns - last_start_ns, 1) AS transfer_ns,
               size_bytes / greatest(last_end_ns - last_start_ns, 1) * {formulas.bus_factor_sql()} AS busbw_GBps
        FROM (
            SELECT *, {formulas.message_bytes_sql()} AS size_bytes
            FROM (SELECT *, {formulas.family_sql("op")} AS family FROM instances)
            WHERE op NOT IN ('barrier', 'monitored_barrier') AND ranks = pg_size AND complete AND ok
              {"AND key NOT IN (SELECT key FROM counted)" if new_only else ""}
        )
    """


ARRIVALS_SQL = f"""
    SELECT c.rank, count(*) AS n, sum(c.t_start_ns - f.first_start_ns) AS late_ns,
           count(*) FILTER (WHERE c.t_start_ns = f.last_start_ns AND f.last_start_ns - f.first_start_ns >= 1000000)
               AS times_last
    FROM collectives c JOIN fresh f ON hash(c.pg, c.seq) = f.key
    WHERE c.op NOT IN {P2P_OPS_SQL}
    GROUP BY c.rank
"""
BUCKETS_SQL = f"""
    SELECT pg, op, family, pg_size, size_bucket, round(ln(busbw_GBps) * {BINS_PER_E})::BIGINT AS bin,
           count(*) AS n, sum(size_bytes)::DOUBLE AS bytes
    FROM fresh WHERE busbw_GBps > 0
    GROUP BY ALL
"""
INTERVAL_SQL = """
    SELECT pg, op, family, pg_size, size_bucket, count(*) AS count, median(busbw_GBps) AS busbw_GBps,
           median(transfer_ns) / 1e6 AS p50_ms
    FROM fresh GROUP BY ALL
"""


class Totals:
    """Run-so-far aggregates, fed with each refresh's newly complete instances."""

    def __init__(self) -> None:
        self.buckets: dict[tuple, list] = {}  # (pg, op, family, pg_size, size_bucket) -> [count, bytes, Counter]
        self.ranks: dict[int, list[int]] = {}  # rank -> [arrivals, late ns, times last]

    def add(self, con) -> None:
        for pg, op, family, size, bucket, b, n, nbytes in con.execute(BUCKETS_SQL).fetchall():
            entry = self.buckets.setdefault((pg, op, family, size, bucket), [0, 0.0, Counter()])
            entry[0] += n
            entry[1] += nbytes
            entry[2][b] += n
        for rank, n, late_ns, last in con.execute(ARRIVALS_SQL).fetchall():
            entry = self.ranks.setdefault(rank, [0, 0, 0])
            entry[0] += n
            entry[1] += int(late_ns or 0)
            entry[2] += last

    def busbw(self, key: tuple) -> float | None:
        """The run-so-far median bus bandwidth of a bucket (to within 1 %)."""
        entry = self.buckets.get(key)
        if not entry or not entry[2]:
            return None
        bins = sorted(entry[2])
        half, seen = sum(entry[2].values()) / 2, 0
        for i, b in enumerate(bins):
            seen += entry[2][b]
            if seen > half or (seen == half and i + 1 == len(bins)):
                return math.exp(b / BINS_PER_E)
            if seen == half:  # an even count split between two bins: halfway, as a median is
                return (math.exp(b / BINS_PER_E) + math.exp(bins[i + 1] / BINS_PER_E)) / 2
        return None


_HOSTS_SQL = """
    WITH d AS (SELECT * FROM counter_deltas),
    nic AS (
        SELECT host, counter, sum(bytes) AS bytes, (max(t1_ns) - min(t0_ns)) / 1e9 AS seconds
        FROM d WHERE source = 'net_dev' AND device <> 'lo' AND counter IN ('rx_bytes', 'tx_bytes')
        GROUP BY host, counter
    ),
    per_host AS (
        SELECT host,
               sum(delta) FILTER (WHERE source = 'net_dev'
                                  AND counter IN ('rx_errs', 'tx_errs', 'rx_frame', 'tx_carrier')) AS errors,
               sum(delta) FILTER (WHERE source = 'net_dev'
                                  AND counter IN ('rx_drop', 'tx_drop', 'rx_fifo', 'tx_fifo')) AS drops,
               sum(delta) FILTER (WHERE source = 'tcp_conn' AND counter = 'bytes_retrans') AS conn_retrans,
               sum(delta) FILTER (WHERE source = 'tcp_conn' AND counter = 'bytes_sent') AS conn_sent,
               sum(delta) FILTER (WHERE source IN ('snmp', 'netstat') AND counter = 'RetransSegs') AS retrans,
               sum(delta) FILTER (WHERE source IN ('snmp', 'netstat') AND counter = 'OutSegs') AS sent,
               max(t1_ns) AS newest_sample_ns
        FROM d GROUP BY host
    )
    SELECT p.host,
           (SELECT bytes / nullif(seconds, 0) FROM nic WHERE nic.host = p.host AND counter = 'rx_bytes') AS rx_Bps,
           (SELECT bytes / nullif(seconds, 0) FROM nic WHERE nic.host = p.host AND counter = 'tx_bytes') AS tx_Bps,
           CASE WHEN conn_sent > 0 THEN round(100.0 * conn_retrans / conn_sent, 4)
                ELSE round(100.0 * retrans / nullif(sent, 0), 4) END AS retrans_pct,
           CASE WHEN conn_sent > 0 THEN 'tcp_conn' WHEN sent > 0 THEN 'snmp' END AS retrans_source,
           CAST(errors AS BIGINT) AS errors, CAST(drops AS BIGINT) AS drops, newest_sample_ns
    FROM per_host p ORDER BY p.host
"""
_OPS_PER_S_SQL = """
    SELECT pg, count(*) / nullif((max(last_end_ns) - min(last_end_ns)) / 1e9, 0) AS ops_per_s
    FROM instances WHERE ranks = pg_size AND complete GROUP BY pg
"""


def frame(w, first: bool) -> dict:
    """The frame of watcher ``w`` after its refresh (``first``: its first look)."""
    o = w.options
    flush_s = max([float(r.state.get("flush_s") or 1.0) for r in w.live.ranks.values()] or [1.0])
    stopped = w.live.stopped(o.stale_s or max(5 * flush_s, 3 * o.interval_s), first)
    members: dict[str, set[int]] = {}
    for meta in w.ranks.values():
        for g in meta.get("process_groups") or []:
            if isinstance(g.get("ranks"), list):
                members.setdefault(str(g.get("pg")), set()).update(g["ranks"])
    hosts = {r: m.get("host") for r, m in w.ranks.items()}
    out = {
        "run_id": str(w.run_meta.get("run_id") or w.path.rstrip("/").rsplit("/", 1)[-1]),
        "path": w.path,
        "refresh": w.refreshes,
        "time_ns": time.time_ns(),
        "world_size": w.world,
        "hosts": sorted({h for h in hosts.values() if h}),
        "bandwidth": [],
        "late": [],
        "stragglers": [],
        "packet_loss": [],
        "host_figures": [],
    }
    labels: dict[str, str] = {pg: text.group_label(None, ranks) for pg, ranks in members.items()}
    ops_per_s = _window(w, out, first, hosts)
    labels = w.labels or labels
    progress = _progress(w, members, labels, ops_per_s)
    hang = w.live.hang(o.hang_after_s, members, stopped)
    if hang is not None:
        hang["group"] = labels.get(hang["pg"]) or text.group_label(None, members.get(hang["pg"]))
    closed = w.live.closed() | {r for r, m in w.ranks.items() if m.get("closed")}
    world = w.world
    ended = bool(world) and all(r in closed or r in stopped for r in range(world))
    failures = [f"rank {r}: recording stopped ({m['failure']})" for r, m in sorted(w.ranks.items()) if m.get("failure")]
    out.update(
        state="ended" if ended else "running",
        ranks_writing=sum(1 for r in w.live.ranks if r not in closed and r not in stopped),
        progress=progress,
        inflight=[{**op, "group": labels.get(op["pg"])} for op in w.live.inflight()],
        hang=hang,
        recording={
            "dropped_events": {str(r): n for r, n in sorted(w.live.dropped().items())},
            "stopped_writing": stopped,
            "closed": sorted(closed),
            "problems": failures + w.tail.problems + w.problems + w.live.problems + w.live_problems,
        },
    )
    return out


def _window(w, out: dict, first: bool, hosts: dict) -> dict[str, float]:
    """The window's figures into ``out``: this interval's bandwidth and arrivals (and the run-so-far
    totals fed with them), the verdicts, the hosts; the window's collectives per second per group."""
    out["window"] = {"seconds": 0.0, "rows": 0}
    if w.unchanged and w.window_parts:  # nothing new: the window's verdicts stand (no query)
        out.update(w.window_parts)
        out["bandwidth"] = _bandwidth(w, [], w.labels)
        return {}
    if w.rows is None or not w.rows.num_rows:
        return {}
    ends = pc.coalesce(w.rows["t_end_ns"], w.rows["t_start_ns"])
    span = pc.min_max(ends).as_py()
    out["window"] = {"seconds": round((span["max"] - span["min"]) / 1e9, 3), "rows": w.rows.num_rows}
    run = Run.of_rows(w.path, w.run_meta, w.ranks, w.rows, w.samples)
    try:
        w.labels = run.group_labels()
        views.prepare(run, "instances")  # built once, read below
        run.con.register("counted_keys", pa.table({"key": pa.array(w.counted, pa.uint64())}))
        run.con.execute("CREATE TEMP TABLE counted AS SELECT key FROM counted_keys")
        run.con.execute(f"CREATE TEMP TABLE fresh AS {instances_sql(not first)}")
        if not first:
            w.totals.add(run.con)
        out["bandwidth"] = _bandwidth(w, run.con.execute(INTERVAL_SQL).fetchall(), w.labels)
        out["late"] = _late(w, run.con.execute(ARRIVALS_SQL).fetchall(), hosts)
        keys = run.con.execute("SELECT key FROM instances WHERE ranks = pg_size AND complete").fetchnumpy()["key"]
        w.counted = keys.astype("uint64")
        ops_per_s = {pg: rate for pg, rate in run.con.execute(_OPS_PER_S_SQL).fetchall() if rate}
        out.update(diagnose.window_verdict(run, w.options.thresholds))
        out["host_figures"] = run.sql(_HOSTS_SQL).to_dicts()
        w.window_parts = {k: out[k] for k in ("window", "stragglers", "packet_loss", "host_figures")}
        return ops_per_s
    finally:
        run.con.close()


def _progress(w, members: dict, labels: dict, ops_per_s: dict) -> list[dict]:
    """The live files' progress per group, with collectives completed per second since the last
    refresh (the window's rate at the first)."""
    progress = w.live.progress(members)
    now = time.monotonic()
    for p in progress:
        p["group"] = labels.get(p["pg"]) or text.group_label(None, members.get(p["pg"]))
        before = w.progress_seen.get(p["pg"])
        if before is not None and now > before[1]:
            p["ops_per_s"] = round(max(0, p["completed"] - before[0]) / (now - before[1]), 3)
        else:
            p["ops_per_s"] = ops_per_s.get(p["pg"])
        w.progress_seen[p["pg"]] = (p["completed"], now)
    return progress


def _bandwidth(w, interval: list[tuple], labels: dict[str, str]) -> list[dict]:
    """Per (group, op, size bucket) this interval's busbw and p50 transfer time, beside the run's."""
    now = {(pg, op, fam, size, bucket): (n, bw, p50) for pg, op, fam, size, bucket, n, bw, p50 in interval}
    keys = sorted(set(now) | set(w.totals.buckets), key=lambda k: -w.totals.buckets.get(k, [0, 0.0])[1])
    rows = []
    for key in keys[:16]:
        pg, op, _, _, bucket = key
        n, bw, p50 = now.get(key, (0, None, None))
        total = w.totals.buckets.get(key)
        rows.append(
            {
                "pg": pg,
                "group": labels.get(pg),
                "op": op,
                "size_bucket": bucket,
                "count": n,
                "busbw_GBps": bw,
                "p50_ms": p50,
                "run_count": total[0] if total else 0,
                "run_busbw_GBps": w.totals.busbw(key),
            }
        )
    return rows


def _late(w, arrivals: list[tuple], hosts: dict) -> list[dict]:
    """This interval's most late ranks (mean lateness against each instance's first arrival)."""
    rows = []
    for rank, n, late_ns, last in arrivals:
        if not n:
            continue
        total = w.totals.ranks.get(rank)
        rows.append(
            {
                "rank": rank,
                "host": hosts.get(rank),
                "mean_late_ms": round(late_ns / n / 1e6, 4),
                "times_last": last,
                "collectives": n,
                "run_mean_late_ms": round(total[1] / total[0] / 1e6, 4) if total and total[0] else None,
            }
        )
    rows.sort(key=lambda r: (-r["mean_late_ms"], r["rank"]))
    return rows[:5]
