"""The records an operation leaves, declared once, without torch: capture packs them, the writer reads them.

An operation is two events: an issue (appended before the call, so hangs and crashes still show
it) and a completion. Each is one fixed-size binary record: the hot path appends it with one
``struct`` pack (a C call; the append to a bytearray is atomic under the GIL, so any thread may
record), and the writer takes whole records and reads them as numpy columns with no Python step per
event. Both views of a record come from one field table below, so they cannot drift apart. Names
(op, dtype, API) are small codes into the tables below; a null is NULL32, NULL64 or a code of -1.

Nothing here imports torch: the writer, the sampler and the tests' synthetic runs use these
layouts in processes that never load it.
"""

from __future__ import annotations

import struct
import threading

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
    ("group", "i"),  # index into capture.GROUPS
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
