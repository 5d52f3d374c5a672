"""The files of a running job's run directory, each read once, as they land.

``analyze-trace watch`` asks this module for what is new since its last look. A segment appears
whole (the recorder writes it under a hidden name and links it into place), so a listing never
holds a half-written file; a file is checked as ``Run.open`` checks it (our schema, the columns the
analysis reads under their types) before a row of it is read, and one that fails is said once.

Merges. The recorder merges its small segments (``recorder.writer.SMALL_ROWS``): it writes one file
holding their rows, whose footer names the files it replaces, and removes them. A watcher has
usually read most of those already, and the last one seldom (it is merged the moment it is
written). So the keys (rank, group, seq, op, peer) of every small segment read are kept until a
merge replaces it, and a merged segment's rows are read less the keys of the files it replaces
that were read: no row is counted twice, none is missed. Only small segments are ever merged, and
the recorder merges them in batches, so what is kept stays small.
"""

from __future__ import annotations

import glob
import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis import metadata
from analysis.segments import (
    OPTIONAL_COLUMNS,
    REPLACES_KEY,
    REQUIRED_COLUMNS,
    SAMPLE_COLUMNS,
    SAMPLE_OPTIONAL_COLUMNS,
    SEGMENT_NAME,
    inspect_segments,
    regular_files,
    sql_files,
    sql_name,
    superseded,
)
from analysis.views import KEY_NAMES, MAX_NAME, WHOLE_ROW_SQL

SMALL_ROWS = 4096  # recorder.writer.SMALL_ROWS: segments under this many rows may be merged later
# Each column kind (analysis.segments) as the SQL and Arrow type the watcher's tables hold it in.
_TYPES = {
    "BYTE_ARRAY UTF8": ("VARCHAR", pa.string()),
    "INT32": ("INTEGER", pa.int32()),
    "INT64": ("BIGINT", pa.int64()),
    "DOUBLE": ("DOUBLE", pa.float64()),
    "BOOLEAN": ("BOOLEAN", pa.bool_()),
}
COLLECTIVE_COLUMNS = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
SAMPLE_ALL_COLUMNS = {**SAMPLE_COLUMNS, **SAMPLE_OPTIONAL_COLUMNS}
ROW_KEY_SQL = "hash(rank, pg, seq, op, peer)"
SAMPLE_ARROW = pa.schema([(name, _TYPES[kind][1]) for name, kind in SAMPLE_ALL_COLUMNS.items()])


def projection(columns: dict[str, str], present: set[str]) -> str:
    """Every column of ``columns`` under its one type, null where no file has it, text cut to
    MAX_NAME (the names rows are grouped by are checked instead: see views.MAX_NAME), so that the
    tables of every refresh have the same schema."""
    out = []
    for name, kind in columns.items():
        sql_type = _TYPES[kind][0]
        value = sql_name(name) if name in present else "NULL"
        if sql_type == "VARCHAR" and name not in KEY_NAMES and name in present:
            value = f"left({value}, {MAX_NAME})"
        out.append(f"CAST({value} AS {sql_type}) AS {sql_name(name)}")
    return ", ".join(out)


def footer_rows(kv: dict) -> int | None:
    """The rows a segment's footer says it holds (its groups' summaries), or None."""
    try:
        return sum(int(g[0]) for g in json.loads(kv["commtrace.groups"]).values())
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError):
        return None


class Tail:
    """What is new in one run directory since the last call, never a row twice."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: set[str] = set()  # the collective segments on disk already taken (read, skipped, or replaced)
        self.samples_seen: set[str] = set()
        self.keys: dict[str, np.ndarray] = {}  # small segments read -> their rows' keys
        self.problems: list[str] = []  # one line per file skipped, in the order found

    def _say(self, lines: list[str]) -> None:
        for line in lines:
            if line not in self.problems:
                self.problems.append(line)

    def mark(self, segments, keys: dict[str, np.ndarray] | None = None) -> None:
        """Files taken without this tail reading them (the first frame reads the run whole)."""
        self.seen.update(segments)
        self.keys.update(keys or {})

    def new_segments(self, con: duckdb.DuckDBPyConnection) -> tuple[list[str], dict[str, dict], set[str]]:
        """(new readable collective segments, their footers, the columns they have)."""
        on_disk = set(glob.glob(os.path.join(glob.escape(self.path), "rank=*", "collectives-*.parquet")))
        self.seen &= on_disk  # a merge removes the files it replaces: what is remembered stays what is there
        found = []
        for path in sorted(on_disk - self.seen):
            why = metadata.regular_file_problem(path)
            if why is None:
                found.append(path)
            else:
                self.seen.add(path)
                self._say([f"{os.path.relpath(path, self.path)}: skipped ({why})"])
        checked = inspect_segments(found, REQUIRED_COLUMNS, con, OPTIONAL_COLUMNS)
        readable, footers, present = [], {}, set()
        for path, (reason, layout, kv) in zip(found, checked, strict=True):
            self.seen.add(path)
            if reason is not None:
                self._say([f"{os.path.relpath(path, self.path)}: skipped ({reason})"])
                continue
            readable.append(path)
            footers[path] = kv
            present.update(name for name, _ in layout)
        gone = superseded(readable, footers)  # a small one and the merge that replaced it, both new
        for path in gone:
            self.keys.pop(path, None)
        return [p for p in readable if p not in gone], footers, present

    def collectives(self, con: duckdb.DuckDBPyConnection, world: int | None) -> pa.Table | None:
        """The rows of the segments that landed since the last call (COLLECTIVE_COLUMNS, and
        ``row_key``), or None."""
        segments, footers, present = self.new_segments(con)
        if not segments:
            return None
        where = WHOLE_ROW_SQL + " AND " + " AND ".join(f"coalesce(strlen({c}), 0) <= {MAX_NAME}" for c in KEY_NAMES)
        if world:
            where += f" AND rank >= 0 AND rank < {int(world)}"
        table = con.sql(f"""
            SELECT {projection(COLLECTIVE_COLUMNS, present)}, {ROW_KEY_SQL} AS row_key, filename
            FROM read_parquet([{sql_files(segments)}], filename = true, union_by_name = true,
                              hive_partitioning = false)
            WHERE {where}
        """).to_arrow_table()
        files = pc.dictionary_encode(table.column("filename")).combine_chunks()
        index = {name: i for i, name in enumerate(files.dictionary.to_pylist())}
        codes = files.indices.to_numpy(zero_copy_only=False)
        row_keys = table.column("row_key").to_numpy()
        keep = np.ones(table.num_rows, dtype=bool)
        for path in segments:
            mine = codes == index.get(path, -1)
            known = self._replaced_keys(path, footers[path])
            if known is not None and len(known):
                keep &= ~(mine & np.isin(row_keys, known))
            rows = footer_rows(footers[path])
            if rows is None or rows < SMALL_ROWS:
                self.keys[path] = row_keys[mine]
        if not keep.all():
            table = table.filter(pa.array(keep))
        return table.drop_columns(["filename"])

    def _replaced_keys(self, path: str, kv: dict) -> np.ndarray | None:
        """The keys of the rows already read from the files ``path`` replaces (a merge), or None."""
        raw = kv.get(REPLACES_KEY)
        mine = SEGMENT_NAME.fullmatch(os.path.basename(path))
        if raw is None or mine is None:
            return None
        try:
            names = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        folder = os.path.dirname(path)
        known = []
        for name in names if isinstance(names, list) else ():
            theirs = SEGMENT_NAME.fullmatch(name) if isinstance(name, str) else None
            if theirs and theirs[1] == mine[1] and int(theirs[2]) < int(mine[2]):
                replaced = os.path.join(folder, name)
                self.seen.add(replaced)  # never read it later, should it still be there
                keys = self.keys.pop(replaced, None)
                if keys is not None:
                    known.append(keys)
        return np.concatenate(known) if known else None

    def samples(self, con: duckdb.DuckDBPyConnection) -> pa.Table | None:
        """The host samples that landed since the last call (SAMPLE_ALL_COLUMNS), or None."""
        problems: list[str] = []
        found = regular_files(self.path, "host=*/nic-*.parquet", problems, self.samples_seen)
        self._say(problems)
        checked = inspect_segments(found, SAMPLE_COLUMNS, con, SAMPLE_OPTIONAL_COLUMNS)
        files, present = [], set()
        for path, (reason, layout, _) in zip(found, checked, strict=True):
            self.samples_seen.add(path)
            if reason is None:
                files.append(path)
                present.update(name for name, _ in layout)
            else:
                self._say([f"{os.path.relpath(path, self.path)}: skipped ({reason})"])
        if not files:
            return None
        return (
            con.sql(f"""
            SELECT {projection(SAMPLE_ALL_COLUMNS, present)}
            FROM read_parquet([{sql_files(files)}], union_by_name = true, hive_partitioning = false)
        """)
            .to_arrow_table()
            .cast(SAMPLE_ARROW)
        )
