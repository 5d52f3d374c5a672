"""Hand-made runs in the recorder's exact schema, for known-answer tests of the analysis."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.schema import COLLECTIVE_SCHEMA, SCHEMA_VERSION
from recorder.writer import GROUPS_KEY, group_summaries

T0 = 1_800_000_000_000_000_000


def event(
    rank: int,
    seq: int,
    op: str,
    pg_size: int,
    bytes_in: int,
    bytes_out: int,
    start_ns: int,
    end_ns: int | None,
    pg: str = "0",
    **extra,
) -> dict:
    row = {f.name: None for f in COLLECTIVE_SCHEMA}
    row.update(
        rank=rank,
        pg=pg,
        pg_desc="default_pg",
        pg_size=pg_size,
        seq=seq,
        op=op,
        count=bytes_in // 4,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        dtype="float32",
        t_start_ns=start_ns,
        t_end_ns=end_ns,
        status="ok" if end_ns is not None else "in_flight",
        async_op=False,
        coalesced=False,
        backend="nccl",
        device="cuda",
    )
    row.update(extra)
    return row


def write_run(
    run_dir: Path,
    rows: list[dict],
    world_size: int,
    hosts: dict[int, str] | None = None,
    offsets_ns: dict[int, int] | None = None,
    summaries: bool = True,
) -> Path:
    """One segment and one metadata file per rank, as the recorder lays them out.

    ``summaries``: the per-group summaries the recorder writes into each segment's footer (off: a
    segment as an older recorder wrote it, which the analysis must judge from the events alone).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "world_size": world_size}))
    for rank in range(world_size):
        rank_dir = run_dir / f"rank={rank:05d}"
        rank_dir.mkdir(exist_ok=True)
        mine = [r for r in rows if r["rank"] == rank]
        table = pa.Table.from_pylist(mine, schema=COLLECTIVE_SCHEMA)
        footer = {"commtrace.schema_version": str(SCHEMA_VERSION), "commtrace.run_id": run_dir.name}
        if summaries:
            footer["commtrace.rank"] = str(rank)
            footer[GROUPS_KEY] = json.dumps(group_summaries(table))
        table = table.replace_schema_metadata(footer)
        pq.write_table(table, rank_dir / "collectives-1-0000-000000.parquet")
        meta = {
            "rank": rank,
            "world_size": world_size,
            "host": (hosts or {}).get(rank, "h0"),
            "clock": {"start": {"offset_ns": (offsets_ns or {}).get(rank, 0)}},
        }
        (rank_dir / "rank-1-0000.json").write_text(json.dumps(meta))
    return run_dir


def write_samples(run_dir: Path, host: str, rows: list[tuple]) -> None:
    """rows: (t_ns, source, device, port, counter, value) as the sampler writes them."""
    from recorder.schema import SAMPLE_SCHEMA

    folder = run_dir / f"host={host}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [
            {"t_ns": t, "host": host, "source": s, "device": d, "port": p, "counter": c, "value": v, "text": None}
            for t, s, d, p, c, v in rows
        ],
        schema=SAMPLE_SCHEMA,
    ).replace_schema_metadata({"commtrace.schema_version": str(SCHEMA_VERSION)})
    pq.write_table(table, folder / "nic-1-0000-000000.parquet")
