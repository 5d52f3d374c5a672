"""End to end in the network lab: real gloo jobs across hosts (network namespaces with their own
hostnames), recorded with the environment variables only, then ``analyze-trace diagnose``."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from conftest import ROOT, clean_env, free_port

sys.path.insert(0, str(ROOT))
from lab import Lab, lab_available  # noqa: E402

pytestmark = pytest.mark.skipif(lab_available() is not None, reason=str(lab_available()))

HOSTS = 3
RATE_MBIT = 100.0


def _run_job(lab: Lab, trace_dir, iterations: int = 3, megabytes: float = 1.0, per_rank=None) -> None:
    """One rank per lab host; ``per_rank[rank]`` adds that rank's environment (the job's LAB_* knobs)."""
    port = free_port()
    procs = []
    for rank in range(lab.hosts):
        env = clean_env(
            **(per_rank or {}).get(rank, {}),
            COMMTRACE_DIR=str(trace_dir),
            COMMTRACE_PROBE="1",
            RANK=str(rank),
            WORLD_SIZE=str(lab.hosts),
            MASTER_ADDR=lab.ip(0),
            MASTER_PORT=port,
            GLOO_SOCKET_IFNAME="eth0",
            LOCAL_RANK="0",
        )
        argv = [sys.executable, str(ROOT / "lab" / "jobs" / "allreduce.py"), str(iterations), str(megabytes)]
        procs.append(lab.spawn(rank, argv, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]


def _diagnose(trace_dir) -> dict:
    (run,) = [p for p in trace_dir.iterdir() if p.is_dir()]
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.cli", "diagnose", str(run), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _links(trace_dir):
    from analysis import Run, findings

    (run,) = [p for p in trace_dir.iterdir() if p.is_dir()]
    return findings.links(Run.open(run)).to_dicts()


def test_healthy_lab_run_flags_nothing(tmp_trace):
    with Lab(HOSTS) as lab:
        _run_job(lab, tmp_trace)
    report = _diagnose(tmp_trace)
    assert sorted(report["hosts"]) == sorted(lab.hostnames)
    flagged = {k: report[k] for k in ("stragglers", "slow_links", "packet_loss", "hangs", "desyncs", "dead_ranks")}
    assert not any(flagged.values()), flagged
    pairs = _links(tmp_trace)
    assert len(pairs) == HOSTS * (HOSTS - 1)  # two shift rounds of three hosts: every ordered pair


def test_slow_link_names_the_host_and_the_probe_measures_its_rate(tmp_trace):
    slow = random.Random().randrange(HOSTS)
    with Lab(HOSTS) as lab:
        lab.shape(slow, RATE_MBIT)
        _run_job(lab, tmp_trace)
    report = _diagnose(tmp_trace)
    culprit = lab.hostnames[slow]
    assert [s["host"] for s in report["slow_links"]] == [culprit], (slow, report["slow_links"])
    assert report["slow_links"][0]["interface"] == "eth0"
    assert not report["stragglers"] and not report["packet_loss"], report
    through = [p for p in _links(tmp_trace) if culprit in (p["src_host"], p["dst_host"])]
    assert len(through) == 2 * (HOSTS - 1)
    for pair in through:  # payload rate against the shaper's rate (which counts headers too)
        assert 0.85 * RATE_MBIT <= pair["bandwidth_Gbitps"] * 1000 <= 1.15 * RATE_MBIT, (slow, pair)


def test_lossy_link_names_the_host_alone(tmp_trace):
    lossy = random.Random().randrange(HOSTS)
    with Lab(HOSTS) as lab:
        lab.shape(lossy, 500, limit_bytes=20000)  # a queue of ~13 packets: bursts overflow it
        _run_job(lab, tmp_trace)
    report = _diagnose(tmp_trace)
    assert [p["host"] for p in report["packet_loss"]] == [lab.hostnames[lossy]], (lossy, report["packet_loss"])
    assert report["packet_loss"][0]["loss_pct"] > 1.0
    assert not report["stragglers"], report


STRAGGLER_MS = 60.0


def _straggler_run(tmp_trace) -> tuple[int, dict]:
    """A random rank sleeps before every other all_reduce, and another random rank's clock reads
    400 ms ahead (uncorrected, that punctual rank would look 400 ms late)."""
    rng = random.Random()
    slow = rng.randrange(HOSTS)
    knobs = {"LAB_SLEEP_RANK": str(slow), "LAB_SLEEP_MS": str(STRAGGLER_MS)}
    per_rank = {rank: dict(knobs) for rank in range(HOSTS)}
    shifted = rng.choice([r for r in range(HOSTS) if r != slow])
    per_rank[shifted]["LAB_CLOCK_SHIFT_MS"] = "400"
    with Lab(HOSTS) as lab:
        _run_job(lab, tmp_trace, iterations=12, megabytes=0.5, per_rank=per_rank)
    return slow, _diagnose(tmp_trace)


def _assert_straggler(slow: int, report: dict, trace_dir) -> None:
    from analysis import Run, findings

    (run,) = [p for p in trace_dir.iterdir() if p.is_dir()]
    per_rank = findings.stragglers(Run.open(run)).to_dicts()
    assert [s["rank"] for s in report["stragglers"]] == [slow], (slow, per_rank)
    # Late before every other all_reduce: its p95 lateness is the injected pause.
    late = report["stragglers"][0]["p95_lateness_ms"]
    assert 0.75 * STRAGGLER_MS <= late <= 1.25 * STRAGGLER_MS, (slow, report["stragglers"][0])


def test_straggler_is_named_with_its_lateness_and_a_shifted_clock_names_no_other(tmp_trace):
    """(A straggler alone on a healthy network is this run with the clocks right; the combined-fault
    runs below name stragglers on the same signal.)"""
    slow, report = _straggler_run(tmp_trace)
    _assert_straggler(slow, report, tmp_trace)
    assert not report["slow_links"] and not report["packet_loss"], report


COMBINED_JOB = ["ddp_train.py", "--steps", "20", "--hidden", "128", "--data-ms", "40"]


@pytest.mark.parametrize(
    "link_kind, same_host, pause_ms",
    [("lossy", True, 10.0), ("slow", False, 5.0)],
    ids=["lossy-link-on-the-stragglers-host", "slow-link-elsewhere"],
)
def test_a_straggler_and_a_bad_link_at_once_are_both_named(tmp_path, link_kind, same_host, pause_ms):
    """A DDP job whose every step takes ~50 ms (a 40 ms wait for its batch): one rank pauses 10 % or
    20 % of a step longer every step while a link is lossy (on the straggler's own host) or slow (on
    another). The link and the straggler are named, nothing else, and the straggler's extra time is
    measured against its pauses as they really took. (Three hosts, as the other lab tests: the
    benchmark, benchmarks/lab_accuracy.py --combined, runs four to six.)"""
    from lab.scenarios import Faults, record

    hosts = HOSTS
    rng = random.Random()
    straggler = rng.randrange(hosts)
    link = straggler if same_host else rng.choice([h for h in range(hosts) if h != straggler])
    faults = Faults(straggler=straggler, delay_ms=pause_ms, every=1, link=link, link_kind=link_kind)
    info = record(faults, str(tmp_path / "trace"), hosts=hosts, job=COMBINED_JOB)
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.cli", "diagnose", info["run"], "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    culprit = info["hostnames"][link]
    where = (straggler, link, report["findings"])
    assert [(f["kind"], f.get("host"), f.get("rank")) for f in report["findings"]] == [
        ("link", culprit, None),
        ("straggler", None, straggler),
    ], where
    if link_kind == "slow":
        assert [s["host"] for s in report["slow_links"]] == [culprit] and not report["packet_loss"], where
    else:
        assert [p["host"] for p in report["packet_loss"]] == [culprit], where
    (named,) = report["stragglers"]
    paused = sum(info["pauses_ms"]) / len(info["pauses_ms"])
    assert 0.75 * paused <= named["longer_ms"] <= 1.25 * paused, (paused, named)
    steps = int(COMBINED_JOB[COMBINED_JOB.index("--steps") + 1])  # it paused in each (set-up makes more)
    assert named["steps_longer"] >= 0.75 * steps, named
    assert f"more outside communication than the median rank, in {named['steps_longer']} of" in named["verdict"]
