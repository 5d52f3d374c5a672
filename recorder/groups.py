"""What the recorder knows about each process group, and the plain twin that does a group's work.

Every recording group (:class:`recorder.capture.RecordingProcessGroup`) has a :class:`GroupInfo`
(name, ranks, backend, sequence counters), built at its creation or first operation and numbered in
``GROUPS``: issue records carry that number, and the writer turns it back into the group's name.
Every recording group also has a twin: a plain ``ProcessGroup`` with the same store, backends, name
and device, to which every operation is forwarded, so that it runs exactly as on an unrecorded
group.
"""

from __future__ import annotations

import torch.distributed.distributed_c10d as c10d

from recorder import _state
from recorder._log import warn_once

_PG = c10d.ProcessGroup

GROUPS: list = []
"""Every GroupInfo of this process, by index (issue events carry the index)."""

# Backends whose collective works may be waited on twice (the caller waits again after us).
WAIT_TWICE_BACKENDS = frozenset({"gloo", "fake"})
# torch's backend types by backend name; a backend class is named ProcessGroup<Name>.
BACKEND_TYPES = {
    "gloo": _PG.BackendType.GLOO,
    "nccl": _PG.BackendType.NCCL,
    "ucc": _PG.BackendType.UCC,
    "mpi": _PG.BackendType.MPI,
    "xccl": _PG.BackendType.XCCL,
}


class GroupInfo:
    """What the writer and the metadata need to know about one process group."""

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
        self.seq = 0  # the next collective's sequence number
        self.p2p: dict[tuple[int, int], int] = {}  # (op code, peer) -> next point-to-point seq
        self.coalescing = False
        self.timing_enabled = False
        self.wait_inside = self.backend in WAIT_TWICE_BACKENDS
        self.index = len(GROUPS)
        GROUPS.append(self)

    def metadata(self) -> dict:
        """The group as the rank's metadata lists it."""
        return {
            "pg": self.name,
            "desc": self.desc,
            "size": self.size,
            "ranks": self.ranks,
            "backend": self.backend,
            "group_rank": self.group_rank,
        }


def _safe(fn, default):
    try:
        return fn()
    except Exception:
        return default


def info_of(pg, ranks: list[int] | None = None) -> GroupInfo:
    """The GroupInfo of ``pg``, built on first use."""
    info = pg.__dict__.get("_ct_info")
    if info is None:
        info = GroupInfo(pg, ranks)
        pg._ct_info = info
    return info


def backend_name(pg) -> str:
    try:
        return pg._get_backend_name()
    except Exception:
        return ""


def enable_cuda_timing(pg, info: GroupInfo) -> None:
    """Have the backend time collectives with CUDA events (Work._get_duration), once per group."""
    info.timing_enabled = True
    if not _state.cuda_timing:
        return
    try:
        pg._enable_collectives_timing()  # on the backends, which the twin shares
    except Exception as exc:
        warn_once("cuda:timing", "CUDA collective timing unavailable (%r); GPU durations not recorded", exc)


def _backend_type(backend) -> _PG.BackendType:
    name = type(backend).__name__.removeprefix("ProcessGroup").lower()
    return BACKEND_TYPES.get(name, _PG.BackendType.CUSTOM)


def copy_into(src: _PG, dst: _PG) -> None:
    """Give ``dst`` the backends, name, description and device binding of ``src``."""
    for device in src._device_types:
        backend = src._get_backend(device)
        dst._register_backend(device, _backend_type(backend), backend)
    try:
        dst._set_default_backend(BACKEND_TYPES.get(src._get_backend_name(), _PG.BackendType.CUSTOM))
    except Exception:
        pass
    dst._set_group_name(src.group_name)
    dst._set_group_desc(src.group_desc)
    if src.bound_device_id is not None:
        dst.bound_device_id = src.bound_device_id


def twin(pg) -> _PG:
    """The plain ``ProcessGroup`` that does the work of recording group ``pg``, built on first use.

    Every operation is forwarded to it, so it runs exactly as on an unrecorded group: through the
    pybind binding (which releases the GIL), the dispatcher and the same backend objects. Calling the
    base method of ``pg`` itself instead would go through pybind's trampoline, which keeps the GIL
    for the whole C++ call and can deadlock against a gloo worker thread that needs the GIL.
    """
    found = pg._ct_twin
    if found is None:
        store = pg.__dict__.get("_ct_store")
        found = _PG(store, pg.rank(), pg.size()) if store is not None else _PG(pg.rank(), pg.size())
        copy_into(pg, found)
        pg._ct_twin = found
    return found
