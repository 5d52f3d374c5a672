"""Findings: each a function from a loaded run's views to a polars DataFrame."""

from __future__ import annotations

import polars as pl

from analysis import formulas
from analysis.load import Run


def summary(run: Run) -> pl.DataFrame:
    """Per (process group, op): how often, how much data, how long (on each rank, issue to completion)."""
    return run.sql("""
        SELECT pg, any_value(pg_desc) AS pg_desc, any_value(pg_size) AS pg_size, op,
               count(*) AS events,
               count(DISTINCT rank) AS ranks,
               sum(bytes_in)::BIGINT AS bytes_in,
               round(quantile_cont(duration_ms, 0.5), 3) AS p50_ms,
               round(quantile_cont(duration_ms, 0.95), 3) AS p95_ms,
               round(max(duration_ms), 3) AS max_ms,
               count(*) FILTER (WHERE status <> 'ok') AS not_ok
        FROM collectives
        GROUP BY pg, op
        ORDER BY pg, events DESC, op
    """)


def _instances_sql() -> str:
    """One row per collective instance (pg, seq) whose every member recorded it, completed.

    transfer_ns = last completion - last arrival: the time the data moved once everyone was there
    (a fast rank's own duration includes waiting for late peers, so it is not used for bandwidth).
    """
    return f"""
        SELECT pg, seq, any_value(op) AS op, {formulas.family_sql("any_value(op)")} AS family,
               any_value(pg_size) AS pg_size, count(*) AS ranks,
               max(bytes_in) AS bytes_in, max(bytes_out) AS bytes_out,
               min(t_start_ns) AS first_start_ns, max(t_start_ns) AS last_start_ns,
               max(t_end_ns) AS last_end_ns, arg_max(rank, t_start_ns) AS last_rank,
               bool_and(status = 'ok') AS ok
        FROM collectives
        WHERE op NOT IN ('send', 'recv', 'recv_anysource', 'barrier', 'monitored_barrier')
        GROUP BY pg, seq
        HAVING count(*) = any_value(pg_size) AND bool_and(t_end_ns IS NOT NULL)
    """


def collectives(run: Run) -> pl.DataFrame:
    """Per (process group, op family, size bucket): count, bytes, transfer time percentiles, algbw, busbw.

    S and the bus factor follow nccl-tests (see analysis.formulas); algbw = S / t, busbw = algbw x
    factor(n) with n the group's size; t is each instance's transfer time after the last arrival.
    Bandwidths are the medians over instances, in GB/s (1e9 B/s).
    """
    return run.sql(f"""
        WITH inst AS ({_instances_sql()}),
        sized AS (
            SELECT *, {formulas.message_bytes_sql()} AS size_bytes,
                   greatest(last_end_ns - last_start_ns, 1) AS transfer_ns,
                   {formulas.bus_factor_sql()} AS factor
            FROM inst WHERE ok
        )
        SELECT pg, family AS op, pg_size,
               CAST(pow(2, floor(log2(greatest(size_bytes, 1)))) AS BIGINT) AS size_bucket,
               count(*) AS count, CAST(sum(size_bytes) AS BIGINT) AS bytes,
               round(quantile_cont(transfer_ns, 0.5) / 1e6, 4) AS p50_ms,
               round(quantile_cont(transfer_ns, 0.95) / 1e6, 4) AS p95_ms,
               round(quantile_cont(transfer_ns, 0.99) / 1e6, 4) AS p99_ms,
               round(quantile_cont(size_bytes / transfer_ns, 0.5), 6) AS algbw_gbps,
               round(quantile_cont(size_bytes / transfer_ns * factor, 0.5), 6) AS busbw_gbps
        FROM sized
        GROUP BY pg, family, pg_size, size_bucket
        ORDER BY pg, op, size_bucket
    """)


def straggler_instances(run: Run) -> pl.DataFrame:
    """Per collective instance: arrival skew (last start - first start), the last arriver, transfer time."""
    return run.sql(f"""
        SELECT pg, seq, op, pg_size, last_rank,
               (last_start_ns - first_start_ns) / 1e6 AS arrival_skew_ms,
               (last_end_ns - last_start_ns) / 1e6 AS transfer_ms
        FROM ({_instances_sql()})
        ORDER BY pg, seq
    """)


def stragglers(run: Run, min_skew_ms: float = 1.0) -> pl.DataFrame:
    """Per rank: how often it arrived last, its mean and p95 lateness, and a robust outlier score.

    lateness = this rank's start - the instance's first start. The outlier score is the rank's
    median lateness against all ranks' (median / MAD, scaled by 1.4826 like a z-score); above 3.5 the
    rank is late far more than its peers: a slow rank, not a slow network. Only instances with an
    arrival skew of at least ``min_skew_ms`` count towards times_last.
    """
    return run.sql(
        f"""
        WITH inst AS ({_instances_sql()}),
        late AS (
            SELECT c.rank, c.pg, c.seq, (c.t_start_ns - i.first_start_ns) / 1e6 AS lateness_ms,
                   (i.last_rank = c.rank AND (i.last_start_ns - i.first_start_ns) / 1e6 >= ?) AS was_last
            FROM collectives c JOIN inst i USING (pg, seq)
        ),
        per_rank AS (
            SELECT rank, count(*) AS collectives, count(*) FILTER (WHERE was_last) AS times_last,
                   avg(lateness_ms) AS mean_lateness_ms, quantile_cont(lateness_ms, 0.95) AS p95_lateness_ms,
                   median(lateness_ms) AS median_lateness_ms
            FROM late GROUP BY rank
        ),
        spread AS (
            SELECT median(median_lateness_ms) AS center,
                   median(abs(median_lateness_ms - (SELECT median(median_lateness_ms) FROM per_rank))) AS mad
            FROM per_rank
        )
        SELECT rank, collectives, times_last, round(mean_lateness_ms, 3) AS mean_lateness_ms,
               round(p95_lateness_ms, 3) AS p95_lateness_ms,
               round((median_lateness_ms - center) / greatest(1.4826 * mad, 0.05), 2) AS outlier_score
        FROM per_rank, spread
        ORDER BY rank
    """,
        [min_skew_ms],
    )


def hangs(run: Run) -> pl.DataFrame:
    """Per group, the first collective that not every member finished: who never issued it, who is stuck in it.

    Members come from the ranks' metadata (or, failing that, from the ranks seen in the group).
    missing_ranks issued nothing at that seq; stuck_ranks issued it and never completed it (written as
    in flight at a dump, a crash or the end). Only ranks that wrote metadata or events can be judged.
    """
    return run.sql("""
        WITH observed AS (SELECT DISTINCT pg, rank FROM collectives WHERE op NOT IN ('send', 'recv', 'recv_anysource')),
        members AS (
            SELECT pg, rank FROM group_members WHERE pg IN (SELECT pg FROM observed)
            UNION SELECT pg, rank FROM observed WHERE pg NOT IN (SELECT pg FROM group_members)
        ),
        ops AS (
            SELECT pg, seq, rank, op, t_end_ns IS NOT NULL AND status = 'ok' AS done
            FROM collectives WHERE op NOT IN ('send', 'recv', 'recv_anysource')
        ),
        grid AS (
            SELECT m.pg, s.seq, m.rank, o.op, coalesce(o.done, false) AS done, o.rank IS NOT NULL AS issued
            FROM members m
            JOIN (SELECT DISTINCT pg, seq FROM ops) s USING (pg)
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
    return run.sql("""
        WITH sig AS (
            SELECT pg, seq, rank, op, dtype,
                   CASE WHEN op = 'scatter' THEN bytes_out
                        WHEN op IN ('all_to_all', 'all_to_all_single') THEN NULL  -- uneven splits are legal
                        ELSE bytes_in END AS size
            FROM collectives WHERE op NOT IN ('send', 'recv', 'recv_anysource')
        ),
        counted AS (
            SELECT *, count(*) OVER (PARTITION BY pg, seq, op, size, dtype) AS agreeing,
                   count(DISTINCT op) OVER (PARTITION BY pg, seq) AS ops,
                   count(*) OVER (PARTITION BY pg, seq) AS members
            FROM sig
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
