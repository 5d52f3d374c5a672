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
from the backend's CUDA events (``Work._get_duration()``); see :mod:`recorder.completion`.

Capture writes only into the active event buffer (``_state.events``, a
:class:`recorder.records.EventBuffer`): the session, the flusher and the files are not its business.
"""

from __future__ import annotations

import time

import torch
import torch.distributed.distributed_c10d as c10d

from recorder import _state
from recorder._log import warn_once
from recorder.completion import follow
from recorder.groups import info_of, twin
from recorder.ops import P2P, SPECS, OpSpec, Sizing, first_tensor, numel, sizer
from recorder.records import APIS, DEVICE_CPU, DEVICE_CUDA, DEVICE_NONE, DTYPES, ERROR, ISSUE, NULL32, OK, OPS

_PG = c10d.ProcessGroup
_Tensor = torch.Tensor
_Work = torch._C._distributed_c10d.Work
# Work.wait as torch defines it, taken before install.py hooks it for send/recv: the hot path's own
# wait on a collective goes straight to C++ (through the hook it cost a fifth of the recording).
_native_wait = _Work.wait
_issue = ISSUE.pack
_mono = time.monotonic_ns
_dtype_codes = DTYPES.codes

# Python APIs that wait for their point-to-point operation before returning.
SYNC_P2P_APIS = frozenset({APIS.code("send"), APIS.code("recv")})


# -- the record path -------------------------------------------------------------------------------
def _record(pg, fn, op, args, kwargs, n_in, n_out, tensor, peer, root, opts):
    """Record one operation around ``fn(twin, *args, **kwargs)``: the recorder's hot path.

    ``op`` is the op's code (OPS); ``peer`` and ``root`` are group ranks or NULL32; ``opts`` is the
    call's options, or P2P for a send or recv. The issue record is appended before the call, so a
    hang or a crash inside it still shows the operation. Every line here is paid on every call
    (benchmarks/recorder_overhead.py measures it): values are read once into locals, and nothing
    allocates but the two packed records.
    """
    try:
        ev = _state.events
        info = pg._ct_info or info_of(pg)
        api = _state.tls.__dict__.get("api", -1) if _state.api_depth else -1
        if opts is P2P:  # sequence numbers count per (direction, peer), as NCCL's p2p sequence
            key = (op, peer)
            seq = info.p2p.get(key, 0)
            info.p2p[key] = seq + 1
            is_async = api not in SYNC_P2P_APIS
            wait_here = False  # gloo's send/recv works may be waited on once only, by their owner
        else:
            seq = info.seq
            info.seq = seq + 1
            is_async = True if opts is None else getattr(opts, "asyncOp", True)
            wait_here = not is_async and info.wait_inside
        if tensor is None:
            dtype, device = -1, DEVICE_NONE
        else:
            dtype = _dtype_codes.get(tensor.dtype)
            if dtype is None:
                dtype = DTYPES.code(tensor.dtype)
            device = DEVICE_CUDA if tensor.is_cuda else DEVICE_CPU
        buf = ev.issues
        n = len(buf)
        if n < ev.max_bytes:
            rid = next(ev.ids)
            buf += _issue(  # in the order of records.ISSUE_FIELDS
                rid, _mono(), seq, n_in, n_out, _state.step_code, info.index,
                peer, root, op, dtype, api, is_async, info.coalescing, device,
            )  # fmt: skip
            if n == ev.flush_bytes:
                ev.wake()
        else:
            ev.dropped += 1
            rid = None
        work_on = pg._ct_twin or twin(pg)
    except Exception as exc:  # our bookkeeping failed: step aside, and run this call unrecorded
        _step_aside("capture", exc)
        return fn(pg._ct_twin or twin(pg), *args, **kwargs)
    try:
        work = fn(work_on, *args, **kwargs)
    except BaseException:
        if rid is not None:
            ev.complete(rid, ERROR)
        raise
    if rid is None:
        return work
    if wait_here and work is not None and device != DEVICE_CUDA:
        # The common case, inline: the caller waits right after we return, so waiting here first is
        # free and exact (gloo collective works may be waited on twice).
        try:
            _native_wait(work)
        except Exception:
            ev.complete(rid, ERROR)
        else:
            ev.complete(rid, OK)
        return work
    follow(ev, rid, work, pg, info, op, device == DEVICE_CUDA, opts is P2P)
    return work


def _step_aside(where: str, exc: BaseException) -> None:
    """A failure of ours on the hot path: recording stops (one line), every later call passes straight
    through; training never sees the exception."""
    events = _state.events
    if events is not None and events.on_failure is not None:
        events.fail(where, exc)
    else:
        warn_once("fail", "recording stopped (%s failed: %r); training continues unaffected", where, exc)


def _unparsed(method: str, exc: BaseException) -> None:
    """Arguments we could not size: run the call unrecorded rather than risk the user's call."""
    warn_once(f"parse:{method}", "could not record a %s call (%r); such calls run unrecorded", method, exc)


def _override(spec: OpSpec):
    """The recording override of ``ProcessGroup.<spec.method>``: pass straight through when not
    recording; else size the operation and record it. A call we cannot size runs unrecorded."""
    base = getattr(_PG, spec.method)
    code = OPS.code(spec.op)
    name = spec.method
    size = None if spec.sizing is Sizing.POINT_TO_POINT else sizer(spec)
    if spec.sizing is Sizing.SAME:
        # Every torch caller passes a list of one tensor and the options: that case inline.
        def method(self, *args, **kwargs):
            if _state.events is not None:
                try:
                    if len(args) == 2 and type(args[0]) is list and len(args[0]) == 1:
                        x = args[0][0]
                        n = x.numel()
                        opts = args[1]
                    else:
                        n, _, x, _, _, opts = size(args, kwargs)
                except Exception as exc:
                    _unparsed(name, exc)
                else:
                    return _record(self, base, code, args, kwargs, n, n, x, NULL32, NULL32, opts)
            return base(self._ct_twin or twin(self), *args, **kwargs)

    elif spec.sizing is Sizing.POINT_TO_POINT:
        # Each send and recv (a pipeline's every micro-batch): read inline, no sizer call.
        peer_key = spec.second

        def method(self, *args, **kwargs):
            if _state.events is not None:
                try:
                    tensors = args[0] if args else kwargs["tensors"]
                    peer = NULL32 if peer_key is None else (args[1] if len(args) > 1 else kwargs[peer_key])
                    if type(tensors) is list and len(tensors) == 1 and isinstance(tensors[0], _Tensor):
                        x = tensors[0]
                        n = x.numel()
                    else:
                        x, n = first_tensor(tensors), numel(tensors)
                except Exception as exc:
                    _unparsed(name, exc)
                else:
                    return _record(self, base, code, args, kwargs, n, n, x, peer, NULL32, P2P)
            return base(self._ct_twin or twin(self), *args, **kwargs)

    else:

        def method(self, *args, **kwargs):
            if _state.events is not None:
                try:
                    sized = size(args, kwargs)
                except Exception as exc:
                    _unparsed(name, exc)
                else:
                    return _record(self, base, code, args, kwargs, *sized)
            return base(self._ct_twin or twin(self), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Record ``{spec.op}`` and run it on the group's twin."
    return method


# -- the recording group ---------------------------------------------------------------------------
class RecordingProcessGroup(_PG):
    """A ``ProcessGroup`` that records every operation issued to it, from Python or C++.

    Built by ``torch.distributed`` itself (see :mod:`recorder.install`); users never construct it.
    Its operation methods (one per entry of SPECS) are named as the C++ virtuals, so pybind's
    trampoline sends C++ callers here too; each records and forwards to the group's plain twin
    (:func:`recorder.groups.twin`).
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
        self._ct_twin = None

    def _register_backend(self, *args, **kwargs):
        _PG._register_backend(self, *args, **kwargs)
        if self._ct_twin is not None:
            self._ct_twin._register_backend(*args, **kwargs)

    def get_group_store(self):
        store = self.__dict__.get("_ct_store")
        return store if store is not None else _PG.get_group_store(self)

    # -- coalescing (NCCL groups, batch_isend_irecv) -------------------------------------------------
    def _start_coalescing(self, *args, **kwargs):
        result = twin(self)._start_coalescing(*args, **kwargs)
        if _state.events is not None:
            info_of(self).coalescing = True
        return result

    def _end_coalescing(self, *args, **kwargs):
        info = self.__dict__.get("_ct_info")
        if info is not None:
            info.coalescing = False
        return twin(self)._end_coalescing(*args, **kwargs)

    # -- groups made from this one -----------------------------------------------------------------
    def split_group(self, *args, **kwargs):
        new = twin(self).split_group(*args, **kwargs)
        return rewrap(new) if new is not None else None


for _spec in SPECS:
    setattr(RecordingProcessGroup, _spec.method, _override(_spec))
del _spec


def rewrap(pg: _PG) -> _PG:
    """A RecordingProcessGroup that shares ``pg``'s backends (used for groups made in C++)."""
    if isinstance(pg, RecordingProcessGroup) or type(pg) is not _PG:
        return pg
    try:
        from recorder.groups import copy_into

        wrapped = RecordingProcessGroup(_safe_store(pg), pg.rank(), pg.size())
        copy_into(pg, wrapped)
        wrapped._ct_twin = pg
        return wrapped
    except Exception as exc:
        warn_once("capture:rewrap", "could not record a process group made by split: %r", exc)
        return pg


def _safe_store(pg):
    try:
        return pg.get_group_store()
    except Exception:
        return None
