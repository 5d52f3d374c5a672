"""Findings: each a function from a loaded run's views to a polars DataFrame.

This module holds the findings about collectives (sizes and bandwidth, hangs, desyncs, latency,
steps) and names every other: lateness and stragglers (:mod:`analysis.lateness`) and the hosts'
network counters (:mod:`analysis.network`) are reachable here too.
"""

from __future__ import annotations

import polars as pl

from analysis import formulas
from analysis.lateness import arrivals_ctes, stragglers  # noqa: F401  (findings.<name> names every finding)
from analysis.load import Run, remembered
from analysis.network import (  # noqa: F401
    bad_intervals,
    host_offsets_ctes,
    links,
    lossy_hosts,
    network,
    rdma,
    slow_links,
    tcp_loss,
)
from analysis.vocabulary import P2P_OPS_SQL, SIGNATURE_SIZE_SQL

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


@remembered
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
    # An imported run without times (NCCL Inspector without verbose output) has each rank's device
    # time: the last rank to arrive waits least, so the shortest is the transfer.
    timed = "(complete OR min_gpu_ns IS NOT NULL)" if run.untimed else "complete"
    transfer = (
        "CASE WHEN complete THEN last_end_ns - last_start_ns ELSE min_gpu_ns END"
        if run.untimed
        else "last_end_ns - last_start_ns"
    )
    return f"""
        SELECT *, {formulas.family_sql("op")} AS family, {transfer} AS transfer_raw_ns
        FROM instances
        WHERE op NOT IN ('barrier', 'monitored_barrier') AND ranks = pg_size AND {timed}
    """


@remembered
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
                   greatest(transfer_raw_ns, 1) AS transfer_ns,
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
               transfer_raw_ns / 1e6 AS transfer_ms
        FROM ({_instances_sql(run)})
        ORDER BY pg, seq
    """)


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


@remembered
def hangs(run: Run) -> pl.DataFrame:
    """Per group, the first collective that not every member finished: who never issued it, who is stuck in it.

    Members come from the ranks' metadata (or, failing that, from the ranks seen in the group).
    missing_ranks issued nothing at that seq; stuck_ranks issued it and never completed it (written as
    in flight at a dump, a crash or the end). Only ranks that wrote metadata or events can be judged.
    """
    if run.settled():  # the footers prove every member finished every collective
        return pl.DataFrame(schema=HANGS_SCHEMA)
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
            SELECT pg, seq, rank, op, status = 'ok' AS done
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


@remembered
def desyncs(run: Run) -> pl.DataFrame:
    """Collectives where members disagree at the same seq on the op, the size or the dtype.

    The culprit is the rank whose (op, size, dtype) the fewest members share (gather and scatter are
    compared on what every member sends or receives, not the root's whole buffer; all_to_all sizes
    are not compared, uneven splits being legal).
    """
    if run.settled():  # the footers prove every member agreed on every collective
        return pl.DataFrame(schema=DESYNCS_SCHEMA)
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


@remembered
def latency(run: Run, max_bytes: int = 65536) -> pl.DataFrame:
    """Small-message latency per group, op and size (<= ``max_bytes``): where time is latency, not bandwidth.

    Collectives: transfer time after the last arrival. Point-to-point: from the later of the send's and
    the receive's issue to the receive's completion, matching the k-th send A->B with the k-th
    receive on B from A (the recorder's per-peer seq).
    """
    return run.sql(
        f"""
        WITH coll AS (
            SELECT pg, op, {formulas.message_bytes_sql()} AS size_bytes, transfer_raw_ns / 1e3 AS us
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


@remembered
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
