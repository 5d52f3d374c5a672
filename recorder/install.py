"""Installing into and removing from ``torch.distributed``, idempotently and exactly.

What is patched (and restored bit for bit by :func:`uninstall`):

* ``distributed_c10d._new_process_group_helper``: while it runs, the module's ``ProcessGroup`` name
  points at a stand-in class that builds a :class:`RecordingProcessGroup` and otherwise behaves
  like the real class (attributes, ``issubclass``, ``isinstance``), so every group the job creates
  records from birth and is registered everywhere (``_world``, the C++ group registry used by
  functional collectives) as the same object.
* ``batch_isend_irecv``: torch only coalesces P2P ops for ``type(group) is ProcessGroup``; the
  wrapper keeps NCCL-style coalescing for recording groups and labels the ops.
* ``destroy_process_group``: flushes the trace and takes the final clock offset before the group
  goes away, and keeps torch's wait for pending works that it only does for plain groups.
* ``send``, ``recv``, ``isend``, ``irecv`` and the ``*_object`` collectives: labels only.

Both ``torch.distributed`` and ``torch.distributed.distributed_c10d`` hold these names.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from recorder import _state, completion
from recorder._log import warn_once
from recorder.capture import RecordingProcessGroup
from recorder.records import APIS

_REAL_PG = c10d.ProcessGroup
_Work = torch._C._distributed_c10d.Work
_originals: dict[str, object] = {}
_MODULES = (c10d, dist)

LABELLED_APIS = (
    "send",
    "recv",
    "isend",
    "irecv",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
    "broadcast_object_list",
    "send_object_list",
    "recv_object_list",
)


class _ProxyMeta(type):
    """Metaclass of the stand-in for ``ProcessGroup`` inside ``_new_process_group_helper``."""

    def __call__(cls, *args, **kwargs):
        return RecordingProcessGroup(*args, **kwargs)

    def __getattr__(cls, name):
        return getattr(_REAL_PG, name)

    def __instancecheck__(cls, obj):
        return isinstance(obj, _REAL_PG)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _REAL_PG)


class _ProcessGroupStandIn(metaclass=_ProxyMeta):
    pass


def _wrap_helper(original):
    @functools.wraps(original)
    def _new_process_group_helper(*args, **kwargs):
        ranks = args[2] if len(args) > 2 else kwargs.get("global_ranks_in_group")
        if _state.session is None and not ranks and _state.rearm is not None:
            try:
                _state.rearm()  # a new default group after destroy_process_group: a new run
            except Exception as exc:
                warn_once("install:rearm", "could not start recording a new run: %r", exc)
        if _state.session is None or c10d.ProcessGroup is not _REAL_PG:
            return original(*args, **kwargs)
        c10d.ProcessGroup = _ProcessGroupStandIn
        try:
            result = original(*args, **kwargs)
        finally:
            c10d.ProcessGroup = _REAL_PG
        try:
            session = _state.session
            pg = result[0] if isinstance(result, tuple) else result
            if session is not None and isinstance(pg, RecordingProcessGroup):
                store = result[1] if isinstance(result, tuple) else None
                session.on_group_created(pg, store, ranks)
        except Exception as exc:
            session = _state.session
            if session is not None:
                session.fail("setting up a new process group", exc)  # one line, and recording stops
            else:
                warn_once("install:on_group", "recording a new process group failed: %r", exc)
        return result

    return _new_process_group_helper


def _wrap_batch(original):
    @functools.wraps(original)
    def batch_isend_irecv(p2p_op_list):
        if _state.session is None:
            return original(p2p_op_list)
        with _label(_BATCH_API):
            group, device = _nccl_style_coalescing(p2p_op_list)
            if group is None:
                return original(p2p_op_list)
            # torch's own coalescing branch, which it only takes for `type(group) is ProcessGroup`.
            c10d._check_p2p_op_list(p2p_op_list)
            with c10d._coalescing_manager(group, device, async_ops=True) as cm:
                for p2p in p2p_op_list:
                    sends = getattr(p2p.op, "__wrapped__", p2p.op) is _originals.get("isend", dist.isend)
                    key = "group_dst" if sends else "group_src"
                    p2p.op(p2p.tensor, group=p2p.group, tag=p2p.tag, **{key: p2p.group_peer})
            return cm.works

    return batch_isend_irecv


def _nccl_style_coalescing(p2p_op_list):
    """(group, device) when torch would coalesce this batch on a plain group of the same backend, else (None, None).

    Any doubt (an odd argument, a torch without these internals) answers None: the original function
    then runs and raises its own errors.
    """
    try:
        group = p2p_op_list[0].group or c10d._get_default_group()
        device = p2p_op_list[0].tensor.device
        if (
            isinstance(group, RecordingProcessGroup)
            and group._get_backend(device).supports_coalescing
            and hasattr(c10d, "_coalescing_manager")
            and hasattr(c10d, "_check_p2p_op_list")
        ):
            return group, device
    except Exception:
        pass
    return None, None


def _wrap_destroy(original):
    @functools.wraps(original)
    def destroy_process_group(group=None):
        session = _state.session
        if session is not None:
            try:
                session.before_destroy(group)
            except Exception as exc:  # never in the way of the user's shutdown
                warn_once("install:destroy", "could not finish the trace before destroy_process_group: %r", exc)
        # What torch does only for `type(pg) is ProcessGroup`: wait for works that have completion hooks.
        for pg in [group] if group is not None else _safe_pgs():
            try:
                if isinstance(pg, RecordingProcessGroup) and pg._has_hooks():
                    pg._wait_for_pending_works()
            except Exception:
                pass
        return original(group)

    return destroy_process_group


def _safe_pgs():
    try:
        return list(c10d._world.pg_map.keys())
    except Exception:
        return []


class _label:
    """Marks the operations issued inside with the API name that issued them."""

    __slots__ = ("code", "previous")

    def __init__(self, code: int) -> None:
        self.code = code  # the API's name, as records.APIS codes it

    def __enter__(self):
        # -1: no label. The hot path packs tls.api into an int16 whenever any thread is inside a
        # label, so a thread's label is always an int, never None, also after its own label ended.
        self.previous = _state.tls.__dict__.get("api", -1)
        if self.previous == -1:
            _state.tls.api = self.code
        _state.api_depth += 1
        return self

    def __exit__(self, *exc):
        _state.api_depth -= 1
        _state.tls.api = self.previous
        return False


_BATCH_API = APIS.code("batch_isend_irecv")


def _wrap_label(name, original):
    code = APIS.code(name)

    @functools.wraps(original)
    def labelled(*args, **kwargs):
        if _state.session is None:
            return original(*args, **kwargs)
        with _label(code):
            return original(*args, **kwargs)

    return labelled


def _set(name: str, value) -> None:
    original = _originals[name]
    for module in _MODULES:
        if getattr(module, name, None) is original or module is c10d:
            setattr(module, name, value)


def installed() -> bool:
    return bool(_originals)


def install() -> bool:
    """Patch torch.distributed; returns False (and changes nothing) if already installed."""
    if _originals:
        return False
    names = {
        "_new_process_group_helper": _wrap_helper,
        "batch_isend_irecv": _wrap_batch,
        "destroy_process_group": _wrap_destroy,
    }
    for name in LABELLED_APIS:
        names[name] = functools.partial(_wrap_label, name)
    for name, wrap in names.items():
        original = getattr(c10d, name, None)
        if original is None:
            continue
        _originals[name] = original
        _set(name, wrap(original))
    # Put in place while a send/recv waits to be waited on (see completion.wait_hook).
    _originals["Work.wait"] = _Work.__dict__["wait"]
    completion.wait_hook = completion.make_wait_hook(_Work.__dict__["wait"])
    return True


def uninstall() -> None:
    """Put back every original object exactly."""
    wait = _originals.pop("Work.wait", None)
    completion.wait_hook = None
    if wait is not None:
        _Work.wait = wait
    completion.waiting.clear()
    for name, original in list(_originals.items()):
        for module in _MODULES:
            current = getattr(module, name, None)
            if current is not None and getattr(current, "__wrapped__", None) is original:
                setattr(module, name, original)
    _originals.clear()
