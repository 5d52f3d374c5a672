"""Switching on and off: nothing happens unless asked, and switching off restores torch exactly."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

import recorder
from conftest import clean_env, load_events, rank_meta
from recorder import _state, install

PATCHED = ["_new_process_group_helper", "batch_isend_irecv", "destroy_process_group", *install.LABELLED_APIS]


def _python(code: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=clean_env(**env), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


CHECK = """
    import sys
    import torch, torch.distributed as dist, torch.distributed.distributed_c10d as c10d
    print(sorted(m for m in sys.modules if m == "recorder" or m.startswith("recorder.")))
    print(hasattr(c10d._new_process_group_helper, "__wrapped__"), hasattr(dist.batch_isend_irecv, "__wrapped__"),
          dist.batch_isend_irecv is c10d.batch_isend_irecv)
"""


def test_unset_variable_imports_nothing_and_leaves_torch_alone():
    out = _python(CHECK).splitlines()
    assert out[0] == "[]"
    assert out[1] == "False False True"


def test_set_variable_installs_at_torch_import(tmp_path):
    out = _python(CHECK, COMMTRACE_DIR=str(tmp_path)).splitlines()
    assert "'recorder.capture'" in out[0] and "'recorder.install'" in out[0]
    assert out[1] == "True True True"


def test_disable_variable_wins(tmp_path):
    out = _python(CHECK, COMMTRACE_DIR=str(tmp_path), COMMTRACE_DISABLE="1").splitlines()
    assert "recorder.capture" not in out[0]


def _snapshot():
    objects = {name: (getattr(c10d, name, None), getattr(dist, name, None)) for name in PATCHED}
    objects["Work.wait"] = (torch._C._distributed_c10d.Work.__dict__["wait"], None)
    return objects


def test_enable_twice_is_harmless_and_disable_restores_exactly(tmp_path):
    before = _snapshot()
    assert recorder.enable(tmp_path, clock_sync=False)
    after_once = _snapshot()
    assert after_once != before
    assert recorder.enable(tmp_path) is False  # second enable: no second layer
    assert _snapshot() == after_once
    wrapped = c10d._new_process_group_helper
    assert getattr(wrapped, "__wrapped__", None) is before["_new_process_group_helper"][0]
    assert not hasattr(wrapped.__wrapped__, "__wrapped__")  # exactly one layer
    recorder.disable()
    assert _snapshot() == before
    assert not recorder.is_enabled()


def test_context_manager_records_a_real_group_and_steps(tmp_path):
    before = _snapshot()
    with recorder.recording(tmp_path, clock_sync=False, flush_s=0.05):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        assert type(dist.group.WORLD).__name__ == "RecordingProcessGroup"
        for i in range(3):
            recorder.step(i)
            t = torch.ones(4)
            dist.all_reduce(t)
        dist.destroy_process_group()
    assert _snapshot() == before
    rows = load_events(tmp_path).to_pylist()
    assert [(r["op"], r["step"], r["seq"]) for r in rows] == [("all_reduce", i, i) for i in range(3)]


def test_our_failures_never_reach_training(tmp_path, monkeypatch, caplog):
    from recorder import writer

    def broken(*args, **kwargs):
        raise RuntimeError("injected writer failure")

    monkeypatch.setattr(writer, "build_segment", broken)
    monkeypatch.setattr("recorder.flusher.build_segment", broken)
    with recorder.recording(tmp_path, clock_sync=False, flush_s=0.05):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        t = torch.arange(4.0)
        for _ in range(5):
            dist.all_reduce(t)
        recorder.flush()
        dist.all_reduce(t)
        dist.destroy_process_group()
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    ours = [r.getMessage() for r in caplog.records if r.name == "commtrace" and r.levelname == "WARNING"]
    assert len(ours) == 1, ours
    assert "injected writer failure" in ours[0] and "training continues unaffected" in ours[0]


def _bad_calls() -> list[str]:
    errors = []
    for call in (
        lambda: dist.broadcast(torch.ones(2), src=5),
        lambda: dist.all_to_all_single(torch.zeros(3), torch.ones(5)),
        lambda: dist.all_reduce(torch.ones(2), op="not an op"),
    ):
        try:
            call()
        except Exception as exc:
            errors.append(re.sub(r"0x[0-9a-f]+", "0x", f"{type(exc).__name__}: {exc}"))
    return errors


def test_user_exceptions_pass_through_untouched(tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        plain = _bad_calls()
    finally:
        dist.destroy_process_group()
    with recorder.recording(tmp_path, clock_sync=False):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            recorded = _bad_calls()
        finally:
            dist.destroy_process_group()
    assert len(plain) == 3 and recorded == plain
    assert _state.session is None


def test_forked_child_never_writes(tmp_path):
    import os

    with recorder.recording(tmp_path, clock_sync=False, flush_s=0.05):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        dist.all_reduce(torch.ones(2))
        pid = os.fork()
        if pid == 0:
            code = 0 if _state.session is None else 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        dist.destroy_process_group()
    files = list(tmp_path.rglob("*.parquet"))
    assert files and all(str(os.getpid()) in f.name for f in files)


def test_no_thread_of_ours_takes_tempfiles_lock(tmp_path, monkeypatch):
    """A lock held by one of our threads when the main thread forks (a DataLoader worker) stays held in
    the child for good: tempfile's, taken by the first gettempdir(), hung a worker that way. The
    recorder looks the directory up on the enabling thread, before its threads exist."""
    import tempfile
    import threading
    import time

    takers = []
    real = tempfile._once_lock

    class Watched:
        def acquire(self, *args):
            takers.append(threading.current_thread().name)
            return real.acquire(*args)

        def release(self):
            return real.release()

    monkeypatch.setattr(tempfile, "tempdir", None)  # as in a process that never asked before
    monkeypatch.setattr(tempfile, "_once_lock", Watched())
    with recorder.recording(tmp_path, clock_sync=False, flush_s=0.05, sample_hz=20):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        dist.all_reduce(torch.ones(2))
        deadline = time.monotonic() + 10
        while not (_state.session.sampler and _state.session.sampler.samples):
            assert time.monotonic() < deadline, "the sampler never ran"
            time.sleep(0.02)
        dist.destroy_process_group()
    assert takers and not [name for name in takers if name.startswith("commtrace")], takers


def test_full_buffer_drops_and_counts(tmp_path):
    with recorder.recording(tmp_path, clock_sync=False, flush_s=3600, max_buffered=16):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        t = torch.ones(4)
        for _ in range(100):
            dist.all_reduce(t)
        dist.destroy_process_group()
    assert t.tolist() == [1.0] * 4
    rows = load_events(tmp_path).to_pylist()
    assert [r["seq"] for r in rows] == list(range(16))
    meta = next(iter(rank_meta(tmp_path).values()))
    assert meta["dropped_events"] == 84 and meta["rows_written"] == 16 and meta["closed"] is True


def test_a_new_default_group_after_destroy_starts_a_new_run(tmp_path):
    with recorder.recording(tmp_path, clock_sync=False):
        for _ in range(2):
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            dist.all_reduce(torch.ones(2))
            dist.destroy_process_group()
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        (segment,) = run.glob("rank=00000/collectives-*.parquet")
        rows = pq.read_table(segment).to_pylist()
        assert [(r["op"], r["seq"]) for r in rows] == [("all_reduce", 0)]
