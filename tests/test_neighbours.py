"""Restarts and neighbours: torchrun's restarted attempts, a second job in the same COMMTRACE_DIR and
forked DataLoader workers never overwrite or mix files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from conftest import JOBS, clean_env, free_port, run_job, start_job

WORLD = 2


def _torchrun(*args: str) -> list[str]:
    """torchrun with the c10d rendezvous on a free port: the launcher that restarts attempts."""
    endpoint = f"127.0.0.1:{free_port()}"
    return ["-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--rdzv-backend", "c10d"] + [
        "--rdzv-endpoint",
        endpoint,
        *args,
    ]


def _files(run: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def _ops(run: Path) -> dict[int, Counter]:
    """Per rank: operations by name, each counted once (the latest row of an operation wins)."""
    out: dict[int, Counter] = {}
    for path in sorted(run.glob("rank=*/collectives-*.parquet")):
        for row in pq.read_table(path, columns=["rank", "op", "pg", "seq"]).to_pylist():
            out.setdefault(row["rank"], Counter())[row["op"]] += 1
    return out


def _analyze(run: Path, command: str = "diagnose") -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.cli", command, str(run), "--format", "json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_restarted_attempt_writes_its_own_run_and_keeps_the_first(tmp_path: Path):
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out))
    run_job(_torchrun("--max-restarts", "1", str(JOBS / "neighbours.py"), "20", "--fail-first-attempt"), env)
    runs = sorted(p for p in traces.iterdir() if p.is_dir())
    assert len(runs) == 2, runs
    first, second = sorted(runs, key=lambda r: r.name.endswith("-r1"))
    assert second.name.endswith("-r1") and not first.name.endswith("-r1")
    for run, attempt in ((first, 0), (second, 1)):
        metas = [json.loads(p.read_text()) for p in run.glob("rank=*/rank-*.json")]
        assert sorted(m["rank"] for m in metas) == [0, 1]
        assert all(m["restart_count"] == attempt and m["closed"] for m in metas)
        pids = {json.loads((out / f"rank{r}-attempt{attempt}.json").read_text())["pid"] for r in range(WORLD)}
        assert {m["pid"] for m in metas} == pids  # each attempt's files come from its own processes
        assert _ops(run) == {r: Counter({"all_reduce": 20, "barrier": 1}) for r in range(WORLD)}
    # The second attempt started after the first had closed its files, and wrote none of them.
    started = min(json.loads(p.read_text())["started_ns"] for p in second.glob("rank=*/rank-*.json"))
    assert all(mtime < started for _, mtime in _files(first).values())
    assert not (set(_files(first)) & set(_files(second)))
    # Rank 1 of the first attempt failed after its barrier: nothing of it is missing.
    assert _analyze(first)["dead_ranks"] == [] and _analyze(second)["dead_ranks"] == []


def test_two_jobs_in_one_directory_keep_apart(tmp_path: Path):
    traces = tmp_path / "traces"
    jobs = []
    for ops in (30, 45):
        out = tmp_path / f"out{ops}"
        out.mkdir()
        env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out))
        jobs.append((ops, out, start_job(_torchrun(str(JOBS / "neighbours.py"), str(ops)), env)))
    for _, _, job in jobs:
        _, stderr = job.communicate(timeout=240)
        assert job.returncode == 0, stderr[-3000:]
    runs = [p for p in traces.iterdir() if p.is_dir()]
    assert len(runs) == 2
    by_ops = {}
    for run in runs:
        ops = _ops(run)
        (count,) = {c["all_reduce"] for c in ops.values()}
        assert sorted(ops) == [0, 1] and all(c["barrier"] == 1 for c in ops.values())
        by_ops[count] = run
    assert sorted(by_ops) == [30, 45]  # each run holds one job's operations, whole
    for ops, out, _ in jobs:
        pids = {json.loads((out / f"rank{r}-attempt0.json").read_text())["pid"] for r in range(WORLD)}
        metas = [json.loads(p.read_text()) for p in by_ops[ops].glob("rank=*/rank-*.json")]
        assert {m["pid"] for m in metas} == pids


def test_forked_dataloader_workers_write_nothing(tmp_path: Path):
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out))
    run_job(_torchrun(str(JOBS / "neighbours.py"), "24", "--loader"), env)
    facts = [json.loads((out / f"rank{r}-attempt0.json").read_text()) for r in range(WORLD)]
    assert all(len(f["workers"]) == 2 and f["pid"] not in f["workers"] for f in facts)  # the batches came from forks
    assert all(f["sum"] == 2.0**24 for f in facts)
    (run,) = [p for p in traces.iterdir() if p.is_dir()]
    pids = {str(f["pid"]) for f in facts}
    workers = {str(w) for f in facts for w in f["workers"]}
    for path in run.rglob("*"):
        if path.name == "live.json":  # one per rank folder, replaced by the rank's flusher: it names its pid inside
            assert str(json.loads(path.read_text())["pid"]) in pids
        elif path.is_file() and path.name != "run.json":
            assert any(pid in path.name for pid in pids), path.name  # every file names a rank's pid
            assert not any(w in path.name for w in workers), path.name
    assert _ops(run) == {r: Counter({"all_reduce": 24, "barrier": 1}) for r in range(WORLD)}


def test_recording_never_imports_pandas(tmp_path: Path):
    """pyarrow imports pandas the first time it converts Python values, 25-30 MB per rank and a long
    GIL hold in the writer: every segment, sample and probe row is built without that."""
    import importlib.util

    assert importlib.util.find_spec("pandas") is not None  # importable here, so the check means something
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out), COMMTRACE_FLUSH_S="0.2")
    run_job(_torchrun(str(JOBS / "neighbours.py"), "3000"), env)
    facts = [json.loads((out / f"rank{r}-attempt0.json").read_text()) for r in range(WORLD)]
    assert [f["pandas"] for f in facts] == [False, False]
    (run,) = [p for p in traces.iterdir() if p.is_dir()]
    assert len(list(run.glob("rank=*/collectives-*.parquet"))) >= 2
    assert list(run.glob("host=*/nic-*.parquet"))  # the sampler wrote too (the link probe needs 2 hosts:
    # tests/test_arrow.py builds its rows)
    assert _ops(run) == {r: Counter({"all_reduce": 3000, "barrier": 1}) for r in range(WORLD)}
