"""A copy of a run with each rank's collective segments merged into one file per writing process.

For runs recorded before the recorder merged its small segments itself (docs/trace-format.md): a
job that flushed a few rows a second left tens of thousands of files, and every query reopens each
one (~0.2-0.5 ms a file, per query), so such a run read 20x slower than the same events in few
files. ``analyze-trace compact RUN -o OUT`` pays that once and writes OUT, which reads like a run
recorded in few segments. RUN is only read; OUT must not exist. Everything else in RUN (metadata,
in-flight snapshots, probe and host files, and any segment the analysis could not read) is copied
as it is, so that nothing is lost and a damaged file is still reported as such.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pyarrow.parquet as pq

from analysis import metadata
from analysis.load import Run, TraceError
from analysis.segments import REPLACES_KEY, SEGMENT_NAME, add_group_summaries, sql_files

GROUPS_KEY = "commtrace.groups"  # the footer key recorder.writer writes (the analysis never imports the recorder)
ROW_GROUP = 1 << 20


def compact(path: str, out: str) -> dict:
    """Write the compacted copy of run ``path`` to ``out``; returns what was done (files before and
    after, rows). The copy is built in a hidden folder beside ``out`` and renamed into place when
    its rows were counted equal to the run's; on any failure nothing is left behind."""
    if os.path.lexists(out):
        raise TraceError(f"{out} exists; choose a new name (compact never writes over anything)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise TraceError(f"{parent}: no such directory")
    run = Run.open(path)
    merged = {}  # (rank folder, writer) -> its readable segments
    for segment in run.segments:
        name = SEGMENT_NAME.fullmatch(os.path.basename(segment))
        writer = name[1] if name else os.path.basename(segment)
        merged.setdefault((os.path.dirname(segment), writer), []).append(segment)
    leave = set(run.segments) | run.superseded
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    except OSError as exc:
        raise TraceError(f"{out}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None
    try:
        copied = _copy_the_rest(run.path, tmp, leave)
        for (folder, writer), segments in sorted(merged.items()):
            target = os.path.join(tmp, os.path.relpath(folder, run.path), f"collectives-{writer}-000000.parquet")
            _merge(run, segments, target)
        before = run.sql("SELECT count(*) FROM raw_collectives").item()
        after = Run.open(tmp).sql("SELECT count(*) FROM raw_collectives").item()
        if before != after:
            raise TraceError(f"{out}: the copy holds {after} rows where the run has {before}; nothing written")
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TraceError(f"{out}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"segments_before": len(run.segments), "segments_after": len(merged), "files_copied": copied, "rows": after}


def _copy_the_rest(root: str, into: str, leave: set[str]) -> int:
    """Copy every regular file under ``root`` but those in ``leave`` (FIFOs, devices and links are
    not copied: the analysis skips them anyway); returns how many were copied."""
    copied = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        os.makedirs(os.path.join(into, os.path.relpath(folder, root)), exist_ok=True)
        for name in files:
            source = os.path.join(folder, name)
            if source in leave or metadata.regular_file_problem(source) is not None:
                continue
            shutil.copy2(source, os.path.join(into, os.path.relpath(source, root)), follow_symlinks=False)
            copied += 1
    return copied


def _merge(run: Run, segments: list[str], target: str) -> None:
    """One Parquet file of these segments' rows (read by DuckDB, written in row groups of 1M rows),
    its footer the first segment's, with the groups' summaries added up (as Run.settled sums them)
    when every segment has one."""
    footers = [run.footer(s) for s in segments]
    kv = {k: v for k, v in (footers[0] or {}).items() if k not in (GROUPS_KEY, REPLACES_KEY)}
    groups = _summed_groups(footers)
    if groups is not None:
        kv[GROUPS_KEY] = json.dumps(groups, separators=(",", ":")).encode()
    relation = run.con.sql(
        f"SELECT * FROM read_parquet([{sql_files(segments)}], union_by_name = true, hive_partitioning = false)"
    )
    # DuckDB 2 names it to_arrow_reader; 1.x, fetch_record_batch.
    reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    reader = reader(ROW_GROUP)
    with pq.ParquetWriter(target, reader.schema, compression="zstd", store_schema=False) as writer:
        for batch in reader:
            writer.write_batch(batch, row_group_size=ROW_GROUP)
        writer.add_key_value_metadata(kv)


def _summed_groups(footers: list[dict | None]) -> dict | None:
    """The segments' per-group summaries added up, or None if any segment lacks a readable one."""
    total: dict[str, list] = {}
    try:
        for kv in footers:
            add_group_summaries(total, kv, lambda pg: pg)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        return None
    return {pg: [*counts, f"{checksum:016x}"] for pg, (*counts, checksum) in total.items()}
