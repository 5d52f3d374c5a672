"""The recording's own health: what makes a trace incomplete or imprecise is said apart from the job's faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from analysis import Run, diagnose, health
from conftest import ROOT
from synthetic import T0, event, write_run

N = 4


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analysis.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def _meta_path(run: Path, rank: int) -> Path:
    return run / f"rank={rank:05d}" / "rank-1-0000.json"


def _edit(run: Path, rank: int, **fields) -> None:
    path = _meta_path(run, rank)
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


def _healthy_rows() -> list[dict]:
    rows = []
    for seq in range(20):
        base = T0 + seq * 10_000_000
        rows += [event(r, seq, "all_reduce", N, 4096, 4096, base, base + 1_000_000) for r in range(N)]
    return rows


def _closed_run(path: Path, hosts: dict[int, str] | None = None) -> Path:
    run = write_run(path, _healthy_rows(), N, hosts=hosts)
    for r in range(N):
        _edit(
            run,
            r,
            closed=True,
            config={"clock_rounds": 5},
            clock={
                "start": {"reference": True, "offset_ns": 0, "rtt_ns": 0, "rounds": 0}
                if r == 0
                else {"offset_ns": 1000, "rtt_ns": 80_000, "rounds": 5, "rounds_asked": 5}
            },
            process_groups=[{"pg": "0", "desc": "default_pg", "ranks": list(range(N)), "size": N}],
        )
    return run


def test_a_complete_recording_has_nothing_to_report(tmp_path: Path):
    run = _closed_run(tmp_path / "ok")
    report = diagnose.diagnose(Run.open(run))
    assert report["recording"] == [] and not diagnose.recording_flagged(report)
    proc = _cli("diagnose", str(run), "--fail-on-recording")
    assert proc.returncode == 0, proc.stderr
    assert "the recording: nothing to report" in proc.stdout


def test_what_the_recording_missed_is_named_rank_by_rank(tmp_path: Path):
    """A rank without metadata, one whose recorder stepped aside after dropping events and kept the job
    waiting at exit, one whose clock sync got 1 round of 5, one on another host whose offset is
    uncertain and drifted: each is said, in words, and none of it is a fault of the job."""
    run = _closed_run(tmp_path / "run", hosts={0: "h0", 1: "h0", 2: "h1", 3: "h0"})
    _meta_path(run, 3).unlink()
    _edit(
        run,
        0,
        dropped_events=12,
        failure="writer failed: OSError(28, 'No space left on device')",
        waits_s={"close_s": 3.2, "run_id_s": 0.01},
    )
    _edit(
        run,
        1,
        clock={
            "start": {
                "offset_ns": 20_000,
                "rtt_ns": 90_000,
                "rounds": 1,
                "rounds_asked": 5,
                "error": "rank 0 stopped answering after 1 round(s)",
            }
        },
    )
    _edit(
        run,
        2,
        clock={
            "start": {"offset_ns": 1_000_000, "rtt_ns": 4_000_000, "rounds": 5, "rounds_asked": 5},
            "end": {"offset_ns": 16_000_000, "rtt_ns": 100_000, "rounds": 5, "rounds_asked": 5},
        },
    )
    report = diagnose.diagnose(Run.open(run))
    found = {(f["kind"], f["rank"]): f["summary"] for f in report["recording"]}
    assert set(found) == {
        ("missing_metadata", None),
        ("recorder_stopped", 0),
        ("dropped_events", 0),
        ("slow_recorder", 0),
        ("clock", 1),
        ("clock", 2),
        ("clock_drift", 2),
    }, found
    assert "rank 3 of 4 wrote no metadata" in found[("missing_metadata", None)]
    assert "No space left on device" in found[("recorder_stopped", 0)]
    assert "12 events dropped" in found[("dropped_events", 0)]
    assert "waited 3.2 s for closing the trace" in found[("slow_recorder", 0)]
    assert "measured in 1 of 5 rounds (rank 0 stopped answering" in found[("clock", 1)]
    assert "rank 2 (h1): clock offset known to ±2 ms only" in found[("clock", 2)]
    assert "drifted 15 ms" in found[("clock_drift", 2)]
    assert not diagnose.flagged(report) and diagnose.recording_flagged(report)

    frame = {r["rank"]: r for r in health.per_rank(Run.open(run)).to_dicts()}
    assert frame[1]["clock_rounds"] == 1 and frame[1]["clock_rounds_asked"] == 5
    assert frame[2]["clock_uncertainty_ms"] == 2.0 and frame[2]["clock_drift_ms"] == 15.0
    assert frame[0]["longest_wait_s"] == 3.2 and frame[0]["failure"].startswith("writer failed")

    assert _cli("diagnose", str(run), "--fail-on-problem").returncode == 0  # the job itself was fine
    proc = _cli("diagnose", str(run), "--fail-on-recording")
    assert proc.returncode == 1, proc.stderr
    assert "the recording: 7 things to know" in proc.stdout
    assert "the job: nothing flagged" in proc.stdout
    data = json.loads(_cli("diagnose", str(run), "--format", "json").stdout)
    assert {f["kind"] for f in data["recording"]} >= {"clock", "clock_drift", "missing_metadata"}
    csv = _cli("diagnose", str(run), "--format", "csv")
    assert csv.returncode == 0 and csv.stdout.count("\nrecording,") == 7, csv.stdout


def test_a_clock_missing_on_rank_0s_own_host_does_not_matter(tmp_path: Path):
    """Ranks on rank 0's host read rank 0's clock: no offset needed, nothing to report; on another host
    the same missing offset is reported."""
    run = _closed_run(tmp_path / "run", hosts={0: "h0", 1: "h0", 2: "h1", 3: "h1"})
    for r in (1, 2):
        _edit(run, r, clock={}, config={"clock_rounds": 5, "clock_sync": False})
    kinds = {(f["kind"], f["rank"]) for f in diagnose.diagnose(Run.open(run))["recording"]}
    assert kinds == {("clock", 2)}


def test_a_run_of_many_small_segments_is_told_to_compact(tmp_path):
    """Thousands of small segments (older recorders did not merge them) make every query open each
    file: the recording's health says so and names the command that fixes it; the same events as
    this recorder writes them (merged) say nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synthetic_run import generate

    limits = health.Limits(many_segments=400)
    for merge in (False, True):
        run_dir = tmp_path / f"run-{merge}"
        generate(str(run_dir), ranks=8, per_rank=500, straggler=3, segments=100, merge=merge)
        found = [f for f in health.findings(Run.open(run_dir), limits) if f["kind"] == "many_segments"]
        if merge:
            assert found == []
        else:
            (finding,) = found
            assert finding["segments"] == 800
            assert f"analyze-trace compact {run_dir} -o NEW" in finding["summary"], finding["summary"]
