"""``analyze-trace watch``: a running job followed as its files land.

The first test follows a real 4-rank gloo job while an operator changes it: a straggler switched
on mid-run, then a rank that stops issuing collectives. The others check what a live view must get
right on its own: a merged segment's rows counted once, files a watcher must not trust, the newest
run of a directory of runs, the exit codes.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from analysis.cli import main
from analysis.watch import Options, Watcher, newest_run
from conftest import JOBS, ROOT, clean_env, torchrun
from recorder.schema import COLLECTIVE_SCHEMA
from recorder.writer import MERGE_SEGMENTS, SegmentWriter
from synthetic import T0, event, write_run

SAMPLES = ROOT / "sample_traces"


def _frames(proc: subprocess.Popen) -> queue.Queue:
    """Each JSON line ``proc`` writes, parsed, as it comes."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(json.loads(line))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next(frames: queue.Queue, watch: subprocess.Popen, timeout: float = 60) -> dict:
    frame = frames.get(timeout=timeout)
    assert frame is not None, f"watch ended before the job did: {watch.stderr.read()[-3000:]}"
    return frame


def test_a_live_job_shows_progress_then_a_straggler_then_a_hang(tmp_path: Path):
    traces, out = tmp_path / "traces", tmp_path / "out"
    out.mkdir()
    traces.mkdir()  # watch waits in it for the job's run to appear
    env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out))
    job = subprocess.Popen(
        [sys.executable, *torchrun(4, JOBS / "live.py", "--seconds", "150")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = subprocess.Popen(
        [sys.executable, "-m", "analysis.cli", "watch", str(traces), "--format", "json", "--interval", "1"]
        + ["--window", "5", "--hang-after", "3", "--fail-on-problem"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        frames = _frames(watch)
        # Progress: the default group's completed seq grows, frame after frame, and nobody straggles.
        seen: list[dict] = []
        while len([f for f in seen if f["progress"]]) < 4:
            seen.append(_next(frames, watch))
        moving = [f["progress"][0]["completed"] for f in seen if f["progress"]]
        assert moving == sorted(moving) and moving[-1] > moving[0] > 0, moving
        assert all(f["state"] == "running" and not f["stragglers"] and not f["hang"] for f in seen)
        assert seen[-1]["progress"][0]["ops_per_s"] > 0 and seen[-1]["ranks_writing"] == 4
        assert seen[-1]["bandwidth"][0]["op"] == "all_reduce" and seen[-1]["bandwidth"][0]["busbw_GBps"] > 0

        # A straggler switched on: named within three refreshes that began after it.
        switched = time.time_ns()
        (out / "slow").touch()
        after = []
        while len(after) < 3:
            frame = _next(frames, watch)
            if frame["time_ns"] > switched:
                after.append(frame)
        named = [[s["rank"] for s in f["stragglers"]] for f in after]
        assert [2] in named, named
        # The host's figures come from its sampler's live file: seconds old, though samples are
        # written every 10 s (COMMTRACE_SAMPLE_FLUSH_S).
        ages = [(f["time_ns"] - h["newest_sample_ns"]) / 1e9 for f in after for h in f["host_figures"]]
        assert ages and max(ages) < 3, ages
        assert all(ranks in ([], [2]) for ranks in named), named

        # Rank 3 stops issuing: the others block in the next all_reduce; the hang is named while the
        # job is still blocked, with who never issued it and who is stuck in it.
        (out / "stop").touch()
        while True:
            frame = _next(frames, watch)
            if frame["hang"] and frame["hang"]["stuck_ranks"] == [0, 1, 2]:
                break
        assert job.poll() is None  # named before anyone killed the job
        hang = frame["hang"]
        assert hang["op"] == "all_reduce" and hang["pg"] == "0" and hang["never_issued"] == [3], hang
        assert hang["for_s"] >= 3 and not hang["not_writing"]
        assert frame["progress"][0]["behind"] == [] or frame["progress"][0]["completed"] == hang["seq"] - 1

        # The job is stopped (SIGTERM, as a scheduler would): watch says it ended, gives diagnose's
        # verdict on the whole run, and exits (1: --fail-on-problem, the job hung).
        job.send_signal(signal.SIGTERM)
        while frame["state"] != "ended":
            frame = _next(frames, watch)
        kinds = {f["kind"] for f in frame["final"]["findings"]}
        assert {"hang", "straggler"} <= kinds, frame["final"]["findings"]
        assert watch.wait(timeout=60) == 1, watch.stderr.read()
    finally:
        for proc in (job, watch):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _segment(rank: int, seqs: range) -> pa.Table:
    rows = [event(rank, s, "all_reduce", 2, 4096, 4096, T0 + s * 10**6 + rank, T0 + s * 10**6 + 500_000) for s in seqs]
    return pa.Table.from_pylist(rows, schema=COLLECTIVE_SCHEMA)


def test_merged_segments_are_counted_once(tmp_path: Path):
    """The recorder merges its small segments into one that replaces them; a watcher that read some
    of them (and, as usual, not the last, merged the moment it was written) counts each row once."""
    run = tmp_path / "run"
    writers = []
    for rank in range(2):
        folder = run / f"rank={rank:05d}"
        folder.mkdir(parents=True)
        meta = {"rank": rank, "world_size": 2, "host": "h0", "process_groups": [{"pg": "0", "ranks": [0, 1]}]}
        (folder / "rank-1-0000.json").write_text(json.dumps(meta))
        writers.append(SegmentWriter(str(folder), "1-0000", {"commtrace.rank": str(rank)}))
    (run / "run.json").write_text(json.dumps({"run_id": "merged", "world_size": 2}))
    # A half-written file under the writer's hidden name is never read.
    (run / "rank=00000" / ".collectives-1-0000-999999.parquet.77.tmp").write_bytes(b"PAR1 half")
    watcher = Watcher(str(run), Options(window_s=1e6))
    flushes, per_flush = MERGE_SEGMENTS + 25, 3
    for i in range(flushes):
        for rank, writer in enumerate(writers):
            writer.write(_segment(rank, range(i * per_flush, (i + 1) * per_flush)))
        if i % 7 == 3:
            watcher.refresh()
    assert writers[0].merges >= 1
    frame = watcher.refresh()
    total = flushes * per_flush
    assert sum(entry[0] for entry in watcher.totals.buckets.values()) == total
    assert {r: entry[0] for r, entry in watcher.totals.ranks.items()} == {0: total, 1: total}
    keys = watcher.rows["row_key"].to_numpy()
    assert len(keys) == 2 * total and len(set(keys.tolist())) == len(keys)
    assert not frame["recording"]["problems"]


def test_a_hostile_live_file_is_said_and_the_rest_is_shown(tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(SAMPLES / "healthy", run)
    (run / "rank=00001" / "live.json").write_text('{"rank": 1, "t_ns": "soon", "groups": {"0": {"issued": -7}}}')
    (run / "rank=00002" / "live.json").write_text("[" * 100_000)
    rows = [[T0, "net_dev", "eth0", None, "rx_bytes", 5], [T0, "net_dev", "eth0", None, "tx_bytes", "many"], "x"]
    (run / "host=labs-host0" / "live.json").write_text(json.dumps({"host": "labs-host0", "rows": rows}))
    code = main(["watch", str(run), "--once", "--format", "json"])
    frame = json.loads(capsys.readouterr().out)
    assert code == 0 and frame["state"] == "ended" and frame["final"]["world_size"] == 3
    problems = frame["recording"]["problems"]
    assert any("rank=00001/live.json: ignored" in p for p in problems), problems
    assert any("rank=00002/live.json: skipped" in p for p in problems), problems
    assert any("host=labs-host0/live.json: 2 rows ignored" in p for p in problems), problems


def test_a_directory_of_runs_is_followed_at_its_newest(tmp_path: Path, capsys):
    root = tmp_path / "traces"
    for i, name in enumerate(["healthy", "straggler"]):
        shutil.copytree(SAMPLES / name, root / name)
        meta = json.loads((root / name / "run.json").read_text())
        (root / name / "run.json").write_text(json.dumps({**meta, "created_ns": T0 + i}))
    assert newest_run(str(root)) == str(root / "straggler")
    code = main(["watch", str(root), "--once", "--fail-on-problem"])
    text = capsys.readouterr().out
    assert code == 1  # the run ended: diagnose's verdict on it, and its exit code
    assert "run straggler" in text and "the job ended" in text and "rank 0 (labs-host0)" in text


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_nothing_to_watch_is_one_line_and_exit_2(tmp_path: Path, capsys, where):
    path = tmp_path / "nothing"
    if where == "empty":
        path.mkdir()
    assert main(["watch", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err


def test_a_rank_that_stops_writing_is_shown_as_such(tmp_path: Path):
    """Its live file stops changing while the others' go on: the rank is named as not writing, the
    job is still running, and nothing is called an error."""
    rows = [event(0, s, "all_reduce", 3, 4096, 4096, T0 + s * 10**6, T0 + s * 10**6 + 500_000) for s in range(20)]
    run = write_run(tmp_path / "run", [{**row, "rank": r} for r in range(3) for row in rows], 3)
    for rank in range(3):
        live = {"version": 1, "rank": rank, "flush_s": 1.0, "inflight": 0, "dropped": 0, "closed": False}
        live["t_ns"] = T0 + 10**9 - (60 * 10**9 if rank == 1 else 0)
        live["groups"] = {"0": {"issued": 19, "completed": 19}}
        (run / f"rank={rank:05d}" / "live.json").write_text(json.dumps(live))
    frame = Watcher(str(run), Options()).refresh()
    assert frame["recording"]["stopped_writing"] == [1]
    assert frame["state"] == "running" and frame["ranks_writing"] == 2 and not frame["recording"]["problems"]
    assert frame["progress"][0]["completed"] == 19 and frame["progress"][0]["behind"] == []


def test_a_directory_of_runs_follows_the_next_run_when_it_starts(tmp_path: Path):
    from analysis.watch import follow

    root = tmp_path / "traces"
    rows = [event(0, s, "all_reduce", 2, 4096, 4096, T0 + s * 10**6, T0 + s * 10**6 + 500_000) for s in range(5)]

    def start(name: str, created_ns: int) -> Path:
        run = write_run(root / name, [{**row, "rank": r} for r in range(2) for row in rows], 2)
        (run / "run.json").write_text(json.dumps({"run_id": name, "world_size": 2, "created_ns": created_ns}))
        return run

    first = start("first", T0)
    frames: list[tuple[dict, str | None]] = []

    def emit(frame: dict, note: str | None, report: dict | None) -> None:
        frames.append((frame, note))
        if len(frames) == 2:  # the next run starts while the first is watched
            start("second", T0 + 1)
        if frame["run_id"] == "second":  # and then it ends: every rank closed
            for meta in (root / "second").glob("rank=*/rank-*.json"):
                meta.write_text(json.dumps({**json.loads(meta.read_text()), "closed": True}))

    ending = follow(str(root), Options(interval_s=0.05), emit)
    runs = [f["run_id"] for f, _ in frames]
    assert runs[:2] == ["first", "first"] and runs[-1] == "second", runs
    notes = [n for _, n in frames if n]
    assert notes == [f"a new run started: {root / 'second'} (was {first})"]
    assert ending.frame["state"] == "ended" and ending.report["run_id"] == "second"


def test_the_run_so_far_median_is_a_median_to_within_one_percent():
    import math
    from collections import Counter

    from analysis.watchframe import BINS_PER_E, Totals

    totals = Totals()
    for key, values in {"even": [1.0, 2.0, 8.0, 9.0], "odd": [1.0, 2.0, 8.0], "one": [3.0]}.items():
        totals.buckets[(key,)] = [len(values), 0.0, Counter(round(math.log(v) * BINS_PER_E) for v in values)]
    assert totals.busbw(("even",)) == pytest.approx(5.0, rel=0.01)
    assert totals.busbw(("odd",)) == pytest.approx(2.0, rel=0.01)
    assert totals.busbw(("one",)) == pytest.approx(3.0, rel=0.01)
    assert totals.busbw(("none",)) is None
