"""The segment writer: turns buffered operation records into Parquet segments off the hot path.

Each flush writes one new file and never touches an old one: the file is written under a hidden
temporary name and hard-linked to its final name, which fails rather than overwrite. A ``kill -9``
therefore loses at most what was buffered since the last flush and never leaves a half file under
a real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recorder import _arrow
from recorder import capture as C
from recorder.schema import COLLECTIVE_SCHEMA, COLLECTIVES_PREFIX, DELTA_COLUMNS, SCHEMA_VERSION

# A segment holds about a second of operations, often a few hundred rows, so its footer weighs as
# much as its data: the Arrow schema pyarrow would store (2.5 kB base64, which nothing of ours reads)
# stays out, and min/max statistics are kept only for the columns a query would skip a file by.
_PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": [f.name for f in COLLECTIVE_SCHEMA if pa.types.is_dictionary(f.type)] + ["rank", "pg_size"],
    "column_encoding": {name: "DELTA_BINARY_PACKED" for name in DELTA_COLUMNS},
    "store_schema": False,
    "write_statistics": ["seq", "step", "t_start_ns", "t_end_ns", "t_ns"],
}


def _write_parquet(table: pa.Table, path: str) -> None:
    """One Parquet file: our key-value metadata in the footer, without pyarrow's copy of the schema."""
    metadata = table.schema.metadata or {}
    if not hasattr(pq.ParquetWriter, "add_key_value_metadata"):  # pyarrow < 15: the schema carries it
        pq.write_table(table, path, **{**_PARQUET_OPTIONS, "store_schema": True})
        return
    with pq.ParquetWriter(path, table.schema.remove_metadata(), **_PARQUET_OPTIONS) as writer:
        writer.write_table(table.replace_schema_metadata(None))
        writer.add_key_value_metadata(metadata)


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


def _column(events: list, index: int) -> list:
    # One C-level pass per column (zip(*events) is several times slower on long lists).
    return list(map(itemgetter(index), events))


def _int64(column: list) -> np.ndarray:
    return np.fromiter(column, dtype=np.int64, count=len(column))


def build_segment(
    issues: list,
    dones: list,
    groups: list,
    rank: int,
    wall_minus_mono: int,
    dtype_cache: dict,
    write_before_mono: int | None,
) -> tuple[pa.Table | None, list]:
    """Join issue and completion events into rows of COLLECTIVE_SCHEMA.

    Returns the table of rows to write (finished operations, and unfinished ones issued before
    ``write_before_mono``, written as in flight; None if there are none) and the issue events still
    waiting for their completion. Column-wise in numpy, one C-level pass per field: the writer
    shares the GIL with training, so it spends as little Python time per event as it can. The Arrow
    arrays are made from their buffers (see recorder._arrow: no pandas import).
    """
    if not issues:
        return None, []
    n = len(issues)
    t0 = _int64(_column(issues, C.T0))
    t1 = np.zeros(n, dtype=np.int64)
    ended = np.zeros(n, dtype=bool)
    status = np.full(n, _STATUS_CODES[C.IN_FLIGHT], dtype=np.int32)  # until a completion says otherwise
    gpu_ns, gpu_valid = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if dones:
        ids = _int64(_column(issues, C.ID))
        done_ids = _int64(_column(dones, 0))
        order = np.argsort(done_ids, kind="stable")  # equal ids: the first completion recorded wins
        at = np.minimum(np.searchsorted(done_ids[order], ids), len(order) - 1)
        source = order[at]
        ended = done_ids[source] == ids
        t1 = np.where(ended, _int64(_column(dones, 1))[source], 0)
        statuses = map(_STATUS_CODES.__getitem__, _column(dones, 2))
        done_status = np.fromiter(statuses, dtype=np.int32, count=len(dones))
        status = np.where(ended, done_status[source], status)
        values, valid = _arrow.nullable(_column(dones, 3), np.int64)
        gpu_valid = ended & (valid[source] if valid is not None else True)
        gpu_ns = np.where(gpu_valid, values[source], 0)
    keep = np.ones(n, dtype=bool) if write_before_mono is None else ended | (t0 < write_before_mono)
    carry = [issues[i] for i in np.flatnonzero(~keep)]
    if not keep.any():
        return None, carry
    if not keep.all():
        issues = [issues[i] for i in np.flatnonzero(keep)]
        t0, t1, ended, status, gpu_ns, gpu_valid = (a[keep] for a in (t0, t1, ended, status, gpu_ns, gpu_valid))
    n = len(issues)
    group_codes = np.fromiter(_column(issues, C.GROUP), dtype=np.int32, count=n)
    infos = list(groups)
    dtype_codes = _arrow.Codes()
    dtype_index = np.fromiter(map(dtype_codes.__getitem__, _column(issues, C.DTYPE)), dtype=np.int32, count=n)
    dtype_names, itemsizes = zip(*(_dtype_info(d, dtype_cache) for d in dtype_codes), strict=True)
    itemsize = np.array(itemsizes, dtype=np.int64)[dtype_index]
    n_in, n_out = _int64(_column(issues, C.N_IN)), _int64(_column(issues, C.N_OUT))

    def to_global(column: list) -> pa.Array:
        if column.count(None) == len(column):  # no peer or root in this segment: C speed, no generator
            return pa.nulls(len(column), pa.int32())
        codes = group_codes.tolist()
        ranks = [None if r is None else infos[g].global_rank(r) for g, r in zip(codes, column, strict=True)]
        return _arrow.numeric(ranks, pa.int32())

    def per_group(values: list) -> pa.DictionaryArray:
        return _arrow.dictionary(group_codes, values)

    arrays = {
        "rank": _arrow.from_numpy(np.full(n, rank, dtype=np.int32), pa.int32()),
        "pg": per_group([i.name for i in infos]),
        "pg_desc": per_group([i.desc for i in infos]),
        "pg_size": _arrow.from_numpy(np.array([i.size for i in infos], dtype=np.int32)[group_codes], pa.int32()),
        "seq": _arrow.from_numpy(_int64(_column(issues, C.SEQ)), pa.int64()),
        "op": _arrow.encode(_column(issues, C.OP)),
        "count": _arrow.from_numpy(n_in, pa.int64()),
        "bytes_in": _arrow.from_numpy(n_in * itemsize, pa.int64()),
        "bytes_out": _arrow.from_numpy(n_out * itemsize, pa.int64()),
        "dtype": _arrow.dictionary(dtype_index, list(dtype_names)),
        "peer": to_global(_column(issues, C.PEER)),
        "root": to_global(_column(issues, C.ROOT)),
        "t_start_ns": _arrow.from_numpy(t0 + wall_minus_mono, pa.int64()),
        "t_end_ns": _arrow.from_numpy(t1 + wall_minus_mono, pa.int64(), ended),
        "gpu_duration_ns": _arrow.from_numpy(gpu_ns, pa.int64(), gpu_valid),
        "status": _arrow.dictionary(status, list(_STATUS_CODES)),
        "async_op": _arrow.from_numpy(np.fromiter(_column(issues, C.ASYNC), dtype=bool, count=n), pa.bool_()),
        "coalesced": _arrow.from_numpy(np.fromiter(_column(issues, C.COAL), dtype=bool, count=n), pa.bool_()),
        "api": _arrow.encode(_column(issues, C.API)),
        "backend": per_group([i.backend for i in infos]),
        "device": _arrow.encode(_column(issues, C.DEVICE)),
        "step": _arrow.numeric(_column(issues, C.STEP), pa.int64()),
    }
    table = pa.Table.from_arrays([arrays[f.name] for f in COLLECTIVE_SCHEMA], schema=COLLECTIVE_SCHEMA)
    return table, carry


# Status codes of completion events; an operation without one is in flight.
_STATUS_CODES = _arrow.Codes({C.OK: 0, C.ERROR: 1, C.IN_FLIGHT: 2})


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
        metadata = {**(table.schema.metadata or {}), **self.metadata}
        if prefix == COLLECTIVES_PREFIX:
            metadata[GROUPS_KEY] = json.dumps(group_summaries(table), separators=(",", ":"))
        table = table.replace_schema_metadata(metadata)
        while True:
            name = f"{prefix}-{self.incarnation}-{self.index:06d}.parquet"
            self.index += 1
            final = os.path.join(self.rank_dir, name)
            if not os.path.exists(final):
                break
        tmp = os.path.join(self.rank_dir, f".{name}.{os.getpid()}.tmp")
        try:
            _write_parquet(table, tmp)
            os.link(tmp, final)
        finally:  # a full disk must not leave a half file behind either
            if os.path.lexists(tmp):
                os.unlink(tmp)
        self.bytes_written += os.path.getsize(final)
        self.rows_written += table.num_rows
        return final


P2P_OPS = ("send", "recv", "recv_anysource")
GROUPS_KEY = "commtrace.groups"


def _name_hash(name: str | None) -> int:
    """A stable 64-bit hash of an op or dtype name (Python's own hash() differs between processes)."""
    if name is None:
        return 0
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64, wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def group_summaries(table: pa.Table) -> dict[str, list]:
    """Per process group, what this segment holds of its collectives (send/recv left out):
    ``[rows, done, first_seq, last_seq, checksum]``.

    done counts rows completed with status ok. checksum is the sum (mod 2^64, as 16 hex digits) of a
    64-bit hash of each row's (seq, op, size, dtype), size being what members must agree on (bytes
    in; scatter: bytes out; all_to_all: not compared). Summed over a rank's segments, these let the
    analysis prove from the footers alone that every member of a group recorded and finished the
    same collectives with the same signatures (no hang, no desync) without reading any event; any
    difference sends it to the event-by-event comparison. Vectorised: a few ms per 10k rows, in the
    writer thread.
    """
    if table.num_rows == 0:
        return {}
    out: dict[str, list] = {}

    def decoded(name: str) -> tuple[np.ndarray, list]:
        column = table[name].combine_chunks()
        return _arrow.to_numpy(column.indices, fill=-1), column.dictionary.to_pylist()

    op_codes, op_names = decoded("op")
    pg_codes, pg_names = decoded("pg")
    dtype_codes, dtype_names = decoded("dtype")
    status_codes, status_names = decoded("status")
    p2p = np.isin(op_codes, [i for i, name in enumerate(op_names) if name in P2P_OPS])
    scatter = np.isin(op_codes, [i for i, name in enumerate(op_names) if name == "scatter"])
    uneven = np.isin(op_codes, [i for i, name in enumerate(op_names) if name in ("all_to_all", "all_to_all_single")])
    size = np.where(scatter, _arrow.to_numpy(table["bytes_out"]), _arrow.to_numpy(table["bytes_in"]))
    size = np.where(uneven, 0, size).astype(np.uint64)
    seq = _arrow.to_numpy(table["seq"], fill=-1).astype(np.uint64)
    op_h = np.array([_name_hash(n) for n in op_names] + [0], dtype=np.uint64)[op_codes]
    dtype_h = np.array([_name_hash(n) for n in dtype_names] + [0], dtype=np.uint64)[dtype_codes]
    with np.errstate(over="ignore"):
        row_h = _mix(_mix(_mix(_mix(seq) ^ op_h) ^ size) ^ dtype_h)
    ok = np.isin(status_codes, [i for i, name in enumerate(status_names) if name == "ok"])
    done = ok & _arrow.valid(table["t_end_ns"])
    seqs = _arrow.to_numpy(table["seq"])
    for code, name in enumerate(pg_names):
        rows = (pg_codes == code) & ~p2p
        if not rows.any():
            continue
        checksum = int(np.sum(row_h[rows], dtype=np.uint64)) & 0xFFFFFFFFFFFFFFFF
        out[name] = [
            int(rows.sum()),
            int((rows & done).sum()),
            int(seqs[rows].min()),
            int(seqs[rows].max()),
            f"{checksum:016x}",
        ]
    return out


def wall_minus_mono() -> int:
    """Offset that turns this process's monotonic ns into wall-clock ns, sampled now."""
    a = time.monotonic_ns()
    w = time.time_ns()
    b = time.monotonic_ns()
    return w - (a + b) // 2
