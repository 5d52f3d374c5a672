"""Two runs side by side: per (group, op, size bucket), per rank and per host, with regressions flagged.

A regression is a change for the worse beyond ``threshold`` (default 10 %): bus bandwidth down or
transfer time (p50) up for a collective bucket; mean duration up for a rank; mean transmit
throughput down for a host's interface. Rows present in one run only are listed with nulls.
"""

from __future__ import annotations

import polars as pl

from analysis import findings
from analysis.load import Run

KEYS = ["pg", "op", "pg_size", "size_bucket"]  # op as called; sizes are S as nccl-tests defines it


def collectives(a: Run, b: Run, threshold: float = 0.10) -> pl.DataFrame:
    left = findings.collectives(a).select(KEYS + ["count", "p50_ms", "busbw_GBps"])
    right = findings.collectives(b).select(KEYS + ["count", "p50_ms", "busbw_GBps"])
    joined = left.join(right, on=KEYS, how="full", suffix="_b", coalesce=True)
    pgs = joined["pg"].unique().to_list()
    labels = {**a.group_labels(pgs), **b.group_labels(pgs)}
    group = pl.col("pg").replace_strict(labels, default="?", return_dtype=pl.String).alias("group")
    return (
        joined.rename({"count": "count_a", "p50_ms": "p50_ms_a", "busbw_GBps": "busbw_GBps_a"})
        .with_columns(
            (pl.col("busbw_GBps_b") / pl.col("busbw_GBps_a")).round(4).alias("busbw_ratio"),
            (pl.col("p50_ms_b") / pl.col("p50_ms_a")).round(4).alias("p50_ratio"),
        )
        .with_columns(
            ((pl.col("busbw_ratio") < 1 - threshold) | (pl.col("p50_ratio") > 1 + threshold))
            .fill_null(False)
            .alias("regression")
        )
        .with_columns(group)
        .sort(KEYS)
    )


def _rank_durations(run: Run) -> pl.DataFrame:
    return run.sql("""
        SELECT rank, count(*) AS ops, avg(duration_ms) AS mean_ms FROM collectives
        WHERE t_end_ns IS NOT NULL GROUP BY rank
    """)


def ranks(a: Run, b: Run, threshold: float = 0.10) -> pl.DataFrame:
    joined = _rank_durations(a).join(_rank_durations(b), on="rank", how="full", suffix="_b", coalesce=True)
    return (
        joined.rename({"ops": "ops_a", "mean_ms": "mean_ms_a"})
        .with_columns((pl.col("mean_ms_b") / pl.col("mean_ms_a")).round(4).alias("duration_ratio"))
        .with_columns((pl.col("duration_ratio") > 1 + threshold).fill_null(False).alias("regression"))
        .with_columns(pl.col("mean_ms_a").round(4), pl.col("mean_ms_b").round(4))
        .sort("rank")
    )


def hosts(a: Run, b: Run, threshold: float = 0.10) -> pl.DataFrame:
    cols = ["host", "interface", "mean_tx_gbitps"]
    left, right = findings.network(a).select(cols), findings.network(b).select(cols)
    joined = left.join(right, on=["host", "interface"], how="full", suffix="_b", coalesce=True)
    return (
        joined.rename({"mean_tx_gbitps": "mean_tx_gbitps_a"})
        .with_columns((pl.col("mean_tx_gbitps_b") / pl.col("mean_tx_gbitps_a")).round(4).alias("tx_ratio"))
        .with_columns((pl.col("tx_ratio") < 1 - threshold).fill_null(False).alias("regression"))
        .sort(["host", "interface"])
    )
