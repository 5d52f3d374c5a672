"""The records an operation leaves, declared once, without torch: capture packs them, the writer reads them.

An operation is two events: an issue (appended before the call, so hangs and crashes still show
it) and a completion. Each is one fixed-size binary record: the hot path appends it with one
``struct`` pack (a C call; the append to a bytearray is atomic under the GIL, so any thread may
record), and the writer takes whole records and reads them as numpy columns with no Python step per
event. Both views of a record come from one field table below, so they cannot drift apart. Names
(op, dtype, API) are small codes into the tables below; a null is NULL32, NULL64 or a code of -1.

The :class:`EventBuffer` at the end holds the records between capture (which appends) and the
flusher (which takes them to disk).

Nothing here imports torch: the writer, the sampler and the tests' synthetic runs use these
layouts in processes that never load it.
"""

from __future__ import annotations

import collections
import itertools
import struct
import threading
import time

import numpy as np

# (name, struct code, numpy type) per field, in record order; little-endian, unpadded.
_FIELD_TYPES = {"q": "<i8", "i": "<i4", "h": "<i2", "B": "u1"}
ISSUE_FIELDS = (
    ("id", "q"),
    ("t0", "q"),  # monotonic ns, just before the call
    ("seq", "q"),
    ("n_in", "q"),
    ("n_out", "q"),
    ("step", "q"),
    ("group", "i"),  # index into groups.GROUPS
    ("peer", "i"),  # group ranks
    ("root", "i"),
    ("op", "h"),  # codes into OPS, DTYPES, APIS
    ("dtype", "h"),
    ("api", "h"),
    ("async", "B"),
    ("coalesced", "B"),
    ("device", "B"),  # DEVICE_*
)
DONE_FIELDS = (
    ("id", "q"),
    ("t1", "q"),  # monotonic ns, when the operation was seen complete
    ("gpu_ns", "q"),
    ("status", "B"),  # OK, ERROR, IN_FLIGHT
)


def _layouts(fields) -> tuple[struct.Struct, np.dtype]:
    return (
        struct.Struct("<" + "".join(code for _, code in fields)),
        np.dtype([(name, _FIELD_TYPES[code]) for name, code in fields]),
    )


ISSUE, ISSUE_DTYPE = _layouts(ISSUE_FIELDS)
DONE, DONE_DTYPE = _layouts(DONE_FIELDS)
NO_ISSUES = np.empty(0, dtype=ISSUE_DTYPE)
NO_DONES = np.empty(0, dtype=DONE_DTYPE)
_pack_done = DONE.pack
_mono = time.monotonic_ns

NULL32, NULL64 = -(2**31), -(2**63)
DEVICE_NONE, DEVICE_CPU, DEVICE_CUDA = 0, 1, 2
DEVICE_NAMES = (None, "cpu", "cuda")
OK, ERROR, IN_FLIGHT = 0, 1, 2
STATUS_NAMES = ("ok", "error", "in_flight")
P2P_OPS = frozenset({"send", "recv", "recv_anysource"})


def issues_from(data) -> np.ndarray:
    """Packed issue records (bytes-like) as rows of ISSUE_DTYPE."""
    return np.frombuffer(data, dtype=ISSUE_DTYPE) if len(data) else NO_ISSUES


def dones_from(data) -> np.ndarray:
    """Packed completion records (bytes-like) as rows of DONE_DTYPE."""
    return np.frombuffer(data, dtype=DONE_DTYPE) if len(data) else NO_DONES


class Names:
    """Values recorded as small integer codes, numbered in order of first sight; ``names[code]``."""

    def __init__(self) -> None:
        self.codes: dict = {}
        self.names: list = []
        self._lock = threading.Lock()

    def code(self, value) -> int:
        found = self.codes.get(value)
        if found is None:
            with self._lock:  # any thread may meet a new dtype
                found = self.codes.get(value)
                if found is None:
                    found = len(self.names)
                    self.names.append(value)
                    self.codes[value] = found
        return found


OPS = Names()
"""op names (all_reduce, send ...), coded when their override is made."""
APIS = Names()
"""torch.distributed API names that label operations (install.py's annotations)."""
DTYPES = Names()
"""torch dtypes, coded at their first operation (the writer needs only their str() and itemsize)."""


def _nothing() -> None:
    pass


class EventBuffer:
    """The records between the hot path and the flusher: capture appends, the flusher takes.

    Any thread may append (each append is one C call on a bytearray, atomic under the GIL); only the
    flusher takes. The buffer holds at most ``max_records`` issue records: beyond that an operation
    is counted in ``dropped`` and not recorded, so a writer that cannot keep up never grows memory
    without bound. Capture reads ``issues``, ``max_bytes``, ``flush_bytes`` and ``ids`` directly on
    its hot path; everything else goes through the methods.
    """

    def __init__(self, max_records: int, flush_records: int) -> None:
        self.issues = bytearray()  # ISSUE records, in the order the operations were issued
        self.dones = bytearray()  # DONE records, in the order the operations were seen complete
        self.ids = itertools.count()
        self.max_bytes = max_records * ISSUE.size
        self.flush_bytes = flush_records * ISSUE.size
        self.dropped = 0
        # Works whose completion is polled off the hot path (CUDA, backends without futures):
        # (record id, work, is_cuda), taken by the flusher.
        self.polled: collections.deque = collections.deque()
        self.idle = False  # the flusher is asleep until its next flush and polls nothing
        self.wake = _nothing  # wakes the flusher (set by it)
        self.on_failure = None  # called with (where, exc) when capture's bookkeeping fails

    def complete(self, rid: int, status: int, gpu_ns: int = NULL64) -> None:
        """The completion record of operation ``rid``, seen now: the one place completions are written."""
        self.dones += _pack_done(rid, _mono(), gpu_ns, status)

    def poll(self, rid: int, work, is_cuda: bool) -> None:
        """Have the flusher poll ``work`` until it completes (woken now if it was idle, so that the
        completion is seen within a poll interval, not at the next flush)."""
        self.polled.append((rid, work, is_cuda))
        if self.idle:
            self.idle = False
            self.wake()

    def take_issues(self) -> np.ndarray:
        return issues_from(_take(self.issues))

    def take_dones(self) -> np.ndarray:
        return dones_from(_take(self.dones))

    def fail(self, where: str, exc: BaseException) -> None:
        """Capture's own bookkeeping failed: whoever owns the buffer stops recording."""
        on_failure = self.on_failure
        if on_failure is not None:
            on_failure(where, exc)

    def clear(self) -> None:
        self.issues.clear()
        self.dones.clear()
        self.polled.clear()


def _take(records: bytearray) -> bytes:
    """Every record appended so far, removed from the front of the bytearray.

    Each append is one C call, atomic under the GIL, so the length is always whole records; the copy
    and the removal are two C calls more, and a record appended between them by another thread lands
    after the first ``n`` bytes and stays for the next take. Only the flusher takes. The records are
    copied out, never viewed in place: while a view (a memoryview, ``np.frombuffer``) of the live
    bytearray exists, resizing it raises, and every append would fail.
    """
    n = len(records)
    taken = bytes(records[:n])
    del records[:n]
    return taken
