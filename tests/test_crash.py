"""kill -9 of one rank: its log is readable up to one flush interval before the kill; the others' are whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from conftest import JOBS, clean_env, start_job, torchrun

FLUSH_S = 0.5


def _segments(trace_dir, rank):
    return sorted(trace_dir.glob(f"*/rank={rank:05d}/collectives-*.parquet"))


def test_kill_9_loses_at_most_one_flush_interval(tmp_path):
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    env = clean_env(COMMTRACE_DIR=str(traces), COMMTRACE_FLUSH_S=str(FLUSH_S), JOB_OUT=str(out))
    job = start_job(torchrun(2, JOBS / "loop.py", "120"), env)
    try:
        deadline = time.monotonic() + 90
        while len(_segments(traces, 1)) < 3 or not (out / "pid1").exists():
            assert time.monotonic() < deadline and job.poll() is None, "the job did not start recording"
            time.sleep(0.1)
        time.sleep(0.8)  # somewhere inside a flush interval
        killed_at_ns = time.time_ns()
        os.kill(int((out / "pid1").read_text()), signal.SIGKILL)
        job.wait(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    killed = [pq.read_table(p) for p in _segments(traces, 1)]  # every segment readable: no half file
    last_end = max(max(t.column("t_end_ns").drop_null().to_pylist()) for t in killed)
    lost_s = (killed_at_ns - last_end) / 1e9
    print(f"rank 1 lost the last {lost_s:.3f} s before kill -9 (flush interval {FLUSH_S} s)")
    assert 0 <= lost_s <= FLUSH_S + 0.4, f"lost {lost_s:.3f} s of rank 1 operations"  # + scheduling slack
    assert not list(traces.glob("*/rank=00001/.*.tmp"))
    # The surviving rank's log is readable and gap-free, and reaches to within one flush interval of the
    # kill: torchrun stops it with SIGTERM, which flushes everything if the rank gets back to Python in
    # time, and it may be blocked in the broken collective until the launcher kills it.
    survivor = sorted((r for p in _segments(traces, 0) for r in pq.read_table(p).to_pylist()), key=lambda r: r["seq"])
    last_killed_seq = max(max(t.column("seq").to_pylist()) for t in killed)
    assert [r["seq"] for r in survivor] == list(range(len(survivor)))
    survivor_last = max(r["t_end_ns"] or r["t_start_ns"] for r in survivor)
    assert (killed_at_ns - survivor_last) / 1e9 <= FLUSH_S + 0.4
    # diagnose names the killed rank, with its last operation.
    from analysis import Run, diagnose

    (run_dir,) = [p for p in traces.iterdir() if p.is_dir()]
    dead = diagnose.diagnose(Run.open(run_dir))["dead_ranks"]
    assert [(d["rank"], d["last_op"]) for d in dead] == [(1, "all_reduce")]
    assert dead[0]["last_seq"] >= last_killed_seq


SIGTERM_JOB = """
import sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
t = torch.ones(8)
for i in range(1_000_000):
    dist.all_reduce(t)
    if i == 100:
        print("ready", flush=True)
    time.sleep(0.001)
"""


def test_sigterm_flushes_everything_and_dies_the_same_way(tmp_path):
    traces = tmp_path / "traces"
    env = clean_env(COMMTRACE_DIR=str(traces), COMMTRACE_FLUSH_S="3600")  # only the signal can flush
    job = subprocess.Popen([sys.executable, "-c", SIGTERM_JOB], env=env, stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    signalled_at_ns = time.time_ns()
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == -signal.SIGTERM  # exactly as without the recorder
    rows = [r for p in _segments(traces, 0) for r in pq.read_table(p).to_pylist()]
    assert len(rows) > 100
    assert [r["seq"] for r in sorted(rows, key=lambda r: r["seq"])] == list(range(len(rows)))
    assert (signalled_at_ns - max(r["t_start_ns"] for r in rows)) / 1e9 < 0.5  # periodic flush: 3600 s


SIGTERM_IN_CLOSE_JOB = """
import os, signal, sys, time, torch, torch.distributed as dist
from recorder import _state

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
for _ in range(50):
    dist.all_reduce(torch.ones(8))
session = _state.session
flush = session.flusher.flush

def final_flush_then_sigterm(final=False):
    flush(final=final)
    if final:  # the launcher's SIGTERM lands while the trace is being closed at exit
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside close()

session.flusher.flush = final_flush_then_sigterm
sys.exit(0)  # no destroy_process_group: the trace is closed by the recorder's atexit hook
"""


def test_sigterm_during_the_close_at_exit_still_ends_with_a_closed_trace(tmp_path):
    """torchrun sends SIGTERM to a rank that is already leaving: the handler runs inside the recorder's
    own close at exit. The close finishes (metadata says closed) and the process then dies by SIGTERM,
    as it would have; before, it died between the last segment and the metadata."""
    traces = tmp_path / "traces"
    env = clean_env(COMMTRACE_DIR=str(traces), COMMTRACE_SAMPLE_HZ="0")
    job = subprocess.run([sys.executable, "-c", SIGTERM_IN_CLOSE_JOB], env=env, capture_output=True, text=True)
    assert job.returncode == -signal.SIGTERM, job.stderr
    (meta,) = traces.glob("*/rank=00000/rank-*.json")
    assert json.loads(meta.read_text())["closed"] is True
    rows = [r for p in _segments(traces, 0) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 50
