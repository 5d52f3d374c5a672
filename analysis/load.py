"""A run directory as DuckDB views, with every rank's clock moved onto rank 0's.

Nothing in a trace is executed or unpickled: Parquet is read by DuckDB and metadata by ``json``.
A segment whose footer cannot be read (a file cut short by a crash, a foreign file) is skipped and
listed in :attr:`Run.problems`; the rest of the run is still analysed.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import duckdb
import pyarrow.parquet as pq

from analysis import metadata, text

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
SAMPLE_COLUMNS = {"t_ns": _I64, "host": _S, "source": _S, "device": _S, "counter": _S, "value": _I64}
PROBE_COLUMNS = {"phase": _S, "src_host": _S, "dst_host": _S, "bandwidth_gbps": _F64, "latency_us": _F64}
# The samples view of a run without (readable) host samples.
_NO_SAMPLES = (
    "SELECT NULL::BIGINT AS t_ns, NULL::VARCHAR AS host, NULL::VARCHAR AS source, NULL::VARCHAR AS device, "
    "NULL::INTEGER AS port, NULL::VARCHAR AS counter, NULL::BIGINT AS value, NULL::VARCHAR AS text WHERE false"
)
P2P_OPS_SQL = "('send', 'recv', 'recv_anysource')"
# No name the recorder writes (group, op, host, device, counter...) is longer than this. Every row of
# a column can point at one long dictionary value, which the queries' joins and windows then copy per
# row (a 1 MB host name in a 116 kB run cost 7.5 GB and 30 s). The names the queries group and join
# collectives by (KEY_NAMES) are checked as the rows are (Run._check_rows): a row with a longer one
# is left out and said; cutting them as they are read would undo DuckDB's dictionary vectors in every
# query (a third slower). Every other name, and the host samples' (few rows), is cut to MAX_NAME as it
# is read, as the metadata's are (analysis.metadata.MAX_TEXT): 0.04 s and 86 MB for that run.
MAX_NAME = 1024
KEY_NAMES = ("pg", "op", "status")
# A row the recorder wrote names its rank, group, op, seq and start; one that does not (a file from
# elsewhere) cannot be placed and is left out of every view.
WHOLE_ROW_SQL = "rank IS NOT NULL AND pg IS NOT NULL AND op IS NOT NULL AND seq IS NOT NULL AND t_start_ns IS NOT NULL"
# What members of one collective must agree on besides op and dtype: the size each member sends
# (scatter: what each receives); all_to_all splits may legally differ.
SIGNATURE_SIZE_SQL = (
    "CASE WHEN op = 'scatter' THEN bytes_out WHEN op IN ('all_to_all', 'all_to_all_single') THEN NULL ELSE bytes_in END"
)


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


class TraceError(Exception):
    """A trace that cannot be analysed; the message is one line meant for the user."""


@dataclass
class Run:
    path: str
    con: duckdb.DuckDBPyConnection
    run_meta: dict
    ranks: dict[int, dict]
    segments: list[str]
    problems: list[str] = field(default_factory=list)
    _instances_ready: bool = False
    _settled: bool | None = None
    _deltas_ready: bool = False
    _sample_files: list[str] = field(default_factory=list)  # samples is a view over these (else an empty table)
    _samples_one_layout: bool = True
    _snapshots: list[str] = field(default_factory=list)  # inflight-*.parquet: what was in flight at a dump
    # SQL for the ns to add to a row's own-clock timestamp to put it on rank 0's clock (for queries
    # over raw_collectives that need only some timestamps moved).
    shift_sql: str = "0"
    _one_layout: bool = False  # every segment has the same columns, in the same order
    _footers: dict[str, dict] = field(default_factory=dict)  # segment -> its commtrace.* key-value metadata
    _members: dict[str, set[int]] = field(default_factory=dict)  # pg -> member ranks, from the ranks' metadata
    _labels: dict[str, str] | None = None  # pg -> the group in words (group_labels)
    # Ranks whose folder could not be listed (permissions): nothing can be said of them, so they are
    # not judged (not missing from a collective, not dead).
    unreadable_ranks: set[int] = field(default_factory=set)
    _row_filter: str = WHOLE_ROW_SQL  # which rows of the segments the views hold
    superseded: set[str] = field(default_factory=set)  # segments whose rows a merged segment holds
    _text_columns: dict[str, list[str]] = field(default_factory=dict)  # view -> its string columns
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
        unreadable_ranks = _unreadable_folders(path, rank_dirs, problems)
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
        cls._spill_dirs[id(con)] = spill
        con.execute(f"SET temp_directory = {_sql_string(spill)}")
        limit = memory_limit or os.environ.get("COMMTRACE_ANALYSIS_MEMORY")
        if limit:
            try:
                con.execute(f"SET memory_limit = {_sql_string(limit)}")
            except duckdb.Error:
                con.close()
                raise TraceError(f"memory limit {limit!r}: not a size DuckDB understands (e.g. 2GB, 512MB)") from None
        segments = []
        found = _regular_files(path, "rank=*/collectives-*.parquet", problems)
        checked = _inspect_segments(found, REQUIRED_COLUMNS, con)
        layouts = set()
        footers = {}
        for seg, (reason, names, kv) in zip(found, checked, strict=True):
            if reason is None:
                segments.append(seg)
                layouts.add(names)
                footers[seg] = kv
            else:
                problems.append(f"{os.path.relpath(seg, path)}: skipped ({reason})")
        superseded = _superseded(segments, footers)
        if superseded:
            segments = [seg for seg in segments if seg not in superseded]
            for seg in superseded:
                footers.pop(seg, None)
        if not segments:
            con.close()
            raise TraceError(f"{path}: no readable collective segments" + (f" ({problems[0]})" if problems else ""))
        run = cls(path, con, run_meta, ranks, segments, problems)
        run.unreadable_ranks = unreadable_ranks
        run._footers = footers
        run.superseded = superseded
        run._one_layout = len(layouts) == 1
        run._text_columns["raw_segments"] = [c for c in _text_columns(layouts) if c not in KEY_NAMES]
        run._create_views()
        return run

    def _create_views(self) -> None:
        offsets = [
            (r, int(((m.get("clock") or {}).get("start") or {}).get("offset_ns") or 0)) for r, m in self.ranks.items()
        ]
        self.con.execute("CREATE TABLE clock_offsets (rank INTEGER, offset_ns BIGINT)")
        if offsets:
            self.con.executemany("INSERT INTO clock_offsets VALUES (?, ?)", offsets)
        # Group membership as each rank wrote it: who should take part in a group's collectives.
        self.con.execute("CREATE TABLE group_members (pg VARCHAR, rank INTEGER)")
        members = set()
        for meta in self.ranks.values():
            for group in meta.get("process_groups") or []:
                if isinstance(group, dict) and isinstance(group.get("ranks"), list):
                    members.update(
                        (str(group.get("pg")), int(r))
                        for r in group["ranks"]
                        if isinstance(r, int) and r not in self.unreadable_ranks
                    )
        if members:
            self.con.executemany("INSERT INTO group_members VALUES (?, ?)", sorted(members))
        for pg, rank in members:
            self._members.setdefault(pg, set()).add(rank)
        self._parquet_view("raw_segments", self.segments, self._one_layout)
        self._guarded(self._check_rows)
        self._create_collectives_view()
        self._create_sample_views()
        self._create_probe_view()
        # One timeline: a rank's timestamps plus its measured offset to rank 0's clock. The offsets
        # are a constant list indexed by rank (a join per event costs a fifth of a scan).
        # (Metadata names ranks as JSON integers; anything else it might hold is not an offset.)
        # Ranks spread thinly (a rank 999999 in a small run) get a map of the offsets there are instead
        # of a list as long as the largest rank.
        by_rank = {r: o for r, o in offsets if o}
        if by_rank and max(by_rank) < 4 * len(by_rank) + 1024:
            listed = ", ".join(str(by_rank.get(r, 0)) for r in range(max(by_rank) + 1))
            self.shift_sql = f"coalesce(list_extract([{listed}]::BIGINT[], rank + 1), 0)"
        elif by_rank:
            entries = ", ".join(f"{r}: {o}::BIGINT" for r, o in sorted(by_rank.items()))
            self.shift_sql = f"coalesce(MAP {{{entries}}}[rank], 0)"
        self.con.execute(f"""
            CREATE VIEW collectives AS
            SELECT * REPLACE (t_start_ns + {self.shift_sql} AS t_start_ns, t_end_ns + {self.shift_sql} AS t_end_ns),
                   (t_end_ns - t_start_ns) / 1e6 AS duration_ms
            FROM raw_collectives
        """)

    def _usable(self, pattern: str, required: dict[str, str]) -> tuple[list[str], set[tuple]]:
        """The files under the run matching ``pattern`` that can be read (the rest listed in
        ``problems``), and their distinct column layouts."""
        found = _regular_files(self.path, pattern, self.problems)
        files, layouts = [], set()
        for path, (reason, layout, _) in zip(found, _inspect_segments(found, required, self.con), strict=True):
            if reason is None:
                files.append(path)
                layouts.add(layout)
            else:
                self.problems.append(f"{os.path.relpath(path, self.path)}: skipped ({reason})")
        return files, layouts

    def _check_rows(self) -> None:
        """Each segment's rows against its footer and the run, in one pass over a few narrow columns
        (rank, op, and the lengths of the names in KEY_NAMES).

        Rows naming a rank outside the run (below 0, or at or past the world size its metadata
        gives) are left out of every view and said. A segment whose rows contradict its footer's
        summary (another rank than its footer's, another count of collectives: rows added, removed
        or relabelled, or the file replaced) is said, and its footer no longer vouches for its
        groups (``settled``): the events are compared one by one. (An edit that keeps a segment's
        rank and count, a seq changed in place, passes this check: the footers' checksums would see
        it, but checking them means reading every event's op, size and dtype, which ``settled`` is
        there to avoid.)"""
        world = self.world_size
        outside = f"rank < 0 OR rank >= {int(world)}" if world else "false"
        long = " OR ".join(f"coalesce(strlen({c}), 0) > {MAX_NAME}" for c in KEY_NAMES)
        rows = self.con.execute(f"""
            SELECT filename, count(*) FILTER (WHERE op NOT IN {P2P_OPS_SQL}) AS collectives,
                   min(rank) AS lo_rank, max(rank) AS hi_rank,
                   count(*) FILTER (WHERE {outside}) AS outside, min(rank) FILTER (WHERE {outside}) AS example,
                   count(*) FILTER (WHERE {long}) AS long
            FROM read_parquet([{sql_files(self.segments)}], filename = true, hive_partitioning = false,
                              union_by_name = {"false" if self._one_layout else "true"})
            GROUP BY filename
        """).fetchall()
        left_out = long_rows = 0
        for name, collectives, lo_rank, hi_rank, n_outside, example, n_long in rows:
            relative = os.path.relpath(name, self.path)
            if n_long:
                long_rows += n_long
                self.problems.append(
                    f"{relative}: {n_long} rows carry a group, op or status longer than {MAX_NAME} characters; left out"
                )
            if n_outside:
                left_out += n_outside
                self.problems.append(
                    f"{relative}: {n_outside} rows name rank {example}, outside the run's {world} ranks; left out"
                )
            kv = self._footers.get(name)
            if kv is None:
                continue
            why = _contradiction(kv, collectives, lo_rank, hi_rank)
            if why:
                self.problems.append(f"{relative}: its rows contradict its footer ({why}); the rows are used")
                self._footers.pop(name)
        if left_out:
            self._row_filter += f" AND NOT ({outside})"
        if long_rows:
            self._row_filter += f" AND NOT ({long})"

    def _create_collectives_view(self) -> None:
        """``raw_collectives``: every segment's rows, and from the in-flight snapshots (a hang dump,
        SIGUSR1, SIGTERM) each operation no segment holds: one still in flight when the rank died
        or was killed. An operation that completed after a snapshot is in a segment, completed."""
        snapshots, layouts = self._usable("rank=*/inflight-*.parquet", REQUIRED_COLUMNS)
        self._text_columns["raw_snapshots"] = [c for c in _text_columns(layouts) if c not in KEY_NAMES]
        self._snapshots = snapshots
        if not snapshots:
            self.con.execute(
                f"CREATE OR REPLACE VIEW raw_collectives AS SELECT * FROM raw_segments WHERE {self._row_filter}"
            )
            return
        self._parquet_view("raw_snapshots", snapshots, False)
        self.con.execute(f"""
            CREATE OR REPLACE VIEW raw_collectives AS
            SELECT * FROM raw_segments WHERE {self._row_filter}
            UNION ALL BY NAME
            SELECT * FROM (
                SELECT DISTINCT ON (rank, pg, op, seq, peer) * FROM raw_snapshots WHERE {self._row_filter}
                ORDER BY rank, pg, op, seq, peer, t_start_ns
            ) s
            WHERE NOT EXISTS (
                SELECT 1 FROM raw_segments g
                WHERE g.rank = s.rank AND g.pg = s.pg AND g.op = s.op AND g.seq = s.seq
                  AND g.peer IS NOT DISTINCT FROM s.peer
            )
        """)

    def _create_sample_views(self) -> None:
        """``samples``: the hosts' raw counters; ``counter_deltas``: per interval, wraps and resets handled.

        A decrease of a counter whose previous value fits in 32 bits is a wrap (delta mod 2^32), any
        other decrease a reset (the delta is the new value). ``port_xmit_data``/``port_rcv_data``
        count 4-byte words; ``bytes`` holds the delta in bytes where the counter counts bytes.
        """
        files, layouts = self._usable("host=*/nic-*.parquet", SAMPLE_COLUMNS)
        if files:
            self._sample_files = files
            self._samples_one_layout = len(layouts) == 1
            self._text_columns["samples"] = _text_columns(layouts)
            self._parquet_view("samples", files, self._samples_one_layout)
        else:
            self.con.execute(f"CREATE VIEW samples AS {_NO_SAMPLES}")
        self.con.execute("""
            CREATE VIEW counter_deltas AS
            WITH ordered AS (
                SELECT host, source, device, port, counter, t_ns, value,
                       lag(value) OVER w AS prev_value, lag(t_ns) OVER w AS prev_t_ns
                FROM samples WHERE value IS NOT NULL
                WINDOW w AS (PARTITION BY host, source, device, port, counter ORDER BY t_ns)
            ),
            deltas AS (
                SELECT *, CASE
                    WHEN value >= prev_value THEN value - prev_value
                    WHEN prev_value < 4294967296 THEN value + 4294967296 - prev_value  -- 32-bit wrap
                    ELSE value                                                            -- reset
                END AS delta
                FROM ordered WHERE prev_value IS NOT NULL
            )
            SELECT host, source, device, port, counter, prev_t_ns AS t0_ns, t_ns AS t1_ns, delta,
                   CASE WHEN counter IN ('port_xmit_data', 'port_rcv_data') THEN delta * 4
                        WHEN counter IN ('rx_bytes', 'tx_bytes', 'bytes_sent', 'bytes_received',
                                         'bytes_retrans', 'bytes_acked', 'pcie_tx_bytes', 'pcie_rx_bytes')
                             THEN delta
                        WHEN counter IN ('nvlink_tx_kib', 'nvlink_rx_kib') THEN delta * 1024
                   END AS bytes
            FROM deltas
        """)

    def _create_probe_view(self) -> None:
        """``probe``: the link probe's rows (COMMTRACE_PROBE), one per (phase, round, probing rank)."""
        files, _ = self._usable("rank=*/probe-*.parquet", PROBE_COLUMNS)
        if files:
            listed = sql_files(files)
            self.con.execute(
                f"CREATE VIEW probe AS SELECT * FROM read_parquet([{listed}], union_by_name = true, "
                "hive_partitioning = false)"
            )
        else:
            self.con.execute(
                "CREATE TABLE probe (phase VARCHAR, round INTEGER, src_rank INTEGER, src_host VARCHAR, "
                "dst_rank INTEGER, dst_host VARCHAR, bytes BIGINT, repetitions INTEGER, transfer_s DOUBLE, "
                "bandwidth_gbps DOUBLE, latency_us DOUBLE, t_ns BIGINT)"
            )

    @property
    def run_id(self) -> str:
        return str(self.run_meta.get("run_id") or os.path.basename(os.path.normpath(self.path)))

    @property
    def world_size(self) -> int | None:
        sizes = [m.get("world_size") for m in self.ranks.values() if m.get("world_size")]
        return max(sizes) if sizes else self.run_meta.get("world_size")

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
            self._labels = {pg: text.group_label(descs.get(pg), members) for pg, members in self._members.items()}
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
        return dict(self._footers.get(segment) or {})

    def ensure_instances(self) -> None:
        """Create the ``instances`` table (once): one row per collective instance (pg, seq), p2p left out.

        Columns: key (hash(pg, seq): a one-column join key back to the events), op, pg_size, ranks
        (members that recorded it), done_ranks (completed it, ok), complete (every recorded one has an
        end), ok (every status ok), disagree (members' op, size or dtype differ), bytes_in/bytes_out
        (max), first_start_ns, last_start_ns, last_end_ns, last_rank (the last arriver). The findings
        share it: one pass over the collectives instead of one per finding, and a table ~pg_size
        times smaller than the events it summarises.
        """
        if self._instances_ready:
            return
        self._guarded(lambda: self._create_instances())
        self._instances_ready = True

    def _create_instances(self) -> None:
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE instances AS
            SELECT pg, seq, hash(pg, seq) AS key, any_value(op) AS op, any_value(pg_size) AS pg_size, count(*) AS ranks,
                   count(*) FILTER (WHERE ok_end) AS done_ranks,
                   count(t_end_ns) = count(*) AS complete, count(*) FILTER (WHERE status = 'ok') = count(*) AS ok,
                   min(signature) <> max(signature) AS disagree,
                   max(bytes_in) AS bytes_in, max(bytes_out) AS bytes_out,
                   min(t_start_ns) AS first_start_ns, max(t_start_ns) AS last_start_ns,
                   max(t_end_ns) AS last_end_ns, arg_max(rank, t_start_ns) AS last_rank
            FROM (
                SELECT pg, seq, op, pg_size, rank, status, bytes_in, bytes_out, t_start_ns, t_end_ns,
                       t_end_ns IS NOT NULL AND status = 'ok' AS ok_end,
                       hash(op, {SIGNATURE_SIZE_SQL}, dtype) AS signature
                FROM collectives WHERE op NOT IN {P2P_OPS_SQL}
            )
            GROUP BY pg, seq
        """)

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
        if self._snapshots:  # operations were in flight at a snapshot: compare the events
            return False
        totals: dict[tuple[int, str], list[int]] = {}
        try:
            for segment in self.segments:
                kv = self._footers.get(segment) or {}
                rank = int(kv["commtrace.rank"])
                add_group_summaries(totals, kv, lambda pg, rank=rank: (rank, pg))
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
            return False  # no summary, or one this analysis cannot read: compare the events
        for pg in {pg for _, pg in totals}:
            members = self._members.get(pg)
            if not members:
                return False
            seen = {tuple(totals[(r, pg)]) if (r, pg) in totals else None for r in members}
            if len(seen) != 1 or None in seen:
                return False
            rows, done, first, last, _ = seen.pop()
            if rows != done or rows != last - first + 1:
                return False
        return True

    def ensure_deltas(self) -> None:
        """Read the host samples once: ``samples`` and ``counter_deltas`` become views over temporary
        tables of their rows.

        Several findings (network, TCP loss, lossy hosts, bad intervals, the busiest interface) read
        them; each would otherwise open every sample segment and sort every counter's samples again.
        The sampler keeps a counter's samples only around its changes, so these tables are small
        next to the events (and DuckDB spills them if not).
        """
        if self._deltas_ready:
            return
        if self._sample_files:
            self._guarded(
                lambda: self.con.execute("CREATE OR REPLACE TEMP TABLE samples_rows AS SELECT * FROM samples")
            )
            self.con.execute("CREATE OR REPLACE VIEW samples AS SELECT * FROM samples_rows")
        self.con.execute("CREATE TEMP TABLE counter_deltas_rows AS SELECT * FROM counter_deltas")
        self.con.execute("CREATE OR REPLACE VIEW counter_deltas AS SELECT * FROM counter_deltas_rows")
        self._deltas_ready = True

    def lock_down(self) -> None:
        """From now on, queries on this run read the run's own files and nothing else: no other file
        (``read_text('/etc/shadow')``), no write (``COPY ... TO``), no other database (``ATTACH``), no
        extension installed or loaded, and no setting changed back. For SQL a person types into a
        shared analysis host (``analyze-trace sql``; ``--allow-external-access`` lifts it)."""
        folders = [os.path.abspath(self.path) + os.sep]
        spill = self._spill_dirs.get(id(self.con))
        if spill:
            folders.append(spill + os.sep)
        listed = ", ".join(_sql_string(f) for f in folders)
        for setting in (
            f"allowed_directories = [{listed}]",
            "enable_external_access = false",
            "autoinstall_known_extensions = false",
            "autoload_known_extensions = false",
            "lock_configuration = true",
        ):
            self.con.execute(f"SET {setting}")

    def sql(self, query: str, params: list | None = None):
        """Run a query over the views; returns a polars DataFrame."""
        return self._guarded(lambda: self.con.sql(query, params=params).pl() if params else self.con.sql(query).pl())

    def _parquet_view(self, name: str, files: list[str], one_layout: bool) -> None:
        """(Re)point view ``name`` at ``files``.

        hive_partitioning off: the rank=NNNNN folders must not replace the files' own (integer)
        rank. union_by_name (files written by different recorder versions) makes DuckDB read every
        footer again each time a query is planned: only when the files' columns differ.
        """
        listed = sql_files(files)
        cut = ", ".join(f"left({_sql_name(c)}, {MAX_NAME}) AS {_sql_name(c)}" for c in self._text_columns.get(name, []))
        columns = f"* REPLACE ({cut})" if cut else "*"
        self.con.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT {columns} FROM read_parquet([{listed}], "
            f"union_by_name = {'false' if one_layout else 'true'}, hive_partitioning = false)"
        )

    def _guarded(self, action):
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
                if named and self._drop([(named.group(1), why)]):
                    continue  # the file DuckDB named is gone from the views: again, without it
                if self._drop_unreadable():
                    continue
                culprit = self._bisect(action)
                if culprit is None or not self._drop([(culprit, why)]):
                    raise

    def _bisect(self, action) -> str | None:
        """The collective segment that makes ``action`` fail, found by halving the segments the views
        read (an error that names no file and a file that reads whole on its own: a page only some
        queries decode); None if no single segment is to blame."""
        segments = list(self.segments)

        def fails(subset: list[str]) -> bool:
            self._parquet_view("raw_segments", subset, self._one_layout)
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
            self._parquet_view("raw_segments", self.segments, self._one_layout)

    def _drop(self, bad: list[tuple[str, str]]) -> bool:
        """Take these (path, why) segments out of the views and list them in ``problems``; True if any
        was still in a view."""
        bad_segments = [(p, why) for p, why in bad if p in self.segments]
        bad_samples = [(p, why) for p, why in bad if p in self._sample_files and not self._deltas_ready]
        for path, why in bad_segments + bad_samples:
            self.problems.append(f"{os.path.relpath(path, self.path)}: skipped (unreadable data: {why})")
        if bad_segments:
            gone = {p for p, _ in bad_segments}
            self.segments = [p for p in self.segments if p not in gone]
            if not self.segments:
                raise TraceError(f"{self.path}: no readable collective segments ({self.problems[-1]})")
            self._parquet_view("raw_segments", self.segments, self._one_layout)
        if bad_samples:
            gone = {p for p, _ in bad_samples}
            self._sample_files = [p for p in self._sample_files if p not in gone]
            if self._sample_files:
                self._parquet_view("samples", self._sample_files, self._samples_one_layout)
            else:
                self.con.execute(f"CREATE OR REPLACE VIEW samples AS {_NO_SAMPLES}")
        return bool(bad_segments or bad_samples)

    def _drop_unreadable(self) -> bool:
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
            bad = bad_ones(paths, self.con)
            if bad:
                return bad
            fresh = duckdb.connect()
            try:
                return bad_ones(paths, fresh)
            finally:
                fresh.close()

        return self._drop(unreadable(self.segments + (self._sample_files if not self._deltas_ready else [])))


UNREADABLE_BATCH = 1024


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


def _superseded(segments: list[str], footers: dict[str, dict]) -> set[str]:
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


SEGMENT_NAME = re.compile(r"collectives-(.+)-(\d{1,18})\.parquet")


def _text_columns(layouts) -> list[str]:
    """The string columns any of these layouts ((name, kind), ...) has."""
    return sorted({name for layout in layouts for name, kind in layout if kind == "BYTE_ARRAY UTF8"})


def _sql_name(column: str) -> str:
    """A column name as a quoted SQL identifier."""
    return '"' + column.replace('"', '""') + '"'


def _contradiction(kv: dict, collectives: int, lo_rank, hi_rank) -> str | None:
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


def _unreadable_folders(root: str, folders: list[str], problems: list[str]) -> set[int]:
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


def _regular_files(root: str, pattern: str, problems: list[str]) -> list[str]:
    """The files under ``root`` matching ``pattern`` that are regular files; the others (a FIFO, which
    a reader would wait on forever, a device, a folder) are listed in ``problems``."""
    files = []
    for path in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
        why = metadata.regular_file_problem(path)
        if why is None:
            files.append(path)
        else:
            problems.append(f"{os.path.relpath(path, root)}: skipped ({why})")
    return files


def sql_files(paths: list[str]) -> str:
    """Files for a SQL list given to DuckDB's readers, which expand ``*``, ``?`` and ``[`` as globs: a
    run folder named ``run[0]`` or a file named with ``*`` would otherwise read other files, or one
    file several times. ``glob.escape``'s brackets are DuckDB's escape too."""
    return ", ".join(_sql_string(glob.escape(p)) for p in paths)


def _sql_string(text: str) -> str:
    """A SQL string literal (views cannot take prepared parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _inspect_segment(path: str, required: dict[str, str] = REQUIRED_COLUMNS) -> tuple[str | None, tuple, dict]:
    """(why the segment cannot be used, or None; its column names and types; its commtrace.* metadata)."""
    try:
        meta = pq.read_metadata(path)
    except Exception as exc:
        return f"not a readable Parquet file: {exc.__class__.__name__}", (), {}
    kv = {k.decode(errors="replace"): v for k, v in (meta.metadata or {}).items() if k.startswith(b"commtrace.")}
    layout = tuple((c.name, _column_kind(c.physical_type, c.converted_type, c.logical_type.type)) for c in meta.schema)
    reason = _verdict(kv.get("commtrace.schema_version"), dict(layout), required)
    if reason is not None:
        return reason, (), {}
    return None, layout, kv


def _inspect_segments(
    paths: list[str], required: dict[str, str] = REQUIRED_COLUMNS, con: duckdb.DuckDBPyConnection | None = None
) -> list[tuple[str | None, tuple, dict]]:
    """``_inspect_segment`` for many files at once: DuckDB reads every footer in one parallel call
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
            return list(pool.map(lambda p: _inspect_segment(p, required), paths))
    finally:
        if own:
            con.close()
    out = []
    for path in paths:
        layout = tuple(columns.get(path, ()))
        kv = footers.get(path, {})
        reason = _verdict(kv.get("commtrace.schema_version"), dict(layout), required)
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


def _verdict(version: bytes | None, columns: dict[str, str], required: dict[str, str]) -> str | None:
    """Why a segment with this schema-version metadata and these columns (name: physical type)
    cannot be used, or None."""
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
    wrong = sorted(name for name, kind in required.items() if columns[name] != kind)
    if wrong:
        return f"columns of the wrong type: {', '.join(f'{n} ({columns[n]}, not {required[n]})' for n in wrong)}"
    return None
