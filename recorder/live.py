"""The rank's live state: one small JSON file, replaced after every flush, that says where the rank is now.

Segments hold finished operations only, so while a job is blocked they say nothing of what each rank
is waiting in. ``analyze-trace watch`` reads this file instead: per process group, the last
collective sequence number the rank issued and the last it saw complete; how many operations it
has in flight and the oldest of them (group, seq, op, peer, since when); the events it dropped; and
when the file was written (a file that stops changing is a rank that stopped writing: the process
died or its recorder stepped aside). A blocked rank's flusher keeps running, so the file keeps
saying what it is blocked in. The last flush of a closing rank marks it ``closed``.

The file is written by the flusher thread, after each flush: a few hundred bytes under a hidden
temporary name, then renamed over the old one, so a reader sees the old file or the new one, whole
(tens of microseconds a flush, off the hot path; benchmarks/live_cost.py).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from recorder import records as C

LIVE_NAME = "live.json"
LIVE_VERSION = 1


class LiveState:
    """What the flusher has seen of one rank's operations, for its live file."""

    def __init__(self) -> None:
        self.completed: dict[int, int] = {}  # group index -> the highest collective seq seen complete
        self.oldest: dict | None = None  # the oldest operation in flight at the last flush
        self.inflight = 0

    def update(self, issues: np.ndarray, carry: np.ndarray, groups: list, wall_minus_mono: int) -> None:
        """After a flush: ``issues`` were taken (with the carried ones), ``carry`` are still in flight."""
        self.inflight = len(carry)
        if len(issues):
            done = issues[~np.isin(issues["id"], carry["id"])] if len(carry) else issues
            p2p = [code for code, name in enumerate(C.OPS.names) if name in C.P2P_OPS]
            done = done[~np.isin(done["op"], p2p)]
            for index in np.flatnonzero(np.bincount(done["group"].astype(np.intp))).tolist():
                highest = int(done["seq"][done["group"] == index].max())
                if highest > self.completed.get(index, -1):
                    self.completed[index] = highest
        if not len(carry):
            self.oldest = None
            return
        first = carry[int(np.argmin(carry["t0"]))]
        group = groups[int(first["group"])]
        code = int(first["op"])
        peer = int(first["peer"])
        self.oldest = {
            "pg": group.name,
            "seq": int(first["seq"]),
            "op": C.OPS.names[code] if 0 <= code < len(C.OPS.names) else None,
            "peer": None if peer == C.NULL32 else peer,
            "t_start_ns": int(first["t0"]) + wall_minus_mono,
        }

    def payload(self, rank: int, groups: list, dropped: int, flush_s: float, closed: bool) -> dict:
        state = {}
        for group in list(groups):
            if group.seq > 0 or group.index in self.completed:
                state[group.name] = {"issued": group.seq - 1, "completed": self.completed.get(group.index, -1)}
        return {
            "version": LIVE_VERSION,
            "rank": rank,
            "pid": os.getpid(),
            "t_ns": time.time_ns(),
            "flush_s": flush_s,
            "groups": state,
            "inflight": self.inflight,
            "oldest": self.oldest,
            "dropped": dropped,
            "closed": closed,
        }

    def write(self, rank_dir: str, payload: dict) -> None:
        """Replace the rank's live file (whole, or not at all)."""
        path = os.path.join(rank_dir, LIVE_NAME)
        tmp = os.path.join(rank_dir, f".{LIVE_NAME}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as fh:
                fh.write(json.dumps(payload, separators=(",", ":")))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
