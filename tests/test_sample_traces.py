"""The committed sample traces (sample_traces/README.md): the analysis names what was wrong in each."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

SAMPLES = ROOT / "sample_traces"
EXPECTED = {
    "healthy": {},
    "slow-link": {"slow_links": ["labs-host1"]},
    "lossy": {"packet_loss": ["labs-host1"], "slow_links": ["labs-host1"]},
    "straggler": {"stragglers": [0]},
    "sweep": {},
    "sweep-slow-link": {"slow_links": ["labs-host1"]},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_diagnose_names_the_culprit_and_nothing_else(name):
    command = ["diagnose", str(SAMPLES / name), "--format", "json", "--fail-on-problem"]
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == (1 if EXPECTED[name] else 0), proc.stderr
    found = {
        "stragglers": [s["rank"] for s in report["stragglers"]],
        "slow_links": [s["host"] for s in report["slow_links"]],
        "packet_loss": [p["host"] for p in report["packet_loss"]],
    }
    for key, hosts in found.items():
        assert hosts == EXPECTED[name].get(key, []), (name, key, report[key])
    assert not report["hangs"] and not report["desyncs"] and not report["dead_ranks"] and not report["problems"]
    assert sorted(report["hosts"]) == ["labs-host0", "labs-host1", "labs-host2"]


def test_samples_are_small():
    for name in EXPECTED:
        size = sum(p.stat().st_size for p in (SAMPLES / name).rglob("*") if p.is_file())
        assert size <= 2 * 1024 * 1024, (name, size)


def test_probe_matrix_of_the_slow_link_run():
    from analysis import Run, findings

    links = findings.links(Run.open(SAMPLES / "slow-link")).to_dicts()
    through = [p for p in links if "labs-host1" in (p["src_host"], p["dst_host"])]
    others = [p for p in links if "labs-host1" not in (p["src_host"], p["dst_host"])]
    assert len(through) == 4 and len(others) == 2
    assert all(85 <= p["bandwidth_Gbitps"] * 1000 <= 115 for p in through), through
    assert min(p["bandwidth_Gbitps"] * 1000 for p in others) > 2 * max(p["bandwidth_Gbitps"] * 1000 for p in through)
