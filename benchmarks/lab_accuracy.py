"""How often ``analyze-trace diagnose`` names the culprit, and nothing else, in real lab runs.

Runs every lab scenario (lab/scenarios.py) ``--runs`` times with the culprit chosen at random,
diagnoses each run and counts, per scenario: runs where the culprit was named exactly (the right
host in slow_links or packet_loss, the right rank in stragglers) and runs with a false positive
(anything flagged that is not the culprit: another host, another rank, or any flag at all in a
healthy run). Needs root (network namespaces). Target: every culprit found, no false positive.

    python benchmarks/lab_accuracy.py [--runs 5] [--workload ddp|sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import Run  # noqa: E402
from analysis.diagnose import diagnose  # noqa: E402
from lab.scenarios import SCENARIOS, run  # noqa: E402


def judge(info: dict, report: dict) -> tuple[bool | None, list[str]]:
    """(culprit named exactly, or None for a healthy run; the false positives)."""
    culprit = info["culprit"]
    host = culprit["hostname"] if culprit else None
    rank = culprit["rank"] if culprit else None
    slow = [s["host"] for s in report["slow_links"]]
    lossy = [p["host"] for p in report["packet_loss"]]
    late = [s["rank"] for s in report["stragglers"]]
    other = [f"{k}: {report[k]}" for k in ("hangs", "desyncs", "dead_ranks") if report[k]]
    scenario = info["scenario"]
    if scenario == "healthy":
        false = [f"slow_links {slow}"] * bool(slow) + [f"packet_loss {lossy}"] * bool(lossy)
        false += [f"stragglers {late}"] * bool(late) + other
        return None, false
    if scenario == "slow-link":
        found = slow == [host]
        false = [f"slow link {h}" for h in slow if h != host] + [f"packet loss {h}" for h in lossy if h != host]
        false += [f"straggler {r}" for r in late]
    elif scenario == "lossy":
        found = lossy == [host]
        false = [f"packet loss {h}" for h in lossy if h != host] + [f"slow link {h}" for h in slow if h != host]
        false += [f"straggler {r}" for r in late]
    else:  # straggler, clock-shift
        found = late == [rank]
        false = [f"straggler {r}" for r in late if r != rank] + [f"slow link {h}" for h in slow]
        false += [f"packet loss {h}" for h in lossy]
    return found, false + other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workload", default="ddp")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios.split(","):
            found = false_runs = 0
            notes = []
            for i in range(args.runs):
                info = run(scenario, os.path.join(tmp, f"{scenario}-{i}"), workload=args.workload)
                report = diagnose(Run.open(info["run"]))
                hit, false = judge(info, report)
                found += bool(hit)
                false_runs += bool(false)
                if hit is False or false:
                    notes.append({"culprit": info["culprit"], "missed": hit is False, "false": false})
            rows.append(
                {
                    "scenario": scenario,
                    "runs": args.runs,
                    "culprit_found": None if scenario == "healthy" else found,
                    "runs_with_false_positives": false_runs,
                    "notes": notes,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    print("| scenario | runs | culprit found | runs with a false positive |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        found = "n/a" if r["culprit_found"] is None else f"{r['culprit_found']}/{r['runs']}"
        print(f"| {r['scenario']} | {r['runs']} | {found} | {r['runs_with_false_positives']}/{r['runs']} |")


if __name__ == "__main__":
    main()
