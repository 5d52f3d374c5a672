"""Each rank's clock offset to rank 0, measured NTP-style through the job's own store.

Rank 0 runs a small clock server on a thread of its own for the whole run; any other rank asks it
for a measurement from a thread of its own whenever it likes (once its trace is set up, then every
``COMMTRACE_CLOCK_INTERVAL_S``), without any rank's training thread taking part or waiting. A
request is a ticket: the rank takes the next number of a counter and posts its rank under it; the
server answers tickets in order. In round k the server posts "go", the rank stamps t1 and posts a
ping, the server stamps t when it sees the ping and posts it back, the rank stamps t4 when it sees
the answer. Both legs are "set a key, wake a waiter" through the same store server, so they take
about the same time, and ``offset = t - (t1 + t4) / 2`` (rank 0's clock minus this rank's) is off
by at most half the round trip. The round with the smallest round trip wins.

Every wait is bounded, none of them is on torch's store client (see ``recorder.coordination``),
and closing cuts the one in progress short (:class:`Waiter`). When rank 0 closes its trace the server
stops: it marks the store closed and answers every ticket still unanswered with "closed", so a rank
that asks later learns at once that nobody will answer.

Using the store rather than the process group keeps the user's groups, sequence numbers and
sockets untouched: the recorder opens no listening socket of its own.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

PREFIX = "commtrace/clock"
LEG_S = 2.0  # one ping or pong, once the server is answering this rank: longer means it is gone
IDLE_WAIT = timedelta(days=7)  # the server's wait for the next ticket (a timeout would only log)
CLOSED = b"closed"
CANCELLED = b"cancelled"


def _wait(store, key: str, seconds: float) -> bool:
    try:
        store.wait([key], timedelta(seconds=max(seconds, 0.001)))
        return True
    except Exception:
        return False


class Waiter:
    """Store waits on one client that another thread can cut short.

    A thread of ours must never be inside a torch call when the interpreter finalizes: a daemon
    thread that returns from one then is ended by a forced unwind through pybind11's GIL guard, a
    noexcept destructor, and the C++ runtime aborts the process ("terminate called without an active
    exception"). So closing cancels: :meth:`cancel` marks the waiter cancelled and sets the key being
    waited for through another client, which wakes the wait at once; the thread then sees the mark
    and stops, and closing joins it.
    """

    def __init__(self, store) -> None:
        self.store = store
        self.cancelled = False
        self._key: str | None = None

    def wait(self, key: str, seconds: float) -> bool:
        """True once ``key`` exists; False on a timeout, an error or a cancel."""
        self._key = key  # before the check: a cancel after it wakes this very key
        if self.cancelled:
            return False
        return _wait(self.store, key, seconds) and not self.cancelled

    def cancel(self, other) -> None:
        self.cancelled = True
        key = self._key
        if key is not None:
            try:
                other.set(key, CANCELLED)
            except Exception:
                pass  # the store is gone: so is the wait


class Server:
    """Rank 0's side: answers tickets on ``store`` (a client of its own) until :meth:`stop`, which
    speaks through ``stopper`` (another client: the server's own is busy waiting for tickets)."""

    def __init__(self, store, stopper, base: str) -> None:
        self.waiter = Waiter(store)
        self.stopper = stopper
        self.base = base
        self.next_ticket = 1  # the first ticket not answered yet
        self._thread = threading.Thread(target=self._run, name="commtrace-clock", daemon=True)

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop answering (rank 0 is closing its trace) and join the server thread. Every ticket taken
        and not answered is answered "closed", and the store is marked closed: a rank that takes a
        ticket after the count below sees the mark."""
        if self.waiter.cancelled:
            return
        self.waiter.cancel(self.stopper)
        self._thread.join(timeout_s)
        base, store = self.base, self.stopper
        try:
            store.set(f"{base}/closed", b"1")
            last = store.add(f"{base}/n", 0)
            for ticket in range(self.next_ticket, last + 1):
                store.set(f"{base}/{ticket}/0/go", CLOSED)
        except Exception:
            pass  # the store is gone: nobody is left to tell

    def _run(self) -> None:
        waiter, base = self.waiter, self.base
        store = waiter.store
        try:
            while not waiter.cancelled:
                ticket = self.next_ticket
                began = time.monotonic()
                if not waiter.wait(f"{base}/q/{ticket}", IDLE_WAIT.total_seconds()):
                    if waiter.cancelled or time.monotonic() - began < IDLE_WAIT.total_seconds() / 2:
                        return  # closing, or not a timeout: the store went away
                    continue
                request = store.get(f"{base}/q/{ticket}")
                if not store.check([f"{base}/{ticket}/gone"]):  # else the rank stopped waiting before its turn
                    try:
                        rounds = int(request.split(b",")[1])
                    except (IndexError, ValueError):
                        rounds = 0
                    self._answer(ticket, rounds)
                self.next_ticket = ticket + 1
        except Exception:
            return  # the store went away (the job is ending): nobody is left to answer

    def _answer(self, ticket: int, rounds: int) -> None:
        waiter, base = self.waiter, self.base
        for k in range(rounds):
            waiter.store.set(f"{base}/{ticket}/{k}/go", b"go")
            if not waiter.wait(f"{base}/{ticket}/{k}/ping", LEG_S):
                return
            now = time.time_ns()
            waiter.store.set(f"{base}/{ticket}/{k}/pong", str(now).encode())


def measure(waiter: Waiter, base: str, rank: int, rounds: int, timeout_s: float) -> dict:
    """A non-zero rank's side, on a client of its own (``waiter``'s). Returns ``{offset_ns, rtt_ns,
    rounds, rounds_asked, measured_at_ns, wait_s}``, or ``{error, rounds: 0, rounds_asked, wait_s}``."""
    store = waiter.store
    began = time.monotonic()
    deadline = began + timeout_s
    best: tuple[int, int] | None = None
    done = 0
    error = None
    ticket = store.add(f"{base}/n", 1)
    store.set(f"{base}/q/{ticket}", f"{rank},{rounds}".encode())
    if store.check([f"{base}/closed"]):
        error = "rank 0 had closed its trace"
    for k in range(rounds if error is None else 0):
        key = f"{base}/{ticket}/{k}"
        if not waiter.wait(f"{key}/go", deadline - time.monotonic() if k == 0 else LEG_S):
            if waiter.cancelled:
                error = "this rank closed its trace"
            elif k == 0:
                store.set(f"{base}/{ticket}/gone", b"1")
                error = f"rank 0 did not answer within {timeout_s:g} s"
            else:
                error = f"rank 0 stopped answering after {k} round(s)"
            break
        if k == 0 and store.get(f"{key}/go") == CLOSED:
            error = "rank 0 had closed its trace"
            break
        t1 = time.time_ns()
        store.set(f"{key}/ping", b"1")
        if not waiter.wait(f"{key}/pong", LEG_S):
            error = "this rank closed its trace" if waiter.cancelled else f"rank 0 stopped answering after {k} round(s)"
            break
        t4 = time.time_ns()
        t = int(store.get(f"{key}/pong"))
        rtt = t4 - t1
        offset = t - (t1 + t4) // 2
        done += 1
        if best is None or rtt < best[1]:
            best = (offset, rtt)
    waited = round(time.monotonic() - began, 6)
    if best is None:
        return {"error": error or "no round measured", "rounds": 0, "rounds_asked": rounds, "wait_s": waited}
    result = {
        "offset_ns": best[0],
        "rtt_ns": best[1],
        "rounds": done,
        "rounds_asked": rounds,
        "measured_at_ns": time.time_ns(),
        "wait_s": waited,
    }
    if error is not None:
        result["error"] = error
    return result
