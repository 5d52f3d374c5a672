"""Lateness: when each rank arrives at each collective against the others, and which ranks are late
because they are slow themselves (stragglers).

An arrival is a rank's issue of its part of a collective instance (a group's seq), on rank 0's clock.
"""

from __future__ import annotations

import polars as pl

from analysis.load import Run, remembered
from analysis.outside import outside
from analysis.vocabulary import P2P_OPS_SQL


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
    # An imported source that knows an operation completed but not when (Flight Recorder on gloo)
    # has status 'ok' and no end: such a run counts statuses (the recorder's own never needs to).
    if run.settled():
        counts, full = "", ""
    else:
        ended = "count(*) FILTER (WHERE status = 'ok')" if run.untimed else "count(t_end_ns)"
        counts = f", count(*) AS ranks, {ended} AS ended, any_value(pg_size) AS pg_size"
        full = "WHERE i.ranks = i.pg_size AND i.ended = i.ranks"
    return f"""
        events AS (
            -- Read once: DuckDB materialises a CTE that is used twice (~36 B per event, in its
            -- buffer pool, spilled past the memory limit), which is a fifth faster than reading
            -- the segments twice. The instance key is the 64-bit hash of (pg, seq): a fifth faster
            -- than the two columns, and merging two instances would need a hash collision between
            -- them. Only the start is moved onto rank 0's clock (lateness compares ranks); gaps
            -- within one rank need no offset, which cancels out.
            SELECT rank, hash(pg, seq) AS key, pg_size, t_start_ns, t_end_ns, t_start_ns + {run.shift_sql} AS start_ns{
                ", status" if run.untimed else ""}
            FROM raw_collectives
            WHERE op NOT IN {P2P_OPS_SQL} AND op NOT IN ('barrier', 'monitored_barrier'){
                " AND t_start_ns IS NOT NULL" if run.untimed else ""}
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


@remembered
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
    share understates; diagnose gates on it loosely (0.25), and only where the run's steps cannot
    be told (analysis.outside). The mean gap is computed without ordering the events: over a rank's
    n collectives, the sum of the gaps is (sum of starts - first start) - (sum of ends - last end).

    A slow link lengthens every rank's collectives, not one rank's gaps, so the gaps are the signal a
    network fault can neither fake nor hide: ``excess_gap_ms`` is the rank's mean gap minus the
    median of the other ranks' mean gaps, and ``gap_score`` the same robust score as above, over the
    mean gaps. The columns of :func:`analysis.outside.outside` follow: the same signal step by step
    (what diagnose judges stragglers on).
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
               -- (greatest/least skip nulls: without completion times the share is unknown, not 0)
               CASE WHEN mean_gap_ms IS NOT NULL THEN
                   round(least(greatest((mean_gap_ms - gap_center) / nullif(mean_lateness_ms, 0), 0), 1), 2)
               END AS compute_share
        FROM per_rank JOIN p95 USING (rank), spread
        ORDER BY rank
    """,
        [min_skew_ms],
    )
    means = per_rank["_mean"].to_numpy()
    scores = _outlier_scores(means)
    gaps = per_rank["mean_gap_ms"].to_numpy()
    return (
        per_rank.drop("_mean")
        .insert_column(5, pl.Series("outlier_score", scores, dtype=pl.Float64))
        .with_columns(
            pl.Series("excess_gap_ms", _excess_over_others(gaps), dtype=pl.Float64),
            pl.Series("gap_score", _outlier_scores(gaps), dtype=pl.Float64),
        )
        .join(outside(run), on="rank", how="left")
    )


def _excess_over_others(values, leave_one_out_below: int = 256) -> list[float | None]:
    """Each value minus the median of the others (of all, for many values), rounded to the us."""
    import numpy as np

    return [
        round(float(v - np.median(others)), 3) if len(others) else None
        for v, others in _with_others(values, leave_one_out_below)
    ]


def _with_others(values, leave_one_out_below: int):
    """(value, the other values) for each value; all values for the others from ``leave_one_out_below`` on."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    n = len(values)
    for i in range(n):
        yield values[i], (np.delete(values, i) if 1 < n < leave_one_out_below else values)


def _outlier_scores(values, floor: float = 0.05, leave_one_out_below: int = 256) -> list[float | None]:
    """Robust z-score of each value against the others (or all, for many values): median / MAD x 1.4826."""
    import numpy as np

    out = []
    for value, others in _with_others(values, leave_one_out_below):
        center = float(np.median(others))
        mad = float(np.median(np.abs(others - center)))
        out.append(round((value - center) / max(1.4826 * mad, floor), 2))
    return out


# What hangs() and desyncs() return when Run.settled() answers without a query (a test checks these
# against the queries' own results).
