"""Each rank's clock offset to rank 0, measured NTP-style through the job's own store.

Rank 0 answers one rank at a time: it lets rank r go, rank r stamps t1 and posts a ping, rank 0
stamps t when it sees the ping and posts it back, rank r stamps t4 when it sees the answer. Both
legs are "set a key, wake a waiter" through the same store server, so they take about the same
time, and ``offset = t - (t1 + t4) / 2`` (rank 0's clock minus this rank's) is off by at most half
the round trip. The round with the smallest round trip wins. Everything runs with timeouts: a
rank that does not answer costs the others a bounded wait, never a hang.

Using the store rather than the process group keeps the user's groups, sequence numbers and
sockets untouched: the recorder opens no connection of its own.
"""

from __future__ import annotations

import time
from datetime import timedelta

PREFIX = "commtrace/clock"


def _wait(store, key: str, seconds: float) -> bool:
    try:
        store.wait([key], timedelta(seconds=max(seconds, 0.001)))
        return True
    except Exception:
        return False


def serve(store, world_size: int, phase: str, rounds: int, timeout_s: float) -> int:
    """Rank 0's side: answer every other rank's pings. Returns how many ranks were served."""
    deadline = time.monotonic() + timeout_s
    served = 0
    for r in range(1, world_size):
        for k in range(rounds):
            left = deadline - time.monotonic()
            if left <= 0:
                return served
            store.set(f"{PREFIX}/{phase}/{r}/{k}/go", b"1")
            if not _wait(store, f"{PREFIX}/{phase}/{r}/{k}/ping", min(left, 2.0)):
                break
            now = time.time_ns()
            store.set(f"{PREFIX}/{phase}/{r}/{k}/pong", str(now).encode())
        else:
            served += 1
    return served


def measure(store, rank: int, phase: str, rounds: int, timeout_s: float) -> dict | None:
    """A non-zero rank's side. Returns ``{offset_ns, rtt_ns, rounds}`` or None on timeout."""
    deadline = time.monotonic() + timeout_s
    best: tuple[int, int] | None = None
    done = 0
    for k in range(rounds):
        base = f"{PREFIX}/{phase}/{rank}/{k}"
        if not _wait(store, f"{base}/go", deadline - time.monotonic()):
            break
        t1 = time.time_ns()
        store.set(f"{base}/ping", b"1")
        if not _wait(store, f"{base}/pong", deadline - time.monotonic()):
            break
        t4 = time.time_ns()
        t = int(store.get(f"{base}/pong"))
        rtt = t4 - t1
        offset = t - (t1 + t4) // 2
        done += 1
        if best is None or rtt < best[1]:
            best = (offset, rtt)
    if best is None:
        return None
    return {"offset_ns": best[0], "rtt_ns": best[1], "rounds": done, "measured_at_ns": time.time_ns()}
