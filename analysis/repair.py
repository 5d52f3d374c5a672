"""Keeping a run readable when a file's data turns out damaged in the middle of a query.

A segment whose footer reads fine can still hold a page that does not decode (a crash mid-write, a
disk error, a file edited by hand). :func:`guarded` runs a query; when it fails on such a file, that
file is taken out of the views (one line in the run's problems) and the query runs again over the
rest, so one bad file costs its own events, never the analysis.
"""

from __future__ import annotations

import glob
import os
import re

import duckdb

from analysis.segments import TraceError
from analysis.views import NO_SAMPLES, parquet_view

# DuckDB errors that say nothing about a file's bytes (the query, the values, the memory), unless
# they name the file they failed to read.
NOT_THE_FILES = (
    duckdb.BinderException,
    duckdb.ParserException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.OutOfRangeException,
    duckdb.OutOfMemoryException,
    duckdb.InterruptException,
    duckdb.PermissionException,
)
UNREADABLE_BATCH = 1024


def guarded(run, action):
    """``action()``; if it fails on a file whose footer was fine but whose data is not (a page cut
    or overwritten), that file is dropped from the views, listed in ``problems``, and the action
    runs again over the rest.

    Errors that are not about reading a file are raised at once and drop nothing: a query's own
    (a column that does not exist, a syntax error), values out of range (an overflow), running
    out of memory. Blaming those on the segments once cost minutes of bisecting and dropped
    good files."""
    while True:
        try:
            return action()
        except duckdb.Error as exc:
            if isinstance(exc, NOT_THE_FILES) and "Failed to read file" not in str(exc):
                raise
            named = re.search(r'Failed to read file "([^"]+)"', str(exc))
            why = str(exc).splitlines()[0][:200]
            if named and _drop(run, [(named.group(1), why)]):
                continue  # the file DuckDB named is gone from the views: again, without it
            if _drop_unreadable(run):
                continue
            culprit = _bisect(run, action)
            if culprit is None or not _drop(run, [(culprit, why)]):
                raise


def _bisect(run, action) -> str | None:
    """The collective segment that makes ``action`` fail, found by halving the segments the views
    read (an error that names no file and a file that reads whole on its own: a page only some
    queries decode); None if no single segment is to blame."""
    segments = list(run.segments)

    def fails(subset: list[str]) -> bool:
        parquet_view(run, "raw_segments", subset, run.one_layout)
        try:
            action()
        except duckdb.Error:
            return True
        return False

    try:
        while len(segments) > 1:
            half = len(segments) // 2
            if fails(segments[:half]):
                segments = segments[:half]
            elif fails(segments[half:]):
                segments = segments[half:]
            else:
                return None
        return segments[0] if fails(segments) else None
    finally:
        parquet_view(run, "raw_segments", run.segments, run.one_layout)


def _drop(run, bad: list[tuple[str, str]]) -> bool:
    """Take these (path, why) segments out of the views and list them in ``problems``; True if any
    was still in a view."""
    bad_segments = [(p, why) for p, why in bad if p in run.segments]
    bad_samples = [(p, why) for p, why in bad if p in run.sample_files and "deltas" not in run.built]
    for path, why in bad_segments + bad_samples:
        run.problems.append(f"{os.path.relpath(path, run.path)}: skipped (unreadable data: {why})")
    if bad_segments:
        gone = {p for p, _ in bad_segments}
        run.segments = [p for p in run.segments if p not in gone]
        if not run.segments:
            raise TraceError(f"{run.path}: no readable collective segments ({run.problems[-1]})")
        parquet_view(run, "raw_segments", run.segments, run.one_layout)
    if bad_samples:
        gone = {p for p, _ in bad_samples}
        run.sample_files = [p for p in run.sample_files if p not in gone]
        if run.sample_files:
            parquet_view(run, "samples", run.sample_files, run.samples_one_layout)
        else:
            run.con.execute(f"CREATE OR REPLACE VIEW samples AS {NO_SAMPLES}")
    return bool(bad_segments or bad_samples)


def _drop_unreadable(run) -> bool:
    """Read every collective and sample segment whole; drop those that fail. True if any did.
    (For errors that do not name their file.)

    Files are read in batches of UNREADABLE_BATCH, and a batch that fails is halved until the
    files to blame are found: one damaged page among 20,000 segments costs about one read of
    the run rather than 40,000 queries (five minutes)."""

    def first_error(paths: list[str], con: duckdb.DuckDBPyConnection) -> str | None:
        try:  # every column of every row: COLUMNS(*) makes DuckDB decode them all
            query = "SELECT min(hash(COLUMNS(*))) FROM read_parquet(?, union_by_name = true)"
            con.execute(query, [[glob.escape(p) for p in paths]]).fetchall()
        except duckdb.Error as exc:
            return str(exc).splitlines()[0][:160]
        return None

    def bad_ones(paths: list[str], con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
        bad = []
        todo = [paths[i : i + UNREADABLE_BATCH] for i in range(0, len(paths), UNREADABLE_BATCH)][::-1]
        while todo:
            batch = todo.pop()
            why = first_error(batch, con)
            if why is None:
                continue
            if len(batch) == 1:
                bad.append((batch[0], why))
            else:
                todo += [batch[len(batch) // 2 :], batch[: len(batch) // 2]]
        return bad

    def unreadable(paths: list[str]) -> list[tuple[str, str]]:
        # Through the run's connection first (the one the failing query used); if every file
        # reads whole there, through one of its own: the run's caches footers, and a damaged
        # file can read differently with and without its cached footer.
        bad = bad_ones(paths, run.con)
        if bad:
            return bad
        fresh = duckdb.connect()
        try:
            return bad_ones(paths, fresh)
        finally:
            fresh.close()

    return _drop(run, unreadable(run.segments + (run.sample_files if "deltas" not in run.built else [])))
