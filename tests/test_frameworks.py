"""Frameworks nobody here wrote, recorded by the environment variable alone: DeepSpeed and Ray.

What a user of OpenRLHF runs (DeepSpeed engines in Ray actors) must not change (losses bit for
bit), must not be held up (no store timeouts, no waiting on the recorder at start-up or exit), and
must be recorded whole: every collective DeepSpeed's own comms logger counts is in the trace with
the same op and size. Rank 0 says where the run went and how to explain it; the others say nothing.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from conftest import JOBS, clean_env, free_port, load_events, rank_meta, run_dirs, run_job, torchrun

STAGES = (0, 1, 2, 3)
STEPS = 20
C10D_TIMEOUT = "timed out"  # c10d's warning when a store wait times out ("waitForInput: socket ... timed out")


def _our_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[commtrace] WARNING" in line]


def _clock_complete(meta: dict[int, dict]) -> None:
    for rank, m in meta.items():
        start = m["clock"]["start"]
        if rank == 0:
            assert start["reference"] and "error" not in start, start
        else:
            assert start["rounds"] == start["rounds_asked"] and "error" not in start, (rank, start)


def test_groups_made_right_after_init_are_not_held_up(tmp_path: Path, tmp_trace: Path):
    """Groups made while the recorder sets its trace up (DeepSpeed's initialize does this) meet in
    the store at once: the recorder's own waits are on store clients of its own. Once the trace is
    closed no thread of the recorder's is left in a store call (the clock server and the clock
    thread are stopped and joined): one returning from it while the interpreter finalizes aborts the
    process ("terminate called without an active exception")."""
    env = clean_env(COMMTRACE_DIR=str(tmp_trace), JOB_OUT=str(tmp_path))
    proc = run_job(torchrun(2, JOBS / "new_groups.py", "8"), env)
    assert C10D_TIMEOUT not in proc.stderr, proc.stderr[-3000:]
    assert not _our_warnings(proc.stderr), proc.stderr[-3000:]
    meta = rank_meta(tmp_trace)
    assert sorted(meta) == [0, 1] and all(m["closed"] for m in meta.values())
    _clock_complete(meta)
    for rank in (0, 1):
        alive = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert [name for name in alive if name.startswith("commtrace")] == ["commtrace-signals"], alive


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory) -> dict:
    """One DeepSpeed job (ZeRO 0, 1, 2, 3 in turn, 2 ranks, torchrun) recorded, and the same unrecorded."""
    runs = {}
    for mode in ("plain", "recorded"):
        base = tmp_path_factory.mktemp(f"deepspeed-{mode}")
        out, traces = base / "out", base / "traces"
        out.mkdir()
        extra = {"COMMTRACE_DIR": str(traces)} if mode == "recorded" else {}
        env = clean_env(JOB_OUT=str(out), DS_ACCELERATOR="cpu", **extra)
        stages = ",".join(str(s) for s in STAGES)
        for attempt in (1, 2):
            try:
                proc = run_job(torchrun(2, JOBS / "deepspeed_train.py", stages, str(STEPS)), env, timeout=400)
                break
            except AssertionError as exc:
                # DeepSpeed on CPU now and then aborts a rank as its process tears down ("terminate called
                # without an active exception", SIGABRT), seen in an unrecorded job too: that one job is
                # run again, once; any other failure, or a second one, fails the test.
                if attempt == 2 or "terminate called without an active exception" not in str(exc):
                    raise
                shutil.rmtree(out)
                shutil.rmtree(traces, ignore_errors=True)
                out.mkdir()
        results = {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}
        runs[mode] = {"stderr": proc.stderr, "traces": traces, "results": results}
    return runs


@pytest.mark.slow
def test_deepspeed_trains_bit_for_bit_the_same(deepspeed_runs):
    plain, recorded = deepspeed_runs["plain"]["results"], deepspeed_runs["recorded"]["results"]
    for rank in (0, 1):
        for stage in STAGES:
            losses = recorded[rank]["stages"][str(stage)]["losses"]
            assert len(losses) == STEPS and losses == plain[rank]["stages"][str(stage)]["losses"], (rank, stage)


@pytest.mark.slow
def test_deepspeed_every_collective_its_logger_counts_is_recorded(deepspeed_runs):
    """Per rank and ZeRO stage, the trace holds exactly the collectives DeepSpeed's comms logger
    counted: the same op names and the same sizes (DeepSpeed counts the input's bytes)."""
    run = deepspeed_runs["recorded"]
    events = load_events(run["traces"]).select(["rank", "op", "bytes_in", "t_start_ns"]).to_pylist()
    for rank in (0, 1):
        for stage in STAGES:
            result = run["results"][rank]["stages"][str(stage)]
            counted = collections.Counter(
                {(op, int(size)): n for op, sizes in result["comms_logger"].items() for size, n in sizes.items()}
            )
            recorded = collections.Counter(
                (e["op"], e["bytes_in"])
                for e in events
                if e["rank"] == rank and result["t0_ns"] <= e["t_start_ns"] <= result["t1_ns"]
            )
            assert counted, (rank, stage)
            assert recorded == counted, (rank, stage, counted - recorded, recorded - counted)


@pytest.mark.slow
def test_deepspeed_is_not_held_up_and_rank_0_says_where_the_run_went(deepspeed_runs):
    run = deepspeed_runs["recorded"]
    stderr = run["stderr"]
    assert C10D_TIMEOUT not in stderr and C10D_TIMEOUT not in deepspeed_runs["plain"]["stderr"], stderr[-3000:]
    assert not _our_warnings(stderr), stderr[-3000:]
    (run_dir,) = run_dirs(run["traces"])
    started = [line for line in stderr.splitlines() if line.startswith("[commtrace] recording run")]
    closed = [line for line in stderr.splitlines() if line.startswith("[commtrace] run ")]
    assert len(started) == 1 and str(run_dir) in started[0] and "2 ranks" in started[0], stderr[-3000:]
    assert len(closed) == 1 and f"analyze-trace diagnose {run_dir}" in closed[0], stderr[-3000:]
    meta = rank_meta(run["traces"])
    assert sorted(meta) == [0, 1] and all(m["closed"] and m["failure"] is None for m in meta.values())
    _clock_complete(meta)
    from analysis import Run, diagnose

    loaded = Run.open(run_dir)
    assert loaded.group_labels()["1"] == "ranks 0-1"  # DeepSpeed's clone of the world group has no description
    assert diagnose.diagnose(loaded)["recording"] == []


@pytest.mark.slow
def test_ray_actors_are_recorded_as_one_run(tmp_path: Path):
    """OpenRLHF's launch pattern: a Ray driver with the variable set, actors that call
    init_process_group themselves. Every actor records into one run, and closes it."""
    traces, out = tmp_path / "traces", tmp_path / "actors.json"
    proc = run_job([str(JOBS / "ray_actors.py"), "2", free_port(), str(out)], clean_env(COMMTRACE_DIR=str(traces)))
    actors = json.loads(out.read_text())
    assert actors[0]["params"] == actors[1]["params"]  # DDP kept them in step
    assert C10D_TIMEOUT not in proc.stderr and not _our_warnings(proc.stderr), proc.stderr[-3000:]
    (run_dir,) = run_dirs(traces)
    meta = rank_meta(traces)
    assert sorted(meta) == [0, 1] and {m["pid"] for m in meta.values()} == {a["pid"] for a in actors}
    assert all(m["closed"] for m in meta.values())
    _clock_complete(meta)
    events = load_events(traces).to_pylist()
    per_rank = collections.Counter((e["rank"], e["op"]) for e in events)
    assert per_rank[(0, "all_reduce")] == per_rank[(1, "all_reduce")] >= 10
    assert per_rank[(0, "barrier")] == per_rank[(1, "barrier")] == 1
