"""A real hang (rank 2 of a 3-rank gloo job never issues an all_reduce; ranks 0 and 1 block inside
it): what was in flight is written out on SIGUSR1, on SIGTERM, or by the watchdog, while the
blocked ranks are inside the collective, and ``analyze-trace hangs`` names the group, seq and op,
the missing rank and the stuck ones. And a real desync that gloo lets through: diagnose names it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis.cli import main
from conftest import JOBS, clean_env, run_dirs, run_job, start_job, torchrun


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "State:\tZ" not in fh.read()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between it and the read
        return False


@pytest.mark.parametrize("trigger", ["sigusr1", "sigterm", "watchdog"])
def test_hang_is_written_out_and_named(tmp_path, capsys, trigger):
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    env = clean_env(
        COMMTRACE_DIR=str(traces),
        JOB_OUT=str(out),
        COMMTRACE_SAMPLE_HZ="0",
        COMMTRACE_FLUSH_S="0.2",
        COMMTRACE_HANG_DUMP_S="2" if trigger == "watchdog" else "0",
    )
    job = start_job(torchrun(3, JOBS / "hang.py", "5"), env)
    pids: dict[int, int] = {}
    try:
        _wait(lambda: all((out / f"pid{r}").exists() for r in range(3)), 90, "every rank to reach the hang")
        pids = {r: int((out / f"pid{r}").read_text()) for r in range(3)}
        time.sleep(1.0)  # ranks 0 and 1 are inside the all_reduce by now

        def snapshots(rank: int) -> list[Path]:
            return sorted(traces.glob(f"*/rank={rank:05d}/inflight-*.parquet"))

        if trigger == "sigusr1":
            for r in (0, 1):
                os.kill(pids[r], signal.SIGUSR1)
        elif trigger == "sigterm":
            for r in (0, 1):
                os.kill(pids[r], signal.SIGTERM)
            # blocked in C++, they still die the default way, after writing the snapshot
            _wait(lambda: not _alive(pids[0]) and not _alive(pids[1]), 30, "SIGTERM to end ranks 0 and 1")
        _wait(lambda: snapshots(0) and snapshots(1), 30, "in-flight snapshots from ranks 0 and 1")
        if trigger != "sigterm":
            assert _alive(pids[0]) and _alive(pids[1]), "the snapshot must not end the blocked ranks"
        for r in (0, 1):
            rows = [row for path in snapshots(r) for row in pq.read_table(path).to_pylist()]
            assert any(row["op"] == "all_reduce" and row["status"] == "in_flight" for row in rows)
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.kill()
        job.wait(timeout=60)
    (run,) = run_dirs(traces)
    assert main(["hangs", str(run), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (hang,) = report["hangs"]
    assert hang["op"] == "all_reduce" and hang["missing_ranks"] == [2] and hang["stuck_ranks"] == [0, 1], hang
    seqs = [
        row["seq"] for path in run.glob("rank=00002/collectives-*.parquet") for row in pq.read_table(path).to_pylist()
    ]
    assert hang["seq"] == max(seqs) + 1  # the one rank 2 never issued
    assert not report["desyncs"]


def test_a_silent_desync_is_named_with_its_culprit(tmp_path, capsys):
    """Rank 2 all_reduces float16 where the others use float32, with the same byte count: gloo completes
    it and training carries on with wrong sums. diagnose names the group, seq, rank and what differed."""
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out), COMMTRACE_SAMPLE_HZ="0")
    run_job(torchrun(3, JOBS / "desync.py"), env)
    outcomes = {r: (out / f"rank{r}").read_text().split() for r in range(3)}
    assert all(outcome == "completed" for outcome, _ in outcomes.values())  # nothing told the user
    assert float(outcomes[2][1]) != float(outcomes[0][1])
    (run,) = run_dirs(traces)
    assert main(["diagnose", str(run), "--format", "json", "--fail-on-problem"]) == 1  # a problem was found
    report = json.loads(capsys.readouterr().out)
    (desync,) = report["desyncs"]
    assert (desync["pg"], desync["seq"], desync["culprit_rank"], desync["kind"]) == ("0", 3, 2, "dtype"), desync
    assert not report["hangs"] and not report["dead_ranks"]
