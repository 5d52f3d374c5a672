"""Findings over time, for plots and traces: lateness per rank and time window, each host's interface
rates and loss counters per sampling interval, and when each host's ranks were communicating.

Times are seconds since the run's first operation started (``t_s``), on rank 0's clock: events carry
their rank's measured offset (load.py) and host samples their host's (``network.host_offsets_ctes``).
"""

from __future__ import annotations

import polars as pl

from analysis.lateness import arrivals_ctes
from analysis.load import Run
from analysis.network import host_offsets_ctes
from analysis.vocabulary import BAD_COUNTERS_SQL, NIC_DROP_COUNTERS, NIC_ERROR_COUNTERS

_NO_HOSTS = """
    rank_hosts(rank, host) AS (SELECT NULL::INTEGER, NULL::VARCHAR WHERE false),
    host_offsets(host, offset_ns) AS (SELECT NULL::VARCHAR, NULL::BIGINT WHERE false)"""



def origin_ns(run: Run) -> int | None:
    """When the run's first operation started (rank 0's clock): time zero of every timeline."""
    return run.sql("SELECT min(t_start_ns) AS t FROM collectives").item()


def lateness_over_time(run: Run, windows: int = 60) -> pl.DataFrame:
    """Per rank and time window: the window's start and width (s), collectives, mean and max arrival
    lateness (ms).

    The run's span of collective instances is cut into ``windows`` equal windows by each instance's
    first arrival, so all members of one collective share a window. Lateness as in
    ``findings.stragglers``: this rank's start - the instance's first start.
    """
    origin = origin_ns(run)
    if origin is None:
        return pl.DataFrame(schema={"rank": pl.Int32, "window": pl.Int64, "t_s": pl.Float64})
    return run.sql(
        f"""
        WITH {arrivals_ctes(run)},
        span AS (
            SELECT min(first_ns) AS lo, greatest((max(first_ns) - min(first_ns)) / ?, 1) AS width FROM arrivals
        ),
        windowed AS (
            SELECT rank, late_ns, least(floor((first_ns - lo) / width), ? - 1)::BIGINT AS win, lo, width
            FROM arrivals, span
        )
        SELECT rank, win AS "window", round((any_value(lo) + win * any_value(width) - ?) / 1e9, 6) AS t_s,
               round(any_value(width) / 1e9, 6) AS width_s,
               count(*) AS collectives, round(avg(late_ns) / 1e6, 3) AS mean_lateness_ms,
               round(max(late_ns) / 1e6, 3) AS max_lateness_ms
        FROM windowed GROUP BY rank, win ORDER BY win, rank
    """,
        [windows, windows, origin],
    )


def host_series(run: Run) -> pl.DataFrame:
    """Per host, what its counters did in each sampling interval, as rows (host, interface, series,
    t0_s, t1_s, value).

    series: ``tx_gbitps`` / ``rx_gbitps`` (an interface's rate over the interval; ranks on one host
    talk over loopback);
    and, per second over the interval, where they moved: ``errors`` / ``drops`` (an interface's error
    and drop counters, summed), ``tcp_retrans`` (the host's retransmitted TCP segments,
    /proc/net/snmp; interface null), ``conn_retrans`` (the job's own connections' retransmitted
    segments, sock_diag) and ``other_bad`` (any other loss or congestion counter: TCP timeouts, RDMA).
    """
    origin = origin_ns(run)
    if origin is None:
        return pl.DataFrame(
            schema={
                "host": pl.String,
                "interface": pl.String,
                "series": pl.String,
                "t0_s": pl.Float64,
                "t1_s": pl.Float64,
                "value": pl.Float64,
            }
        )
    errors = ", ".join(f"'{c}'" for c in NIC_ERROR_COUNTERS)
    drops = ", ".join(f"'{c}'" for c in NIC_DROP_COUNTERS)
    return run.sql(
        f"""
        WITH {host_offsets_ctes(run) or _NO_HOSTS},
        d AS (
            SELECT d.host, d.source, d.device, d.counter, d.delta, d.bytes,
                   (d.t0_ns + coalesce(h.offset_ns, 0) - ?) / 1e9 AS t0_s,
                   (d.t1_ns + coalesce(h.offset_ns, 0) - ?) / 1e9 AS t1_s
            FROM counter_deltas d LEFT JOIN host_offsets h USING (host)
            WHERE d.t1_ns > d.t0_ns
        ),
        rates AS (
            SELECT host, device AS interface,
                   CASE counter WHEN 'tx_bytes' THEN 'tx_gbitps' ELSE 'rx_gbitps' END AS series,
                   t0_s, t1_s, bytes * 8 / (t1_s - t0_s) / 1e9 AS value
            FROM d WHERE source = 'net_dev' AND counter IN ('tx_bytes', 'rx_bytes')
        ),
        bad AS (
            SELECT host,
                   CASE WHEN source = 'net_dev' THEN device END AS interface,
                   CASE WHEN source = 'net_dev' AND counter IN ({errors}) THEN 'errors'
                        WHEN source = 'net_dev' AND counter IN ({drops}) THEN 'drops'
                        WHEN source = 'snmp' AND counter = 'RetransSegs' THEN 'tcp_retrans'
                        WHEN source = 'tcp_conn' AND counter = 'total_retrans' THEN 'conn_retrans'
                        ELSE 'other_bad' END AS series,
                   t0_s, t1_s, sum(delta) / (t1_s - t0_s) AS value
            FROM d WHERE delta > 0 AND ({BAD_COUNTERS_SQL}) GROUP BY host, interface, series, t0_s, t1_s
        )
        SELECT * FROM rates UNION ALL SELECT * FROM bad
        ORDER BY host, series, interface, t0_s
    """,
        [origin, origin],
    )


def busy_intervals(run: Run, min_gap_s: float = 0.0) -> pl.DataFrame:
    """Per host, when any of its ranks had an operation in flight: merged intervals (host, t0_s, t1_s).

    Intervals closer than ``min_gap_s`` are merged too (a plot of a long run needs no gap narrower
    than a pixel). An operation still in flight when written counts from its issue to its issue.
    """
    origin = origin_ns(run)
    hosts = host_offsets_ctes(run)
    if origin is None or hosts is None:
        return pl.DataFrame(schema={"host": pl.String, "t0_s": pl.Float64, "t1_s": pl.Float64})
    return run.sql(
        f"""
        WITH {hosts},
        ops AS (
            SELECT h.host, c.t_start_ns AS s, coalesce(c.t_end_ns, c.t_start_ns) AS e
            FROM collectives c JOIN rank_hosts h USING (rank)
        ),
        marked AS (
            -- a new interval starts where an operation starts after every earlier one has ended
            SELECT host, s, e,
                   coalesce(s > max(e) OVER (PARTITION BY host ORDER BY s, e
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + ?, true)::INTEGER
                       AS opens
            FROM ops
        ),
        numbered AS (
            SELECT host, s, e, sum(opens) OVER (PARTITION BY host ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS interval
            FROM marked
        )
        SELECT host, round((min(s) - ?) / 1e9, 6) AS t0_s, round((max(e) - ?) / 1e9, 6) AS t1_s
        FROM numbered GROUP BY host, interval ORDER BY host, t0_s
    """,
        [int(min_gap_s * 1e9), origin, origin],
    )
