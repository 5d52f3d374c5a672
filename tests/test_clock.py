"""Clock offsets through a real TCPStore: the server and a measuring rank in one process, on clients of
their own, and what closing does to a measurement in progress."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch.distributed as dist

from recorder import clock


def _store() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))


def test_a_rank_measures_its_offset_against_the_server():
    store = _store()
    server = clock.Server(store.clone(), store.clone(), "t").start()
    try:
        result = clock.measure(clock.Waiter(store.clone()), "t", 1, 5, timeout_s=10)
    finally:
        server.stop()
    assert result["rounds"] == result["rounds_asked"] == 5 and "error" not in result
    assert abs(result["offset_ns"]) <= result["rtt_ns"]  # one clock: the offset is within the round trip


def test_stopping_the_server_mid_measurement_leaves_no_thread_in_the_store():
    """A rank took a ticket and never pinged (it died mid-measurement): the server waits in the store
    for its ping. Stopping cuts that wait short and joins the thread: a thread of ours returning from
    a store call while the interpreter finalizes aborts the process. A rank asking afterwards learns
    at once that nobody will answer."""
    store = _store()
    server = clock.Server(store.clone(), store.clone(), "t").start()
    ticket = store.add("t/n", 1)
    store.set(f"t/q/{ticket}", b"1,5")
    store.wait([f"t/{ticket}/0/go"], timedelta(seconds=5))  # the server answered, and now waits
    began = time.monotonic()
    server.stop(timeout_s=5)
    assert not server._thread.is_alive() and time.monotonic() - began < clock.LEG_S / 2
    late = clock.measure(clock.Waiter(store.clone()), "t", 2, 5, timeout_s=10)
    assert late["error"] == "rank 0 had closed its trace" and late["rounds"] == 0 and late["wait_s"] < 1


def test_cancelling_a_rank_waiting_for_the_server_ends_its_measurement_at_once():
    store = _store()
    waiter, results = clock.Waiter(store.clone()), []
    thread = threading.Thread(target=lambda: results.append(clock.measure(waiter, "t", 1, 5, timeout_s=30)))
    thread.start()
    while not store.check(["t/q/1"]):  # the ticket is taken: the rank waits for an answer
        time.sleep(0.01)
    time.sleep(0.05)
    began = time.monotonic()
    waiter.cancel(store.clone())
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - began < 1
    assert results[0]["error"] == "this rank closed its trace" and results[0]["rounds"] == 0


def test_a_failed_later_measurement_keeps_the_last_good_end_offset(monkeypatch):
    """The periodic ``end`` measurement runs until the trace closes; one that fails because rank 0
    is already closing (seen in CI: ``end`` with 0 rounds) must not replace the good one before it."""
    from types import SimpleNamespace

    from recorder import identity

    results = iter(
        [
            {"offset_ns": 12, "rtt_ns": 40, "rounds": 5, "rounds_asked": 5, "wait_s": 0.01},
            {"error": "timed out waiting for rank 0", "rounds": 0, "rounds_asked": 5, "wait_s": 2.0},
        ]
    )
    monkeypatch.setattr(identity.clock, "measure", lambda *args, **kwargs: next(results))
    rank = identity.RunIdentity(SimpleNamespace(clock_rounds=5), "1-abcd", dict, lambda where, exc: None)
    rank.rank, rank.run_id, rank._clock_waiter = 1, "t", object()
    rank.measure_clock("end")
    rank.measure_clock("end")
    assert rank.clock["end"]["rounds"] == 5 and rank.clock["end"]["offset_ns"] == 12
