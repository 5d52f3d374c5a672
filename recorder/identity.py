"""Who this process is in which run, and the files that say so.

A :class:`RunIdentity` settles, on a start-up thread of its own (the main thread never waits for
it): the run id all ranks share (agreed through the job's store, ``recorder.coordination``), the
run's folders, ``run.json`` (rank 0) and the rank's metadata file. It keeps the rank's clock offset
to rank 0 (measured at start and then every ``COMMTRACE_CLOCK_INTERVAL_S`` on that thread, served
by rank 0's clock server) and runs the link probe when asked. Nothing of it ever blocks training:
every wait on another rank is bounded, and none happens while the trace closes.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from recorder import clock
from recorder._log import info, warn_once
from recorder.coordination import Coordination
from recorder.groups import backend_name
from recorder.runmeta import allowed_env, atomic_json, int_env, job_fields, new_run_id
from recorder.schema import RANK_META_PREFIX, RUN_META

CLOCK_WAIT_S = 30.0  # how long a rank's clock thread waits for rank 0's clock server to answer
CLOCK_JOIN_S = 2.0  # how long closing waits for a cut-short clock thread to leave the store
PROBE_END_GATHER_S = 10.0  # at shutdown, how long the probe waits for every rank to arrive
RUN_ID_WAIT_S = 60.0  # how long a rank waits for rank 0's run id


class RunIdentity:
    """``report()`` returns the recording's own part of the rank's metadata (counts, groups, state);
    ``on_failure(where, exc)`` is told when setting up the run's files fails."""

    def __init__(self, config, incarnation: str, report, on_failure) -> None:
        self.config = config
        self.pid = os.getpid()
        self.incarnation = incarnation
        self.started_ns = time.time_ns()
        self.rank: int | None = None
        self.world_size: int | None = None
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self.rank_dir: str | None = None
        self.clock: dict[str, object] = {}
        # Seconds the recorder spent waiting on other ranks or on its own threads, by what for.
        self.waits: dict[str, float] = {}
        self._report = report
        self._on_failure = on_failure
        self._coordination: Coordination | None = None
        self._clock_server: clock.Server | None = None
        self._clock_waiter: clock.Waiter | None = None  # the clock thread's store waits, cut short at close
        self._clock_stop = threading.Event()  # set at close or failure: the clock thread measures no more
        self._startup_thread: threading.Thread | None = None
        self._ready = threading.Event()  # the start-up thread has set up the trace (or failed to)
        self._meta_lock = threading.Lock()

    # -- start-up ----------------------------------------------------------------------------------
    def start(self, rank: int, world_size: int, store, on_ready) -> None:
        """Settle the run on a thread of ours; ``on_ready(run_id, run_dir, rank_dir)`` is called there
        once the rank's folder exists (before any metadata is written)."""
        self.rank, self.world_size = rank, world_size
        if store is not None and world_size > 1:
            self._coordination = Coordination(store, rank, clock=self.config.clock_sync, probe=self.config.probe)
            if self._coordination.talk is not None:
                self._clock_waiter = clock.Waiter(self._coordination.talk)
        self._startup_thread = threading.Thread(
            target=self._startup, args=(on_ready,), name="commtrace-startup", daemon=True
        )
        self._startup_thread.start()

    def _startup(self, on_ready) -> None:
        try:
            began = time.monotonic()
            run_id = self.config.run_id or self._agree_run_id()
            self.waits["run_id_s"] = round(time.monotonic() - began, 6)
            run_dir = os.path.join(self.config.dir, run_id)
            rank_dir = os.path.join(run_dir, f"rank={self.rank:05d}")
            os.makedirs(rank_dir, exist_ok=True)
            self.run_id, self.run_dir = run_id, run_dir
            on_ready(run_id, run_dir, rank_dir)
            self.rank_dir = rank_dir
            if self.rank == 0:
                run_meta = job_fields(run_id, self.world_size)
                run_meta.update({"created_ns": self.started_ns, "created_by_host": socket.gethostname()})
                atomic_json(os.path.join(run_dir, RUN_META), run_meta, exclusive=True)
                self._start_clock_server()
            self.write_rank_meta()
            if self.rank == 0:
                ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
                info("recording run %s (%s) into %s", run_id, ranks, run_dir)
        except Exception as exc:
            self._on_failure("startup", exc)
        finally:
            self._ready.set()
        if self._clock_wanted() and self.rank != 0:
            self._clock_loop()

    def wait_ready(self, timeout_s: float) -> None:
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

    def _agree_run_id(self) -> str:
        env = dict(os.environ)
        if not self.world_size or self.world_size == 1 or self._coordination is None:
            return new_run_id(env)
        restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        try:
            return self._coordination.agree_run_id(
                self.rank, self.world_size, lambda: new_run_id(env), restart, RUN_ID_WAIT_S
            )
        except Exception as exc:
            warn_once(
                "run_id",
                "ranks could not agree on a run id through the store (%r); "
                "set COMMTRACE_RUN_ID to group this job's files",
                exc,
            )
            return f"{new_run_id(env)}-rank{self.rank}"

    def no_store_reason(self) -> str:
        if self._coordination is None:
            return "no store to meet the other ranks in"
        return self._coordination.error or "no store client of our own"

    # -- the clock offset to rank 0 ----------------------------------------------------------------
    def _clock_wanted(self) -> bool:
        return bool(self.config.clock_sync and self.world_size and self.world_size > 1 and self.run_id)

    def _clock_base(self) -> str:
        return f"{clock.PREFIX}/{self.run_id}"

    def _start_clock_server(self) -> None:
        """Rank 0: answer the other ranks' clock measurements, on a thread and a store client of its own."""
        if not self._clock_wanted():
            return
        coordination = self._coordination
        if coordination is None or coordination.serve is None:
            self.clock["start"] = {"reference": True, "offset_ns": 0, "error": self.no_store_reason()}
            return
        self._clock_server = clock.Server(coordination.serve, coordination.talk, self._clock_base()).start()
        self.clock["start"] = {"reference": True, "offset_ns": 0, "rtt_ns": 0, "rounds": 0}

    def _clock_loop(self) -> None:
        """A non-zero rank's offset to rank 0's clock: once now, then every COMMTRACE_CLOCK_INTERVAL_S
        until the trace closes (the last one is the ``end`` offset). Nothing waits for this thread,
        and it never talks to the store while the trace closes: rank 0, and with it the store, may
        be gone by then."""
        phase = "start"
        while not self._clock_stop.is_set():
            self.measure_clock(phase)
            if self._clock_stop.is_set():
                return
            try:
                self.write_rank_meta()
            except Exception as exc:
                self._on_failure("writing the rank's metadata", exc)
            phase = "end"
            if self._clock_stop.wait(self.config.clock_interval_s):
                return

    def measure_clock(self, phase: str) -> None:
        """A non-zero rank: its offset to rank 0's clock now, into the metadata (never raises)."""
        rounds = self.config.clock_rounds
        waiter = self._clock_waiter
        if waiter is None:
            result = {"error": self.no_store_reason(), "rounds": 0, "rounds_asked": rounds}
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
                rounds,
                result["error"],
            )

    def halt(self) -> None:
        """No more clock measurements (after a failure: from any thread, without waiting)."""
        self._clock_stop.set()

    def stop_clock(self) -> None:
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

    # -- the link probe ----------------------------------------------------------------------------
    def probe(self, phase: str, group) -> list[dict]:
        """The link probe (COMMTRACE_PROBE) over ``group`` (a plain group), in the caller's thread."""
        from recorder import probe

        began = time.monotonic()
        rows: list[dict] = []
        try:
            store = self._coordination.probe if self._coordination is not None else None
            if store is None:
                raise RuntimeError(self.no_store_reason())
            device = None
            if backend_name(group) == "nccl":
                import torch

                device = torch.device("cuda", torch.cuda.current_device())
            config = self.config
            rows = probe.run(
                group,
                store,
                self.rank,
                self.world_size,
                phase,
                config.probe_bytes,
                config.probe_rounds,
                device,
                gather_timeout_s=PROBE_END_GATHER_S if phase == "end" else None,
            )
        except Exception as exc:
            warn_once(f"probe:{phase}", "link probe (%s) not measured: %r", phase, exc)
        self.waits[f"probe_{phase}_s"] = round(time.monotonic() - began, 6)
        return rows

    # -- the rank's metadata -----------------------------------------------------------------------
    def write_rank_meta(self) -> None:
        """Write the rank's metadata file now (once the rank's folder exists)."""
        # Under a lock: the clock thread and the closing thread may both write, and the file last
        # written must hold the latest state (``closed`` above all).
        with self._meta_lock:
            if self.rank_dir is None:
                return
            meta = job_fields(self.run_id, self.world_size)
            meta.update(
                {
                    "rank": self.rank,
                    "local_rank": int_env("LOCAL_RANK"),
                    "host": socket.gethostname(),
                    "pid": self.pid,
                    "incarnation": self.incarnation,
                    "started_ns": self.started_ns,
                    "updated_ns": time.time_ns(),
                    "config": self.config.as_dict(),
                    "env": allowed_env(dict(os.environ)),
                    "clock": self.clock,
                    "waits_s": dict(self.waits),
                }
            )
            meta.update(self._report())
            path = os.path.join(self.rank_dir, f"{RANK_META_PREFIX}-{self.incarnation}.json")
            atomic_json(path, meta)
