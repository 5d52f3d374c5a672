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
(about half a millisecond of the flusher's thread a flush on our 2-core VM, the rename most of it;
nothing on the hot path: benchmarks/metrics_cost.py).
"""

from __future__ import annotations

import json
import os
import threading
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
        replace_json(rank_dir, LIVE_NAME, payload)


def replace_json(folder: str, name: str, payload: dict) -> None:
    """Replace ``folder/name`` with ``payload`` (whole, or not at all)."""
    path = os.path.join(folder, name)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(payload, separators=(",", ":")))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The host counters a live view and recorder.metrics() read: the interfaces' bytes, packets, errors
# and drops, TCP retransmissions (the host's and the job's own connections'), RDMA port data.
LIVE_SOURCES = frozenset({"net_dev", "snmp", "netstat", "tcp_conn", "rdma_port"})
LIVE_COUNTERS = frozenset(
    {
        "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errs", "tx_errs", "rx_drop", "tx_drop",
        "rx_fifo", "tx_fifo", "rx_frame", "tx_carrier", "RetransSegs", "OutSegs", "TCPTimeouts",
        "bytes_retrans", "bytes_sent", "port_xmit_data", "port_rcv_data",
    }
)  # fmt: skip
_ERRORS = frozenset({"rx_errs", "tx_errs", "rx_frame", "tx_carrier"})
_DROPS = frozenset({"rx_drop", "tx_drop", "rx_fifo", "tx_fifo"})


class HostLive:
    """The host's latest counters, kept by its sampler every ``COMMTRACE_SAMPLE_LIVE_S``: written to
    ``host=<host>/live.json`` for ``analyze-trace watch`` (rows as the samples hold them: t_ns, source,
    device, port, counter, value) and summed for ``recorder.metrics()``. Only the latest capture of
    each source in LIVE_SOURCES is parsed (the samples written every COMMTRACE_SAMPLE_FLUSH_S parse
    them all); parsing a capture twice changes nothing (those sources keep no state but a header)."""

    def __init__(self, folder: str, host: str) -> None:
        self.folder, self.host = folder, host
        self.rows: list[list] = []
        self.lock = threading.Lock()
        self.cpu_s = 0.0  # CPU time spent in update() (the sampler's thread)
        self.updates = 0

    def update(self, sources: list, captured: list, wall_minus_mono: int) -> bool:
        """From the sampler's captures since its last flush; False if there was none to read."""
        cpu0 = time.thread_time()
        try:
            return self._update(sources, captured, wall_minus_mono)
        finally:
            self.cpu_s += time.thread_time() - cpu0
            self.updates += 1

    def _update(self, sources: list, captured: list, wall_minus_mono: int) -> bool:
        latest: dict[int, tuple] = {}
        for t, i, raw in reversed(captured):
            if i not in latest and sources[i].name in LIVE_SOURCES:
                latest[i] = (t, raw)
        rows = []
        for i, (t, raw) in latest.items():
            try:
                values = sources[i].parse(raw)
            except Exception:  # a capture that does not parse is left out, as at the flush
                continue
            name = sources[i].name
            rows.extend([t + wall_minus_mono, name, d, p, c, v] for d, p, c, v in values if c in LIVE_COUNTERS)
        if not rows:
            return False
        with self.lock:
            self.rows = rows
        if not self.updates:
            os.makedirs(self.folder, exist_ok=True)
        replace_json(
            self.folder, LIVE_NAME, {"version": LIVE_VERSION, "host": self.host, "t_ns": time.time_ns(), "rows": rows}
        )
        return True

    def totals(self) -> dict[str, int]:
        """The host's counters summed: bytes on every interface but loopback, errors, drops, TCP
        segments sent and retransmitted, timeouts; ``t_ns`` of the newest."""
        with self.lock:
            rows = self.rows
        out = dict.fromkeys(("rx_bytes", "tx_bytes", "errors", "drops", "out_segs", "retrans_segs", "timeouts"), 0)
        out["t_ns"] = max((r[0] for r in rows), default=0)
        for _, source, device, _, counter, value in rows:
            if not isinstance(value, int):
                continue
            if source == "net_dev" and device != "lo":
                if counter in ("rx_bytes", "tx_bytes"):
                    out[counter] += value
                elif counter in _ERRORS:
                    out["errors"] += value
                elif counter in _DROPS:
                    out["drops"] += value
            elif source in ("snmp", "netstat"):
                key = {"OutSegs": "out_segs", "RetransSegs": "retrans_segs", "TCPTimeouts": "timeouts"}.get(counter)
                if key:
                    out[key] += value
        return out
