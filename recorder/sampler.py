"""One sampler per host (per network namespace): the NIC, TCP and RDMA counters, at COMMTRACE_SAMPLE_HZ.

Election: every rank of a run tries to take an exclusive ``flock`` on a lock file named after the
run, the host name and the network namespace, in the host's temporary directory. The rank that
holds it samples; the others retry now and then, so that if the sampler's process dies another
rank on the host takes over. Hosts in separate network namespaces (containers, our lab) each get
their own sampler even when they share a file system.

The sampler thread reads files only (no subprocess, nothing that can block on the network). On each
tick it only copies the kernel's bytes; every COMMTRACE_SAMPLE_FLUSH_S it parses them in one batch
and writes a Parquet segment under ``<run>/host=<host>/``. A segment keeps a counter's value where it
changes: the first and last sample of each counter, and the samples on both sides of every change.
A value left out equals the one before and after it, so deltas, rates and totals are unchanged,
and an idle interface's sixteen counters cost two rows per segment instead of two hundred. Every
COMMTRACE_SAMPLE_LIVE_S it also parses the latest capture of the interfaces, TCP and RDMA counters
alone into ``host=<host>/live.json`` (recorder.live.HostLive), so that a live view's host figures
are seconds old, not a flush interval.
"""

from __future__ import annotations

import fcntl
import math
import os
import select
import socket
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa

from recorder import _arrow
from recorder._log import debug, warn_once
from recorder.live import HostLive
from recorder.periodic import PeriodicThread
from recorder.schema import SAMPLE_SCHEMA, SAMPLES_PREFIX, safe_name
from recorder.sources import PARSE_ERRORS, host_sources
from recorder.writer import SegmentWriter, wall_minus_mono

RETRY_ELECTION_S = 5.0
STALE_ELECTION_S = 3600.0
"""Election files of a run whose processes all died without closing (kill -9, the OOM killer) are
removed by a later run's sampler once they are this old."""


def network_namespace_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


def host_name() -> str:
    return socket.gethostname()


class Election:
    """Holds the per-host sampler lock while this process is the host's sampler."""

    def __init__(self, run_id: str, host: str, directory: str | None = None) -> None:
        safe = safe_name(f"{run_id}-{host}", 200)
        stem = os.path.join(directory or tempfile.gettempdir(), f"commtrace-{safe}-{network_namespace_id()}")
        self.path = stem + ".lock"
        self.pid_file = stem + ".pids"  # every rank of the run on this host, for per-connection TCP stats
        self.fd: int | None = None

    def register(self, pid: int) -> None:
        with open(self.pid_file, "a") as fh:
            fh.write(f"{pid}\n")

    def try_acquire(self) -> bool:
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def sweep_stale(self) -> int:
        """Remove the election files that runs on this host and network namespace left behind when
        their processes were killed before they could close: the lock is free, no process listed in
        the pid file is alive, and neither file changed for STALE_ELECTION_S. Run once by an elected
        sampler; returns how many runs' files it removed."""
        directory = os.path.dirname(self.path)
        tail = f"-{network_namespace_id()}"
        stems = set()
        with os.scandir(directory) as entries:
            for entry in entries:
                for ext in (".lock", ".pids"):
                    if entry.name.startswith("commtrace-") and entry.name.endswith(tail + ext):
                        stems.add(os.path.join(directory, entry.name[: -len(ext)]))
        stems.discard(self.path[: -len(".lock")])
        now = time.time()
        return sum(_remove_if_stale(stem, now) for stem in sorted(stems))

    def release(self) -> None:
        if self.fd is not None:
            try:
                for path in (self.path, self.pid_file):  # the run is ending on this host
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
            finally:
                self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _remove_if_stale(stem: str, now: float) -> bool:
    lock, pids = stem + ".lock", stem + ".pids"
    for path in (lock, pids):
        try:
            if now - os.stat(path).st_mtime < STALE_ELECTION_S:
                return False
        except FileNotFoundError:
            pass
    try:
        with open(pids) as fh:
            if any(_alive(int(line)) for line in fh if line.strip().isdigit()):
                return False
    except FileNotFoundError:
        pass
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a sampler of that run holds it after all
                return False
        for path in (pids, lock):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return True
    finally:
        if fd is not None:
            os.close(fd)


def samples_to_table(parts: list[pa.Table], host: str, wall_minus_mono_ns: int) -> pa.Table:
    """The sources' PART_SCHEMA tables as one SAMPLE_SCHEMA table: monotonic time made wall-clock, the
    host added, one dictionary per column."""
    table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
    arrays = {name: table[name] for name in table.column_names}
    arrays["t_ns"] = _arrow.from_numpy(_arrow.to_numpy(table["t_ns"]) + wall_minus_mono_ns, pa.int64())
    arrays["host"] = _arrow.dictionary(np.zeros(table.num_rows, dtype=np.int32), [host])
    return pa.Table.from_arrays([arrays[f.name] for f in SAMPLE_SCHEMA], schema=SAMPLE_SCHEMA)


def squeeze(table: pa.Table) -> pa.Table:
    """Drop every sample whose value equals both the previous and the next sample of its counter.

    A counter's first and last samples stay, and so do both samples around each change: reading the
    kept samples as a step function gives exactly the series that was sampled. Descriptive values
    (``text``) are kept as they are (their sources write them only on change).
    """
    n = table.num_rows
    if n < 3:
        return table
    keys = []
    for name in ("source", "device", "counter"):
        column = table[name].combine_chunks()
        keys.append(_arrow.to_numpy(column.indices, fill=-1))
    keys.append(_arrow.to_numpy(table["port"], fill=-1))
    numeric = _arrow.valid(table["value"])
    values = _arrow.to_numpy(table["value"])
    order = np.lexsort([_arrow.to_numpy(table["t_ns"])] + keys[::-1])
    same = numeric[order][1:] & numeric[order][:-1]
    for key in keys:
        k = key[order]
        same &= k[1:] == k[:-1]
    v = values[order]
    same &= v[1:] == v[:-1]
    keep = np.ones(n, dtype=bool)
    keep[1:-1] = ~(same[:-1] & same[1:])
    if keep.all():
        return table
    return table.take(_arrow.from_numpy(np.sort(order[keep]), pa.int64()))


def schedule(sources: list, period_s: float) -> list[list]:
    """Per tick of a cycle, the ``(index, capture)`` of every source due: a source with ``period_s``
    p is captured every round(p / period_s) ticks (every tick if p is 0)."""
    every = [max(1, round(s.period_s / period_s)) for s in sources]
    cycle = math.lcm(*every) if every else 1
    return [[(i, s.capture) for i, s in enumerate(sources) if k % every[i] == 0] for k in range(cycle)]


class Sampler(PeriodicThread):
    """The host's sampler thread (only the elected rank's does any sampling)."""

    def __init__(
        self,
        run_dir: str,
        run_id: str,
        incarnation: str,
        hz: float,
        flush_s: float,
        proc_root: str = "/",
        sys_root: str = "/",
        metadata: dict[str, str] | None = None,
        lock_dir: str | None = None,
        live_s: float = 0.0,
    ) -> None:
        """``lock_dir`` holds the host's election lock (default: the temporary directory); a recorder
        passes it in, worked out on the main thread, because the lookup takes a lock that a fork
        (a DataLoader worker) would inherit held if this ran on a thread of ours at that moment."""
        super().__init__("commtrace-sampler")
        self.host = host_name()
        self.period_s = 1.0 / hz
        self.flush_s = flush_s
        self.proc_root, self.sys_root = proc_root, sys_root
        self.election = Election(run_id, self.host, lock_dir)
        folder = os.path.join(run_dir, f"host={safe_name(self.host, 128)}")
        self.live_s = live_s  # the host's latest counters, for watch and metrics(), this often (0: never)
        self.live = HostLive(folder, self.host) if live_s > 0 else None
        self.writer = SegmentWriter(
            folder,
            incarnation,
            {"commtrace.run_id": run_id, "commtrace.host": self.host, **(metadata or {})},
        )
        self.captured: list = []  # (t_mono_ns, source index, raw): parsed at flush
        self.was_elected = False
        self.samples = 0
        self.sources: list = []
        self.source_names: list[str] = []  # what this host has (kept after close)
        # _schedule[k % len(_schedule)]: the (index, capture) of the sources due on tick k, worked out
        # once so that a tick does no arithmetic per source.
        self._schedule: list[list] = [[]]
        self.failed = False  # the sampler thread hit an error of ours and stopped
        # Held for each tick and flush, so that sample_now() and close() can capture and write from
        # the caller's thread instead of waking the sampler and waiting for it.
        self._lock = threading.RLock()
        # While waiting to be elected the thread sleeps in select() on a pipe that close() writes to;
        # between ticks it sleeps in time.sleep(), whose wake-up costs a third less CPU (about 60 us
        # instead of 90 us on our VMs, 10 times a second) and which nothing needs to interrupt.
        self._wake_r, self._wake_w = os.pipe()

    def start(self) -> None:
        try:
            self.election.register(os.getpid())
        except OSError:
            pass
        super().start()

    @property
    def elected(self) -> bool:
        return self.election.fd is not None

    def rounds(self) -> None:
        while not self.stopping.is_set():
            if self.election.try_acquire():
                self.was_elected = True
                try:
                    swept = self.election.sweep_stale()
                except OSError as exc:  # housekeeping only: sampling goes on, the training log stays quiet
                    debug("could not look for stale election files: %r", exc)
                else:
                    if swept:
                        debug("removed the election files of %d runs killed on this host", swept)
                break
            if self._sleep(RETRY_ELECTION_S):
                return
        with self._lock:
            if self.stopping.is_set():
                return
            self.sources = host_sources(self.proc_root, self.sys_root, self.election.pid_file)
            self._schedule = schedule(self.sources, self.period_s)
            self.source_names = [s.name for s in self.sources]
        next_tick = time.monotonic()
        next_flush = next_tick + self.flush_s
        next_live = next_tick + self.live_s
        k = 0
        while True:
            with self._lock:
                if self.stopping.is_set():
                    return
                self._tick(k)
                k += 1
                now = time.monotonic()
                if self.live is not None and now >= next_live:  # before a flush takes the captures
                    self.live.update(self.sources, self.captured, wall_minus_mono())
                    next_live = now + self.live_s
                if now >= next_flush:
                    self.flush()
                    next_flush = now + self.flush_s
            next_tick += self.period_s
            if next_tick < now:  # fell behind (a stopped process, a slow disk): skip, do not burst
                next_tick = now + self.period_s
            time.sleep(max(0.0, next_tick - time.monotonic()))

    def on_error(self, exc: Exception) -> None:
        self.failed = True  # steps aside: close() and sample_now() leave the sources alone
        warn_once("sampler", "network counters are not recorded (the sampler failed: %r)", exc)

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until woken; True if the sampler is being stopped."""
        if not self.stopping.is_set():
            ready, _, _ = select.select([self._wake_r], [], [], max(0.0, seconds))
            if ready and not self.stopping.is_set():
                os.read(self._wake_r, 64)
        return self.stopping.is_set()

    def sample_now(self, timeout_s: float = 1.0) -> None:
        """Capture every source now, from the caller's thread (waits at most ``timeout_s`` for a tick
        or flush in progress).

        Called before the process groups are destroyed, so that the job's connections are still there
        to be read one last time.
        """
        if not self.elected or self.failed or not self._lock.acquire(timeout=timeout_s):
            return
        try:
            if not self.stopping.is_set() and self.sources:
                self._tick(None)
        finally:
            self._lock.release()

    def _tick(self, k: int | None) -> None:
        """Capture the sources due on tick ``k`` (every source if None). Only copies bytes: this runs
        10 times a second on a cold cache, parsing waits for the flush."""
        t = time.monotonic_ns()
        append = self.captured.append
        due = enumerate(s.capture for s in self.sources) if k is None else self._schedule[k % len(self._schedule)]
        for i, capture in due:
            try:
                append((t, i, capture()))
            except (OSError, ValueError):
                pass
        self.samples += 1

    def flush(self) -> None:
        captured, self.captured = self.captured, []
        per_source: dict[int, list] = {}
        for t, i, raw in captured:
            per_source.setdefault(i, []).append((t, raw))
        parts = []
        for i, captures in per_source.items():
            try:
                part = self.sources[i].parse_batch(captures)
            except (*PARSE_ERRORS, pa.ArrowException) as exc:
                warn_once(
                    f"sampler-parse-{self.sources[i].name}", "%s counters not recorded: %r", self.sources[i].name, exc
                )
                continue
            if part.num_rows:
                parts.append(part)
        if parts:
            table = squeeze(samples_to_table(parts, self.host, wall_minus_mono()))
            self.writer.write(table, SAMPLES_PREFIX)

    def close(self, timeout_s: float = 5.0) -> None:
        self.stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if not self.elected:
            self.join(timeout_s)  # waiting to be elected, in select() on the pipe: woken above
        locked = self._lock.acquire(timeout=timeout_s)  # a tick or flush in progress ends first
        try:
            if self.elected and locked and not self.failed:
                self._tick(None)  # a last sample at the very end
                self.flush()
        finally:
            for source in self.sources:
                source.close()
            self.sources = []
            self.election.release()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if locked:
                self._lock.release()
