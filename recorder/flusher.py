"""The flusher: the thread that takes the event buffer's records to disk.

One thread of ours per recording process. Every ``COMMTRACE_FLUSH_S`` (or as soon as the buffer
holds ``COMMTRACE_FLUSH_EVENTS`` issues) it pairs the buffered issue and completion records and has
the segment writer write them as one new file; operations still in flight are carried to the next
flush (and written with their end unset by the final one). Between flushes it polls the works
whose completion can only be polled (CUDA, backends without futures), and it keeps the hang
watchdog: after ``COMMTRACE_HANG_DUMP_S`` without a completion while operations are in flight, a
snapshot of them is written.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from recorder import _arrow
from recorder._log import info, warn_once
from recorder.groups import GROUPS
from recorder.live import LiveState
from recorder.periodic import PeriodicThread
from recorder.records import ERROR, NO_DONES, NO_ISSUES, OK
from recorder.schema import INFLIGHT_PREFIX, PROBE_PREFIX, PROBE_SCHEMA
from recorder.tally import Totals
from recorder.writer import build_segment, wall_minus_mono

POLL_MIN_S = 0.0005
POLL_MAX_S = 0.05


class Flusher(PeriodicThread):
    """Takes ``events`` (a records.EventBuffer) to ``writer`` once :meth:`attach` gave it one.

    ``groups`` is the run's list of process groups by name (the rank's metadata lists it): every
    group that appears in a written segment is added. ``on_failure(where, exc)`` is told when
    writing fails; the flusher then writes nothing more.
    """

    def __init__(self, events, config, groups: dict, on_failure) -> None:
        super().__init__("commtrace-writer")
        self.events = events
        self.config = config
        self.groups = groups
        self.on_failure = on_failure
        self.writer = None
        self.rank: int | None = None
        self.inflight = NO_ISSUES  # issue records still waiting for their completion
        self.completions = 0  # completion records taken so far (the watchdog's sign of progress)
        self.flush_cpu_s = 0.0  # CPU time spent in flushes, on whichever thread
        self.lock = threading.RLock()  # one flush at a time: this thread, close, a hang snapshot
        self.broken = False  # writing failed once: nothing more is written
        self._wake = threading.Event()
        self._polled: list = []  # the works this thread polls, taken from events.polled
        self._probe_rows: list[dict] = []
        self._dtype_cache: dict = {}
        self._seen = 0  # the watchdog's view: completions at its last look, and since when none came
        self._stalled_since: float | None = None
        self._dumped = False
        self.live = LiveState()  # what the rank's live file says (recorder.live)
        self.totals: Totals | None = Totals()  # what recorder.metrics() reads (None: stepped aside)
        events.wake = self._wake.set

    def attach(self, writer, rank: int) -> None:
        """The run's files exist: write into ``writer`` from now on."""
        with self.lock:
            self.writer, self.rank = writer, rank

    def add_probe_rows(self, rows: list[dict]) -> None:
        """Link-probe results, written with the next flush."""
        with self.lock:
            self._probe_rows.extend(rows)

    def stop(self, timeout_s: float) -> None:
        """End the thread (a flush in progress finishes first), then complete what can be polled."""
        self.stopping.set()
        self._wake.set()
        self.join(timeout_s)
        if self.events.polled or self._polled:
            self.poll_works()

    def discard(self) -> None:
        """After a failure: nothing more is written, nothing is held."""
        self.broken = True
        self.events.clear()
        self.inflight = NO_ISSUES

    # -- the thread --------------------------------------------------------------------------------
    def rounds(self) -> None:
        events, flush_s = self.events, self.config.flush_s
        next_flush = time.monotonic() + flush_s
        poll_s = POLL_MIN_S
        while not self.stopping.is_set():
            flush_in = max(0.0, next_flush - time.monotonic())
            polling = bool(events.polled or self._polled)
            if not polling:
                events.idle = True  # a work queued from now on wakes us (EventBuffer.poll)
                polling = bool(events.polled)  # ... and one queued just before is seen here
            self._wake.wait(min(poll_s, flush_in) if polling else flush_in)
            self._wake.clear()
            events.idle = False
            if self.stopping.is_set():
                break
            if events.polled or self._polled:
                # Poll fast while works arrive or complete, back off while they sit (an isend
                # nobody waits on costs a poll every POLL_MAX_S, not a busy thread).
                fresh = bool(events.polled)
                poll_s = POLL_MIN_S if self.poll_works() or fresh else min(poll_s * 2, POLL_MAX_S)
            if time.monotonic() >= next_flush or len(events.issues) >= events.flush_bytes:
                self.flush()
                next_flush = time.monotonic() + flush_s
                self._watchdog()

    def on_error(self, exc: Exception) -> None:
        self.on_failure("writer", exc)

    def poll_works(self) -> bool:
        """Complete the polled works that are done; True if any was."""
        inbox = self.events.polled
        while inbox:
            self._polled.append(inbox.popleft())
        still = []
        for entry in self._polled:
            rid, work, is_cuda = entry
            try:
                finished = work.is_completed()
            except Exception:
                finished = True
            if not finished:
                still.append(entry)
                continue
            gpu_ns = None
            if is_cuda:
                try:
                    gpu_ns = int(work._get_duration() * 1e6)
                except Exception:
                    pass
            try:
                status = OK if work.is_success() else ERROR
            except Exception:
                status = OK
            if gpu_ns is None:
                self.events.complete(rid, status)
            else:
                self.events.complete(rid, status, gpu_ns)
        completed = len(still) < len(self._polled)
        self._polled = still
        return completed

    # -- writing -----------------------------------------------------------------------------------
    def flush(self, final: bool = False) -> None:
        """Write every finished operation; with ``final``, what is in flight too (end unset)."""
        if self.broken:
            return
        cpu0 = time.thread_time()
        try:
            with self.lock:
                if self.writer is not None:
                    self._write(final)
                    self._write_live(final)
        except Exception as exc:
            self.on_failure("writer", exc)
        finally:
            self.flush_cpu_s += time.thread_time() - cpu0

    def _write(self, final: bool) -> None:
        if self._probe_rows:
            rows, self._probe_rows = self._probe_rows, []
            self.writer.write(_arrow.table(rows, PROBE_SCHEMA), PROBE_PREFIX)
        # Completions first: every completion taken has its issue already in the buffer.
        dones = self.events.take_dones()
        self.completions += len(dones)
        issues = self.events.take_issues()
        if len(self.inflight):
            issues = np.concatenate((self.inflight, issues))
        if not len(issues):
            self.live.update(issues, NO_ISSUES, GROUPS, 0)
            return
        write_before = None if final else time.monotonic_ns() - int(self.config.pending_s * 1e9)
        table, carry = self._segment(issues, dones, write_before)
        self.live.update(issues, carry, GROUPS, wall_minus_mono())
        if len(carry) > self.config.max_buffered:  # never hold more than the buffer's bound
            table_old, _ = self._segment(carry, NO_DONES, None)
            self.writer.write(table_old)
            carry = NO_ISSUES
        self.inflight = carry
        if table is not None:
            self.writer.write(table)
            self._fold(table)
            # The groups written, by a count of their (small) numbers: np.unique imports numpy.ma
            # on its first call, a tenth of a second of Python holding the GIL while training waits.
            for index in np.flatnonzero(np.bincount(issues["group"])).tolist():
                group = GROUPS[index]
                self.groups.setdefault(group.name, group)

    def _fold(self, table) -> None:
        """Add a written segment's operations to the totals recorder.metrics() reads. A failure here
        is said once and only the metrics step aside: the recording goes on."""
        if self.totals is None:
            return
        try:
            self.totals.add(table)
        except Exception as exc:
            self.totals = None
            warn_once("metrics", "recorder.metrics() stepped aside (%r); the recording goes on", exc)

    def _write_live(self, final: bool) -> None:
        """Replace the rank's live file. It lives beside the segments, on the same disk: a failure
        to write it (a full disk) is the writer's, said once, and recording steps aside."""
        payload = self.live.payload(self.rank, GROUPS, self.events.dropped, self.config.flush_s, final)
        self.live.write(self.writer.rank_dir, payload)

    def _segment(self, issues, dones, write_before):
        return build_segment(issues, dones, GROUPS, self.rank, wall_minus_mono(), self._dtype_cache, write_before)

    # -- hangs -------------------------------------------------------------------------------------
    def _watchdog(self) -> None:
        """After COMMTRACE_HANG_DUMP_S without a completion while operations are in flight, write a
        snapshot of them (once per stall: the next needs a completion in between)."""
        limit = self.config.hang_dump_s
        if limit <= 0 or not len(self.inflight):
            self._stalled_since = None
            return
        if self.completions != self._seen:
            self._seen, self._stalled_since, self._dumped = self.completions, time.monotonic(), False
            return
        if self._stalled_since is None:
            self._stalled_since = time.monotonic()
        elif not self._dumped and time.monotonic() - self._stalled_since >= limit:
            self._dumped = True
            self.dump(f"no operation completed for {limit:.0f} s")

    def dump(self, reason: str) -> None:
        """Write what is finished as usual, and what is in flight now to an ``inflight-*`` snapshot.

        The in-flight operations stay in flight for the recorder: if they complete they are written
        again, completed, and the analysis prefers that row to the snapshot's. Safe from any thread
        (the flush lock); never raises.
        """
        if self.broken or self.writer is None or self.stopping.is_set():
            return
        try:
            with self.lock:
                self.flush()
                if not len(self.inflight):
                    return
                table, _ = self._segment(self.inflight, NO_DONES, None)
                if table is not None:
                    self.writer.write(table, INFLIGHT_PREFIX)
                    info("wrote %d operations in flight (%s)", table.num_rows, reason)
        except Exception as exc:
            self.on_failure("hang snapshot", exc)
