"""The segment writer: turns buffered operation records into Parquet segments off the hot path.

Each flush writes one new file and never touches an old one: the file is written under a hidden
temporary name and hard-linked to its final name, which fails rather than overwrite. A ``kill -9``
therefore loses at most what was buffered since the last flush and never leaves a half file under
a real name.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from recorder import capture as C
from recorder.schema import COLLECTIVE_SCHEMA, COLLECTIVES_PREFIX, DELTA_COLUMNS, SCHEMA_VERSION

_PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": [f.name for f in COLLECTIVE_SCHEMA if pa.types.is_dictionary(f.type)] + ["rank", "pg_size"],
    "column_encoding": {name: "DELTA_BINARY_PACKED" for name in DELTA_COLUMNS},
    "write_statistics": True,
}


def _dtype_info(dtype, cache: dict) -> tuple[str | None, int]:
    if dtype is None:
        return None, 0
    found = cache.get(dtype)
    if found is None:
        name = str(dtype).replace("torch.", "")
        size = getattr(dtype, "itemsize", None)
        if size is None:
            import torch

            size = torch.empty((), dtype=dtype).element_size()
        found = cache[dtype] = (name, int(size))
    return found


def records_to_table(records: list, rank: int, wall_minus_mono: int, dtype_cache: dict) -> pa.Table:
    """Convert finished or in-flight records to an Arrow table in COLLECTIVE_SCHEMA."""
    cols: dict[str, list] = {f.name: [] for f in COLLECTIVE_SCHEMA}
    for r in records:
        info = r[C.PG]
        name, itemsize = _dtype_info(r[C.DTYPE], dtype_cache)
        cols["rank"].append(rank)
        cols["pg"].append(info.name)
        cols["pg_desc"].append(info.desc)
        cols["pg_size"].append(info.size)
        cols["seq"].append(r[C.SEQ])
        cols["op"].append(r[C.OP])
        cols["count"].append(r[C.N_IN])
        cols["bytes_in"].append(r[C.N_IN] * itemsize)
        cols["bytes_out"].append(r[C.N_OUT] * itemsize)
        cols["dtype"].append(name)
        cols["peer"].append(info.global_rank(r[C.PEER]))
        cols["root"].append(info.global_rank(r[C.ROOT]))
        cols["t_start_ns"].append(r[C.T0] + wall_minus_mono)
        t1 = r[C.T1]
        cols["t_end_ns"].append(None if t1 is None else t1 + wall_minus_mono)
        cols["gpu_duration_ns"].append(r[C.GPU_NS])
        cols["status"].append(r[C.STATUS])
        cols["async_op"].append(bool(r[C.ASYNC]))
        cols["coalesced"].append(bool(r[C.COAL]))
        cols["api"].append(r[C.API])
        cols["backend"].append(info.backend)
        cols["device"].append(r[C.DEVICE])
        cols["step"].append(r[C.STEP])
    arrays = [pa.array(cols[f.name], type=f.type) for f in COLLECTIVE_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=COLLECTIVE_SCHEMA)


class SegmentWriter:
    """Writes numbered segments of one kind into one rank directory."""

    def __init__(self, rank_dir: str, incarnation: str, metadata: dict[str, str]) -> None:
        self.rank_dir = rank_dir
        self.incarnation = incarnation
        self.metadata = {"commtrace.schema_version": str(SCHEMA_VERSION), **metadata}
        self.index = 0
        self.bytes_written = 0
        self.rows_written = 0

    def write(self, table: pa.Table, prefix: str = COLLECTIVES_PREFIX) -> str:
        os.makedirs(self.rank_dir, exist_ok=True)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **self.metadata})
        while True:
            name = f"{prefix}-{self.incarnation}-{self.index:06d}.parquet"
            self.index += 1
            final = os.path.join(self.rank_dir, name)
            if not os.path.exists(final):
                break
        tmp = os.path.join(self.rank_dir, f".{name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, **_PARQUET_OPTIONS)
        try:
            os.link(tmp, final)
        finally:
            os.unlink(tmp)
        self.bytes_written += os.path.getsize(final)
        self.rows_written += table.num_rows
        return final


def wall_minus_mono() -> int:
    """Offset that turns this process's monotonic ns into wall-clock ns, sampled now."""
    a = time.monotonic_ns()
    w = time.time_ns()
    b = time.monotonic_ns()
    return w - (a + b) // 2
