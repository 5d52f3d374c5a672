"""One recording session per process: the recorder's parts, wired together, and their lifecycle.

The parts, each with one job (docs/architecture.md draws them):

* ``events`` (:class:`recorder.records.EventBuffer`): capture appends an issue record before each
  operation and a completion record after it;
* ``flusher`` (:class:`recorder.flusher.Flusher`): a thread of ours that takes the records to the
  segment writer every ``COMMTRACE_FLUSH_S``, polls CUDA works and keeps the hang watchdog;
* ``identity`` (:class:`recorder.identity.RunIdentity`): the run id, the metadata files, the clock
  offset to rank 0 and the link probe;
* ``sampler`` (:class:`recorder.sampler.Sampler`): the host's network counters;
* the process hooks (:mod:`recorder.hooks`): at exit and on SIGTERM they close the session, on
  SIGUSR1 they have it write its operations in flight.

Life of a session (:class:`State`): created ARMED by :func:`enable` (or the environment variable)
before any process group exists, buffering what is recorded; RECORDING from the moment the default
group is created (the run's files are settled on a thread of ours, never on the main thread);
CLOSING and then CLOSED at ``destroy_process_group``, at exit or on SIGTERM, when what is still in
flight is written with its end unset. A failure of ours at any point stops recording (one line,
``failure`` says why) and training goes on.
"""

from __future__ import annotations

import enum
import os
import secrets
import tempfile
import time

from recorder import _state, hooks
from recorder import groups as G
from recorder._log import info, warn_once
from recorder.config import Config, from_env
from recorder.flusher import Flusher
from recorder.identity import RunIdentity
from recorder.records import EventBuffer
from recorder.tally import Reader
from recorder.writer import SegmentWriter

STARTUP_READY_S = 10.0  # how long closing waits for the start-up thread to have set up the trace


class State(enum.Enum):
    ARMED = "armed"  # recording is on; no default process group yet
    RECORDING = "recording"  # the default group exists: the run is settled and written
    CLOSING = "closing"  # the final flush and metadata are being written
    CLOSED = "closed"


class Session:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid = os.getpid()
        self.incarnation = f"{self.pid}-{secrets.token_hex(2)}"
        self.state = State.ARMED
        self.failure: str | None = None  # why recording stopped early, if it did
        self.groups: dict[str, G.GroupInfo] = {}  # the metadata lists every group, used or not
        self.events = EventBuffer(config.max_buffered, config.flush_events)
        self.events.on_failure = self.fail
        self.flusher = Flusher(self.events, config, self.groups, self.fail)
        self.identity = RunIdentity(config, self.incarnation, self._report, self.fail)
        self.sampler = None
        self._metrics = None  # what recorder.metrics() last returned from (recorder.tally.Reader)
        self._default_twin = None  # the default group's plain twin, kept for the link probe
        # The sampler's election lock lives in the temporary directory. Looking it up the first time
        # takes tempfile's module lock for a few milliseconds (it test-writes a file); taken on a thread
        # of ours while the main thread forks a DataLoader worker, the worker would inherit it held and
        # hang in its first tempfile call (multiprocessing shares tensors through one). So here, on
        # the thread that enables recording, before any thread of ours exists.
        self._lock_dir = tempfile.gettempdir()

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def closed(self) -> bool:
        return self.state in (State.CLOSING, State.CLOSED)

    @property
    def rank(self) -> int | None:
        return self.identity.rank

    @property
    def run_id(self) -> str | None:
        return self.identity.run_id

    @property
    def run_dir(self) -> str | None:
        return self.identity.run_dir

    # -- process groups ----------------------------------------------------------------------------
    def on_group_created(self, pg, store, ranks: list[int] | None) -> None:
        """A recording group was just configured by torch; ``ranks`` are its global ranks ([] = all)."""
        G.twin(pg)  # now that torch has configured the group, build its twin from it
        info = G.info_of(pg, list(ranks) if ranks else None)
        self.groups.setdefault(info.name, info)
        if G.backend_name(pg) == "nccl":
            G.enable_cuda_timing(pg, info)
        if not ranks and self.state is State.ARMED:  # the default group
            self.start(pg.rank(), pg.size(), store)
            if self.config.probe and pg.size() > 1:
                self._default_twin = G.twin(pg)
                self.flusher.add_probe_rows(self.identity.probe("start", self._default_twin))

    def start(self, rank: int, world_size: int, store) -> None:
        """The default group exists: start writing, and settle the run off the main thread."""
        self.state = State.RECORDING
        self.flusher.start()
        self.identity.start(rank, world_size, store, self._on_ready)

    def _on_ready(self, run_id: str, run_dir: str, rank_dir: str) -> None:
        """On the start-up thread: the rank's folder exists."""
        rank = self.identity.rank
        footer = {"commtrace.run_id": run_id, "commtrace.rank": str(rank)}
        self.flusher.attach(SegmentWriter(rank_dir, self.incarnation, footer), rank)
        if self.config.sample_hz > 0 and not self.closed:
            from recorder.sampler import Sampler

            config = self.config
            self.sampler = Sampler(
                run_dir,
                run_id,
                self.incarnation,
                config.sample_hz,
                config.sample_flush_s,
                config.proc_root,
                config.sys_root,
                lock_dir=self._lock_dir,
                live_s=config.sample_live_s,
            )
            self.sampler.start()

    # -- what the hooks, install and users ask for -------------------------------------------------
    def flush(self, final: bool = False) -> None:
        """Write every finished operation now; with ``final``, what is in flight too (end unset)."""
        self.flusher.flush(final)

    def metrics(self) -> dict[str, float]:
        """recorder.metrics(): this rank's and host's figures since the last call; {} if they stepped aside."""
        totals = self.flusher.totals
        if totals is None or self.failed:
            return {}
        try:
            if self._metrics is None or self._metrics.totals is not totals:
                self._metrics = Reader(totals)
            sampler = self.sampler
            live = sampler.live if sampler is not None and sampler.elected and not sampler.failed else None
            host = live.totals() if live is not None and live.rows else None
            return self._metrics.read(self.events.dropped, host)
        except Exception as exc:
            self.flusher.totals = None
            warn_once("metrics", "recorder.metrics() stepped aside (%r); the recording goes on", exc)
            return {}

    def dump(self, reason: str) -> None:
        """Write the operations in flight to a snapshot (SIGUSR1, a stuck SIGTERM); never raises."""
        if self.state is State.RECORDING and not self.failed:
            self.flusher.dump(reason)

    def fail(self, where: str, exc: BaseException) -> None:
        """Our own failure: say it once, stop recording, leave training alone. Safe from any thread,
        the hot path's included: nothing here waits."""
        if self.failure is None:
            self.failure = f"{where} failed: {exc!r}"
        # One line for whatever fails first: after it the recorder is out of the way, and nothing
        # else of ours has anything left to say.
        warn_once("fail", "recording stopped (%s failed: %r); training continues unaffected", where, exc)
        self._detach()
        self.flusher.discard()
        self.identity.halt()

    def _detach(self) -> None:
        """Capture records no more into this session, and no hook finds it."""
        if _state.session is self:
            _state.session = None
        if _state.events is self.events:
            _state.events = None

    def before_destroy(self, group) -> None:
        """``destroy_process_group(group)`` is about to run: for a subgroup, a flush; for the default
        group (or all), the last probe and sample while the links are still there, then close."""
        if group is not None:
            try:
                import torch.distributed.distributed_c10d as c10d

                if group is not c10d._world.default_pg:
                    self.flush()
                    return
            except Exception:
                return
        if self._default_twin is not None:
            self.identity.wait_ready(STARTUP_READY_S)
            self.flusher.add_probe_rows(self.identity.probe("end", self._default_twin))
        if self.sampler is not None:
            try:
                self.sampler.sample_now()
            except Exception as exc:
                warn_once("sampler:last", "the last network sample before shutdown was not taken: %r", exc)
        self.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Final flush (in-flight operations included), metadata, stop our threads. Runs once."""
        if self.closed or os.getpid() != self.pid:
            return
        began = time.monotonic()
        self.identity.wait_ready(min(timeout_s, STARTUP_READY_S))
        self.identity.stop_clock()
        self.state = State.CLOSING
        with hooks.closing():
            try:
                self._close(timeout_s, began)
            finally:
                self.state = State.CLOSED

    def _close(self, timeout_s: float, began: float) -> None:
        self._detach()
        self.flusher.stop(timeout_s)
        self.flusher.flush(final=True)
        if self.sampler is not None:
            try:
                self.sampler.close()
            except Exception as exc:
                warn_once("fail:sampler", "the last network counters were not written: %r", exc)
        self.identity.waits["close_s"] = round(time.monotonic() - began, 6)
        try:
            self.identity.write_rank_meta()  # after a failure too: it says that recording stopped, and why
        except Exception as exc:
            if not self.failed:  # after a failure, its one line has been said
                warn_once("fail:meta", "could not write the rank's metadata: %r", exc)
        if self.rank == 0 and self.run_dir and not self.failed:
            info("run %s closed; explain it with: analyze-trace diagnose %s", self.run_id, self.run_dir)

    def _report(self) -> dict:
        """The recording's part of the rank's metadata (RunIdentity writes the rest)."""
        writer, sampler = self.flusher.writer, self.sampler
        return {
            "closed": self.closed,
            "process_groups": [group.metadata() for group in list(self.groups.values())],
            "dropped_events": self.events.dropped,
            "failure": self.failure,
            "segments_written": writer.index if writer is not None else 0,
            "rows_written": writer.rows_written if writer is not None else 0,
            "bytes_written": writer.bytes_written if writer is not None else 0,
            "recorder_cpu_s": round(self.flusher.flush_cpu_s, 6),
            "sampler": None
            if sampler is None
            else {
                "host": sampler.host,
                "elected": sampler.was_elected,
                "samples": sampler.samples,
                "cpu_s": round(sampler.cpu_s, 6),
                "segments_written": sampler.writer.index,
                "sources": sampler.source_names,
            },
        }


# -- switching recording on and off ----------------------------------------------------------------
_armed: Config | None = None
"""The configuration recording was switched on with, until disable(): a new default process group
after destroy_process_group (a script that runs several jobs in turn) starts a new run."""
_fork_hook_installed = False


def _activate(session: Session) -> Session:
    _state.session = session
    _state.events = session.events
    _state.cuda_timing = session.config.cuda_timing
    return session


def _forget_in_child() -> None:
    # A forked child (a DataLoader worker) never records into its parent's files.
    _state.session = None
    _state.events = None


def enable(directory: str | os.PathLike | None = None, **settings: object) -> bool:
    """Start recording into ``directory`` (default ``$COMMTRACE_DIR``). False if already recording."""
    global _armed, _fork_hook_installed
    from recorder import install

    if _state.session is not None:
        warn_once("enable:twice", "recording is already on; enable() again does nothing")
        return False
    config = from_env(dir=str(directory) if directory is not None else None, **settings)
    if not config.dir:
        warn_once("enable:nodir", "no trace directory given (set COMMTRACE_DIR); recording stays off")
        return False
    install.install()
    if not _fork_hook_installed:
        _fork_hook_installed = True
        os.register_at_fork(after_in_child=_forget_in_child)
    hooks.install(lambda: _state.session)
    _armed = config
    session = _activate(Session(config))
    _state.rearm = _rearm
    _adopt_existing_default_group(session)
    return True


def _rearm() -> None:
    if _armed is not None and _state.session is None:
        _activate(Session(_armed))


def _adopt_existing_default_group(session: Session) -> None:
    """Recording switched on after init_process_group: start now; existing groups stay unrecorded."""
    try:
        import torch.distributed.distributed_c10d as c10d

        from recorder.capture import RecordingProcessGroup

        default = c10d._world.default_pg
        if default is None:
            return
        if not isinstance(default, RecordingProcessGroup):
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
    global _armed
    from recorder import install

    _armed = None
    _state.rearm = None
    session = _state.session
    if session is not None:
        session.close()
    _state.session = None
    _state.events = None
    install.uninstall()
