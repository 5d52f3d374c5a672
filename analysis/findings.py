"""Findings: each a function from a loaded run's views to a polars DataFrame."""

from __future__ import annotations

import polars as pl

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
