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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recorder import _arrow
from recorder import records as C
from recorder.records import NO_DONES, NO_ISSUES, dones_from, issues_from  # noqa: F401  (the session's)
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
    found = cache.get(dtype)
    if found is None:
        name = str(dtype).replace("torch.", "")
        size = getattr(dtype, "itemsize", None)
        if size is None:
            import torch

            size = torch.empty((), dtype=dtype).element_size()
        found = cache[dtype] = (name, int(size))
    return found


def _names(codes: np.ndarray, names) -> pa.DictionaryArray:
    """dictionary<int32, string> of ``names[codes]`` holding only the names used; a negative code or
    a None name is a null."""
    codes = codes.astype(np.intp)
    used = np.flatnonzero(np.bincount(codes + 1, minlength=1)[1:])  # codes are small: a count beats a sort
    if len(used) == 0:
        return _arrow.dictionary(np.full(len(codes), -1, dtype=np.int32), [])
    remap = np.full(int(used[-1]) + 2, -1, dtype=np.int32)  # the last entry answers the -1 codes
    remap[used] = np.arange(len(used), dtype=np.int32)
    return _arrow.dictionary(remap[codes], [names[i] for i in used])


def _pair(issues: np.ndarray, dones: np.ndarray) -> dict[str, np.ndarray]:
    """Each issue's completion, if any: t1, ended, status (IN_FLIGHT without one), gpu_ns, gpu_valid."""
    n = len(issues)
    ends = {
        "t1": np.zeros(n, dtype=np.int64),
        "ended": np.zeros(n, dtype=bool),
        "status": np.full(n, C.IN_FLIGHT, dtype=np.int32),
        "gpu_ns": np.zeros(n, dtype=np.int64),
        "gpu_valid": np.zeros(n, dtype=bool),
    }
    if not len(dones):
        return ends
    ids, done_ids = issues["id"], dones["id"]
    order = np.argsort(done_ids, kind="stable")  # equal ids: the first completion recorded wins
    source = order[np.minimum(np.searchsorted(done_ids[order], ids), len(order) - 1)]
    ended = done_ids[source] == ids
    found_gpu = dones["gpu_ns"][source]
    gpu_valid = ended & (found_gpu != C.NULL64)
    ends.update(
        t1=np.where(ended, dones["t1"][source], 0),
        ended=ended,
        status=np.where(ended, dones["status"][source].astype(np.int32), ends["status"]),
        gpu_ns=np.where(gpu_valid, found_gpu, 0),
        gpu_valid=gpu_valid,
    )
    return ends


def _global_ranks(column: np.ndarray, group_codes: np.ndarray, infos: list) -> pa.Array:
    """Group ranks (NULL32: none) as global ranks, through each group's rank list (never empty); a
    rank outside the list stays as recorded, a negative one is a null."""
    valid = column != C.NULL32
    if not valid.any():
        return pa.nulls(len(column), pa.int32())
    out = np.where(valid, column, -1).astype(np.int64)
    for g in np.flatnonzero(np.bincount(group_codes[valid])):  # not np.unique: see Flusher._write
        rows = valid & (group_codes == g)
        ranks = np.array(infos[g].ranks, dtype=np.int64)
        r = out[rows]
        out[rows] = np.where((r >= 0) & (r < len(ranks)), ranks[np.clip(r, 0, len(ranks) - 1)], r)
    valid &= out >= 0
    return _arrow.from_numpy(np.where(valid, out, 0), pa.int32(), valid)


def _columns(issues, ends, infos: list, rank: int, wall_minus_mono: int, dtype_cache: dict) -> dict[str, pa.Array]:
    """COLLECTIVE_SCHEMA's columns of the paired records."""
    n = len(issues)
    group_codes = issues["group"].astype(np.intp)
    dtype_codes = issues["dtype"].astype(np.intp)
    dtypes = list(C.DTYPES.names)
    dtype_names, itemsizes = zip(*(_dtype_info(d, dtype_cache) for d in dtypes), strict=True) if dtypes else ((), ())
    itemsize = np.array([*itemsizes, 0], dtype=np.int64)[dtype_codes]  # code -1 (no tensor): 0 bytes
    n_in, n_out, step = issues["n_in"], issues["n_out"], issues["step"]

    def per_group(values: list) -> pa.DictionaryArray:
        return _names(group_codes, values)

    return {
        "rank": _arrow.from_numpy(np.full(n, rank, dtype=np.int32), pa.int32()),
        "pg": per_group([i.name for i in infos]),
        "pg_desc": per_group([i.desc for i in infos]),
        "pg_size": _arrow.from_numpy(np.array([i.size for i in infos], dtype=np.int32)[group_codes], pa.int32()),
        "seq": _arrow.from_numpy(issues["seq"], pa.int64()),
        "op": _names(issues["op"], C.OPS.names),
        "count": _arrow.from_numpy(n_in, pa.int64()),
        "bytes_in": _arrow.from_numpy(n_in * itemsize, pa.int64()),
        "bytes_out": _arrow.from_numpy(n_out * itemsize, pa.int64()),
        "dtype": _names(dtype_codes, dtype_names),
        "peer": _global_ranks(issues["peer"], group_codes, infos),
        "root": _global_ranks(issues["root"], group_codes, infos),
        "t_start_ns": _arrow.from_numpy(issues["t0"] + wall_minus_mono, pa.int64()),
        "t_end_ns": _arrow.from_numpy(ends["t1"] + wall_minus_mono, pa.int64(), ends["ended"]),
        "gpu_duration_ns": _arrow.from_numpy(ends["gpu_ns"], pa.int64(), ends["gpu_valid"]),
        "status": _names(ends["status"], C.STATUS_NAMES),
        "async_op": _arrow.from_numpy(issues["async"], pa.bool_()),
        "coalesced": _arrow.from_numpy(issues["coalesced"], pa.bool_()),
        "api": _names(issues["api"], C.APIS.names),
        "backend": per_group([i.backend for i in infos]),
        "device": _names(issues["device"], C.DEVICE_NAMES),
        "step": _arrow.from_numpy(step, pa.int64(), step != C.NULL64),
    }


def build_segment(
    issues: np.ndarray,
    dones: np.ndarray,
    groups: list,
    rank: int,
    wall_minus_mono: int,
    dtype_cache: dict,
    write_before_mono: int | None,
) -> tuple[pa.Table | None, np.ndarray]:
    """Join issue and completion records (rows of ISSUE_DTYPE and DONE_DTYPE) into rows of
    COLLECTIVE_SCHEMA.

    Returns the table of rows to write (finished operations, and unfinished ones issued before
    ``write_before_mono``, written as in flight; None if there are none) and the issue records still
    waiting for their completion. Column-wise in numpy throughout: the writer shares the GIL with
    training, so it spends no Python time per event. The Arrow arrays are made from their buffers
    (see recorder._arrow: no pandas import).
    """
    if len(issues) == 0:
        return None, NO_ISSUES
    ends = _pair(issues, dones)
    keep = np.ones(len(issues), dtype=bool)
    if write_before_mono is not None:
        keep = ends["ended"] | (issues["t0"] < write_before_mono)
    carry = issues[~keep]
    if not keep.any():
        return None, carry
    if not keep.all():
        issues = issues[keep]
        ends = {name: column[keep] for name, column in ends.items()}
    arrays = _columns(issues, ends, list(groups), rank, wall_minus_mono, dtype_cache)
    table = pa.Table.from_arrays([arrays[f.name] for f in COLLECTIVE_SCHEMA], schema=COLLECTIVE_SCHEMA)
    return table, carry


# A segment lands every COMMTRACE_FLUSH_S so that a crash loses at most that much; a job issuing a few
# collectives a second then leaves tens of thousands of files of ten rows a day, and every reader
# pays per file (DuckDB parses each footer again for every query: ~0.2 ms a file), so such a run
# read 16x slower than the same events in few files. The writer therefore merges its small
# collective segments as it goes: once it holds MERGE_SEGMENTS of them or MERGE_ROWS rows, it writes
# their rows as one segment whose footer names the files it replaces (REPLACES_KEY), then removes
# them. A merged segment still under SMALL_ROWS joins the next merge, so a slow job ends with one
# file per ~SMALL_ROWS rows. A reader that finds both a merged segment and files it replaces (a
# crash between the two steps, or a listing taken in between) reads only the merged one.
SMALL_ROWS = 4096
MERGE_SEGMENTS = 60
MERGE_ROWS = 16384
REPLACES_KEY = "commtrace.replaces"


class SegmentWriter:
    """Writes numbered segments of one kind into one rank directory, merging small collective
    segments as they accumulate (see SMALL_ROWS)."""

    def __init__(self, rank_dir: str, incarnation: str, metadata: dict[str, str], merge_small: bool = True) -> None:
        self.rank_dir = rank_dir
        self.merge_small = merge_small  # off only to write runs as recorders before merging did (benchmarks)
        self.incarnation = incarnation
        self.metadata = {"commtrace.schema_version": str(SCHEMA_VERSION), **metadata}
        self.index = 0
        self.bytes_written = 0
        self.rows_written = 0
        self.merges = 0
        self._small: list[tuple[str, pa.Table]] = []  # collective segments to merge: (path, rows)
        self._small_rows = 0

    def write(self, table: pa.Table, prefix: str = COLLECTIVES_PREFIX) -> str:
        final = self._write(table, prefix)
        self.rows_written += table.num_rows
        if self.merge_small and prefix == COLLECTIVES_PREFIX and table.num_rows < SMALL_ROWS:
            self._small.append((final, table.replace_schema_metadata(None)))
            self._small_rows += table.num_rows
            if len(self._small) >= MERGE_SEGMENTS or self._small_rows >= MERGE_ROWS:
                self._merge()
        return final

    def _merge(self) -> None:
        """Write the small segments held as one, then remove them. If the merged one cannot be
        written (a full disk), the small ones stay, and so does the run."""
        paths = [path for path, _ in self._small]
        table = pa.concat_tables([rows for _, rows in self._small]).unify_dictionaries().combine_chunks()
        self._small, self._small_rows = [], 0
        replaces = json.dumps([os.path.basename(p) for p in paths], separators=(",", ":"))
        merged = self._write(table.replace_schema_metadata({REPLACES_KEY: replaces}), COLLECTIVES_PREFIX)
        self.merges += 1
        for path in paths:
            try:
                self.bytes_written -= os.path.getsize(path)
                os.unlink(path)
            except OSError:
                pass  # gone already, or left: the merged segment's footer says it replaces it
        if table.num_rows < SMALL_ROWS:
            self._small, self._small_rows = [(merged, table)], table.num_rows

    def _write(self, table: pa.Table, prefix: str) -> str:
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
        return final


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
    p2p = np.isin(op_codes, [i for i, name in enumerate(op_names) if name in C.P2P_OPS])
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
