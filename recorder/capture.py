"""Capture of every collective and point-to-point operation, whoever issues it.

Which layer catches what (torch 2.6+; verified on 2.13 CPU):

* Every process group that ``torch.distributed`` creates through ``_new_process_group_helper``
  (``init_process_group``, ``new_group``, ``new_subgroups``, ``DeviceMesh``) is built as a
  :class:`RecordingProcessGroup`, a Python subclass of ``ProcessGroup``. The C++ side of
  ``ProcessGroup`` calls Python overrides through pybind's trampoline, so the same methods see the
  Python API (``dist.all_reduce`` ...), DDP's C++ reducer (bucket allreduce, buffer broadcast,
  parameter verification), functional collectives (DTensor, tensor parallel, compiled graphs) and
  FSDP. Each override records the operation and calls the unmodified ``ProcessGroup`` method, which
  goes through the dispatcher exactly as before, so results and exceptions are the user's own.
* Python-API annotations (``batch_isend_irecv``, the ``*_object`` collectives, ``send``/``recv``)
  only label the operations the group records with the API that issued them; they never record.
* Groups made by ``split_group`` (NCCL comm split) are wrapped in the same class when created.

Completion time: a synchronous call (``opts.asyncOp`` false, as every blocking ``dist.*`` call sets
it) is waited on inside the override, where the caller was about to wait anyway; an asynchronous
CPU operation gets a future callback that fires when gloo completes it; a CUDA operation is
polled off the hot path with ``Work.is_completed()`` and, when ``COMMTRACE_CUDA_TIMING`` is on, its
GPU duration comes from the backend's CUDA events (``Work._get_duration()``).
"""

from __future__ import annotations

import functools
import time

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from recorder import _state
from recorder._log import warn_once

_PG = c10d.ProcessGroup
_Tensor = torch.Tensor
_mono = time.monotonic_ns

# Record layout: a plain list per operation, filled on the hot path, converted by the writer.
PG, SEQ, OP, T0, T1, N_IN, N_OUT, DTYPE, PEER, ROOT, ASYNC, COAL, STEP, API, STATUS, WORK, GPU_NS, DEVICE = range(18)
NFIELDS = 18

OK, ERROR, IN_FLIGHT = "ok", "error", "in_flight"

P2P_OPS = frozenset({"send", "recv", "recv_anysource"})
WAIT_TWICE_BACKENDS = frozenset({"gloo", "fake"})
# Python APIs that wait for their point-to-point operation before returning.
SYNC_P2P_APIS = frozenset({"send", "recv"})


class GroupInfo:
    """What the writer needs to know about one process group; built at the group's first operation."""

    __slots__ = (
        "name",
        "desc",
        "size",
        "group_rank",
        "ranks",
        "backend",
        "seq",
        "p2p",
        "coalescing",
        "index",
        "timing_enabled",
        "wait_inside",
    )

    def __init__(self, pg: _PG) -> None:
        self.name = _safe(lambda: pg.group_name, "?")
        self.desc = _safe(lambda: pg.group_desc, "")
        self.size = pg.size()
        self.group_rank = pg.rank()
        ranks = _safe(lambda: c10d._world.pg_group_ranks.get(pg), None)
        if ranks:
            ordered = sorted(ranks.items(), key=lambda kv: kv[1])
            self.ranks = [g for g, _ in ordered]
        else:
            self.ranks = list(range(self.size))
        self.backend = _safe(lambda: str(c10d.get_backend(pg)), "")
        if not self.backend:
            self.backend = _safe(pg._get_backend_name, "unknown")
        self.seq = 0
        self.p2p: dict[tuple[str, int], int] = {}
        self.coalescing = False
        self.index = -1
        self.timing_enabled = False
        # Backends whose collective works may be waited on twice (the caller waits again after us).
        self.wait_inside = self.backend in WAIT_TWICE_BACKENDS

    def global_rank(self, group_rank: int | None) -> int | None:
        if group_rank is None or group_rank < 0:
            return None
        if group_rank < len(self.ranks):
            return self.ranks[group_rank]
        return group_rank


def _safe(fn, default):
    try:
        return fn()
    except Exception:
        return default


def _numel(x) -> int:
    if isinstance(x, _Tensor):
        return x.numel()
    if len(x) == 1 and isinstance(x[0], _Tensor):
        return x[0].numel()
    total = 0
    for y in x:
        total += _numel(y)
    return total


def _first_tensor(x):
    if isinstance(x, _Tensor):
        return x
    if x and isinstance(x[0], _Tensor):
        return x[0]
    for y in x:
        t = _first_tensor(y)
        if t is not None:
            return t
    return None


def _info(pg) -> GroupInfo:
    info = pg.__dict__.get("_ct_info")
    if info is None:
        info = GroupInfo(pg)
        pg._ct_info = info
    return info


def _complete(rec, fut) -> None:
    # T1 is written last: the writer treats a record with T1 set as finished.
    now = _mono()
    try:
        fut.value()
    except Exception:
        rec[STATUS] = ERROR
    else:
        rec[STATUS] = OK
    rec[T1] = now


def _begin(pg, op, n_in, n_out, tensor, peer, root, opts, p2p_peer=None):
    """Start the record of one operation; the caller then forwards the call to the twin group."""
    s = _state.session
    info = pg._ct_info
    if info is None:
        info = _info(pg)
    if op in P2P_OPS:
        key = (op, -1 if p2p_peer is None else p2p_peer)
        seq = info.p2p.get(key, 0)
        info.p2p[key] = seq + 1
    else:
        seq = info.seq
        info.seq = seq + 1
    is_async = True if opts is None else getattr(opts, "asyncOp", True)
    api = _state.tls.__dict__.get("api") if _state.api_depth else None
    if api in SYNC_P2P_APIS and op in P2P_OPS:
        is_async = False
    rec = [
        info,
        seq,
        op,
        _mono(),
        None,
        n_in,
        n_out,
        tensor.dtype if tensor is not None else None,
        peer,
        root,
        is_async,
        info.coalescing,
        _state.step,
        api,
        IN_FLIGHT,
        None,
        None,
        None,
    ]
    buf = s.buffer
    n = len(buf)
    if n < s.max_buffered:
        buf.append(rec)
        if n == s.flush_events:
            s.wake()
    else:
        s.dropped += 1
    return rec


waiting: dict = {}
"""Point-to-point works not yet waited on, mapped to their records (the work is kept alive here)."""
_WAITING_MAX = 65536


def make_wait_hook(original_wait):
    """A replacement for ``Work.wait`` that completes the record of a point-to-point work."""

    def wait(self, *args, **kwargs):
        rec = waiting.pop(self, None) if waiting else None
        if rec is None:
            return original_wait(self, *args, **kwargs)
        try:
            result = original_wait(self, *args, **kwargs)
        except BaseException:
            rec[STATUS] = ERROR
            rec[T1] = _mono()
            raise
        rec[STATUS] = OK
        rec[T1] = _mono()
        return result

    wait.__wrapped__ = original_wait
    return wait


def _raised(rec) -> None:
    rec[STATUS] = ERROR
    rec[T1] = _mono()


def _end(rec, work, tensor):
    """Arrange for the record's completion time; returns ``work`` unchanged."""
    try:
        if work is None:
            rec[STATUS] = OK
            rec[T1] = _mono()
        elif tensor is not None and tensor.is_cuda:
            # CUDA work completes on the device: polled off the hot path, timed by CUDA events.
            rec[DEVICE] = "cuda"
            rec[WORK] = work
            s = _state.session
            if s is not None:
                info = rec[PG]
                if not info.timing_enabled:
                    s.enable_cuda_timing(None, info)
                s.pending_poll.append(rec)
                s.wake()
        elif rec[OP] in P2P_OPS:
            # gloo's send/recv works have no future and must be waited on once only, by their
            # owner: they complete when the owner's Work.wait() returns (see wait_hook).
            rec[DEVICE] = "cpu"
            if len(waiting) < _WAITING_MAX:
                waiting[work] = rec
        elif not rec[ASYNC] and rec[PG].wait_inside:
            # The caller waits right after we return; waiting here first is free and exact. (Only
            # for gloo collectives: a gloo send/recv work must not be waited on twice.)
            rec[DEVICE] = "cpu"
            try:
                work.wait()
            except Exception:
                rec[STATUS] = ERROR
            else:
                rec[STATUS] = OK
            rec[T1] = _mono()
        else:
            rec[DEVICE] = "cpu" if tensor is not None else None
            try:
                fut = work.get_future()
            except RuntimeError:  # a backend without futures: poll instead
                rec[WORK] = work
                s = _state.session
                if s is not None:
                    s.pending_poll.append(rec)
                s.wake()
            else:
                fut.add_done_callback(functools.partial(_complete, rec))
    except Exception as exc:  # our bookkeeping only; the work itself is the user's
        warn_once("capture:complete", "could not follow completion of %s: %r", rec[OP], exc)
    return work


class RecordingProcessGroup(_PG):
    """A ``ProcessGroup`` that records every operation issued to it, from Python or C++.

    Built by ``torch.distributed`` itself (see :mod:`recorder.install`); users never construct it.
    Its methods are named as the C++ virtuals, so pybind's trampoline sends C++ callers here too;
    each records and forwards to the group's plain twin (see :func:`_twin`).
    """

    def __init__(self, *args) -> None:
        # pybind only builds the Python-overridable alias through the (rank, size) constructor, so the
        # store is kept here and served by get_group_store.
        if len(args) == 3:
            store, rank, size = args
        else:
            store, (rank, size) = None, args
        _PG.__init__(self, rank, size)
        self._ct_store = store
        self._ct_info = None
        self._ct_shadow = None

    def _register_backend(self, *args, **kwargs):
        _PG._register_backend(self, *args, **kwargs)
        if self._ct_shadow is not None:
            self._ct_shadow._register_backend(*args, **kwargs)

    def get_group_store(self):
        store = self.__dict__.get("_ct_store")
        return store if store is not None else _PG.get_group_store(self)

    # -- collectives -------------------------------------------------------------------------------
    def allreduce(self, *args, **kwargs):
        if _state.session is None:
            return _twin(self).allreduce(*args, **kwargs)
        t = args[0] if args else kwargs.get("tensors", kwargs.get("tensor"))
        opts = args[1] if len(args) > 1 else kwargs.get("opts")
        n = _numel(t)
        t = _first_tensor(t)
        rec = _begin(self, "all_reduce", n, n, t, None, None, opts)
        try:
            work = _twin(self).allreduce(*args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def allreduce_coalesced(self, tensors, *args, **kwargs):
        if _state.session is None:
            return _twin(self).allreduce_coalesced(tensors, *args, **kwargs)
        n = _numel(tensors)
        t = _first_tensor(tensors)
        rec = _begin(self, "all_reduce_coalesced", n, n, t, None, None, args[0] if args else kwargs.get("opts"))
        try:
            work = _twin(self).allreduce_coalesced(tensors, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def broadcast(self, *args, **kwargs):
        if _state.session is None:
            return _twin(self).broadcast(*args, **kwargs)
        t = args[0] if args else kwargs.get("tensors", kwargs.get("tensor"))
        opts = args[1] if len(args) > 1 else kwargs.get("opts")
        root = (
            getattr(opts, "rootRank", 0)
            if opts is not None and not isinstance(opts, int)
            else (opts if isinstance(opts, int) else 0)
        )
        n = _numel(t)
        t = _first_tensor(t)
        rec = _begin(self, "broadcast", n, n, t, None, root, opts if not isinstance(opts, int) else None)
        try:
            work = _twin(self).broadcast(*args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def reduce(self, *args, **kwargs):
        if _state.session is None:
            return _twin(self).reduce(*args, **kwargs)
        t = args[0] if args else kwargs.get("tensors", kwargs.get("tensor"))
        opts = args[1] if len(args) > 1 else kwargs.get("opts")
        root = (
            getattr(opts, "rootRank", 0)
            if opts is not None and not isinstance(opts, int)
            else (opts if isinstance(opts, int) else 0)
        )
        n = _numel(t)
        t = _first_tensor(t)
        rec = _begin(self, "reduce", n, n, t, None, root, opts if not isinstance(opts, int) else None)
        try:
            work = _twin(self).reduce(*args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def allgather(self, output_lists, input_tensors, *args, **kwargs):
        if _state.session is None:
            return _twin(self).allgather(output_lists, input_tensors, *args, **kwargs)
        t = _first_tensor(input_tensors)
        rec = _begin(
            self,
            "all_gather",
            _numel(input_tensors),
            _numel(output_lists),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).allgather(output_lists, input_tensors, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def all_gather_single(self, output, input, *args, **kwargs):
        if _state.session is None:
            return _twin(self).all_gather_single(output, input, *args, **kwargs)
        t = input
        rec = _begin(
            self,
            "all_gather_into_tensor",
            input.numel(),
            output.numel(),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).all_gather_single(output, input, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def allgather_coalesced(self, output_lists, input_tensors, *args, **kwargs):
        if _state.session is None:
            return _twin(self).allgather_coalesced(output_lists, input_tensors, *args, **kwargs)
        t = _first_tensor(input_tensors)
        rec = _begin(
            self,
            "all_gather_coalesced",
            _numel(input_tensors),
            _numel(output_lists),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).allgather_coalesced(output_lists, input_tensors, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def all_gather_single_coalesced(self, outputs, inputs, *args, **kwargs):
        if _state.session is None:
            return _twin(self).all_gather_single_coalesced(outputs, inputs, *args, **kwargs)
        t = _first_tensor(inputs)
        rec = _begin(
            self,
            "all_gather_into_tensor_coalesced",
            _numel(inputs),
            _numel(outputs),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).all_gather_single_coalesced(outputs, inputs, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def reduce_scatter(self, outputs, input_lists, *args, **kwargs):
        if _state.session is None:
            return _twin(self).reduce_scatter(outputs, input_lists, *args, **kwargs)
        t = _first_tensor(outputs)
        rec = _begin(
            self,
            "reduce_scatter",
            _numel(input_lists),
            _numel(outputs),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).reduce_scatter(outputs, input_lists, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def reduce_scatter_single(self, output, input, *args, **kwargs):
        if _state.session is None:
            return _twin(self).reduce_scatter_single(output, input, *args, **kwargs)
        t = input
        rec = _begin(
            self,
            "reduce_scatter_tensor",
            input.numel(),
            output.numel(),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).reduce_scatter_single(output, input, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def reduce_scatter_single_coalesced(self, outputs, inputs, *args, **kwargs):
        if _state.session is None:
            return _twin(self).reduce_scatter_single_coalesced(outputs, inputs, *args, **kwargs)
        t = _first_tensor(inputs)
        rec = _begin(
            self,
            "reduce_scatter_tensor_coalesced",
            _numel(inputs),
            _numel(outputs),
            t,
            None,
            None,
            args[0] if args else kwargs.get("opts"),
        )
        try:
            work = _twin(self).reduce_scatter_single_coalesced(outputs, inputs, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def alltoall(self, outputs, inputs, *args, **kwargs):
        if _state.session is None:
            return _twin(self).alltoall(outputs, inputs, *args, **kwargs)
        t = _first_tensor(inputs)
        rec = _begin(
            self, "all_to_all", _numel(inputs), _numel(outputs), t, None, None, args[0] if args else kwargs.get("opts")
        )
        try:
            work = _twin(self).alltoall(outputs, inputs, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def all_to_all_single(self, output, input, *args, **kwargs):
        if _state.session is None:
            return _twin(self).all_to_all_single(output, input, *args, **kwargs)
        opts = args[2] if len(args) > 2 else kwargs.get("opts")
        t = input
        rec = _begin(self, "all_to_all_single", input.numel(), output.numel(), t, None, None, opts)
        try:
            work = _twin(self).all_to_all_single(output, input, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def gather(self, output_lists, input_tensors, *args, **kwargs):
        if _state.session is None:
            return _twin(self).gather(output_lists, input_tensors, *args, **kwargs)
        opts = args[0] if args else kwargs.get("opts")
        root = (
            getattr(opts, "rootRank", 0)
            if opts is not None and not isinstance(opts, int)
            else (opts if isinstance(opts, int) else 0)
        )
        t = _first_tensor(input_tensors)
        rec = _begin(
            self,
            "gather",
            _numel(input_tensors),
            _numel(output_lists),
            t,
            None,
            root,
            opts if not isinstance(opts, int) else None,
        )
        try:
            work = _twin(self).gather(output_lists, input_tensors, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def scatter(self, outputs, input_lists, *args, **kwargs):
        if _state.session is None:
            return _twin(self).scatter(outputs, input_lists, *args, **kwargs)
        opts = args[0] if args else kwargs.get("opts")
        root = (
            getattr(opts, "rootRank", 0)
            if opts is not None and not isinstance(opts, int)
            else (opts if isinstance(opts, int) else 0)
        )
        t = _first_tensor(outputs)
        rec = _begin(
            self,
            "scatter",
            _numel(input_lists),
            _numel(outputs),
            t,
            None,
            root,
            opts if not isinstance(opts, int) else None,
        )
        try:
            work = _twin(self).scatter(outputs, input_lists, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def barrier(self, *args, **kwargs):
        if _state.session is None:
            return _twin(self).barrier(*args, **kwargs)
        opts = args[0] if args else kwargs.get("opts")
        t = None
        rec = _begin(self, "barrier", 0, 0, t, None, None, opts if isinstance(opts, dist.BarrierOptions) else None)
        try:
            work = _twin(self).barrier(*args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def monitored_barrier(self, *args, **kwargs):
        if _state.session is None:
            return _twin(self).monitored_barrier(*args, **kwargs)
        t = None
        rec = _begin(self, "monitored_barrier", 0, 0, t, None, None, _SYNC)
        try:
            work = _twin(self).monitored_barrier(*args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    # -- point to point ----------------------------------------------------------------------------
    def send(self, tensors, dst, *args, **kwargs):
        if _state.session is None:
            return _twin(self).send(tensors, dst, *args, **kwargs)
        n = _numel(tensors)
        t = _first_tensor(tensors)
        rec = _begin(self, "send", n, n, t, dst, None, None, dst)
        try:
            work = _twin(self).send(tensors, dst, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def recv(self, tensors, src, *args, **kwargs):
        if _state.session is None:
            return _twin(self).recv(tensors, src, *args, **kwargs)
        n = _numel(tensors)
        t = _first_tensor(tensors)
        rec = _begin(self, "recv", n, n, t, src, None, None, src)
        try:
            work = _twin(self).recv(tensors, src, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    def recv_anysource(self, tensors, *args, **kwargs):
        if _state.session is None:
            return _twin(self).recv_anysource(tensors, *args, **kwargs)
        n = _numel(tensors)
        t = _first_tensor(tensors)
        rec = _begin(self, "recv_anysource", n, n, t, None, None, None, None)
        try:
            work = _twin(self).recv_anysource(tensors, *args, **kwargs)
        except BaseException:
            _raised(rec)
            raise
        return _end(rec, work, t)

    # -- coalescing (NCCL groups, batch_isend_irecv) -------------------------------------------------
    def _start_coalescing(self, *args, **kwargs):
        result = _twin(self)._start_coalescing(*args, **kwargs)
        if _state.session is not None:
            _info(self).coalescing = True
        return result

    def _end_coalescing(self, *args, **kwargs):
        info = self.__dict__.get("_ct_info")
        if info is not None:
            info.coalescing = False
        return _twin(self)._end_coalescing(*args, **kwargs)

    # -- groups made from this one -----------------------------------------------------------------
    def split_group(self, *args, **kwargs):
        new = _twin(self).split_group(*args, **kwargs)
        return rewrap(new) if new is not None else None


class _SyncOpts:
    asyncOp = False


_SYNC = _SyncOpts()


def _backend_type(backend) -> _PG.BackendType:
    name = type(backend).__name__
    return {
        "ProcessGroupGloo": _PG.BackendType.GLOO,
        "ProcessGroupNCCL": _PG.BackendType.NCCL,
        "ProcessGroupUCC": _PG.BackendType.UCC,
        "ProcessGroupMPI": _PG.BackendType.MPI,
        "ProcessGroupXCCL": _PG.BackendType.XCCL,
    }.get(name, _PG.BackendType.CUSTOM)


def _copy_into(src: _PG, dst: _PG) -> None:
    """Give ``dst`` the backends, name, description and device binding of ``src``."""
    for device in src._device_types:
        backend = src._get_backend(device)
        dst._register_backend(device, _backend_type(backend), backend)
    try:
        default = src._get_backend_name()
        mapping = {
            "gloo": _PG.BackendType.GLOO,
            "nccl": _PG.BackendType.NCCL,
            "ucc": _PG.BackendType.UCC,
            "mpi": _PG.BackendType.MPI,
            "xccl": _PG.BackendType.XCCL,
        }
        dst._set_default_backend(mapping.get(default, _PG.BackendType.CUSTOM))
    except Exception:
        pass
    dst._set_group_name(src.group_name)
    dst._set_group_desc(src.group_desc)
    if src.bound_device_id is not None:
        dst.bound_device_id = src.bound_device_id


def rewrap(pg: _PG) -> _PG:
    """A RecordingProcessGroup that shares ``pg``'s backends (used for groups made in C++)."""
    if isinstance(pg, RecordingProcessGroup) or type(pg) is not _PG:
        return pg
    try:
        wrapped = RecordingProcessGroup(_safe(pg.get_group_store, None), pg.rank(), pg.size())
        _copy_into(pg, wrapped)
        wrapped._ct_shadow = pg
        return wrapped
    except Exception as exc:
        warn_once("capture:rewrap", "could not record a process group made by split: %r", exc)
        return pg


def _twin(pg: RecordingProcessGroup) -> _PG:
    """The plain ``ProcessGroup`` that does the work of ``pg``: same store, backends, name and device.

    Every operation is forwarded to it, so it runs exactly as on an unrecorded group: through the
    pybind binding (which releases the GIL), the dispatcher and the same backend objects. Calling the
    base method of ``pg`` itself instead would go through pybind's trampoline, which keeps the GIL
    for the whole C++ call and can deadlock against a gloo worker thread that needs the GIL.
    """
    twin = pg._ct_shadow
    if twin is None:
        store = pg.__dict__.get("_ct_store")
        twin = _PG(store, pg.rank(), pg.size()) if store is not None else _PG(pg.rank(), pg.size())
        _copy_into(pg, twin)
        pg._ct_shadow = twin
    return twin
