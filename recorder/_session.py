"""One recording session per process: the buffer, the writer thread, the run's files and lifecycle.

Life of a session: created by :func:`enable` (or the environment variable) before any process
group exists; starts writing when the default group is created and rank 0 has shared the run id
through the job's store; flushes every ``COMMTRACE_FLUSH_S``; closes at ``destroy_process_group``,
at exit or on SIGTERM, writing what is still in flight with its end unset. Nothing of it waits on
the main thread at start-up: the run id, the directories and the clock offset are settled on a
thread of ours, talking through store clients of our own (``recorder.coordination``).
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np

from recorder import _arrow, _state, clock
from recorder import capture as C
from recorder._log import info, warn_once
from recorder.config import Config, from_env
from recorder.coordination import Coordination
from recorder.schema import (
    INFLIGHT_PREFIX,
    PROBE_PREFIX,
    PROBE_SCHEMA,
    RANK_META_PREFIX,
    RUN_META,
    SCHEMA_VERSION,
    safe_name,
)
from recorder.writer import NO_DONES, NO_ISSUES, SegmentWriter, build_segment, dones_from, issues_from, wall_minus_mono

ENV_PREFIXES = ("TORCH_", "NCCL_", "COMMTRACE_", "GLOO_", "TORCHELASTIC_", "MASTER_", "OMP_", "CUDA_")
ENV_NAMES = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "GROUP_WORLD_SIZE",
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_NODEID",
    "SLURM_NNODES",
    "SLURM_JOB_NAME",
    "HOSTNAME",
)
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH", "COOKIE")
STARTUP_READY_S = 10.0  # how long closing waits for the start-up thread to have set up the trace
CLOCK_WAIT_S = 30.0  # how long a rank's clock thread waits for rank 0's clock server to answer
CLOCK_JOIN_S = 2.0  # how long closing waits for a cut-short clock thread to leave the store
POLL_MIN_S = 0.0005
POLL_MAX_S = 0.05


def allowed_env(env: dict[str, str]) -> dict[str, str]:
    """The part of the environment safe to write down: known prefixes, never anything secret-like."""
    out = {}
    for name, value in env.items():
        if not (name.startswith(ENV_PREFIXES) or name in ENV_NAMES):
            continue
        if any(word in name.upper() for word in SECRET_WORDS):
            continue
        out[name] = value
    return dict(sorted(out.items()))


def _job_id(env: dict[str, str]) -> str | None:
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "LSB_JOBID", "PBS_JOBID", "JOB_ID"):
        value = env.get(name)
        if value and value != "none":
            return value
    return None


def _new_run_id(env: dict[str, str]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    job = _job_id(env)
    parts = [stamp] + ([safe_name(job, 12)] if job else []) + [secrets.token_hex(3)]
    restart = env.get("TORCHELASTIC_RESTART_COUNT")
    if restart and restart != "0":
        parts.append(f"r{safe_name(restart)}")
    return "-".join(parts)


def _atomic_json(path: str, payload: dict, exclusive: bool = False) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True, default=str)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
    finally:  # a full disk must not leave a half file behind
        if os.path.exists(tmp):
            os.unlink(tmp)


class Session:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid = os.getpid()
        self.incarnation = f"{self.pid}-{secrets.token_hex(2)}"
        # Issue and completion records (capture.ISSUE, capture.DONE), appended by the hot path and the
        # backends' threads, taken from the front by the writer (_take).
        self.buffer = bytearray()
        self.done = bytearray()
        self.ids = itertools.count()
        self.max_buffered = config.max_buffered
        self.max_bytes = config.max_buffered * C.ISSUE.size
        self.flush_bytes = config.flush_events * C.ISSUE.size
        self.dropped = 0
        self.inflight = NO_ISSUES  # issue records still waiting for their completion
        self.pending_poll: collections.deque = collections.deque()  # filled by the hot path
        self._polled: list = []  # the writer's own list of works it polls
        self.groups: dict[str, C.GroupInfo] = {}
        self.rank: int | None = None
        self.world_size: int | None = None
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self.writer: SegmentWriter | None = None
        self.clock: dict[str, object] = {}
        self.started_ns = time.time_ns()
        self.failed = False
        self.closed = False
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dtype_cache: dict = {}
        self._flush_cpu_s = 0.0
        self._coordination: Coordination | None = None
        self._clock_server: clock.Server | None = None
        self._clock_waiter: clock.Waiter | None = None  # the clock thread's store waits, cut short at close
        self._clock_stop = threading.Event()  # set at close: the clock thread measures no more
        self._startup_thread: threading.Thread | None = None
        self._ready = threading.Event()  # the start-up thread has set up the trace (or failed to)
        # Seconds the recorder spent waiting on other ranks or on its own threads, by what for.
        self.waits: dict[str, float] = {}
        self.failure: str | None = None  # why recording stopped early, if it did
        self._default_twin = None  # the default group's plain twin, kept for the link probe
        self._probe_rows: list[dict] = []
        self.sampler = None
        self._completions = 0  # completions the writer has taken from `done` (the watchdog's progress)
        self._completions_seen = 0
        self._stalled_since: float | None = None
        self._dumped = False
        self._close_done = threading.Event()  # close() finished (its metadata written)
        self._closing_thread: int | None = None
        # The sampler's election lock lives in the temporary directory. Looking it up the first time
        # takes tempfile's module lock for a few milliseconds (it test-writes a file); taken on a thread
        # of ours while the main thread forks a DataLoader worker, the worker would inherit it held and
        # hang in its first tempfile call (multiprocessing shares tensors through one). So here, on
        # the thread that enables recording, before any thread of ours exists.
        self._lock_dir = tempfile.gettempdir()
        # Started with the run (start()): a process that never makes a process group (torchrun's
        # agent, a data-prep script) runs no thread of ours.
        self._thread = threading.Thread(target=self._run, name="commtrace-writer", daemon=True)

    # -- process groups ----------------------------------------------------------------------------
    def on_group_created(self, pg, store, ranks: list[int] | None) -> None:
        """A recording group was just configured by torch; ``ranks`` are its global ranks ([] = all)."""
        is_default = not ranks
        C._twin(pg)  # now that torch has configured the group, build its twin from it
        info = C._info(pg, list(ranks) if ranks else None)
        self.groups.setdefault(info.name, info)  # the metadata lists every group, used or not
        if _backend_name(pg) == "nccl":
            self.enable_cuda_timing(pg, info)

        if is_default and self.rank is None:
            self.start(pg.rank(), pg.size(), store)
            if self.config.probe and pg.size() > 1:
                self._default_twin = C._twin(pg)
                self._probe("start")

    def _probe(self, phase: str) -> None:
        """The link probe (COMMTRACE_PROBE), in the caller's thread; its rows are written at the next flush."""
        from recorder import probe

        twin = self._default_twin
        began = time.monotonic()
        try:
            store = self._coordination.probe if self._coordination is not None else None
            if store is None:
                raise RuntimeError(self._no_store_reason())
            device = None
            if _backend_name(twin) == "nccl":
                import torch

                device = torch.device("cuda", torch.cuda.current_device())
            rows = probe.run(
                twin,
                store,
                self.rank,
                self.world_size,
                phase,
                self.config.probe_bytes,
                self.config.probe_rounds,
                device,
                gather_timeout_s=PROBE_END_GATHER_S if phase == "end" else None,
            )
            with self._lock:
                self._probe_rows.extend(rows)
        except Exception as exc:
            warn_once(f"probe:{phase}", "link probe (%s) not measured: %r", phase, exc)
        self.waits[f"probe_{phase}_s"] = round(time.monotonic() - began, 6)

    def enable_cuda_timing(self, pg, info) -> None:
        """Have the backend time collectives with CUDA events (Work._get_duration), once per group."""
        info.timing_enabled = True
        if not self.config.cuda_timing:
            return
        try:
            pg._enable_collectives_timing()  # on the backends, which the twin shares
        except Exception as exc:
            warn_once("cuda:timing", "CUDA collective timing unavailable (%r); GPU durations not recorded", exc)

    def start(self, rank: int, world_size: int, store) -> None:
        """Called once the default group exists: learn the run id and start writing, off the hot path
        and off the main thread (which goes on creating groups meanwhile)."""
        self.rank, self.world_size = rank, world_size
        if store is not None and world_size > 1:
            self._coordination = Coordination(store, rank, clock=self.config.clock_sync, probe=self.config.probe)
            if self._coordination.talk is not None:
                self._clock_waiter = clock.Waiter(self._coordination.talk)
        self._thread.start()
        self._startup_thread = threading.Thread(target=self._startup, name="commtrace-startup", daemon=True)
        self._startup_thread.start()

    def _wait_ready(self, timeout_s: float) -> None:
        """Wait (bounded) until the start-up thread has set up the trace; the clock measurement that
        follows it is not waited for."""
        if self._startup_thread is None or threading.current_thread() is self._startup_thread:
            return
        began = time.monotonic()
        if not self._ready.wait(timeout_s):
            warn_once("startup:slow", "the trace was not set up within %.0f s of the job's start", timeout_s)
        waited = time.monotonic() - began
        if waited >= 0.001:
            self.waits["close_startup_s"] = round(waited, 6)

    def _startup(self) -> None:
        try:
            began = time.monotonic()
            run_id = self.config.run_id or self._agree_run_id()
            self.waits["run_id_s"] = round(time.monotonic() - began, 6)
            run_dir = os.path.join(self.config.dir, run_id)
            rank_dir = os.path.join(run_dir, f"rank={self.rank:05d}")
            os.makedirs(rank_dir, exist_ok=True)
            with self._lock:
                self.run_id, self.run_dir = run_id, run_dir
                self.writer = SegmentWriter(
                    rank_dir, self.incarnation, {"commtrace.run_id": run_id, "commtrace.rank": str(self.rank)}
                )
            if self.rank == 0:
                _atomic_json(os.path.join(run_dir, RUN_META), self._run_meta(), exclusive=True)
                self._start_clock_server(run_id)
            self._start_sampler(run_dir, run_id)
            self.write_rank_meta()
            if self.rank == 0 and not self.failed:
                ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
                info("recording run %s (%s) into %s", run_id, ranks, run_dir)
        except Exception as exc:
            self._fail("startup", exc)
        finally:
            self._ready.set()
        if self._clock_wanted() and self.rank != 0:
            self._clock_loop()

    def _clock_loop(self) -> None:
        """A non-zero rank's offset to rank 0's clock: once now, then every COMMTRACE_CLOCK_INTERVAL_S
        until the trace closes (the last one is the ``end`` offset). Nothing waits for this thread,
        and it never talks to the store while the trace closes: rank 0, and with it the store, may
        be gone by then."""
        phase = "start"
        while not (self.failed or self._clock_stop.is_set()):
            self._measure_clock(phase)
            if self._clock_stop.is_set():
                return
            try:
                self.write_rank_meta()
            except Exception as exc:
                self._fail("writing the rank's metadata", exc)
            phase = "end"
            if self._clock_stop.wait(self.config.clock_interval_s):
                return

    def _stop_clock(self) -> None:
        """No more clock measurements, and no thread of ours left inside a store call (see
        ``clock.Waiter``): the clock thread's wait is cut short and the thread joined; on rank 0 the
        clock server stops and is joined."""
        self._clock_stop.set()
        waiter, coordination = self._clock_waiter, self._coordination
        if self._clock_server is not None:
            self._clock_server.stop(CLOCK_JOIN_S)
        elif waiter is not None and coordination is not None and coordination.cancel is not None:
            waiter.cancel(coordination.cancel)
            thread = self._startup_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(CLOCK_JOIN_S)

    def _clock_wanted(self) -> bool:
        return bool(self.config.clock_sync and self.world_size and self.world_size > 1 and self.run_id)

    def _clock_base(self) -> str:
        return f"{clock.PREFIX}/{self.run_id}"

    def _start_clock_server(self, run_id: str) -> None:
        """Rank 0: answer the other ranks' clock measurements, on a thread and a store client of its own."""
        if not self._clock_wanted():
            return
        coordination = self._coordination
        if coordination is None or coordination.serve is None:
            self.clock["start"] = {"reference": True, "offset_ns": 0, "error": self._no_store_reason()}
            return
        self._clock_server = clock.Server(coordination.serve, coordination.talk, self._clock_base()).start()
        self.clock["start"] = {"reference": True, "offset_ns": 0, "rtt_ns": 0, "rounds": 0}

    def _no_store_reason(self) -> str:
        if self._coordination is None:
            return "no store to meet the other ranks in"
        return self._coordination.error or "no store client of our own"

    def _measure_clock(self, phase: str) -> None:
        """A non-zero rank: its offset to rank 0's clock now, into the metadata (never raises)."""
        rounds = self.config.clock_rounds
        waiter = self._clock_waiter
        if waiter is None:
            result = {"error": self._no_store_reason(), "rounds": 0, "rounds_asked": rounds}
        else:
            try:
                result = clock.measure(waiter, self._clock_base(), self.rank, rounds, CLOCK_WAIT_S)
            except Exception as exc:
                result = {"error": f"the store failed: {exc!r}", "rounds": 0, "rounds_asked": rounds}
        if self._clock_stop.is_set() and result.get("error"):
            return  # cut short by the trace closing: the last measurement stands
        previous = self.clock.get(phase)
        if result.get("error") and isinstance(previous, dict) and not previous.get("error"):
            return  # a later round failed (rank 0 already closing, a busy store): the last good one stands
        self.clock[phase] = result
        self.waits[f"clock_{phase}_s"] = result.get("wait_s", 0.0)
        if phase == "start" and result.get("error"):
            warn_once(
                "clock:start",
                "clock offset to rank 0 measured in %d of %d rounds (%s); this rank's lateness is less certain",
                result.get("rounds", 0),
                self.config.clock_rounds,
                result["error"],
            )

    def _start_sampler(self, run_dir: str, run_id: str) -> None:
        if self.config.sample_hz <= 0 or self.closed:
            return
        from recorder.sampler import Sampler

        self.sampler = Sampler(
            run_dir,
            run_id,
            self.incarnation,
            self.config.sample_hz,
            self.config.sample_flush_s,
            self.config.proc_root,
            self.config.sys_root,
            lock_dir=self._lock_dir,
        )
        self.sampler.start()

    def _agree_run_id(self) -> str:
        env = dict(os.environ)
        if not self.world_size or self.world_size == 1 or self._coordination is None:
            return _new_run_id(env)
        try:
            return self._coordination.agree_run_id(
                self.rank, self.world_size, lambda: _new_run_id(env), env.get("TORCHELASTIC_RESTART_COUNT", "0"), 60.0
            )
        except Exception as exc:
            warn_once(
                "run_id",
                "ranks could not agree on a run id through the store (%r); "
                "set COMMTRACE_RUN_ID to group this job's files",
                exc,
            )
            return f"{_new_run_id(env)}-rank{self.rank}"

    # -- metadata ----------------------------------------------------------------------------------
    def _common_meta(self) -> dict:
        import torch

        env = dict(os.environ)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "world_size": self.world_size,
            "job_id": _job_id(env),
            "restart_count": int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "recorder_version": _version(),
        }

    def _run_meta(self) -> dict:
        meta = self._common_meta()
        meta.update({"created_ns": self.started_ns, "created_by_host": socket.gethostname()})
        return meta

    def write_rank_meta(self) -> None:
        with self._lock:
            if self.writer is None:
                return
            meta = self._common_meta()
            meta.update(
                {
                    "rank": self.rank,
                    "local_rank": _int_env("LOCAL_RANK"),
                    "host": socket.gethostname(),
                    "pid": self.pid,
                    "incarnation": self.incarnation,
                    "started_ns": self.started_ns,
                    "updated_ns": time.time_ns(),
                    "closed": self.closed,
                    "config": self.config.as_dict(),
                    "env": allowed_env(dict(os.environ)),
                    "clock": self.clock,
                    "process_groups": [
                        {
                            "pg": g.name,
                            "desc": g.desc,
                            "size": g.size,
                            "ranks": g.ranks,
                            "backend": g.backend,
                            "group_rank": g.group_rank,
                        }
                        for g in self.groups.values()
                    ],
                    "dropped_events": self.dropped,
                    "failure": self.failure,
                    "waits_s": dict(self.waits),
                    "segments_written": self.writer.index,
                    "rows_written": self.writer.rows_written,
                    "bytes_written": self.writer.bytes_written,
                    "recorder_cpu_s": round(self._flush_cpu_s, 6),
                    "sampler": self._sampler_meta(),
                }
            )
            path = os.path.join(self.writer.rank_dir, f"{RANK_META_PREFIX}-{self.incarnation}.json")
            # Written under the lock: the clock thread and the closing thread may both write, and the
            # file last written must hold the latest state (``closed`` above all).
            _atomic_json(path, meta)

    def _sampler_meta(self) -> dict | None:
        sampler = self.sampler
        if sampler is None:
            return None
        return {
            "host": sampler.host,
            "elected": sampler.was_elected,
            "samples": sampler.samples,
            "cpu_s": round(sampler.cpu_s, 6),
            "segments_written": sampler.writer.index,
            "sources": sampler.source_names,
        }

    # -- writing -----------------------------------------------------------------------------------
    def wake(self) -> None:
        """Wake the writer (new works to poll, or the buffer reached COMMTRACE_FLUSH_EVENTS)."""
        self._wake.set()

    def _run(self) -> None:
        flush_s = self.config.flush_s
        next_flush = time.monotonic() + flush_s
        poll_s = POLL_MIN_S
        while not self._stop.is_set():
            flush_in = max(0.0, next_flush - time.monotonic())
            polling = self.pending_poll or self._polled
            self._wake.wait(min(poll_s, flush_in) if polling else flush_in)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.pending_poll or self._polled:
                # Poll fast while works arrive or complete, back off while they sit (an isend
                # nobody waits on costs a poll every POLL_MAX_S, not a busy thread).
                fresh = bool(self.pending_poll)
                poll_s = POLL_MIN_S if self._poll_works() or fresh else min(poll_s * 2, POLL_MAX_S)
            if time.monotonic() >= next_flush or len(self.buffer) >= self.flush_bytes:
                self.flush()
                next_flush = time.monotonic() + flush_s
                self._watchdog()

    def _watchdog(self) -> None:
        """After COMMTRACE_HANG_DUMP_S without a completion while operations are in flight, write a
        snapshot of them (once per stall: the next needs a completion in between)."""
        limit = self.config.hang_dump_s
        if limit <= 0 or not len(self.inflight):
            self._stalled_since = None
            return
        completed = self._completions
        if completed != self._completions_seen:
            self._completions_seen, self._stalled_since, self._dumped = completed, time.monotonic(), False
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
        (the writer's lock); never raises.
        """
        if self.failed or self.closed or self.writer is None:
            return
        try:
            with self._lock:
                self.flush()
                if not len(self.inflight):
                    return
                table, _ = build_segment(
                    self.inflight, NO_DONES, C.GROUPS, self.rank, wall_minus_mono(), self._dtype_cache, None
                )
                if table is not None:
                    self.writer.write(table, INFLIGHT_PREFIX)
                    info("wrote %d operations in flight (%s)", table.num_rows, reason)
        except Exception as exc:
            self._fail("hang snapshot", exc)

    def _poll_works(self) -> bool:
        """Complete the polled works that are done; True if any was."""
        inbox = self.pending_poll
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
            now = time.monotonic_ns()
            gpu_ns = None
            if is_cuda:
                try:
                    gpu_ns = int(work._get_duration() * 1e6)
                except Exception:
                    pass
            try:
                status = C.OK if work.is_success() else C.ERROR
            except Exception:
                status = C.OK
            done = self.done
            done += C.DONE.pack(rid, now, C.NULL64 if gpu_ns is None else gpu_ns, status)
        completed = len(still) < len(self._polled)
        self._polled = still
        return completed

    def flush(self, final: bool = False) -> None:
        """Write every finished operation; with ``final``, what is in flight too (end unset)."""
        if self.failed:
            return
        cpu0 = time.thread_time()
        try:
            with self._lock:
                if self.writer is None:
                    return
                if self._probe_rows:
                    rows, self._probe_rows = self._probe_rows, []
                    self.writer.write(_arrow.table(rows, PROBE_SCHEMA), PROBE_PREFIX)
                # Completions first: every completion drained has its issue already in the buffer.
                dones = dones_from(_take(self.done))
                self._completions += len(dones)
                issues = issues_from(_take(self.buffer))
                if len(self.inflight):
                    issues = np.concatenate((self.inflight, issues))
                if not len(issues):
                    return
                write_before = None if final else time.monotonic_ns() - int(self.config.pending_s * 1e9)
                table, carry = build_segment(
                    issues, dones, C.GROUPS, self.rank, wall_minus_mono(), self._dtype_cache, write_before
                )
                if len(carry) > self.max_buffered:  # never hold more than the buffer's bound
                    table_old, carry = build_segment(
                        carry, NO_DONES, C.GROUPS, self.rank, wall_minus_mono(), self._dtype_cache, None
                    )
                    self.writer.write(table_old)
                    carry = NO_ISSUES
                self.inflight = carry
                if table is not None:
                    self.writer.write(table)
                    self._note_groups(issues)
        except Exception as exc:
            self._fail("writer", exc)
        finally:
            self._flush_cpu_s += time.thread_time() - cpu0

    def _note_groups(self, issues: np.ndarray) -> None:
        for index in np.unique(issues["group"]).tolist():
            info = C.GROUPS[index]
            self.groups.setdefault(info.name, info)

    def _fail(self, where: str, exc: BaseException) -> None:
        """Our own failure: say it once, stop recording, leave training alone."""
        self.failed = True
        self.failure = f"{where} failed: {exc!r}"
        # One line for whatever fails first: after it the recorder is out of the way, and nothing
        # else of ours has anything left to say.
        warn_once("fail", "recording stopped (%s failed: %r); training continues unaffected", where, exc)
        if _state.session is self:
            _state.session = None
        self.buffer.clear()
        self.done.clear()
        self.inflight = NO_ISSUES

    def before_destroy(self, group) -> None:
        if group is not None:
            try:
                import torch.distributed.distributed_c10d as c10d

                if group is not c10d._world.default_pg:
                    self.flush()
                    return
            except Exception:
                return
        if self._default_twin is not None:
            self._wait_ready(STARTUP_READY_S)
            self._probe("end")
        if self.sampler is not None:
            try:
                self.sampler.sample_now()
            except Exception as exc:
                warn_once("sampler:last", "the last network sample before shutdown was not taken: %r", exc)
        self.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Final flush (in-flight operations included), metadata, stop the writer. Runs once."""
        global _closing, _deferred_sigterm
        if self.closed or os.getpid() != self.pid:
            return
        began = time.monotonic()
        self._wait_ready(min(timeout_s, STARTUP_READY_S))
        self._stop_clock()
        self.closed = True
        self._closing_thread = threading.get_ident()
        _closing = self
        try:
            self._close(timeout_s, began)
        finally:
            self._close_done.set()
            if _deferred_sigterm is not None and self._closing_thread == threading.get_ident():
                deferred, _deferred_sigterm = _deferred_sigterm, None
                _deliver_sigterm(*deferred)  # a SIGTERM that arrived during the close: acted on now

    def _close(self, timeout_s: float, began: float) -> None:
        if _state.session is self:
            _state.session = None
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        if self.pending_poll or self._polled:
            self._poll_works()
        self.flush(final=True)
        if self.sampler is not None:
            try:
                self.sampler.close()
            except Exception as exc:
                warn_once("fail:sampler", "the last network counters were not written: %r", exc)
        self.waits["close_s"] = round(time.monotonic() - began, 6)
        if self.writer is not None:
            try:
                self.write_rank_meta()  # after a failure too: it says that recording stopped, and why
            except Exception as exc:
                if not self.failed:  # after a failure, its one line has been said
                    warn_once("fail:meta", "could not write the rank's metadata: %r", exc)
        if self.rank == 0 and self.run_dir and not self.failed:
            info("run %s closed; explain it with: analyze-trace diagnose %s", self.run_id, self.run_dir)


def _take(records: bytearray) -> bytes:
    """Every record appended so far, removed from the front of the bytearray.

    Each append is one C call, atomic under the GIL, so the length is always whole records; the copy
    and the removal are two C calls more, and a record appended between them by another thread lands
    after the first ``n`` bytes and stays for the next flush. Only the writer removes records. The
    records are copied out, never viewed in place: while a view (a memoryview, ``np.frombuffer``) of
    the live bytearray exists, resizing it raises, and every append would fail.
    """
    n = len(records)
    taken = bytes(records[:n])
    del records[:n]
    return taken


PROBE_END_GATHER_S = 10.0  # at shutdown, how long the probe waits for every rank to arrive


def _backend_name(pg) -> str:
    try:
        return pg._get_backend_name()
    except Exception:
        return ""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("commtrace")
    except Exception:
        return "unknown"


def _int_env(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


# -- process-wide lifecycle ----------------------------------------------------------------------
_hooks_installed = False
_previous_sigterm = None


_closing: Session | None = None  # the session whose close() started last
_deferred_sigterm: tuple | None = None  # a SIGTERM received inside this thread's own close()
CLOSE_WAIT_S = 10.0


def _at_exit() -> None:
    _sigterm_seen.set()  # shutting down already: the signal thread must not end us mid-close
    session = _state.session
    if session is not None:
        session.close()
        return
    closing = _closing
    if closing is not None and closing._closing_thread != threading.get_ident():
        closing._close_done.wait(CLOSE_WAIT_S)  # another thread is closing the trace: let it finish


def _on_sigterm(signum, frame) -> None:
    global _deferred_sigterm
    _sigterm_seen.set()
    closing = _closing
    if closing is not None and closing._closing_thread == threading.get_ident() and not closing._close_done.is_set():
        # The handler interrupted this thread's own close() (at exit, or in destroy_process_group):
        # dying here would lose the metadata that says the trace is whole. close() acts on it last.
        _deferred_sigterm = (signum, frame)
        return
    try:
        _at_exit()
    finally:
        _deliver_sigterm(signum, frame)


def _deliver_sigterm(signum, frame) -> None:
    """What SIGTERM would have done without us: the previous handler, or the default death."""
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    # A forked child (a DataLoader worker) never writes into its parent's files, nor signals into
    # its parent's signal pipe.
    _state.session = None
    if _signal_pipe is not None:
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass


_signal_pipe: tuple[int, int] | None = None
_sigterm_seen = threading.Event()


def _on_sigusr1(signum, frame) -> None:
    # Where the signal pipe is watched, the watcher has written the snapshot already (and could,
    # even while this thread was blocked inside a collective).
    if _signal_pipe is None and _state.session is not None:
        _state.session.dump("SIGUSR1")


def _watch_signals(read_fd: int) -> None:
    """Python runs signal handlers in the main thread only, and only between bytecodes: a rank
    blocked inside a collective would run none until the collective returns, which in a hang is
    never. The interpreter's C handler still writes each signal's number to the wakeup fd at once;
    this thread reads it and writes the in-flight snapshot itself."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            session = _state.session
            if signum == signal.SIGUSR1 and session is not None:
                session.dump("SIGUSR1")
            # On SIGTERM the main thread's handler writes everything and ends the process if it
            # gets to run. Blocked inside a collective it cannot: after a moment, do it from here
            # (the snapshot, the final flush, the metadata marked closed, the default death).
            elif signum == signal.SIGTERM and not _sigterm_seen.wait(2.0):
                if session is not None:
                    session.dump("SIGTERM")
                if _previous_sigterm in (signal.SIG_DFL, None):
                    _at_exit()
                    _die_by_sigterm()


def _die_by_sigterm() -> None:
    """End the process as an unhandled SIGTERM would, from a thread that is not the main one (which
    Python's signal.signal refuses): the C library's signal() puts the default action back."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signal.SIGTERM, None)  # SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
    except Exception:
        pass
    os._exit(128 + signal.SIGTERM)  # where that failed: the exit status a shell gives a SIGTERM


def _install_signal_watch() -> None:
    """SIGUSR1 (if nobody handles it) writes the in-flight snapshot; the wakeup fd lets a thread of
    ours see SIGUSR1 and SIGTERM while the main thread is blocked. Left alone where the process
    already uses a wakeup fd (asyncio, another tool)."""
    global _signal_pipe
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGUSR1, _on_sigusr1)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _signal_pipe = (read_fd, write_fd)
    threading.Thread(target=_watch_signals, args=(read_fd,), name="commtrace-signals", daemon=True).start()


def _install_process_hooks() -> None:
    global _hooks_installed, _previous_sigterm
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)
    try:
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None) or callable(current):
                _previous_sigterm = current
                signal.signal(signal.SIGTERM, _on_sigterm)
            _install_signal_watch()
    except Exception:
        pass


def enable(directory: str | os.PathLike | None = None, **settings: object) -> bool:
    """Start recording into ``directory`` (default ``$COMMTRACE_DIR``). False if already recording."""
    from recorder import install

    if _state.session is not None:
        warn_once("enable:twice", "recording is already on; enable() again does nothing")
        return False
    config = from_env(dir=str(directory) if directory is not None else None, **settings)
    if not config.dir:
        warn_once("enable:nodir", "no trace directory given (set COMMTRACE_DIR); recording stays off")
        return False
    install.install()
    _install_process_hooks()
    global _armed
    _armed = config
    _state.session = Session(config)
    _state.rearm = _rearm
    _adopt_existing_default_group(_state.session)
    return True


_armed: Config | None = None
"""The configuration recording was switched on with, until disable(): a new default process group
after destroy_process_group (a script that runs several jobs in turn) starts a new run."""


def _rearm() -> None:
    if _armed is not None and _state.session is None:
        _state.session = Session(_armed)


def _adopt_existing_default_group(session: Session) -> None:
    """Recording switched on after init_process_group: start now; existing groups stay unrecorded."""
    try:
        import torch.distributed.distributed_c10d as c10d

        default = c10d._world.default_pg
        if default is None:
            return
        if not isinstance(default, C.RecordingProcessGroup):
            warn_once(
                "late",
                "process groups created before recording was switched on are not recorded; "
                "switch it on before init_process_group (COMMTRACE_DIR does)",
            )
        store = c10d._world.pg_map.get(default, (None, None))[1]
        session.start(default.rank(), default.size(), store)
    except Exception as exc:
        warn_once("late:start", "could not attach to the existing process group: %r", exc)


def disable() -> None:
    """Stop recording, flush everything, and restore torch.distributed exactly."""
    from recorder import install

    global _armed
    _armed = None
    _state.rearm = None
    session = _state.session
    if session is not None:
        session.close()
    _state.session = None
    install.uninstall()
