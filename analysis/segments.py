"""The files of a run directory: which ones there are, and whether each can be read as ours.

Nothing here reads an event. A collective segment, an in-flight snapshot, a host-sample or a probe
file is used only if it is a regular file whose Parquet footer carries our schema version and the
columns the analysis reads under the types it expects (:func:`inspect_segments`, one DuckDB call for
a whole run); every other file is skipped with one line in the run's problems. The footers' own
summaries (``commtrace.groups``, ``commtrace.replaces``) are read here too.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow.parquet as pq

from analysis import metadata

SCHEMA_VERSION = 1  # the newest trace schema this analysis understands
REPLACES_KEY = "commtrace.replaces"  # a merged segment's footer: the files whose rows it holds
# The columns the analysis reads, with their Parquet physical types: a file that has them under
# other types (a stranger's file, a damaged footer) is skipped, not left to fail a query.
_S, _I32, _I64, _F64 = "BYTE_ARRAY UTF8", "INT32", "INT64", "DOUBLE"
REQUIRED_COLUMNS = {
    "rank": _I32,
    "pg": _S,
    "seq": _I64,
    "op": _S,
    "bytes_in": _I64,
    "bytes_out": _I64,
    "t_start_ns": _I64,
    "t_end_ns": _I64,
    "status": _S,
}
# Columns the queries read where a file has them (a recorder may write fewer): present under another
# type (a stranger's file, a damaged footer), the file is skipped like one with a required column
# of the wrong type, not left to fail a query.
OPTIONAL_COLUMNS = {
    "pg_desc": _S,
    "pg_size": _I32,
    "count": _I64,
    "dtype": _S,
    "peer": _I32,
    "root": _I32,
    "gpu_duration_ns": _I64,
    "async_op": "BOOLEAN",
    "coalesced": "BOOLEAN",
    "api": _S,
    "backend": _S,
    "device": _S,
    "step": _I64,
}
SAMPLE_COLUMNS = {"t_ns": _I64, "host": _S, "source": _S, "device": _S, "counter": _S, "value": _I64}
SAMPLE_OPTIONAL_COLUMNS = {"port": _I32, "text": _S}
PROBE_COLUMNS = {"phase": _S, "src_host": _S, "dst_host": _S, "bandwidth_gbps": _F64, "latency_us": _F64}
SEGMENT_NAME = re.compile(r"collectives-(.+)-(\d{1,18})\.parquet")


class TraceError(Exception):
    """A trace that cannot be analysed; the message is one line meant for the user."""


def unreadable_folders(root: str, folders: list[str], problems: list[str]) -> set[int]:
    """The ranks whose ``rank=N`` folder cannot be listed (permissions), each said in ``problems``."""
    ranks = set()
    for folder in folders:
        try:
            with os.scandir(folder):
                pass
        except NotADirectoryError:
            continue
        except OSError as exc:
            match = re.fullmatch(r"rank=(\d{1,9})", os.path.basename(folder))
            if match:
                ranks.add(int(match.group(1)))
            why = exc.strerror or exc.__class__.__name__
            problems.append(
                f"{os.path.relpath(folder, root)}: unreadable ({why}); that rank's events and metadata are not in "
                "this analysis, and it is not judged"
            )
    return ranks


def regular_files(root: str, pattern: str, problems: list[str], skip: set[str] | None = None) -> list[str]:
    """The files under ``root`` matching ``pattern`` that are regular files; the others (a FIFO, which
    a reader would wait on forever, a device, a folder) are listed in ``problems``. ``skip``: files
    already known, neither checked nor listed."""
    files = []
    for path in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
        if skip is not None and path in skip:
            continue
        why = metadata.regular_file_problem(path)
        if why is None:
            files.append(path)
        else:
            problems.append(f"{os.path.relpath(path, root)}: skipped ({why})")
    return files


def inspect_segment(
    path: str, required: dict[str, str] = REQUIRED_COLUMNS, optional: dict[str, str] | None = None
) -> tuple[str | None, tuple, dict]:
    """(why the segment cannot be used, or None; its column names and types; its commtrace.* metadata)."""
    try:
        meta = pq.read_metadata(path)
    except Exception as exc:
        return f"not a readable Parquet file: {exc.__class__.__name__}", (), {}
    kv = {k.decode(errors="replace"): v for k, v in (meta.metadata or {}).items() if k.startswith(b"commtrace.")}
    layout = tuple((c.name, _column_kind(c.physical_type, c.converted_type, c.logical_type.type)) for c in meta.schema)
    reason = _verdict(kv.get("commtrace.schema_version"), dict(layout), required, optional)
    if reason is not None:
        return reason, (), {}
    return None, layout, kv


def inspect_segments(
    paths: list[str],
    required: dict[str, str] = REQUIRED_COLUMNS,
    con: duckdb.DuckDBPyConnection | None = None,
    optional: dict[str, str] | None = None,
) -> list[tuple[str | None, tuple, dict]]:
    """``inspect_segment`` for many files at once: DuckDB reads every footer in one parallel call
    (a run of thousands of segments in a few tens of ms), on ``con`` if given (whose metadata cache
    then holds them); if any file is unreadable it cannot say which, and each file is then read on
    its own."""
    if not paths:
        return []
    own = con is None
    con = duckdb.connect() if own else con
    try:
        footers: dict[str, dict] = {}
        for name, key, value in con.execute(
            "SELECT file_name, decode(key), value FROM parquet_kv_metadata(?) "
            "WHERE starts_with(decode(key), 'commtrace.')",
            [[glob.escape(p) for p in paths]],
        ).fetchall():
            footers.setdefault(name, {})[key] = value
        columns: dict[str, list] = {}
        for name, column, physical, converted, logical in con.execute(
            "SELECT file_name, name, type, converted_type, logical_type FROM parquet_schema(?) "
            "WHERE num_children IS NULL OR num_children = 0",
            [[glob.escape(p) for p in paths]],
        ).fetchall():
            columns.setdefault(name, []).append((column, _column_kind(physical, converted, logical)))
    except duckdb.Error:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda p: inspect_segment(p, required, optional), paths))
    finally:
        if own:
            con.close()
    out = []
    for path in paths:
        layout = tuple(columns.get(path, ()))
        kv = footers.get(path, {})
        reason = _verdict(kv.get("commtrace.schema_version"), dict(layout), required, optional)
        out.append((reason, layout, kv) if reason is None else (reason, (), {}))
    return out


@functools.lru_cache(maxsize=256)
def _column_kind(physical: str | None, converted: str | None, logical) -> str:
    """A Parquet column's type as the analysis needs it: the physical type, and for text the UTF8
    annotation; an integer column annotated as anything but an integer (a TIMESTAMP, a DECIMAL) and
    a byte column that is not text keep their annotation, so that they do not pass as ours."""
    logical = str(logical or "").split("(")[0].upper().removesuffix("TYPE") or None
    if logical in ("NONE", "INT"):
        logical = None
    if converted in (None, "NONE") or str(converted).startswith("INT_"):
        converted = None
    if physical == "BYTE_ARRAY" and (converted == "UTF8" or logical == "STRING"):
        return "BYTE_ARRAY UTF8"
    annotation = converted or logical
    return f"{physical} {annotation}" if annotation else str(physical)


def _verdict(
    version: bytes | None, columns: dict[str, str], required: dict[str, str], optional: dict[str, str] | None = None
) -> str | None:
    """Why a segment with this schema-version metadata and these columns (name: physical type)
    cannot be used, or None. ``optional``: columns it need not have, but if it has, of these types."""
    if version is None:
        return "not written by the commtrace recorder"
    try:
        if int(version) > SCHEMA_VERSION:
            return f"schema version {int(version)} is newer than this analysis ({SCHEMA_VERSION}); upgrade commtrace"
    except ValueError:
        return "unreadable schema version"
    missing = required.keys() - columns.keys()
    if missing:
        return f"missing columns {sorted(missing)}"
    expected = {**(optional or {}), **required}
    wrong = sorted(name for name, kind in expected.items() if name in columns and columns[name] != kind)
    if wrong:
        return f"columns of the wrong type: {', '.join(f'{n} ({columns[n]}, not {expected[n]})' for n in wrong)}"
    return None


def superseded(segments: list[str], footers: dict[str, dict]) -> set[str]:
    """The segments whose rows a merged segment holds (its footer's ``commtrace.replaces``, see
    ``recorder.writer.SMALL_ROWS``): left when a recorder stopped between writing the merged one and
    removing them. A segment replaces only earlier segments of its own writer (same folder and
    incarnation, a smaller index), so that no footer, however written, can take out a later or
    foreign file, or two files each other."""
    out: set[str] = set()
    present = set(segments)
    for seg in segments:
        raw = footers.get(seg, {}).get(REPLACES_KEY)
        mine = SEGMENT_NAME.fullmatch(os.path.basename(seg))
        if raw is None or mine is None:
            continue
        try:
            names = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        for name in names if isinstance(names, list) else ():
            theirs = SEGMENT_NAME.fullmatch(name) if isinstance(name, str) else None
            if theirs and theirs[1] == mine[1] and int(theirs[2]) < int(mine[2]):
                out.add(os.path.join(os.path.dirname(seg), name))
    return out & present


def add_group_summaries(totals: dict, kv: dict, key) -> None:
    """Add a segment footer's per-group summaries (``commtrace.groups``: [rows, done, first seq,
    last seq, checksum]) into ``totals`` under ``key(pg)``: counts summed, the seq range widened,
    checksums summed modulo 2^64. Raises KeyError, ValueError or TypeError for a footer without a
    readable summary."""
    for pg, (rows, done, first, last, checksum) in json.loads(kv["commtrace.groups"]).items():
        entry = [int(rows), int(done), int(first), int(last), int(checksum, 16)]
        known = totals.get(key(pg))
        if known is None:
            totals[key(pg)] = entry
        else:
            known[0] += entry[0]
            known[1] += entry[1]
            known[2] = min(known[2], entry[2])
            known[3] = max(known[3], entry[3])
            known[4] = (known[4] + entry[4]) % (1 << 64)


def contradiction(kv: dict, collectives: int, lo_rank, hi_rank) -> str | None:
    """What a segment's rows (their collectives' count and ranks) say against its footer's
    ``commtrace.rank`` and ``commtrace.groups``, or None. A footer without a summary claims nothing."""
    try:
        rank = int(kv["commtrace.rank"])
        groups = json.loads(kv["commtrace.groups"]).values()
        rows = sum(int(g[0]) for g in groups)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError):
        return None
    if lo_rank is not None and (lo_rank != rank or hi_rank != rank):
        ranks = f"{lo_rank}" if hi_rank == lo_rank else f"{lo_rank} to {hi_rank}"
        return f"the footer says rank {rank}, the rows rank {ranks}"
    if rows != collectives:
        return f"the footer counts {rows} collectives, the rows hold {collectives}"
    return None


def text_columns(layouts) -> list[str]:
    """The string columns any of these layouts ((name, kind), ...) has."""
    return sorted({name for layout in layouts for name, kind in layout if kind == "BYTE_ARRAY UTF8"})


def sql_files(paths: list[str]) -> str:
    """Files for a SQL list given to DuckDB's readers, which expand ``*``, ``?`` and ``[`` as globs: a
    run folder named ``run[0]`` or a file named with ``*`` would otherwise read other files, or one
    file several times. ``glob.escape``'s brackets are DuckDB's escape too."""
    return ", ".join(sql_string(glob.escape(p)) for p in paths)


def sql_string(text: str) -> str:
    """A SQL string literal (views cannot take prepared parameters)."""
    return "'" + text.replace("'", "''") + "'"


def sql_name(column: str) -> str:
    """A column name as a quoted SQL identifier."""
    return '"' + column.replace('"', '""') + '"'
