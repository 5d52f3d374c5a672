"""One sampler per host (per network namespace): the NIC, TCP and RDMA counters, at COMMTRACE_SAMPLE_HZ.

Election: every rank of a run tries to take an exclusive ``flock`` on a lock file named after the
run, the host name and the network namespace, in the host's temporary directory. The rank that
holds it samples; the others retry now and then, so that if the sampler's process dies another
rank on the host takes over. Hosts in separate network namespaces (containers, our lab) each get
their own sampler even when they share a file system.

The sampler thread reads files only (no subprocess, nothing that can block on the network), appends
plain tuples, and writes a Parquet segment under ``<run>/host=<host>/`` every COMMTRACE_FLUSH_S.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import tempfile
import threading
import time
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recorder._log import warn_once
from recorder.schema import SAMPLE_SCHEMA, SAMPLES_PREFIX, safe_name
from recorder.sources import host_sources
from recorder.writer import SegmentWriter, wall_minus_mono

RETRY_ELECTION_S = 5.0


def network_namespace_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


def host_name() -> str:
    return socket.gethostname()


class Election:
    """Holds the per-host sampler lock while this process is the host's sampler."""

    def __init__(self, run_id: str, host: str) -> None:
        safe = safe_name(f"{run_id}-{host}", 200)
        stem = os.path.join(tempfile.gettempdir(), f"commtrace-{safe}-{network_namespace_id()}")
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


def samples_to_table(rows: list, host: str, wall_minus_mono_ns: int) -> pa.Table:
    """Rows of (t_mono_ns, source, device, port, counter, value) to SAMPLE_SCHEMA; a str value goes to
    ``text``. Column by column in Arrow: the sampler shares the GIL with training."""
    column = [list(map(itemgetter(i), rows)) for i in range(6)]
    values = column[5]
    if any(isinstance(v, str) for v in values):
        numbers = pa.array([None if isinstance(v, str) else v for v in values], pa.int64())
        texts = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    else:
        numbers, texts = pa.array(values, pa.int64()), pa.nulls(len(values), pa.string())
    arrays = {
        "t_ns": pc.add(pa.array(column[0], pa.int64()), wall_minus_mono_ns),
        "host": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(values), dtype=np.int32)), pa.array([host])),
        "source": pa.array(column[1], pa.string()).dictionary_encode(),
        "device": pa.array(column[2], pa.string()).dictionary_encode(),
        "port": pa.array(column[3], pa.int32()),
        "counter": pa.array(column[4], pa.string()).dictionary_encode(),
        "value": numbers,
        "text": texts.dictionary_encode(),
    }
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in SAMPLE_SCHEMA], schema=SAMPLE_SCHEMA)


class Sampler:
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
    ) -> None:
        self.host = host_name()
        self.period_s = 1.0 / hz
        self.flush_s = flush_s
        self.proc_root, self.sys_root = proc_root, sys_root
        self.election = Election(run_id, self.host)
        self.writer = SegmentWriter(
            os.path.join(run_dir, f"host={safe_name(self.host, 128)}"),
            incarnation,
            {"commtrace.run_id": run_id, "commtrace.host": self.host, **(metadata or {})},
        )
        self.rows: list = []
        self.was_elected = False
        self.samples = 0
        self.cpu_s = 0.0
        self.sources: list = []
        self._stop = threading.Event()
        # Sleeping in select() on a pipe that close() writes to: a cheaper wake-up than Event.wait
        # (about 90 us instead of 120 us of CPU on our VMs, at 10 wake-ups a second).
        self._wake_r, self._wake_w = os.pipe()
        self._now_requested = False
        self._now_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commtrace-sampler", daemon=True)

    def start(self) -> None:
        try:
            self.election.register(os.getpid())
        except OSError:
            pass
        self._thread.start()

    @property
    def elected(self) -> bool:
        return self.election.fd is not None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.election.try_acquire():
                    self.was_elected = True
                    break
                if self._sleep(RETRY_ELECTION_S):
                    return
            self.sources = host_sources(self.proc_root, self.sys_root, self.election.pid_file)
            last_read = [float("-inf")] * len(self.sources)
            next_flush = time.monotonic() + self.flush_s
            next_tick = time.monotonic()
            cpu_start = time.thread_time()
            while not self._stop.is_set():
                if self._now_requested:  # every source, now (the process groups are about to go away)
                    last_read = [float("-inf")] * len(self.sources)
                self._tick(last_read)
                if self._now_requested:
                    self._now_requested = False
                    self._now_done.set()
                now = time.monotonic()
                if now >= next_flush:
                    self.flush()
                    next_flush = now + self.flush_s
                self.cpu_s = time.thread_time() - cpu_start  # all of it, the wake-ups included
                next_tick += self.period_s
                if next_tick < now:  # fell behind (a stopped process, a slow disk): skip, do not burst
                    next_tick = now + self.period_s
                self._sleep(max(0.0, next_tick - time.monotonic()))
        except Exception as exc:
            warn_once("sampler", "network counters are not recorded (the sampler failed: %r)", exc)

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until woken; True if the sampler is being stopped."""
        if not self._stop.is_set():
            ready, _, _ = select.select([self._wake_r], [], [], seconds)
            if ready and not self._stop.is_set():
                os.read(self._wake_r, 64)
        return self._stop.is_set()

    def sample_now(self, timeout_s: float = 1.0) -> None:
        """Have the sampler take a sample of every source now, and wait for it (bounded).

        Called before the process groups are destroyed, so that the job's connections are still there
        to be read one last time.
        """
        if not self._thread.is_alive() or not self.elected:
            return
        self._now_done.clear()
        self._now_requested = True
        try:
            os.write(self._wake_w, b"n")
        except OSError:
            return
        self._now_done.wait(timeout_s)

    def _tick(self, last_read: list[float]) -> None:
        now_s = time.monotonic()
        t = time.monotonic_ns()
        rows = self.rows
        for i, source in enumerate(self.sources):
            if source.period_s and now_s - last_read[i] < source.period_s:
                continue
            last_read[i] = now_s
            try:
                values = source.read()
            except (OSError, ValueError):
                continue
            prefix = (t, source.name)
            rows.extend(prefix + v for v in values)
        self.samples += 1

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        if rows:
            self.writer.write(samples_to_table(rows, self.host, wall_minus_mono()), SAMPLES_PREFIX)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        try:
            if self.elected:
                self._tick([float("-inf")] * len(self.sources))  # a last sample at the very end
                self.flush()
        finally:
            for source in self.sources:
                source.close()
            self.election.release()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
