"""A run directory as DuckDB views, with every rank's clock moved onto rank 0's.

Nothing in a trace is executed or unpickled: Parquet is read by DuckDB and metadata by ``json``.
A segment whose footer cannot be read (a file cut short by a crash, a foreign file) is skipped and
listed in :attr:`Run.problems`; the rest of the run is still analysed.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import duckdb

from analysis import metadata, repair, text, views
from analysis.segments import (  # noqa: F401  (TraceError is load's API too)
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TraceError,
    add_group_summaries,
    inspect_segments,
    regular_files,
    sql_string,
    superseded,
    text_columns,
    unreadable_folders,
)
from analysis.views import KEY_NAMES, MAX_NAME, WHOLE_ROW_SQL


def problem_kind(problem: str) -> str:
    """The kind of one of :attr:`Run.problems`, for tables and reports: ``unreadable_folder`` (a rank's
    folder could not be listed), ``rows_outside_run`` (rows naming a rank the run does not have, left
    out), ``footer_contradicts_rows`` (a segment's rows differ from its footer's summary; the rows
    are used), ``name_too_long`` (rows whose group, op or status is past MAX_NAME, left out), else
    ``unreadable_file`` (a file skipped, and why)."""
    if "unreadable (" in problem and "; that rank's events" in problem:
        return "unreadable_folder"
    if f"longer than {MAX_NAME} characters" in problem and problem.endswith("; left out"):
        return "name_too_long"
    if "outside the run's" in problem and problem.endswith("; left out"):
        return "rows_outside_run"
    if "its rows contradict its footer" in problem:
        return "footer_contradicts_rows"
    return "unreadable_file"


def remembered(finding):
    """A finding computed once per run and arguments: ``diagnose``, the report and the CLI ask for the
    same ones (stragglers, network, loss) and get the frame already made. Frames are never changed in
    place (polars returns new ones), so sharing one is safe."""

    @functools.wraps(finding)
    def once(run, *args, **kwargs):
        key = (finding.__module__, finding.__qualname__, args, tuple(sorted(kwargs.items())))
        found = run.results.get(key)
        if found is None:
            found = run.results[key] = finding(run, *args, **kwargs)
        return found

    return once


@dataclass
class Run:
    """A run directory opened for analysis: its metadata, its readable files, and a DuckDB connection
    holding the views over them (:mod:`analysis.views`). Open one with :meth:`open`; query it with
    :meth:`sql`."""

    path: str
    con: duckdb.DuckDBPyConnection
    run_meta: dict
    ranks: dict[int, dict]  # rank -> its metadata (analysis.metadata.RANK_FIELDS)
    segments: list[str]  # the readable collective segments, in the views
    problems: list[str] = field(default_factory=list)  # one line per thing skipped or doubted (problem_kind)
    footers: dict[str, dict] = field(default_factory=dict)  # segment -> its commtrace.* key-value metadata
    superseded: set[str] = field(default_factory=set)  # segments whose rows a merged segment holds
    # Ranks whose folder could not be listed (permissions): nothing can be said of them, so they are
    # not judged (not missing from a collective, not dead).
    unreadable_ranks: set[int] = field(default_factory=set)
    # What analysis.views keeps of the run: the files each view reads, and how to read them.
    one_layout: bool = False  # every segment has the same columns, in the same order
    sample_files: list[str] = field(default_factory=list)  # samples is a view over these (else an empty table)
    samples_one_layout: bool = True
    snapshots: list[str] = field(default_factory=list)  # inflight-*.parquet: what was in flight at a dump
    text_columns: dict[str, list[str]] = field(default_factory=dict)  # view -> its string columns
    row_filter: str = WHOLE_ROW_SQL  # which rows of the segments the views hold
    members: dict[str, set[int]] = field(default_factory=dict)  # pg -> member ranks, from the ranks' metadata
    # SQL for the ns to add to a row's own-clock timestamp to put it on rank 0's clock (for queries
    # over raw_collectives that need only some timestamps moved).
    shift_sql: str = "0"
    built: set[str] = field(default_factory=set)  # the tables built on first use so far (views.LAZY)
    results: dict = field(default_factory=dict)  # (finding, arguments) -> its frame (remembered)
    _settled: bool | None = None
    _labels: dict[str, str] | None = None  # pg -> the group in words (group_labels)
    _spill_dirs: ClassVar[dict[int, str]] = {}  # connection id -> its spill folder (for lock_down)

    @classmethod
    def open(cls, path: str | os.PathLike, memory_limit: str | None = None) -> Run:
        """Open a run directory. ``memory_limit`` (e.g. ``"2GB"``, default: $COMMTRACE_ANALYSIS_MEMORY,
        else DuckDB's 80 % of RAM) caps what DuckDB holds; past it, it spills to a private folder
        in the system's temporary directory, removed when the run is closed or the process ends."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise TraceError(f"{path}: no such directory")
        if not os.path.isdir(path):
            raise TraceError(f"{path}: not a directory (give a run directory written by the recorder)")
        rank_dirs = sorted(glob.glob(os.path.join(glob.escape(path), "rank=*")))
        if not rank_dirs:
            runs = sorted(glob.glob(os.path.join(glob.escape(path), "*", "rank=*")))
            hint = f"; it holds runs, e.g. {os.path.dirname(runs[-1])}" if runs else ""
            raise TraceError(f"{path}: not a commtrace run directory (no rank=* folders){hint}")
        problems: list[str] = []
        unreadable_ranks = unreadable_folders(path, rank_dirs, problems)
        run_meta, ranks = read_metadata(path, problems)
        con = _connect(memory_limit, cls._spill_dirs)
        segments, footers, layouts = _collective_segments(path, con, problems)
        gone = superseded(segments, footers)
        segments = [seg for seg in segments if seg not in gone]
        if not segments:
            con.close()
            raise TraceError(f"{path}: no readable collective segments" + (f" ({problems[0]})" if problems else ""))
        footers = {seg: kv for seg, kv in footers.items() if seg not in gone}
        run = cls(path, con, run_meta, ranks, segments, problems)
        run.unreadable_ranks = unreadable_ranks
        run.footers = footers
        run.superseded = gone
        run.one_layout = len(layouts) == 1
        run.text_columns["raw_segments"] = [c for c in text_columns(layouts) if c not in KEY_NAMES]
        if (run.source or {}).get("start_times") is False:  # an imported source without times keeps its rows
            run.row_filter = WHOLE_ROW_SQL.replace(" AND t_start_ns IS NOT NULL", "")
        views.create(run)
        return run

    @classmethod
    def of_rows(cls, path: str, run_meta: dict, ranks: dict[int, dict], rows, samples=None) -> Run:
        """A run over rows already read and checked (``analyze-trace watch``'s window of a running
        job: analysis.tail): Arrow tables of the segments' columns and of the host samples' columns,
        under the same views as a run opened from its files. Their instances are not proven whole by
        any footer: every finding compares the events."""
        con = _connect(None, cls._spill_dirs)
        con.register("given_rows", rows)
        if samples is not None:
            con.register("given_samples", samples)
        run = cls(path, con, run_meta, ranks, [])
        run.one_layout = True
        run._settled = False
        views.create(run, "given_rows", "given_samples" if samples is not None else None)
        return run

    @property
    def run_id(self) -> str:
        return str(self.run_meta.get("run_id") or os.path.basename(os.path.normpath(self.path)))

    @property
    def world_size(self) -> int | None:
        sizes = [m.get("world_size") for m in self.ranks.values() if m.get("world_size")]
        return max(sizes) if sizes else self.run_meta.get("world_size")

    @property
    def source(self) -> dict | None:
        """Where an imported run's events came from (analysis.importing), or None for a recorded run."""
        return self.run_meta.get("source")

    @property
    def untimed(self) -> bool:
        """An imported run whose source knows that operations completed but not when."""
        return (self.source or {}).get("end_times") is False

    @property
    def hosts(self) -> list[str]:
        return sorted({str(m.get("host")) for m in self.ranks.values() if m.get("host")})

    def group_labels(self, pgs=None) -> dict[str, str]:
        """Each process group in words (``analysis.text.group_label``): its description, or its ranks
        where it has none, from the ranks' metadata. ``pgs``: groups wanted; one the metadata does not
        describe is labelled from its events (a scan, so only for those asked for)."""
        if self._labels is None:
            descs: dict[str, str] = {}
            for meta in self.ranks.values():
                for group in meta.get("process_groups") or []:
                    if isinstance(group, dict) and group.get("pg") is not None:
                        desc = group.get("desc")
                        if isinstance(desc, str) and desc and str(group["pg"]) not in descs:
                            descs[str(group["pg"])] = desc
            self._labels = {pg: text.group_label(descs.get(pg), members) for pg, members in self.members.items()}
        unknown = sorted({str(pg) for pg in pgs or () if pg is not None} - set(self._labels))
        if unknown:
            found = self.sql(
                "SELECT pg, any_value(pg_desc) AS desc, list(DISTINCT rank ORDER BY rank) AS ranks "
                "FROM raw_collectives WHERE list_contains(?, pg) GROUP BY pg",
                [unknown],
            )
            for pg, desc, ranks in found.iter_rows():
                self._labels[pg] = text.group_label(desc, ranks)
        return self._labels

    def with_group(self, frame):
        """``frame`` with a ``group`` column, the label of its ``pg``, last (CSV readers that count
        columns find the others where they were)."""
        import polars as pl

        if "pg" not in frame.columns or "group" in frame.columns:
            return frame
        labels = self.group_labels(frame["pg"].unique().to_list())
        column = pl.Series("group", [labels.get(pg, "?") if pg is not None else None for pg in frame["pg"]])
        return frame.with_columns(column)

    def footer(self, segment: str) -> dict:
        """A readable segment's ``commtrace.*`` key-value metadata ({} for one whose footer no longer
        vouches for it: its rows contradicted it)."""
        return dict(self.footers.get(segment) or {})

    def settled(self) -> bool:
        """Whether the segments' footers prove that no group has a hang or a desync, without reading an event.

        The recorder writes, per segment and group, its collectives' count, how many finished ok,
        the first and last seq and a checksum of every (seq, op, size, dtype) (see
        ``recorder.writer.group_summaries``). Summed per rank, they settle a group when every member
        the metadata names holds the same count, all finished, the same unbroken seq range and the
        same checksum: then every member finished every instance, and agreed on each (a false "agreed"
        needs two 64-bit checksums to collide). Anything else (a segment without a summary, a group
        the metadata does not describe, any difference) answers False, and the findings compare the
        events one by one.
        """
        if self._settled is None:
            self._settled = self._check_settled()
        return self._settled

    def _check_settled(self) -> bool:
        if self.snapshots:  # operations were in flight at a snapshot: compare the events
            return False
        totals: dict[tuple[int, str], list[int]] = {}
        try:
            for segment in self.segments:
                kv = self.footers.get(segment) or {}
                rank = int(kv["commtrace.rank"])
                add_group_summaries(totals, kv, lambda pg, rank=rank: (rank, pg))
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
            return False  # no summary, or one this analysis cannot read: compare the events
        for pg in {pg for _, pg in totals}:
            members = self.members.get(pg)
            if not members:
                return False
            seen = {tuple(totals[(r, pg)]) if (r, pg) in totals else None for r in members}
            if len(seen) != 1 or None in seen:
                return False
            rows, done, first, last, _ = seen.pop()
            if rows != done or rows != last - first + 1:
                return False
        return True

    def lock_down(self) -> None:
        """From now on, queries on this run read the run's own files and nothing else: no other file
        (``read_text('/etc/shadow')``), no write (``COPY ... TO``), no other database (``ATTACH``), no
        extension installed or loaded, and no setting changed back. For SQL a person types into a
        shared analysis host (``analyze-trace sql``; ``--allow-external-access`` lifts it)."""
        folders = [os.path.abspath(self.path) + os.sep]
        spill = self._spill_dirs.get(id(self.con))
        if spill:
            folders.append(spill + os.sep)
        listed = ", ".join(sql_string(f) for f in folders)
        for setting in (
            f"allowed_directories = [{listed}]",
            "enable_external_access = false",
            "autoinstall_known_extensions = false",
            "autoload_known_extensions = false",
            "lock_configuration = true",
        ):
            self.con.execute(f"SET {setting}")

    def sql(self, query: str, params: list | None = None):
        """Run a query over the views; returns a polars DataFrame. The tables it names that are built
        on first use (``instances``, the materialised samples) are built first."""
        views.prepare(self, query)
        return self.guarded(lambda: self.con.sql(query, params=params).pl() if params else self.con.sql(query).pl())

    def guarded(self, action):
        """``action()``, with a file whose data turns out unreadable dropped and the action run again
        (:func:`analysis.repair.guarded`)."""
        return repair.guarded(self, action)


def read_metadata(path: str, problems: list[str]) -> tuple[dict, dict[int, dict]]:
    """run.json and every rank's metadata, typed (analysis.metadata); what cannot be read is said."""
    run_meta: dict = {}
    if os.path.lexists(os.path.join(path, "run.json")):
        raw = metadata.read_json(os.path.join(path, "run.json"), problems, "run.json")
        run_meta = metadata.typed(raw, metadata.RUN_FIELDS, "run.json", problems) if raw is not None else {}
    ranks: dict[int, dict] = {}
    for meta_path in sorted(glob.glob(os.path.join(glob.escape(path), "rank=*", "rank-*.json"))):
        name = os.path.relpath(meta_path, path)
        raw = metadata.read_json(meta_path, problems, name)
        if raw is None:
            continue
        meta = metadata.typed(raw, metadata.RANK_FIELDS, name, problems)
        if "rank" in meta:
            ranks.setdefault(meta["rank"], meta)
        else:
            problems.append(f"{name}: skipped (it names no rank)")
    return run_meta, ranks


def _connect(memory_limit: str | None, spill_dirs: dict[int, str]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection set up for one run; its spill folder is noted in ``spill_dirs``."""
    con = duckdb.connect()
    # DuckDB's own progress bar goes to stdout, into the CSV or JSON a script is reading (ours,
    # analysis.progress, writes to a terminal's stderr only). In Jupyter it starts off, and
    # any SET of it fails unless ipywidgets is installed: only switched off where it is on.
    if con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0]:
        con.execute("SET enable_progress_bar = false")
    # Row order is never relied on (every query orders what it returns): lets DuckDB parallelise
    # and spill more freely.
    con.execute("SET preserve_insertion_order = false")
    # Footers are read once, by the inspection below, not again each time a query is planned
    # (a sixth of a second per query over a run of a thousand segments).
    con.execute("SET parquet_metadata_cache = true")
    # Spills go to a folder of our own (DuckDB's default is ./.tmp: wherever the user stands,
    # perhaps inside the trace), removed with the connection.
    spill = tempfile.mkdtemp(prefix="commtrace-spill-")
    weakref.finalize(con, shutil.rmtree, spill, ignore_errors=True)
    spill_dirs[id(con)] = spill
    con.execute(f"SET temp_directory = {sql_string(spill)}")
    limit = memory_limit or os.environ.get("COMMTRACE_ANALYSIS_MEMORY")
    if limit:
        try:
            con.execute(f"SET memory_limit = {sql_string(limit)}")
        except duckdb.Error:
            con.close()
            raise TraceError(f"memory limit {limit!r}: not a size DuckDB understands (e.g. 2GB, 512MB)") from None
    return con


def _collective_segments(path: str, con, problems: list[str]) -> tuple[list[str], dict[str, dict], set]:
    """The run's readable collective segments, their footers and their distinct column layouts; the
    others are said in ``problems``."""
    segments = []
    found = regular_files(path, "rank=*/collectives-*.parquet", problems)
    checked = inspect_segments(found, REQUIRED_COLUMNS, con, OPTIONAL_COLUMNS)
    layouts = set()
    footers = {}
    for seg, (reason, names, kv) in zip(found, checked, strict=True):
        if reason is None:
            segments.append(seg)
            layouts.add(names)
            footers[seg] = kv
        else:
            problems.append(f"{os.path.relpath(seg, path)}: skipped ({reason})")
    return segments, footers, layouts
