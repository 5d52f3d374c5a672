"""``recorder.metrics()``: this rank's and this host's figures since the last call, for the training
loop's own dashboard (TensorBoard, Weights & Biases, a DeepSpeed or OpenRLHF callback).

The flusher folds every operation it writes into running totals (:class:`Totals`: a few numpy sums a
flush, on its thread); ``metrics()`` returns the difference since its previous call. No disk is read
and no query is run, so it can be called every step (its cost: benchmarks/metrics_cost.py). The
figures are as of the last flush, at most ``COMMTRACE_FLUSH_S`` old (``as_of_s`` says how old).

Per op as called (``all_reduce``, ``all_gather_into_tensor`` ...), over the operations completed in
the interval: ``count``; ``busbw_GBps``, the sum of S x bus factor over the sum of durations (S and
the factor as nccl-tests define them, n the group's size: the analysis' ``collectives`` uses the
transfer time after the last arrival, which one rank cannot know, so this is lower where the rank
waited for others); ``latency_ms`` and ``max_latency_ms``, the mean and longest duration; and
``wait_ms``, the mean duration beyond the shortest the rank has seen for that op and size: where it
has at some point arrived last (the collective then took only the transfer), its time waiting for
the group; a rank that has always waited the same reads near 0 (one rank cannot tell that waiting
from the transfer; docs/metrics.md). ``comm_busy_s`` is the time with an
operation in flight (overlapping ones counted once), ``comm_share`` that over the interval;
``dropped_events`` the events not recorded. Where this process samples its host's counters (one
rank per host does), ``host/rx_Bps``, ``host/tx_Bps`` (every interface but loopback),
``host/tcp_retrans_pct`` (retransmitted over sent segments), ``host/tcp_timeouts``,
``host/errors`` and ``host/drops``.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pyarrow as pa

from recorder import _arrow

_SUFFIXES = re.compile(r"(_into_tensor|_coalesced|_tensor|_single)+$")
_PART = ("all_gather", "reduce_scatter", "all_to_all", "gather", "scatter")  # factor (n-1)/n


def family(op: str) -> str:
    """An op's nccl-tests family (``all_gather_into_tensor`` -> ``all_gather``; send/recv -> ``p2p``),
    by the rule the op names follow (analysis.vocabulary.FAMILY lists them; a test checks they agree)."""
    if op in ("send", "recv", "recv_anysource"):
        return "p2p"
    return _SUFFIXES.sub("", op)


def _sizes(names: list, codes: np.ndarray, bytes_in: np.ndarray, bytes_out: np.ndarray, n: np.ndarray):
    """(S, bus factor) per row, as nccl-tests define them (analysis.formulas), from one small table
    per op name (a training job has a handful) indexed by each row's op code."""
    families = [family(x) if x is not None else "" for x in names] + [""]
    # S: bytes in (0), the whole output (1: all_gather), n x one part (2: gather, 3: scatter).
    how = np.array([{"all_gather": 1, "gather": 2, "scatter": 3}.get(f, 0) for f in families])[codes]
    # factor: 1 (0), 2(n-1)/n (1: all_reduce), (n-1)/n (2: the others that move parts).
    kind = np.array([1 if f == "all_reduce" else 2 if f in _PART else 0 for f in families])[codes]
    size = np.where(how == 1, bytes_out, bytes_in)
    size = np.where(how == 2, bytes_in * n, np.where(how == 3, bytes_out * n, size)).astype(np.float64)
    nf = np.maximum(n, 1).astype(np.float64)
    factor = np.where(kind == 1, 2.0 * (nf - 1) / nf, np.where(kind == 2, (nf - 1) / nf, 1.0))
    return size, factor


def busy_ns(start: np.ndarray, end: np.ndarray) -> int:
    """The time with at least one of the intervals [start, end) in progress (overlaps counted once)."""
    if not len(start):
        return 0
    order = np.argsort(start, kind="stable")
    s, e = start[order], np.maximum.accumulate(end[order])
    opens = np.flatnonzero(np.r_[True, s[1:] > e[:-1]])  # an interval that starts after all before ended
    closes = np.r_[opens[1:] - 1, len(s) - 1]
    return int(np.sum(e[closes] - s[opens]))


class Totals:
    """Running totals of the operations written, kept by the flusher; read by :func:`metrics`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, np.ndarray] = {}  # op -> [count, S x factor, duration ns, wait ns] (sums)
        self.longest: dict[str, int] = {}  # op -> the longest duration since the last read (ns)
        self.fastest: dict[tuple[str, int], int] = {}  # (op, log2 S) -> the shortest duration seen
        self.busy_ns = 0
        self.flushed_at = 0.0  # monotonic seconds of the last flush folded in

    def add(self, table: pa.Table) -> None:
        """Fold in a segment's rows (COLLECTIVE_SCHEMA): the finished ones."""
        ended = _arrow.valid(table["t_end_ns"])
        status = table["status"].combine_chunks()
        statuses = status.dictionary.to_pylist()
        ok_code = statuses.index("ok") if "ok" in statuses else -2
        done = ended & (_arrow.to_numpy(status.indices, fill=-1) == ok_code)
        start = _arrow.to_numpy(table["t_start_ns"])[done]
        end = _arrow.to_numpy(table["t_end_ns"])[done]
        op = table["op"].combine_chunks()
        codes = _arrow.to_numpy(op.indices, fill=-1)[done]
        names = op.dictionary.to_pylist()
        size, factor = _sizes(
            names,
            codes,
            _arrow.to_numpy(table["bytes_in"])[done],
            _arrow.to_numpy(table["bytes_out"])[done],
            _arrow.to_numpy(table["pg_size"], fill=1)[done],
        )
        duration = np.maximum(end - start, 0)
        bucket = np.clip(np.log2(np.maximum(size, 1)).astype(np.int64), 0, 63)
        busy = busy_ns(start, end)
        # Everything per (op, size bucket) at once: counts and sums by bincount, the shortest and
        # longest by ufunc.at; Python only loops over the few (op, bucket) pairs present.
        key = codes * 64 + bucket
        width = (len(names) + 1) * 64
        count = np.bincount(key, minlength=width)
        bus = np.bincount(key, weights=size * factor, minlength=width)
        total = np.bincount(key, weights=duration, minlength=width)
        shortest = np.full(width, np.iinfo(np.int64).max, dtype=np.int64)
        longest = np.zeros(width, dtype=np.int64)
        np.minimum.at(shortest, key, duration)
        np.maximum.at(longest, key, duration)
        with self.lock:
            for k in np.flatnonzero(count).tolist():
                name, b = names[k // 64], k % 64
                fastest = min(self.fastest.get((name, b), 1 << 62), int(shortest[k]))
                self.fastest[(name, b)] = fastest
                wait = float(total[k]) - float(count[k]) * fastest
                sums = np.array([count[k], bus[k], total[k], wait], dtype=np.float64)
                self.ops[name] = self.ops.get(name, np.zeros(4)) + sums
                self.longest[name] = max(self.longest.get(name, 0), int(longest[k]))
            self.busy_ns += busy
            self.flushed_at = time.monotonic()

    def read(self) -> tuple[dict, dict, int, float]:
        """(sums per op, the longest duration per op since the last read, busy ns, when last flushed)."""
        with self.lock:
            longest, self.longest = self.longest, {}
            return {k: v.copy() for k, v in self.ops.items()}, longest, self.busy_ns, self.flushed_at


class Reader:
    """What :func:`recorder.metrics` returns, as differences since its previous call."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals
        self.last: dict = {"ops": {}, "busy_ns": 0, "at": time.monotonic(), "dropped": 0, "host": None}

    def read(self, dropped: int, host: dict | None) -> dict[str, float]:
        ops, longest, busy, flushed_at = self.totals.read()
        now = time.monotonic()
        last, self.last = self.last, {"ops": ops, "busy_ns": busy, "at": now, "dropped": dropped, "host": host}
        interval = max(now - last["at"], 1e-9)
        out: dict[str, float] = {
            "interval_s": round(interval, 6),
            "as_of_s": round(now - flushed_at, 6) if flushed_at else None,
            "comm_busy_s": (busy - last["busy_ns"]) / 1e9,
            "comm_share": min(1.0, (busy - last["busy_ns"]) / 1e9 / interval),
            "dropped_events": dropped - last["dropped"],
        }
        for op, sums in sorted(ops.items()):
            count, bus_bytes, duration, wait = sums - last["ops"].get(op, np.zeros(4))
            if count <= 0:
                continue
            out[f"{op}/count"] = int(count)
            out[f"{op}/busbw_GBps"] = bus_bytes / duration if duration > 0 else None
            out[f"{op}/latency_ms"] = duration / count / 1e6
            out[f"{op}/max_latency_ms"] = longest.get(op, 0) / 1e6
            out[f"{op}/wait_ms"] = wait / count / 1e6
        if host is not None and last["host"] is not None and host["t_ns"] > last["host"]["t_ns"]:
            seconds = (host["t_ns"] - last["host"]["t_ns"]) / 1e9
            delta = {k: host[k] - last["host"][k] for k in host if k != "t_ns"}
            out["host/rx_Bps"] = delta["rx_bytes"] / seconds
            out["host/tx_Bps"] = delta["tx_bytes"] / seconds
            out["host/tcp_retrans_pct"] = (
                100.0 * delta["retrans_segs"] / delta["out_segs"] if delta["out_segs"] > 0 else 0.0
            )
            out["host/tcp_timeouts"] = delta["timeouts"]
            out["host/errors"] = delta["errors"]
            out["host/drops"] = delta["drops"]
        return {k: v for k, v in out.items() if v is not None}
