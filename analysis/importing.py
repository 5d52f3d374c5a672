"""Writing another tool's record as a commtrace run directory, so that every command reads it.

``analyze-trace import fr|inspector PATHS -o RUN`` turns PyTorch Flight Recorder dumps
(:mod:`analysis.flightrec`) and NCCL Inspector logs (:mod:`analysis.inspector`) into what the
recorder writes (docs/trace-format.md): ``run.json``, and per rank a metadata file and one segment
of collective events. Both files name the source (``source``: its kind, version, the files read,
and what it cannot tell), so that every later reader can say what a finding rests on. RUN is
written under a hidden name beside it and renamed into place when complete; it must not exist, and
nothing that was read is changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.segments import TraceError

SCHEMA_VERSION = 1
# The segment columns, as recorder.schema writes them (a test checks the two agree).
COLUMNS = {
    "rank": pa.int32(),
    "pg": pa.string(),
    "pg_desc": pa.string(),
    "pg_size": pa.int32(),
    "seq": pa.int64(),
    "op": pa.string(),
    "count": pa.int64(),
    "bytes_in": pa.int64(),
    "bytes_out": pa.int64(),
    "dtype": pa.string(),
    "peer": pa.int32(),
    "root": pa.int32(),
    "t_start_ns": pa.int64(),
    "t_end_ns": pa.int64(),
    "gpu_duration_ns": pa.int64(),
    "status": pa.string(),
    "async_op": pa.bool_(),
    "coalesced": pa.bool_(),
    "api": pa.string(),
    "backend": pa.string(),
    "device": pa.string(),
    "step": pa.int64(),
}
DICTIONARY = ("pg", "pg_desc", "op", "dtype", "status", "api", "backend", "device")
ROW_GROUP = 1 << 20
_TRAILING_NUMBER = re.compile(r"(\d+)(?:\.[A-Za-z]+)?$")


def rank_of(path: str) -> int | None:
    """The rank a per-rank file is named for: the number its name ends with (``nccl_trace_rank_3``,
    ``trace_3.json``), as Flight Recorder names its dumps; None if there is none."""
    found = _TRAILING_NUMBER.search(os.path.basename(path))
    return int(found[1]) if found and len(found[1]) <= 7 else None


def new_run_id(kind: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-import"


class Rank:
    """One rank of the run being written: its metadata and its rows, column by column."""

    def __init__(self, rank: int, meta: dict | None = None) -> None:
        self.rank = rank
        self.meta = dict(meta or {})
        self.columns: dict[str, list] = {name: [] for name in COLUMNS}

    def add(self, **row) -> None:
        """One event; columns not given are null."""
        for name, values in self.columns.items():
            values.append(row.get(name))

    def __len__(self) -> int:
        return len(self.columns["rank"])

    def table(self) -> pa.Table:
        arrays = []
        for name, kind in COLUMNS.items():
            array = pa.array(self.columns[name], type=kind)
            arrays.append(array.dictionary_encode() if name in DICTIONARY else array)
        return pa.Table.from_arrays(arrays, names=list(COLUMNS))


class Output:
    """The run directory being written: a hidden folder beside ``out``, renamed to ``out`` by
    :meth:`commit`; removed if the ``with`` block ends any other way."""

    def __init__(self, out: str) -> None:
        if os.path.lexists(out):
            raise TraceError(f"{out} exists; choose a new name (import never writes over anything)")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise TraceError(f"{parent}: no such directory")
        self.out, self.parent, self.tmp = out, parent, ""

    def __enter__(self) -> Output:
        try:
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.", dir=self.parent)
        except OSError as exc:
            raise TraceError(f"{self.out}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise TraceError(f"{self.out}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None

    def segment(self, rank: int) -> str:
        folder = os.path.join(self.tmp, f"rank={rank:05d}")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"collectives-{rank}-import-000000.parquet")

    def commit(self, run_meta: dict, metas: dict[int, dict]) -> None:
        """Write run.json and each rank's metadata, then put the run in place."""
        run_id = run_meta["run_id"]
        _write_json(os.path.join(self.tmp, "run.json"), {"schema_version": SCHEMA_VERSION, **run_meta})
        for rank, meta in metas.items():
            tag = f"{rank}-import"
            # closed: the source's record of the rank is whole as far as it goes (a dump, a log); a
            # rank the source has nothing of is missing, not dead.
            fields = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "rank": rank, "incarnation": tag}
            fields["closed"] = True
            folder = os.path.dirname(self.segment(rank))
            _write_json(os.path.join(folder, f"rank-{tag}.json"), {**fields, **meta})
        os.rename(self.tmp, self.out)


def write_segment(path: str, table: pa.Table, rank: int, run_id: str = "") -> None:
    """One segment of ``table``'s rows (COLUMNS), its footer as the recorder writes it."""
    kv = {"commtrace.schema_version": str(SCHEMA_VERSION), "commtrace.run_id": run_id, "commtrace.rank": str(rank)}
    with pq.ParquetWriter(path, table.schema, compression="zstd", store_schema=False) as writer:
        writer.write_table(table, row_group_size=ROW_GROUP)
        writer.add_key_value_metadata(kv)


def write_run(out: str, run_meta: dict, ranks: dict[int, Rank]) -> str:
    """Write the run directory ``out``: ``run.json`` from ``run_meta``, and per rank its metadata
    and one segment. Returns ``out``."""
    with Output(out) as output:
        for rank, data in sorted(ranks.items()):
            write_segment(output.segment(rank), data.table(), rank, run_meta["run_id"])
        output.commit(run_meta, {rank: data.meta for rank, data in ranks.items()})
    return out


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
