"""``analyze-trace watch``: what a running job is doing now, refreshed as its segments land.

A :class:`Watcher` follows one run directory (or a ``COMMTRACE_DIR``: the newest run in it, and the
next one when it starts). Its first look reads the run so far once, as ``diagnose`` would; every
later refresh reads only the files that landed since (analysis.tail) and the ranks' live files
(analysis.live), so that its cost follows the job's rate, not its length. It keeps:

* run-so-far aggregates, fed once per collective instance when every member has completed it: per
  (group, op, size bucket) the count, bytes and a histogram of bus bandwidth (1 % bins: the median
  to within 1 %), per rank its arrivals, summed lateness and times last;
* a window of the latest rows (``window_s`` seconds of each kind), over which the straggler and
  lossy-link verdicts are given by :func:`analysis.diagnose.window_verdict`, as ``diagnose`` judges a
  whole run, and the hosts' figures computed;
* the instances of the window already counted (so none is counted twice as the window moves).

Each refresh returns a frame (a dict: analysis.watchframe), rendered by analysis.watchview.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis import diagnose, views
from analysis.live import Ranks, host_samples
from analysis.load import Run, TraceError, read_metadata
from analysis.segments import sql_files
from analysis.tail import COLLECTIVE_COLUMNS, ROW_KEY_SQL, SAMPLE_ARROW, SMALL_ROWS, Tail, footer_rows, projection
from analysis.watchframe import Totals, frame, instances_sql


@dataclass
class Options:
    interval_s: float = 2.0
    window_s: float = 10.0  # the latest rows the verdicts and host figures are over
    # ... and at most this many operations a rank (a busy job: a shorter window, still hundreds of steps)
    window_ops_per_rank: int = 1_000
    hang_after_s: float = 30.0  # an operation in flight this long on some rank: a hang is suspected
    stale_s: float | None = None  # a rank whose live file has not changed this long stopped writing
    thresholds: diagnose.Thresholds = field(default_factory=diagnose.Thresholds)


class Watcher:
    """One run directory followed refresh after refresh (:meth:`refresh` returns a frame)."""

    def __init__(self, path: str, options: Options | None = None) -> None:
        self.path = path
        self.options = options or Options()
        self.tail = Tail(path)
        self.con = duckdb.connect()  # reads the new files (footers and rows), refresh after refresh
        self.live = Ranks(path)
        self.totals = Totals()
        self.rows: pa.Table | None = None  # the window's collective rows
        self.samples: pa.Table | None = None  # the window's host samples
        self.counted = np.empty(0, dtype=np.uint64)  # keys of the window's instances already counted
        self.refreshes = 0
        self.looked = False  # the run so far has been read (the first look)
        self.unchanged = False  # nothing landed since the last refresh (a blocked or idle job)
        self.window_parts: dict = {}  # the window's figures at the last refresh, kept while unchanged
        self.labels: dict[str, str] = {}  # pg -> the group in words, from the last window
        self.host_seen: dict[str, int] = {}  # host -> the newest live counters taken
        self.live_problems: list[str] = []
        self.progress_seen: dict[str, tuple[int, float]] = {}  # pg -> (last seq completed, when seen)
        self.run_meta: dict = {}
        self.ranks: dict[int, dict] = {}
        self.problems: list[str] = []
        self._meta_signature: list | None = None

    # -- reading -----------------------------------------------------------------------------------
    def _metadata(self) -> None:
        """run.json and the ranks' metadata, read again only when one of the files changed."""
        files = [os.path.join(self.path, "run.json")]
        files += glob.glob(os.path.join(glob.escape(self.path), "rank=*", "rank-*.json"))
        signature = []
        for path in sorted(files):
            try:
                st = os.stat(path)
                signature.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                continue
        if signature == self._meta_signature:
            return
        problems: list[str] = []
        self.run_meta, self.ranks = read_metadata(self.path, problems)
        self.problems, self._meta_signature = problems, signature

    @property
    def world(self) -> int | None:
        sizes = [m.get("world_size") for m in self.ranks.values() if m.get("world_size")]
        return max(sizes) if sizes else self.run_meta.get("world_size")

    def _first_look(self, con) -> None:
        """The run so far, read once as ``diagnose`` reads it: the aggregates, then the window."""
        run = Run.open(self.path)
        try:
            views.prepare(run, "instances")
            run.con.execute(f"CREATE TEMP TABLE fresh AS {instances_sql(False)}")
            self.totals.add(run.con)
            end = run.con.execute("SELECT max(t_end_ns) FROM raw_collectives").fetchone()[0] or 0
            horizon = int(end - self.options.window_s * 1e9)
            present = {row[0] for row in run.con.execute("DESCRIBE raw_collectives").fetchall()}
            self.rows = run.con.sql(f"""
                SELECT {projection(COLLECTIVE_COLUMNS, present)}, {ROW_KEY_SQL} AS row_key
                FROM raw_collectives WHERE coalesce(t_end_ns, t_start_ns) >= {horizon}
            """).to_arrow_table()
            small = [s for s in run.segments if (footer_rows(run.footer(s)) or 0) < SMALL_ROWS]
            keys = {}
            if small:
                found = run.con.sql(f"""
                    SELECT filename, list({ROW_KEY_SQL}) AS keys FROM read_parquet([{sql_files(small)}],
                        filename = true, union_by_name = true, hive_partitioning = false) GROUP BY filename
                """).fetchall()
                keys = {name: np.array(k, dtype=np.uint64) for name, k in found}
            self.tail.mark(set(run.segments) | run.superseded, keys)
            self.tail.mark(_skipped(run))
            self.tail.problems = list(run.problems)
        finally:
            run.con.close()
        self.samples = self._samples(self.tail.samples(con))

    def _read_new(self, con) -> bool:
        """Take what landed since the last refresh; whether anything did."""
        new = self.tail.collectives(con, self.world)
        samples = self._samples(self.tail.samples(con))
        if samples is not None:
            self.samples = samples if self.samples is None else pa.concat_tables([self.samples, samples])
        if new is not None and new.num_rows:
            self.rows = new if self.rows is None else pa.concat_tables([self.rows, new])
        return bool((new is not None and new.num_rows) or samples is not None)

    def _samples(self, landed: pa.Table | None) -> pa.Table | None:
        """The host samples that landed, and each host's latest counters from its live file where
        they are newer than every sample of that host (the sampler writes samples every
        COMMTRACE_SAMPLE_FLUSH_S, its live file every COMMTRACE_SAMPLE_LIVE_S)."""
        parts = [] if landed is None else [landed]
        newest: dict[str, int] = dict(self.host_seen)
        for table in (self.samples, landed):
            if table is not None and table.num_rows:
                for row in table.group_by("host").aggregate([("t_ns", "max")]).to_pylist():
                    newest[row["host"]] = max(newest.get(row["host"], 0), row["t_ns_max"] or 0)
        problems: list[str] = []
        rows = []
        for host, latest in host_samples(self.path, problems).items():
            rows += [(t, host, *rest) for t, *rest in latest if t > newest.get(host, 0)]
            self.host_seen[host] = max([self.host_seen.get(host, 0)] + [r[0] for r in latest])
        self.live_problems += [p for p in problems if p not in self.live_problems]
        if rows:
            names = ("t_ns", "host", "source", "device", "port", "counter", "value")
            columns = dict(zip(names, zip(*rows, strict=True), strict=True))
            columns["text"] = [None] * len(rows)
            arrays = {f.name: pa.array(columns[f.name], f.type) for f in SAMPLE_ARROW}
            parts.append(pa.table(arrays, schema=SAMPLE_ARROW))
        return pa.concat_tables(parts) if parts else None

    def _trim(self) -> None:
        """Keep the window: rows ending (or, in flight, starting) within window_s of the newest end,
        at most window_ops_per_rank a rank (the newest); samples within twice window_s of the newest."""
        window_ns = int(self.options.window_s * 1e9)
        if self.rows is not None and self.rows.num_rows:
            at = pc.coalesce(self.rows["t_end_ns"], self.rows["t_start_ns"]).to_numpy(zero_copy_only=False)
            floor = int(at.max()) - window_ns
            cap = self.options.window_ops_per_rank * max(1, len(pc.unique(self.rows["rank"])))
            if int((at >= floor).sum()) > cap:  # a busy job: its newest rows only (the verdicts need steps)
                floor = max(floor, int(np.partition(at, len(at) - cap)[-cap]))
            if at.min() < floor:
                self.rows = self.rows.filter(pa.array(at >= floor))
        if self.samples is not None and self.samples.num_rows:
            newest = pc.max(self.samples["t_ns"]).as_py()
            # Counters keep only samples around changes: a few more seconds keep the first delta.
            keep = pc.greater_equal(self.samples["t_ns"], newest - 2 * window_ns)
            self.samples = self.samples.filter(keep)

    # -- one frame ---------------------------------------------------------------------------------
    def refresh(self) -> dict:
        if not os.path.isdir(self.path):
            raise TraceError(f"{self.path}: no such directory")
        self._metadata()
        self.live.read()
        first = not self.looked
        # A run whose ranks have not written a segment yet is shown from its live files until they do.
        if first and glob.glob(os.path.join(glob.escape(self.path), "rank=*", "collectives-*.parquet")):
            self._first_look(self.con)
            self.looked = True
        elif not first:
            self.unchanged = not self._read_new(self.con)
        self._trim()
        self.refreshes += 1
        return self._frame(first)

    def _frame(self, first: bool) -> dict:
        return frame(self, first)

    def close(self) -> None:
        self.con.close()


def _skipped(run: Run) -> set[str]:
    """The collective segments ``Run.open`` skipped (named in its problems): never read them again."""
    out = set()
    for line in run.problems:
        name = line.split(": ", 1)[0]
        if name.endswith(".parquet") and "/collectives-" in "/" + name:
            out.add(os.path.join(run.path, name))
    return out


def newest_run(root: str) -> str | None:
    """The run directory under ``root`` (a COMMTRACE_DIR) created last: by its run.json's
    ``created_ns``, else by the folder's change time."""
    best, best_at = None, -1
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or not is_run(entry.path):
            continue
        meta, _ = read_metadata(entry.path, []) if os.path.exists(os.path.join(entry.path, "run.json")) else ({}, {})
        at = meta.get("created_ns") or entry.stat(follow_symlinks=False).st_ctime_ns
        if at > best_at:
            best, best_at = entry.path, at
    return best


def _names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def is_run(path: str) -> bool:
    return any(n.startswith("rank=") or n == "run.json" for n in _names(path))


@dataclass
class Ending:
    """How a watch ended: the last frame, and the whole run's diagnose report when the job ended."""

    frame: dict
    report: dict | None = None


def follow(path: str, options: Options, emit, once: bool = False, wait_s: float | None = None) -> Ending:
    """Refresh every ``options.interval_s`` and ``emit(frame, note, report)`` each frame (``note``: a
    line to say first, or None), until the job ends (then its whole run is diagnosed: ``report``, in
    the last frame) or, with ``once``, after one frame.
    ``path``: a run, or a directory of runs (the newest is followed, and the next when one starts).
    ``wait_s``: give up after this long without a run to follow (None: wait for one)."""
    if not os.path.isdir(path):
        raise TraceError(f"{path}: no such directory" if not os.path.exists(path) else f"{path}: not a directory")
    root = None if is_run(path) else path
    began = time.monotonic()
    current = path if root is None else newest_run(root)
    while current is None:
        if once or (wait_s is not None and time.monotonic() - began > wait_s):
            raise TraceError(f"{path}: no run to watch (neither a run directory nor a directory of runs)")
        time.sleep(options.interval_s)
        current = newest_run(root)
    watcher, note = Watcher(current, options), None
    try:
        while True:
            started = time.monotonic()
            frame = watcher.refresh()
            if frame["state"] == "ended":
                run = Run.open(current)
                try:
                    report = diagnose.diagnose(run, options.thresholds)
                finally:
                    run.con.close()
                emit(frame, note, report)
                return Ending(frame, report)
            emit(frame, note, None)
            if once:
                return Ending(frame)
            note = None
            time.sleep(max(0.0, options.interval_s - (time.monotonic() - started)))
            if root is not None:
                newest = newest_run(root)
                if newest is not None and newest != current:
                    note = f"a new run started: {newest} (was {current})"
                    watcher.close()
                    current, watcher = newest, Watcher(newest, options)
    finally:
        watcher.close()

def frame_flagged(frame: dict) -> bool:
    """Whether a frame shows a fault of the job (diagnose.flagged's meaning, for what a frame holds)."""
    return bool(frame["stragglers"] or frame["packet_loss"] or frame["hang"])


def frame_recording_flagged(frame: dict) -> bool:
    rec = frame["recording"]
    return bool(rec["dropped_events"] or rec["stopped_writing"] or rec["problems"])
