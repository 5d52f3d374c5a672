"""Findings: each a function from a loaded run's views to a polars DataFrame."""

from __future__ import annotations

import polars as pl

from analysis import formulas
from analysis.load import P2P_OPS_SQL, SIGNATURE_SIZE_SQL, Run, _sql_string

# Columns renamed so that their names say their unit; JSON and CSV output carry the old name too,
# for the scripts that read it (fields are only ever added there).
LEGACY_COLUMNS = {
    "algbw_GBps": "algbw_gbps",
    "busbw_GBps": "busbw_gbps",
    "busbw_GBps_a": "busbw_gbps_a",
    "busbw_GBps_b": "busbw_gbps_b",
    "bandwidth_GBps": "bandwidth_gbps",
    "start_GBps": "start_gbps",
    "end_GBps": "end_gbps",
    "best_GBps": "best_gbps",
    "median_GBps": "median_gbps",
    "others_GBps": "others_gbps",
}


def _sum64(expr: str) -> str:
    """SQL: the sum of ``expr`` as a 64-bit integer, saturating rather than failing: a trace from
    elsewhere may hold sizes no job moves (DuckDB sums 64-bit values exactly, in 128 bits)."""
    return f"CAST(least(greatest(sum({expr}), -9223372036854775808), 9223372036854775807) AS BIGINT)"


def with_legacy_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with each renamed column also under its old name (for JSON and CSV)."""
    extra = [pl.col(new).alias(old) for new, old in LEGACY_COLUMNS.items() if new in frame.columns]
    if "bandwidth_Gbitps" in frame.columns:
        extra.append((pl.col("bandwidth_Gbitps") * 1000).round(1).alias("bandwidth_mbitps"))
    return frame.with_columns(extra) if extra else frame


def summary(run: Run) -> pl.DataFrame:
    """Per (process group, op as called): its nccl-tests family, how often (``events``: calls, summed
    over ranks), how much data, how long (on each rank, issue to completion).

    Sizes are S as nccl-tests defines it per op (``analysis.formulas``): ``size_bytes`` the median per
    call, ``total_bytes`` their sum. ``bytes_in`` (the inputs' bytes, summed) is kept for scripts that
    read it; for all_gather it is S / n.
    """
    family = formulas.family_sql("op")
    size = formulas.message_bytes_sql(family=family)
    frame = run.sql(f"""
        SELECT pg, any_value(pg_desc) AS pg_desc, any_value(pg_size) AS pg_size, op,
               count(*) AS events,
               count(DISTINCT rank) AS ranks,
               {_sum64("bytes_in")} AS bytes_in,
               round(quantile_cont(duration_ms, 0.5), 3) AS p50_ms,
               round(quantile_cont(duration_ms, 0.95), 3) AS p95_ms,
               round(max(duration_ms), 3) AS max_ms,
               count(*) FILTER (WHERE status <> 'ok') AS not_ok,
               any_value(family) AS family,
               CAST(median(size) AS BIGINT) AS size_bytes,
               {_sum64("size")} AS total_bytes
        FROM (SELECT *, {family} AS family, {size} AS size FROM collectives)
        GROUP BY pg, op
        ORDER BY pg, events DESC, op
    """)
    return run.with_group(frame)


def _instances_sql(run: Run) -> str:
    """One row per collective instance (pg, seq) whose every member recorded it, completed.

    transfer_ns = last completion - last arrival: the time the data moved once everyone was there
    (a fast rank's own duration includes waiting for late peers, so it is not used for bandwidth).
    """
    run.ensure_instances()
    return f"""
        SELECT *, {formulas.family_sql("op")} AS family
        FROM instances
        WHERE op NOT IN ('barrier', 'monitored_barrier') AND ranks = pg_size AND complete
    """


def collectives(run: Run) -> pl.DataFrame:
    """Per (process group, op as called, size bucket): the op's nccl-tests family, count, total S,
    transfer time percentiles, algbw, busbw.

    S and the bus factor follow nccl-tests (see analysis.formulas); ``size_bucket`` is the power of two
    at or below S; algbw = S / t, busbw = algbw x factor(n) with n the group's size; t is each
    instance's transfer time after the last arrival. Bandwidths are the medians over instances, in
    GB/s (1e9 B/s: ``algbw_GBps``, ``busbw_GBps``), unrounded: a few bytes moved in milliseconds is
    well under 1e-6 GB/s, and rounding it to 0 would hide it from plots and turn a comparison's ratio
    into a division by zero.
    """
    frame = run.sql(f"""
        WITH inst AS ({_instances_sql(run)}),
        sized AS (
            SELECT *, {formulas.message_bytes_sql()} AS size_bytes,
                   greatest(last_end_ns - last_start_ns, 1) AS transfer_ns,
                   {formulas.bus_factor_sql()} AS factor
            FROM inst WHERE ok
        )
        SELECT pg, op, pg_size,
               {formulas.size_bucket_sql("size_bytes")} AS size_bucket,
               count(*) AS count, {_sum64("size_bytes")} AS bytes,
               round(quantile_cont(transfer_ns, 0.5) / 1e6, 4) AS p50_ms,
               round(quantile_cont(transfer_ns, 0.95) / 1e6, 4) AS p95_ms,
               round(quantile_cont(transfer_ns, 0.99) / 1e6, 4) AS p99_ms,
               quantile_cont(size_bytes / transfer_ns, 0.5) AS algbw_GBps,
               quantile_cont(size_bytes / transfer_ns * factor, 0.5) AS busbw_GBps,
               family
        FROM sized
        GROUP BY pg, op, family, pg_size, size_bucket
        ORDER BY pg, op, size_bucket
    """)
    return run.with_group(frame)


def straggler_instances(run: Run) -> pl.DataFrame:
    """Per collective instance: arrival skew (last start - first start), the last arriver, transfer time."""
    return run.sql(f"""
        SELECT pg, seq, op, pg_size, last_rank,
               (last_start_ns - first_start_ns) / 1e6 AS arrival_skew_ms,
               (last_end_ns - last_start_ns) / 1e6 AS transfer_ms
        FROM ({_instances_sql(run)})
        ORDER BY pg, seq
    """)


def arrivals_ctes(run: Run) -> str:
    """CTEs ending in ``arrivals``: each collective event (p2p and barriers left out) of an instance
    every member recorded and completed, beside the instance's first and last arrival.

    Columns of ``arrivals``: rank, t_start_ns, t_end_ns (the rank's own clock), first_ns (the
    instance's first arrival on rank 0's clock), late_ns (this arrival - the first), skew_ns (last -
    first), at_last (this rank arrived last; ranks tied for last all are).
    """
    # Only instances every member recorded and completed count. Where the segments' footers prove
    # that of every instance (Run.settled), the counts that would check it, and the filter on
    # them, are left out.
    if run.settled():
        counts, full = "", ""
    else:
        counts = ", count(*) AS ranks, count(t_end_ns) AS ended, any_value(pg_size) AS pg_size"
        full = "WHERE i.ranks = i.pg_size AND i.ended = i.ranks"
    return f"""
        events AS (
            -- Read once: DuckDB materialises a CTE that is used twice (~36 B per event, in its
            -- buffer pool, spilled past the memory limit), which is a fifth faster than reading
            -- the segments twice. The instance key is the 64-bit hash of (pg, seq): a fifth faster
            -- than the two columns, and merging two instances would need a hash collision between
            -- them. Only the start is moved onto rank 0's clock (lateness compares ranks); gaps
            -- within one rank need no offset, which cancels out.
            SELECT rank, hash(pg, seq) AS key, pg_size, t_start_ns, t_end_ns, t_start_ns + {run.shift_sql} AS start_ns
            FROM raw_collectives
            WHERE op NOT IN {P2P_OPS_SQL} AND op NOT IN ('barrier', 'monitored_barrier')
        ),
        inst AS (
            SELECT key, min(start_ns) AS first_ns, max(start_ns) AS last_ns{counts} FROM events GROUP BY key
        ),
        arrivals AS (
            -- Written as a join: the same as window aggregates over the instance, which DuckDB
            -- plans as this very join plus overhead (a sixth slower at 12.8M events).
            SELECT e.rank, e.t_start_ns, e.t_end_ns, i.first_ns, e.start_ns - i.first_ns AS late_ns,
                   i.last_ns - i.first_ns AS skew_ns, e.start_ns = i.last_ns AS at_last
            FROM events e JOIN inst i USING (key)
            {full}
        )"""


def stragglers(run: Run, min_skew_ms: float = 1.0) -> pl.DataFrame:
    """Per rank: how often it arrived last, its mean and p95 lateness, and a robust outlier score.

    ``p95_lateness_ms`` is the 95th percentile to within 1 % (the largest lateness in the 1 %-wide
    bucket that holds it), so that memory stays bounded on runs of any length.

    lateness = this rank's start - the instance's first start; ``mean_lateness_ms`` leaves out the
    rank's single slowest arrival (a start-up skew, one pause). The outlier score is the rank's mean
    lateness against the other ranks' mean lateness, robustly: (mean - median of the others' means) /
    (1.4826 x their MAD, at least 0.05 ms), like a z-score; above 3.5 the rank is late far more than
    its peers: a slow rank, not a slow network. "The others" leaves the rank itself out, which
    matters in small jobs (with three ranks, a straggler is one of the three values its own median
    and MAD would be taken from); from 256 ranks on, all ranks are used (the difference vanishes).
    The mean, not the median, so that a rank late on a third of its collectives (a stall every few
    steps) stands out as much as one late on all of them. Only instances with an arrival skew of at
    least ``min_skew_ms`` count towards times_last.

    Arriving late is not enough to be a slow rank: a rank behind a lossy or slow link finishes its
    previous collective late and so starts the next one late too. ``mean_gap_ms`` is the rank's mean
    time between finishing one collective and starting the next (its compute, data loading, host
    work); ``compute_share`` = (its mean gap - the ranks' median mean gap) / its mean lateness,
    clipped to [0, 1]: near 1, the rank is late because it spent longer outside communication (a
    slow rank); near 0, because its communication ended late (the network). Where a rank's
    collectives overlap (asynchronous ones, DDP's gradient buckets) the gaps overlap too and the
    share understates; diagnose therefore gates on it loosely (0.25). The mean gap is
    computed without ordering the events: over a rank's n collectives, the sum of the gaps is
    (sum of starts - first start) - (sum of ends - last end).
    """
    per_rank = run.sql(
        f"""
        WITH {arrivals_ctes(run)},
        buckets AS (
            -- One pass into (rank, lateness bucket), buckets 1 % wide on a log scale (ln(ns) x 100;
            -- lateness 0 in a bucket of its own): everything below is rolled up from these few
            -- thousand rows per rank, so memory stays bounded however many events there are (an
            -- exact percentile would hold every event's lateness: 1.6 GB at 2e8 events).
            SELECT rank, CASE WHEN late_ns <= 0 THEN -1 ELSE floor(ln(late_ns) * 100)::INTEGER END AS bucket,
                   count(*) AS n, sum(late_ns) AS late_sum, max(late_ns) AS late_max,
                   count(*) FILTER (WHERE at_last AND skew_ns >= ? * 1e6) AS last_n,
                   sum(t_start_ns) AS start_sum, min(t_start_ns) AS start_min,
                   sum(t_end_ns) AS end_sum, max(t_end_ns) AS end_max
            FROM arrivals GROUP BY rank, bucket
        ),
        p95 AS (
            -- the largest lateness in the bucket that holds the 95th percentile: at most 1 % above it
            SELECT rank, arg_min(late_max, bucket) FILTER (WHERE upto >= 0.95 * total) AS p95_ns
            FROM (
                SELECT rank, bucket, late_max, sum(n) OVER (PARTITION BY rank ORDER BY bucket) AS upto,
                       sum(n) OVER (PARTITION BY rank) AS total
                FROM buckets
            )
            GROUP BY rank
        ),
        per_rank AS (
            SELECT rank, sum(n) AS collectives, sum(last_n) AS times_last,
                   -- without the rank's slowest arrival: one start-up skew or pause must not make it a
                   -- straggler (one pass; trimming a percentage would need a second)
                   (sum(late_sum) - max(late_max)) / 1e6 / greatest(sum(n) - 1, 1) AS mean_lateness_ms,
                   CAST((sum(start_sum) - min(start_min)) - (sum(end_sum) - max(end_max)) AS DOUBLE)
                       / greatest(sum(n) - 1, 1) / 1e6 AS mean_gap_ms
            FROM buckets GROUP BY rank
        ),
        spread AS (SELECT median(mean_gap_ms) AS gap_center FROM per_rank)
        SELECT rank, collectives::BIGINT AS collectives, times_last::BIGINT AS times_last,
               round(mean_lateness_ms, 3) AS mean_lateness_ms,
               round(p95_ns / 1e6, 3) AS p95_lateness_ms, mean_lateness_ms AS _mean,
               round(mean_gap_ms, 3) AS mean_gap_ms,
               round(least(greatest((mean_gap_ms - gap_center) / nullif(mean_lateness_ms, 0), 0), 1), 2)
                   AS compute_share
        FROM per_rank JOIN p95 USING (rank), spread
        ORDER BY rank
    """,
        [min_skew_ms],
    )
    means = per_rank["_mean"].to_numpy()
    scores = _outlier_scores(means)
    return per_rank.drop("_mean").insert_column(5, pl.Series("outlier_score", scores, dtype=pl.Float64))


def _outlier_scores(values, floor: float = 0.05, leave_one_out_below: int = 256) -> list[float | None]:
    """Robust z-score of each value against the others (or all, for many values): median / MAD x 1.4826."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return []
    out = []
    for i in range(n):
        others = np.delete(values, i) if 1 < n < leave_one_out_below else values
        center = float(np.median(others))
        mad = float(np.median(np.abs(others - center)))
        out.append(round((values[i] - center) / max(1.4826 * mad, floor), 2))
    return out


# What hangs() and desyncs() return when Run.settled() answers without a query (a test checks these
# against the queries' own results).
HANGS_SCHEMA = {
    "pg": pl.String,
    "seq": pl.Int64,
    "op": pl.String,
    "missing_ranks": pl.List(pl.Int32),
    "stuck_ranks": pl.List(pl.Int32),
}
DESYNCS_SCHEMA = {
    "pg": pl.String,
    "seq": pl.Int64,
    "culprit_rank": pl.Int32,
    "kind": pl.String,
    "expected_op": pl.String,
    "culprit_op": pl.String,
}


def hangs(run: Run) -> pl.DataFrame:
    """Per group, the first collective that not every member finished: who never issued it, who is stuck in it.

    Members come from the ranks' metadata (or, failing that, from the ranks seen in the group).
    missing_ranks issued nothing at that seq; stuck_ranks issued it and never completed it (written as
    in flight at a dump, a crash or the end). Only ranks that wrote metadata or events can be judged.
    """
    if run.settled():  # the footers prove every member finished every collective
        return pl.DataFrame(schema=HANGS_SCHEMA)
    run.ensure_instances()
    # Groups the metadata does not describe: their members are the ranks seen in them (a scan of
    # the events, so only when there are such groups).
    undescribed = run.sql("SELECT DISTINCT pg FROM instances EXCEPT SELECT pg FROM group_members")
    observed = (
        f"""UNION SELECT DISTINCT pg, rank FROM collectives
            WHERE op NOT IN {P2P_OPS_SQL} AND pg NOT IN (SELECT pg FROM group_members)"""
        if undescribed.height
        else ""
    )
    # Where every described group's instances were all finished by all members, the events need
    # not be read again.
    short = (
        undescribed.height
        or run.sql("""
        SELECT 1 FROM instances i JOIN (SELECT pg, count(*) AS n FROM group_members GROUP BY pg) m USING (pg)
        WHERE i.done_ranks < m.n LIMIT 1
    """).height
    )
    events = "collectives" if short else "(SELECT * FROM collectives WHERE false)"
    return run.sql(f"""
        WITH members AS (
            SELECT pg, rank FROM group_members WHERE pg IN (SELECT DISTINCT pg FROM instances)
            {observed}
        ),
        ops AS (
            SELECT pg, seq, rank, op, t_end_ns IS NOT NULL AND status = 'ok' AS done
            FROM {events} WHERE op NOT IN {P2P_OPS_SQL}
        ),
        -- The instances table counts, per (pg, seq), the ranks that finished; only the first
        -- instance short of its group's size is then laid out member by member.
        sizes AS (SELECT pg, count(*) AS members FROM members GROUP BY pg),
        first_short AS (
            SELECT i.pg, min(i.seq) AS seq
            FROM instances i JOIN sizes USING (pg)
            WHERE i.done_ranks < sizes.members
            GROUP BY i.pg
        ),
        grid AS (
            SELECT m.pg, s.seq, m.rank, o.op, coalesce(o.done, false) AS done, o.rank IS NOT NULL AS issued
            FROM members m
            JOIN first_short s USING (pg)
            LEFT JOIN ops o ON o.pg = m.pg AND o.seq = s.seq AND o.rank = m.rank
        ),
        unfinished AS (
            SELECT pg, seq, any_value(op) FILTER (WHERE op IS NOT NULL) AS op,
                   list(rank ORDER BY rank) FILTER (WHERE NOT issued) AS missing_ranks,
                   list(rank ORDER BY rank) FILTER (WHERE issued AND NOT done) AS stuck_ranks
            FROM grid GROUP BY pg, seq
            HAVING bool_or(NOT done)
        )
        SELECT pg, seq, op, coalesce(missing_ranks, []) AS missing_ranks, coalesce(stuck_ranks, []) AS stuck_ranks
        FROM unfinished
        QUALIFY row_number() OVER (PARTITION BY pg ORDER BY seq) = 1
        ORDER BY pg
    """)


def desyncs(run: Run) -> pl.DataFrame:
    """Collectives where members disagree at the same seq on the op, the size or the dtype.

    The culprit is the rank whose (op, size, dtype) the fewest members share (gather and scatter are
    compared on what every member sends or receives, not the root's whole buffer; all_to_all sizes
    are not compared, uneven splits being legal).
    """
    if run.settled():  # the footers prove every member agreed on every collective
        return pl.DataFrame(schema=DESYNCS_SCHEMA)
    run.ensure_instances()
    disagreeing = run.sql("SELECT 1 FROM instances WHERE disagree LIMIT 1").height
    events = "collectives" if disagreeing else "(SELECT * FROM collectives WHERE false)"
    return run.sql(f"""
        WITH sig AS (
            SELECT pg, seq, rank, op, dtype, {SIGNATURE_SIZE_SQL} AS size
            FROM {events} WHERE op NOT IN {P2P_OPS_SQL}
        ),
        -- The instances table flags where members' signatures differ; members are compared one
        -- by one only there.
        disagreeing AS (SELECT pg, seq FROM instances WHERE disagree),
        counted AS (
            SELECT *, count(*) OVER (PARTITION BY pg, seq, op, size, dtype) AS agreeing
            FROM sig SEMI JOIN disagreeing USING (pg, seq)
        ),
        flagged AS (
            SELECT pg, seq,
                   count(DISTINCT op) AS ops, count(DISTINCT size) AS sizes, count(DISTINCT dtype) AS dtypes,
                   arg_min(rank, agreeing) AS culprit_rank, arg_min(op, agreeing) AS culprit_op,
                   arg_max(op, agreeing) AS expected_op
            FROM counted GROUP BY pg, seq
            HAVING count(DISTINCT op) > 1 OR count(DISTINCT size) > 1 OR count(DISTINCT dtype) > 1
        )
        SELECT pg, seq, culprit_rank,
               CASE WHEN ops > 1 THEN 'op' WHEN sizes > 1 THEN 'size' ELSE 'dtype' END AS kind,
               expected_op, culprit_op
        FROM flagged ORDER BY pg, seq
    """)


def network(run: Run) -> pl.DataFrame:
    """Per host and interface: bytes moved, mean and peak throughput, errors and drops.

    From /proc/net/dev deltas between samples; throughput in Gbit/s over each sampling interval.
    """
    run.ensure_deltas()
    return run.sql("""
        WITH d AS (
            SELECT host, device AS interface, counter, delta, bytes, (t1_ns - t0_ns) / 1e9 AS seconds
            FROM counter_deltas WHERE source = 'net_dev'
        ),
        per_interface AS (
            -- Each counter's deltas on its own: the sampler keeps a counter's samples only around
            -- changes, so different counters' intervals need not line up.
            SELECT host, interface,
                   sum(bytes) FILTER (WHERE counter = 'tx_bytes') AS tx,
                   sum(bytes) FILTER (WHERE counter = 'rx_bytes') AS rx,
                   sum(seconds) FILTER (WHERE counter = 'tx_bytes') AS tx_seconds,
                   max(bytes / nullif(seconds, 0)) FILTER (WHERE counter = 'tx_bytes') AS peak_tx,
                   max(bytes / nullif(seconds, 0)) FILTER (WHERE counter = 'rx_bytes') AS peak_rx,
                   sum(delta) FILTER (WHERE counter IN ('rx_errs', 'tx_errs', 'rx_frame', 'tx_carrier')) AS errors,
                   sum(delta) FILTER (WHERE counter IN ('rx_drop', 'tx_drop', 'rx_fifo', 'tx_fifo')) AS drops,
                   sum(delta) FILTER (WHERE counter IN ('rx_packets', 'tx_packets')) AS packets
            FROM d GROUP BY host, interface
        )
        SELECT host, interface,
               CAST(tx AS BIGINT) AS tx_bytes, CAST(rx AS BIGINT) AS rx_bytes,
               round(tx * 8 / 1e9 / nullif(tx_seconds, 0), 6) AS mean_tx_gbitps,
               round(peak_tx * 8 / 1e9, 6) AS peak_tx_gbitps,
               round(peak_rx * 8 / 1e9, 6) AS peak_rx_gbitps,
               CAST(errors AS BIGINT) AS errors, CAST(drops AS BIGINT) AS drops,
               round(100.0 * (coalesce(errors, 0) + coalesce(drops, 0)) / nullif(packets, 0), 6) AS error_drop_pct
        FROM per_interface
        WHERE tx > 0 OR rx > 0 OR errors > 0 OR drops > 0
        ORDER BY host, interface
    """)


# An RDMA counter of traffic (bytes, 4-byte data words, packets, work requests), retransmitted traffic
# excepted (EFA's retrans_pkts, retrans_bytes); every other RDMA counter (errors, retries, congestion
# notifications, out-of-sequence, waits) moving is news.
RDMA_TRAFFIC_SQL = (
    "((counter LIKE '%bytes' OR counter LIKE '%_data' OR counter LIKE '%packets' OR counter LIKE '%pkts' "
    "OR counter LIKE '%_wrs') AND counter NOT LIKE '%retrans%')"
)
# Counters whose increase means loss, errors or congestion (the RDMA ones: anything not traffic).
BAD_COUNTERS_SQL = f"""
    (source = 'net_dev' AND counter IN ('rx_errs', 'tx_errs', 'rx_drop', 'tx_drop', 'rx_fifo', 'tx_fifo',
                                         'rx_frame', 'tx_carrier'))
    OR (source = 'snmp' AND counter IN ('RetransSegs', 'InErrs', 'InCsumErrors'))
    OR (source = 'netstat' AND counter IN ('TCPTimeouts', 'TCPLostRetransmit'))
    OR (source = 'tcp_conn' AND counter = 'total_retrans')
    OR (source = 'rdma' AND NOT {RDMA_TRAFFIC_SQL})
"""


def host_offsets_ctes(run: Run) -> str | None:
    """CTEs ``rank_hosts(rank, host)`` and ``host_offsets(host, offset_ns)``: the ns that move a host's
    sample times onto rank 0's timeline (the measured offset of the host's lowest rank); None when
    no rank names its host."""
    hosts = sorted((rank, str(meta.get("host"))) for rank, meta in run.ranks.items() if meta.get("host"))
    if not hosts:
        return None
    values = ", ".join(f"({rank}, {_sql_string(host)})" for rank, host in hosts)
    return f"""
        rank_hosts(rank, host) AS (VALUES {values}),
        host_offsets AS (
            SELECT h.host, arg_min(coalesce(o.offset_ns, 0), h.rank) AS offset_ns
            FROM rank_hosts h LEFT JOIN clock_offsets o USING (rank) GROUP BY h.host
        )"""


def bad_intervals(run: Run, worst: int | None = None) -> pl.DataFrame:
    """Sampling intervals in which a host's loss or error counters moved, and the collectives of that
    host's ranks that overlapped them (what the bad interval may have slowed down).

    Sample times are the host's clock; they are moved onto rank 0's timeline with the measured offset
    of the host's lowest rank. A collective overlaps if it started before the interval ended and
    ended (or, in flight, started) after it began. ``worst``: only that many intervals, those whose
    counter moved most (matching every interval of a long, lossy run against every collective of
    the host's ranks is the costly part).
    """
    run.ensure_deltas()
    hosts = host_offsets_ctes(run)
    if hosts is None:
        return pl.DataFrame()
    return run.sql(f"""
        WITH {hosts},
        bad AS (
            SELECT d.host, d.source, d.device, d.counter, d.delta,
                   d.t0_ns + coalesce(h.offset_ns, 0) AS t0_ns, d.t1_ns + coalesce(h.offset_ns, 0) AS t1_ns
            FROM counter_deltas d LEFT JOIN host_offsets h USING (host)
            WHERE d.delta > 0 AND ({BAD_COUNTERS_SQL})
            ORDER BY d.delta DESC, t0_ns
            {"" if worst is None else f"LIMIT {int(worst)}"}
        ),
        overlapping AS (
            SELECT b.host, b.source, b.device, b.counter, b.t0_ns, b.t1_ns, c.rank, c.pg, c.op
            FROM bad b
            JOIN rank_hosts h ON h.host = b.host
            JOIN collectives c ON c.rank = h.rank AND c.t_start_ns < b.t1_ns
                               AND coalesce(c.t_end_ns, c.t_start_ns) > b.t0_ns
        )
        SELECT b.host, b.source, b.device, b.counter, b.t0_ns, b.t1_ns,
               round((b.t1_ns - b.t0_ns) / 1e9, 3) AS seconds, CAST(b.delta AS BIGINT) AS delta,
               count(o.rank) AS overlapping_collectives,
               coalesce(list(DISTINCT o.pg || ':' || o.op ORDER BY o.pg || ':' || o.op)
                        FILTER (WHERE o.rank IS NOT NULL), []) AS ops
        FROM bad b LEFT JOIN overlapping o
             ON o.host = b.host AND o.source = b.source AND o.device = b.device AND o.counter = b.counter
            AND o.t0_ns = b.t0_ns
        GROUP BY ALL
        ORDER BY b.t0_ns, b.host, b.source, b.device, b.counter
    """)


# Per host, the interface (not loopback) that sent the most bytes: where a host's link problem lives.
_BUSIEST_INTERFACE_SQL = """
    SELECT host, arg_max(interface, tx_bytes) AS interface
    FROM (SELECT host, device AS interface, sum(bytes) AS tx_bytes FROM counter_deltas
          WHERE source = 'net_dev' AND counter = 'tx_bytes' AND device <> 'lo' GROUP BY ALL)
    GROUP BY host
"""


def links(run: Run) -> pl.DataFrame:
    """The link probe's host-pair matrix: per (source host, destination host), the median bandwidth
    (measured where the data arrived; GB/s and Gbit/s) and 8-byte exchange latency over both probe
    phases, and each phase's bandwidth (GB/s)."""
    return run.sql("""
        SELECT src_host, dst_host, count(*) AS measurements,
               round(median(bandwidth_gbps), 6) AS bandwidth_GBps,
               round(median(bandwidth_gbps) * 8, 4) AS bandwidth_Gbitps,
               round(median(latency_us), 1) AS latency_us,
               round(median(bandwidth_gbps) FILTER (WHERE phase = 'start'), 6) AS start_GBps,
               round(median(bandwidth_gbps) FILTER (WHERE phase = 'end'), 6) AS end_GBps
        FROM probe GROUP BY src_host, dst_host ORDER BY src_host, dst_host
    """)


def slow_links(run: Run, factor: float = 0.5) -> pl.DataFrame:
    """Hosts whose link is slow: every probed pair that involves the host (either direction) is slower
    than ``factor`` x the median of the pairs that do not involve it (bandwidths in GB/s).

    A slow host link slows all of that host's pairs and none of the others', so the comparison names
    the host rather than a pair; it needs at least three probed hosts (with two, both ends of the one
    slow pair are equally suspect, and nothing is flagged). ``interface`` is the host's busiest
    interface in the counter samples, if any.
    """
    run.ensure_deltas()
    return run.sql(
        f"""
        WITH pairs AS (
            SELECT src_host, dst_host, median(bandwidth_gbps) AS gbps FROM probe GROUP BY ALL
        ),
        hosts AS (SELECT src_host AS host FROM pairs UNION SELECT dst_host FROM pairs),
        per_host AS (
            SELECT h.host,
                   count(*) FILTER (WHERE p.src_host = h.host OR p.dst_host = h.host) AS pairs,
                   max(p.gbps) FILTER (WHERE p.src_host = h.host OR p.dst_host = h.host) AS best_gbps,
                   median(p.gbps) FILTER (WHERE p.src_host = h.host OR p.dst_host = h.host) AS median_gbps,
                   median(p.gbps) FILTER (WHERE p.src_host <> h.host AND p.dst_host <> h.host) AS others_gbps
            FROM hosts h, pairs p GROUP BY h.host
        ),
        busiest AS ({_BUSIEST_INTERFACE_SQL})
        SELECT p.host, b.interface, p.pairs, round(p.best_gbps, 6) AS best_GBps,
               round(p.median_gbps, 6) AS median_GBps, round(p.others_gbps, 6) AS others_GBps
        FROM per_host p LEFT JOIN busiest b USING (host)
        WHERE (SELECT count(*) FROM hosts) >= 3 AND p.others_gbps IS NOT NULL AND p.best_gbps < ? * p.others_gbps
        ORDER BY p.host
    """,
        [factor],
    )


def lossy_hosts(run: Run, threshold_pct: float = 0.5, min_bytes: int = 1 << 20) -> pl.DataFrame:
    """Hosts whose link loses packets, from the job's own TCP connections (sock_diag).

    A lossy link makes every connection through it retransmit, in both directions, while the
    sender's host totals (/proc/net/snmp) rise on every host that sends to it; so loss is pinned
    on a host by its connections: each connection with at least ``min_bytes`` sent counts for both
    its ends (the remote end found by its IP among the addresses the hosts' own connections use). A
    host is lossy when every one of its connections (at least two) retransmitted at least
    ``threshold_pct`` of the bytes sent, and the median connection not involving it lost less than a
    quarter of that. Needs three hosts or more, like the link probe.
    """
    run.ensure_deltas()
    return run.sql(
        f"""
        WITH conn AS (
            SELECT host, device,
                   regexp_replace(split_part(device, '>', 1), ':[0-9]+$', '') AS local_ip,
                   regexp_replace(split_part(device, '>', 2), ':[0-9]+$', '') AS remote_ip,
                   sum(delta) FILTER (WHERE counter = 'bytes_retrans') AS retrans,
                   sum(delta) FILTER (WHERE counter = 'bytes_sent') AS sent
            FROM counter_deltas WHERE source = 'tcp_conn' GROUP BY host, device
        ),
        ip_host AS (SELECT DISTINCT local_ip AS ip, host FROM conn),
        c AS (
            SELECT conn.host AS a, ih.host AS b, coalesce(retrans, 0) AS retrans, sent,
                   100.0 * coalesce(retrans, 0) / sent AS loss_pct
            FROM conn JOIN ip_host ih ON ih.ip = conn.remote_ip
            WHERE sent >= ? AND ih.host <> conn.host
        ),
        hosts AS (SELECT a AS host FROM c UNION SELECT b FROM c),
        per_host AS (
            SELECT h.host,
                   count(*) FILTER (WHERE h.host IN (c.a, c.b)) AS connections,
                   min(c.loss_pct) FILTER (WHERE h.host IN (c.a, c.b)) AS min_loss_pct,
                   100.0 * sum(c.retrans) FILTER (WHERE h.host IN (c.a, c.b))
                         / sum(c.sent) FILTER (WHERE h.host IN (c.a, c.b)) AS loss_pct,
                   median(c.loss_pct) FILTER (WHERE h.host NOT IN (c.a, c.b)) AS others_loss_pct
            FROM hosts h, c GROUP BY h.host
        ),
        busiest AS ({_BUSIEST_INTERFACE_SQL})
        SELECT p.host, b.interface, p.connections, round(p.loss_pct, 4) AS loss_pct,
               round(p.min_loss_pct, 4) AS min_loss_pct, round(p.others_loss_pct, 4) AS others_loss_pct
        FROM per_host p LEFT JOIN busiest b USING (host)
        WHERE (SELECT count(*) FROM hosts) >= 3 AND p.connections >= 2 AND p.min_loss_pct >= ?
              AND coalesce(p.others_loss_pct, 0) * 4 < p.min_loss_pct
        ORDER BY p.host
    """,
        [min_bytes, threshold_pct],
    )


def tcp_loss(run: Run) -> pl.DataFrame:
    """TCP retransmission rate as the loss figure on TCP transports, per host and per connection.

    Per host: dRetransSegs / dOutSegs from /proc/net/snmp, and the timeouts. Per connection (the job's
    own, from sock_diag): retransmitted bytes over bytes sent, and the last smoothed RTT.
    """
    run.ensure_deltas()
    return run.sql("""
        WITH host_level AS (
            SELECT host, 'all' AS connection, 'segments' AS unit,
                   sum(delta) FILTER (WHERE counter = 'RetransSegs') AS retrans,
                   sum(delta) FILTER (WHERE counter = 'OutSegs') AS sent,
                   sum(delta) FILTER (WHERE counter = 'TCPTimeouts') AS timeouts
            FROM counter_deltas WHERE source IN ('snmp', 'netstat') GROUP BY host
        ),
        conn_level AS (
            SELECT host, device AS connection, 'bytes' AS unit,
                   sum(delta) FILTER (WHERE counter = 'bytes_retrans') AS retrans,
                   sum(delta) FILTER (WHERE counter = 'bytes_sent') AS sent,
                   NULL::BIGINT AS timeouts
            FROM counter_deltas WHERE source = 'tcp_conn' GROUP BY host, device
        ),
        rtt AS (
            SELECT host, device AS connection, arg_max(value, t_ns) AS rtt_us
            FROM samples WHERE source = 'tcp_conn' AND counter = 'rtt_us' GROUP BY host, device
        )
        SELECT l.host, l.connection, l.unit, CAST(l.retrans AS BIGINT) AS retransmitted,
               CAST(l.sent AS BIGINT) AS sent, CAST(l.timeouts AS BIGINT) AS timeouts,
               round(100.0 * l.retrans / nullif(l.sent, 0), 4) AS tcp_retrans_pct, r.rtt_us
        FROM (SELECT * FROM host_level UNION ALL SELECT * FROM conn_level) l
        LEFT JOIN rtt r USING (host, connection)
        WHERE l.sent > 0 OR l.retrans > 0
        ORDER BY l.host, l.connection = 'all' DESC, l.connection
    """)


def rdma(run: Run) -> pl.DataFrame:
    """Per host, RDMA device and port: bytes moved (4-byte words scaled) and every error or congestion
    counter that moved during the run (RoCE out_of_sequence, CNPs, EFA retransmissions ...)."""
    run.ensure_deltas()
    return run.sql(f"""
        SELECT host, device, port,
               CAST(sum(bytes) FILTER (WHERE counter = 'port_xmit_data') AS BIGINT) AS tx_bytes,
               CAST(sum(bytes) FILTER (WHERE counter = 'port_rcv_data') AS BIGINT) AS rx_bytes,
               map_from_entries(list({{'k': counter, 'v': total}} ORDER BY counter)
                   FILTER (WHERE total > 0 AND NOT {RDMA_TRAFFIC_SQL}))
                   AS moved_counters
        FROM (
            SELECT host, device, port, counter, CAST(sum(delta) AS BIGINT) AS total, sum(bytes) AS bytes
            FROM counter_deltas WHERE source = 'rdma' GROUP BY ALL
        )
        GROUP BY host, device, port
        ORDER BY host, device, port
    """)


def latency(run: Run, max_bytes: int = 65536) -> pl.DataFrame:
    """Small-message latency per group, op and size (<= ``max_bytes``): where time is latency, not bandwidth.

    Collectives: transfer time after the last arrival. Point-to-point: from the later of the send's and
    the receive's issue to the receive's completion, matching the k-th send A->B with the k-th
    receive on B from A (the recorder's per-peer seq).
    """
    return run.sql(
        f"""
        WITH coll AS (
            SELECT pg, op, {formulas.message_bytes_sql()} AS size_bytes, (last_end_ns - last_start_ns) / 1e3 AS us
            FROM ({_instances_sql(run)}) WHERE ok
        ),
        sends AS (SELECT pg, rank AS src, peer AS dst, seq, t_start_ns, bytes_in FROM collectives
                  WHERE op = 'send' AND status = 'ok'),
        recvs AS (SELECT pg, rank AS dst, peer AS src, seq, t_start_ns, t_end_ns FROM collectives
                  WHERE op = 'recv' AND status = 'ok' AND t_end_ns IS NOT NULL),
        p2p AS (
            SELECT s.pg, 'send/recv' AS op, s.bytes_in AS size_bytes,
                   (r.t_end_ns - greatest(s.t_start_ns, r.t_start_ns)) / 1e3 AS us
            FROM sends s JOIN recvs r USING (pg, src, dst, seq)
        )
        SELECT pg, op, {formulas.size_bucket_sql("size_bytes")} AS size_bucket,
               count(*) AS count, round(quantile_cont(us, 0.5), 1) AS p50_us,
               round(quantile_cont(us, 0.95), 1) AS p95_us, round(max(us), 1) AS max_us
        FROM (SELECT * FROM coll UNION ALL SELECT * FROM p2p)
        WHERE size_bytes <= ?
        GROUP BY ALL ORDER BY pg, op, size_bucket
    """,
        [max_bytes],
    )


def steps(run: Run) -> pl.DataFrame:
    """Per training step (``recorder.step()``) and rank: communication time and how much of the step it spans.

    comm_ms sums the rank's operation durations (issue to completion, so waiting for late peers
    counts); span_ms runs from the step's first issue to its last completion on that rank.
    """
    return run.sql(f"""
        SELECT step, rank, count(*) AS ops, round(sum(duration_ms), 3) AS comm_ms,
               round((max(t_end_ns) - min(t_start_ns)) / 1e6, 3) AS span_ms,
               {_sum64("bytes_in")} AS bytes
        FROM collectives WHERE step IS NOT NULL AND t_end_ns IS NOT NULL
        GROUP BY step, rank ORDER BY step, rank
    """)
