"""The event buffer between capture and the flusher, and the flusher's polling of works."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np

from recorder.records import ERROR, ISSUE, NULL32, NULL64, OK, EventBuffer


def _issue(rid: int) -> bytes:
    return ISSUE.pack(rid, 1_000 + rid, rid, 4, 4, NULL64, 0, NULL32, NULL32, 0, -1, -1, 0, 0, 0)


def test_records_appended_from_many_threads_are_taken_whole_and_once():
    events = EventBuffer(max_records=10**6, flush_records=10**6)
    per_thread, threads = 5_000, 4
    taken = []
    stop = threading.Event()

    def append(first: int) -> None:
        for rid in range(first, first + per_thread):
            events.issues.extend(_issue(rid))
            events.complete(rid, OK if rid % 2 else ERROR)

    def take() -> None:
        while not stop.is_set():
            taken.append((events.take_issues(), events.take_dones()))

    taker = threading.Thread(target=take)
    taker.start()
    workers = [threading.Thread(target=append, args=(i * per_thread,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    taker.join()
    taken.append((events.take_issues(), events.take_dones()))
    issues = np.concatenate([i for i, _ in taken])
    dones = np.concatenate([d for _, d in taken])
    assert sorted(issues["id"].tolist()) == list(range(per_thread * threads))
    assert sorted(dones["id"].tolist()) == list(range(per_thread * threads))
    assert (dones["status"] == np.where(dones["id"] % 2, OK, ERROR)).all()
    assert (dones["gpu_ns"] == NULL64).all() and (dones["t1"] > 0).all()
    assert not len(events.issues) and not len(events.dones)


class _DoneWork:
    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True


def test_a_work_queued_while_the_flusher_sleeps_is_seen_complete_at_once():
    """A CUDA work is polled, not waited on. Queued while the flusher slept until its next flush,
    it used to be seen complete only at that flush (up to COMMTRACE_FLUSH_S late), and its end time
    with it: every NCCL operation after a pause in communication (a step's compute) lasted up to a
    second longer in the trace than on the GPU."""
    from recorder.flusher import Flusher

    events = EventBuffer(max_records=1000, flush_records=1000)
    config = SimpleNamespace(flush_s=30.0, pending_s=600.0, max_buffered=1000, hang_dump_s=0)
    flusher = Flusher(events, config, {}, lambda where, exc: None)
    flusher.start()
    try:
        deadline = time.monotonic() + 5
        while not events.idle and time.monotonic() < deadline:
            time.sleep(0.001)
        assert events.idle
        queued = time.monotonic_ns()
        events.poll(7, _DoneWork(), False)
        deadline = time.monotonic() + 5
        while not len(events.dones) and time.monotonic() < deadline:
            time.sleep(0.001)
        done = events.take_dones()
        assert done["id"].tolist() == [7] and done["status"].tolist() == [OK]
        assert (done["t1"][0] - queued) / 1e9 < 0.5
    finally:
        flusher.stop(5.0)


FIRST_FLUSH_JOB = """
import json, sys, tempfile
import torch, torch.distributed as dist
import recorder
recorder.enable(tempfile.mkdtemp(), clock_sync=False, sample_hz=0)
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
before = set(sys.modules)
for _ in range(20):
    dist.all_reduce(torch.ones(4))
    dist.broadcast(torch.ones(4), src=0)
recorder.flush()
print(json.dumps(sorted(m for m in set(sys.modules) - before if not m.startswith("torch"))))
dist.destroy_process_group()
"""


def test_the_first_flush_imports_nothing(tmp_path):
    """Whatever the flusher imports on its first flush it imports on a thread of ours in the middle of
    training, holding the GIL: np.unique imported numpy.ma there (0.1-0.2 s of Python), and a rank
    that came back from a collective waited that long for the GIL, which the lab measured as a
    straggler three times later than it was."""
    from conftest import clean_env, run_job

    script = tmp_path / "job.py"
    script.write_text(FIRST_FLUSH_JOB)
    proc = run_job([str(script)], clean_env())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
