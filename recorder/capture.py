"""Capture of every collective and point-to-point operation, whoever issues it.

Which layer catches what (torch 2.6+; verified on 2.13 CPU):

* Every process group that ``torch.distributed`` creates through ``_new_process_group_helper``
  (``init_process_group``, ``new_group``, ``new_subgroups``, ``DeviceMesh``) is built as a
  :class:`RecordingProcessGroup`, a Python subclass of ``ProcessGroup``. The C++ side of
  ``ProcessGroup`` calls Python overrides through pybind's trampoline, so the same methods see the
  Python API (``dist.all_reduce`` ...), DDP's C++ reducer (bucket allreduce, buffer broadcast,
  parameter verification), functional collectives (DTensor, tensor parallel, compiled graphs) and
  FSDP. Each override records the operation and forwards the call to the group's plain twin (same
  store, backends and name), which goes through the dispatcher exactly as an unrecorded call, so
  results and exceptions are the user's own. See docs/capture.md.
* Python-API annotations (``batch_isend_irecv``, the ``*_object`` collectives, ``send``/``recv``)
  only label the operations the group records with the API that issued them; they never record.
* Groups made by ``split_group`` (NCCL comm split) are wrapped in the same class when created.

Completion time: a synchronous gloo collective (``opts.asyncOp`` false, as every blocking ``dist.*``
call sets it) is waited on inside the override, where the caller was about to wait anyway; an
asynchronous CPU collective gets a future callback that fires when gloo completes it; a gloo
send/recv completes when its owner's ``Work.wait()`` returns; a CUDA operation is polled off the hot
path with ``Work.is_completed()`` and, when ``COMMTRACE_CUDA_TIMING`` is on, its GPU duration comes
from the backend's CUDA events (``Work._get_duration()``).
"""

from __future__ import annotations

import functools
import threading
import time

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from recorder import _state
from recorder._log import warn_once
from recorder.records import (  # noqa: F401  (the names are capture's API too: C.OPS, C.ISSUE, C.OK ...)
    APIS,
    DEVICE_CPU,
    DEVICE_CUDA,
    DEVICE_NAMES,
    DEVICE_NONE,
    DONE,
    DTYPES,
    ERROR,
    IN_FLIGHT,
    ISSUE,
    NULL32,
    NULL64,
    OK,
    OPS,
    P2P_OPS,
    STATUS_NAMES,
    Names,
)

_PG = c10d.ProcessGroup
_Tensor = torch.Tensor
_mono = time.monotonic_ns
# Work.wait as torch defines it, taken before install.py hooks it for send/recv: the hot path's own
# wait on a collective goes straight to C++ (through the hook it cost a fifth of the recording).
_Work = torch._C._distributed_c10d.Work
_native_wait = _Work.wait

# The records an operation leaves (an issue before the call, a completion after), the name tables and
# the null encodings are declared once, without torch, in recorder.records; capture only packs them.
_issue = ISSUE.pack
_done = DONE.pack

GROUPS: list = []
"""Every GroupInfo of this process, by index (issue events carry the index)."""


_dtype_codes = DTYPES.codes

WAIT_TWICE_BACKENDS = frozenset({"gloo", "fake"})
# Python APIs that wait for their point-to-point operation before returning.
SYNC_P2P_APIS = frozenset({APIS.code("send"), APIS.code("recv")})


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

    def __init__(self, pg: _PG, ranks: list[int] | None = None) -> None:
        self.name = _safe(lambda: pg.group_name, "?")
        self.desc = _safe(lambda: pg.group_desc, "")
        self.size = pg.size()
        self.group_rank = pg.rank()
        if ranks:
            self.ranks = list(ranks)  # global ranks in group-rank order, as given to the group's creation
        else:
            registered = _safe(lambda: c10d._world.pg_group_ranks.get(pg), None)
            if registered:
                self.ranks = [g for g, _ in sorted(registered.items(), key=lambda kv: kv[1])]
            else:
                self.ranks = list(range(self.size))
        self.backend = _safe(lambda: str(c10d.get_backend(pg)), "")
        if not self.backend:
            self.backend = _safe(pg._get_backend_name, "unknown")
        self.seq = 0
        self.p2p: dict[tuple[int, int], int] = {}  # (op code, peer) -> next seq
        self.coalescing = False
        self.timing_enabled = False
        # Backends whose collective works may be waited on twice (the caller waits again after us).
        self.wait_inside = self.backend in WAIT_TWICE_BACKENDS
        self.index = len(GROUPS)
        GROUPS.append(self)


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


def _describe(tensor) -> tuple[int, int]:
    """(dtype code, device code) of a tensor or None; _record inlines the same."""
    if tensor is None:
        return -1, DEVICE_NONE
    dtype = _dtype_codes.get(tensor.dtype)
    if dtype is None:
        dtype = DTYPES.code(tensor.dtype)
    return dtype, DEVICE_CUDA if tensor.is_cuda else DEVICE_CPU


def _info(pg, ranks: list[int] | None = None) -> GroupInfo:
    info = pg.__dict__.get("_ct_info")
    if info is None:
        info = GroupInfo(pg, ranks)
        pg._ct_info = info
    return info


def _complete(session, rid: int, fut) -> None:
    """Future callback of an asynchronous CPU collective: runs on the backend's thread (gloo's worker)."""
    now = _mono()
    if _get_ident() not in _kept_thread_states:
        _keep_thread_state()
    done = session.done
    try:
        fut.value()
    except Exception:
        done += _done(rid, now, NULL64, ERROR)
    else:
        done += _done(rid, now, NULL64, OK)


# A future callback runs on the thread that completes the work, a C++ thread that Python does not know.
# pybind11 gives such a thread a fresh PyThreadState for each callback and deletes it afterwards; with
# it goes the thread state's frame stack, one mmap and one munmap per callback, and munmap in a
# process with busy threads interrupts the other cores. That was most of the recorder's cost in a gloo
# DDP loop (benchmarks/ddp_overhead.py: +3 % of the step on 2 cores, +6 % under strace, with 4,000
# extra munmap calls per 1,000 steps). One extra reference to the thread state, taken inside the first
# callback on each thread, keeps it alive, and pybind11 then only swaps it in and out: what torch's
# autograd engine does for its own worker threads. The thread states stay until the interpreter ends;
# the set bounds how many threads get one.
_kept_thread_states: set[int] = set()
_KEEP_THREAD_STATES_MAX = 128
_get_ident = threading.get_ident


def _keep_thread_state() -> None:
    kept = _kept_thread_states
    if len(kept) >= _KEEP_THREAD_STATES_MAX:
        return
    kept.add(_get_ident())
    try:
        import ctypes

        # The GIL is held here, so this only counts one more user of the current thread state.
        ctypes.pythonapi.PyGILState_Ensure()
    except Exception:  # not CPython: nothing to keep
        pass


def _record(pg, fn, op, args, kwargs, n_in, n_out, tensor, peer, root, opts):
    """Record one collective around ``fn(twin, *args, **kwargs)``: the recorder's hot path.

    ``op`` is the op's code (OPS); ``peer`` and ``root`` are group ranks or NULL32. Every line here
    is paid on every collective call (benchmarks/recorder_overhead.py measures it): values are read
    once into locals, and nothing allocates but the two packed records.
    """
    try:
        s = _state.session
        info = pg._ct_info or _info(pg)
        seq = info.seq
        info.seq = seq + 1
        is_async = True if opts is None else getattr(opts, "asyncOp", True)
        if tensor is None:
            dtype, device = -1, DEVICE_NONE
        else:
            dtype = _dtype_codes.get(tensor.dtype)
            if dtype is None:
                dtype = DTYPES.code(tensor.dtype)
            device = DEVICE_CUDA if tensor.is_cuda else DEVICE_CPU
        buf = s.buffer
        n = len(buf)
        if n < s.max_bytes:
            rid = next(s.ids)
            buf += _issue(
                rid,
                _mono(),
                seq,
                n_in,
                n_out,
                _state.step_code,
                info.index,
                peer,
                root,
                op,
                dtype,
                _state.tls.__dict__.get("api", -1) if _state.api_depth else -1,
                is_async,
                info.coalescing,
                device,
            )
            if n == s.flush_bytes:
                s.wake()
        else:
            s.dropped += 1
            rid = None
        twin = pg._ct_shadow or _twin(pg)
    except Exception as exc:  # our bookkeeping failed: step aside, and run this call unrecorded
        _step_aside("capture", exc)
        return fn(pg._ct_shadow or _twin(pg), *args, **kwargs)
    try:
        work = fn(twin, *args, **kwargs)
    except BaseException:
        if rid is not None:
            done = s.done
            done += _done(rid, _mono(), NULL64, ERROR)
        raise
    if rid is None:
        return work
    if work is not None and not is_async and device != DEVICE_CUDA and info.wait_inside:
        # The common case, inline: the caller waits right after we return, so waiting here first is
        # free and exact (gloo collective works may be waited on twice; its send/recv works may not).
        done = s.done
        try:
            _native_wait(work)
        except Exception:
            done += _done(rid, _mono(), NULL64, ERROR)
        else:
            done += _done(rid, _mono(), NULL64, OK)
    else:
        if device == DEVICE_CUDA and not info.timing_enabled:
            s.enable_cuda_timing(pg, info)
        _end(s, rid, work, device)
    return work


def _record_p2p(pg, fn, op, args, kwargs, tensors, peer):
    """Record one send/recv: ``seq`` counts per (group, direction, peer), like NCCL's p2p sequence."""
    try:
        s = _state.session
        info = pg._ct_info or _info(pg)
        key = (op, -1 if peer is None else peer)
        seq = info.p2p.get(key, 0)
        info.p2p[key] = seq + 1
        api = _state.tls.__dict__.get("api", -1) if _state.api_depth else -1
        n = _numel(tensors)
        dtype, device = _describe(_first_tensor(tensors))
        buf = s.buffer
        if len(buf) < s.max_bytes:
            rid = next(s.ids)
            buf += _issue(
                rid,
                _mono(),
                seq,
                n,
                n,
                _state.step_code,
                info.index,
                NULL32 if peer is None else peer,
                NULL32,
                op,
                dtype,
                api,
                api not in SYNC_P2P_APIS,
                info.coalescing,
                device,
            )
        else:
            s.dropped += 1
            rid = None
    except Exception as exc:  # our bookkeeping failed: step aside, and run this call unrecorded
        _step_aside("capture", exc)
        return fn(pg._ct_shadow or _twin(pg), *args, **kwargs)
    try:
        work = fn(pg._ct_shadow or _twin(pg), *args, **kwargs)
    except BaseException:
        if rid is not None:
            done = s.done
            done += _done(rid, _mono(), NULL64, ERROR)
        raise
    if rid is None or work is None:
        return work
    try:
        if device == DEVICE_CUDA:
            if not info.timing_enabled:
                s.enable_cuda_timing(pg, info)
            s.pending_poll.append((rid, work, True))
        elif len(waiting) < _WAITING_MAX:
            # gloo's send/recv works have no future and must be waited on once only, by their owner:
            # they complete when the owner's Work.wait() returns (see make_wait_hook).
            with _waiting_lock:
                waiting[work] = (s, rid)
                if wait_hook is not None and _Work.wait is not wait_hook:
                    _Work.wait = wait_hook
    except Exception as exc:
        warn_once("capture:p2p", "could not follow completion of %s: %r", OPS.names[op], exc)
    return work


waiting: dict = {}
"""Point-to-point works not yet waited on, mapped to (session, record id); the work is kept alive here."""
_WAITING_MAX = 4096  # bounds the works (and tensors) kept alive for un-waited sends
_waiting_lock = threading.Lock()
wait_hook = None
"""The ``Work.wait`` replacement (make_wait_hook), set by install.py. It is in place only while
``waiting`` holds a work: every other wait in the job, collectives' included, stays torch's own."""


def make_wait_hook(original_wait):
    """A replacement for ``Work.wait`` that completes the record of a point-to-point work."""

    def wait(self, *args, **kwargs):
        with _waiting_lock:
            entry = waiting.pop(self, None)
            if not waiting and _Work.wait is wait:
                _Work.wait = original_wait  # nothing left to follow: torch's own wait again
        if entry is None:
            return original_wait(self, *args, **kwargs)
        session, rid = entry
        done = session.done
        try:
            result = original_wait(self, *args, **kwargs)
        except BaseException:
            done += _done(rid, _mono(), NULL64, ERROR)
            raise
        done += _done(rid, _mono(), NULL64, OK)
        return result

    wait.__wrapped__ = original_wait
    return wait


def _end(s, rid: int, work, device) -> None:
    """Arrange for the completion event of a collective (all but the inline gloo case of _record)."""
    try:
        if work is None:
            done = s.done
            done += _done(rid, _mono(), NULL64, OK)
        elif device == DEVICE_CUDA:
            # CUDA work completes on the device: polled off the hot path, timed by CUDA events.
            s.pending_poll.append((rid, work, True))
        else:
            try:
                fut = work.get_future()
            except RuntimeError:  # a backend without futures: poll instead
                s.pending_poll.append((rid, work, False))
            else:
                fut.add_done_callback(functools.partial(_complete, s, rid))
    except Exception as exc:  # our bookkeeping only; the work itself is the user's
        warn_once("capture:complete", "could not follow completion of an operation: %r", exc)


def _step_aside(where: str, exc: BaseException) -> None:
    """A failure of ours on the hot path: recording stops (one line), every later call passes straight
    through; training never sees the exception."""
    session = _state.session
    if session is not None:
        session._fail(where, exc)
    else:
        warn_once("fail", "recording stopped (%s failed: %r); training continues unaffected", where, exc)


def _unparsed(method: str, exc: BaseException) -> None:
    """Arguments we could not size: run the call unrecorded rather than risk the user's call."""
    warn_once(f"parse:{method}", "could not record a %s call (%r); such calls run unrecorded", method, exc)


def _one(t):
    """(first tensor, total elements) of a tensor or a list of tensors; the common case is one tensor."""
    if type(t) is list and len(t) == 1:
        x = t[0]
        if isinstance(x, _Tensor):
            return x, x.numel()
    return _first_tensor(t), _numel(t)


def _two(args, kwargs, first: str, second: str):
    if len(args) >= 2:
        return args[0], args[1]
    return (args[0] if args else kwargs[first]), kwargs[second]


def _opts(args, index: int, kwargs):
    return args[index] if len(args) > index else kwargs.get("opts")


def _root(opts) -> int:
    if isinstance(opts, int):
        return opts
    return getattr(opts, "rootRank", 0) if opts is not None else 0


def _sizer(kind: str, first: str, second: str | None, opts_at: int):
    """Build the function that sizes one kind of call: ``(args, kwargs) -> _record's sizing arguments``.

    kind: "inplace" (one tensor list, in = out), "rooted" (the same, with a root), "pair" (one output
    and one input tensor: the hot path of FSDP and tensor parallelism), "in" / "out" (lists: outputs
    first, inputs second; the dtype is read from the inputs / outputs), "rooted_in" / "rooted_out"
    (gather / scatter: the same, with a root).
    """
    if kind == "pair":

        def size_pair(args, kwargs):
            if len(args) > opts_at:
                output, input, opts = args[0], args[1], args[opts_at]
            else:
                output, input = _two(args, kwargs, first, second)
                opts = kwargs.get("opts")
            return input.numel(), output.numel(), input, NULL32, NULL32, opts

        return size_pair

    def size(args, kwargs):
        opts = _opts(args, opts_at, kwargs)
        if kind in ("inplace", "rooted"):
            x, n = _one(args[0] if args else kwargs.get(first, kwargs.get("tensor")))
            n_in = n_out = n
        else:
            outputs, inputs = _two(args, kwargs, first, second)
            n_in, n_out = _numel(inputs), _numel(outputs)
            x = _first_tensor(outputs if kind.endswith("out") else inputs)
        if kind.startswith("rooted"):
            return n_in, n_out, x, NULL32, _root(opts), None if isinstance(opts, int) else opts
        return n_in, n_out, x, NULL32, NULL32, opts

    return size


def _collective(name: str, op: str, kind: str, first: str, second: str | None, opts_at: int):
    """A recording override of ``ProcessGroup.<name>`` for one collective (see RecordingProcessGroup)."""
    base = getattr(_PG, name)
    size = _sizer(kind, first, second, opts_at)
    code = OPS.code(op)

    def method(self, *args, **kwargs):
        if _state.session is not None:
            try:
                sized = size(args, kwargs)
            except Exception as exc:
                _unparsed(name, exc)
            else:
                return _record(self, base, code, args, kwargs, *sized)
        return base(self._ct_shadow or _twin(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Record ``{op}`` and run it on the group's twin."
    return method


def _point_to_point(name: str, op: str, peer_key: str | None):
    """A recording override of ``ProcessGroup.<name>`` for send, recv or recv_anysource."""
    base = getattr(_PG, name)
    code = OPS.code(op)

    def method(self, *args, **kwargs):
        if _state.session is not None:
            try:
                tensors = args[0] if args else kwargs["tensors"]
                peer = None if peer_key is None else (args[1] if len(args) > 1 else kwargs[peer_key])
            except Exception as exc:
                _unparsed(name, exc)
            else:
                return _record_p2p(self, base, code, args, kwargs, tensors, peer)
        return base(self._ct_shadow or _twin(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Record ``{op}`` and run it on the group's twin."
    return method


_ALL_REDUCE = OPS.code("all_reduce")
_BARRIER = OPS.code("barrier")
_MONITORED_BARRIER = OPS.code("monitored_barrier")


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
    # Each method: pass straight through when not recording; else size the operation and record it.
    # Tensor arguments come as a list of one tensor from every torch caller, hence the fast path.

    def allreduce(self, *args, **kwargs):
        if _state.session is not None:
            try:
                if len(args) == 2 and type(args[0]) is list and len(args[0]) == 1:  # how torch calls it
                    x = args[0][0]
                    n = x.numel()
                    opts = args[1]
                else:
                    x, n = _one(args[0] if args else kwargs.get("tensors", kwargs.get("tensor")))
                    opts = _opts(args, 1, kwargs)
            except Exception as exc:
                _unparsed("allreduce", exc)
            else:
                return _record(self, _PG.allreduce, _ALL_REDUCE, args, kwargs, n, n, x, NULL32, NULL32, opts)
        return _twin(self).allreduce(*args, **kwargs)

    # The other collectives, sized by _sizer (see the table there).
    allreduce_coalesced = _collective("allreduce_coalesced", "all_reduce_coalesced", "inplace", "tensors", None, 1)
    broadcast = _collective("broadcast", "broadcast", "rooted", "tensors", None, 1)
    reduce = _collective("reduce", "reduce", "rooted", "tensors", None, 1)
    allgather = _collective("allgather", "all_gather", "in", "output_tensors", "input_tensors", 2)
    all_gather_single = _collective("all_gather_single", "all_gather_into_tensor", "pair", "output", "input", 2)
    allgather_coalesced = _collective(
        "allgather_coalesced", "all_gather_coalesced", "in", "output_lists", "input_list", 2
    )
    all_gather_single_coalesced = _collective(
        "all_gather_single_coalesced", "all_gather_into_tensor_coalesced", "in", "outputs", "inputs", 2
    )
    reduce_scatter = _collective("reduce_scatter", "reduce_scatter", "out", "output_tensors", "input_tensors", 2)
    reduce_scatter_single = _collective("reduce_scatter_single", "reduce_scatter_tensor", "pair", "output", "input", 2)
    reduce_scatter_single_coalesced = _collective(
        "reduce_scatter_single_coalesced", "reduce_scatter_tensor_coalesced", "in", "outputs", "inputs", 2
    )
    alltoall = _collective("alltoall", "all_to_all", "in", "output_tensors", "input_tensors", 2)
    all_to_all_single = _collective("all_to_all_single", "all_to_all_single", "pair", "output", "input", 4)
    gather = _collective("gather", "gather", "rooted_in", "output_tensors", "input_tensors", 2)
    scatter = _collective("scatter", "scatter", "rooted_out", "output_tensors", "input_tensors", 2)

    def barrier(self, *args, **kwargs):
        if _state.session is not None:
            try:
                opts = _opts(args, 0, kwargs)
                sized = (0, 0, None, NULL32, NULL32, opts if isinstance(opts, dist.BarrierOptions) else None)
            except Exception as exc:
                _unparsed("barrier", exc)
            else:
                return _record(self, _PG.barrier, _BARRIER, args, kwargs, *sized)
        return _twin(self).barrier(*args, **kwargs)

    def monitored_barrier(self, *args, **kwargs):
        if _state.session is not None:
            return _record(
                self, _PG.monitored_barrier, _MONITORED_BARRIER, args, kwargs, 0, 0, None, NULL32, NULL32, _SYNC
            )
        return _twin(self).monitored_barrier(*args, **kwargs)

    # -- point to point ----------------------------------------------------------------------------
    send = _point_to_point("send", "send", "dstRank")
    recv = _point_to_point("recv", "recv", "srcRank")
    recv_anysource = _point_to_point("recv_anysource", "recv_anysource", None)

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
    """Options stand-in for calls that always block (monitored_barrier)."""

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
