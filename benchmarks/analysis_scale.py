"""Analysis at scale: ``analyze-trace diagnose`` on 64 ranks x 200,000 collectives, against pandas.

Generates (once, into --run) a synthetic run in the recorder's exact format with one injected
straggler (benchmarks/synthetic_run.py), then runs, side by side and alternating, the real CLI
(``analyze-trace diagnose --format json``, a fresh process each time: start-up, loading and every
finding included) and benchmarks/pandas_diagnose.py (the same findings, straightforward pandas).
Reports wall seconds (min/median/max), peak RSS, and whether each found the straggler and nothing
else. Targets: diagnose <= 5 s on 2 cores and >= 10x faster than pandas.

    python benchmarks/analysis_scale.py [--run /tmp/commtrace-scale] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from synthetic_run import generate  # noqa: E402


def timed(command: list[str]) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS in MiB, parsed JSON stdout) of a child process."""
    wrapper = (
        "import resource, subprocess, sys, time, json;"
        "t = time.monotonic(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "w = time.monotonic() - t;"
        "print(json.dumps({'wall': w, 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'rc': p.returncode, 'out': p.stdout, 'err': p.stderr[-2000:]}))"
    )
    child = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    result = json.loads(child.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{command[0]} failed: {result['err']}")
    return result["wall"], result["rss_kb"] // 1024, json.loads(result["out"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/commtrace-scale-64x200k")
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--per-rank", type=int, default=200_000)
    parser.add_argument("--straggler", type=int, default=37)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pandas-repeats", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(args.run):
        start = time.monotonic()
        info = generate(args.run, args.ranks, args.per_rank, args.straggler)
        print(f"generated {info['collectives']:,} collectives in {time.monotonic() - start:.1f} s", file=sys.stderr)
    bin_dir = os.path.dirname(sys.executable)
    ours = [os.path.join(bin_dir, "analyze-trace"), "diagnose", args.run, "--format", "json"]
    theirs = [sys.executable, os.path.join(HERE, "pandas_diagnose.py"), args.run]
    results: dict[str, list] = {"duckdb": [], "pandas": []}
    for i in range(max(args.repeats, args.pandas_repeats)):
        if i < args.repeats:
            results["duckdb"].append(timed(ours))
        if i < args.pandas_repeats:
            results["pandas"].append(timed(theirs))
    summary = {}
    for name, runs in results.items():
        walls = [w for w, _, _ in runs]
        report = runs[-1][2]
        found = sorted(s["rank"] for s in report["stragglers"])
        summary[name] = {
            "wall_s": {k: round(f(walls), 2) for k, f in (("min", min), ("median", statistics.median), ("max", max))},
            "peak_rss_mib": max(r for _, r, _ in runs),
            "stragglers_found": found,
            "exactly_the_injected_one": found == [args.straggler] and not report["hangs"] and not report["desyncs"],
        }
    summary["speedup_median"] = round(summary["pandas"]["wall_s"]["median"] / summary["duckdb"]["wall_s"]["median"], 1)
    summary["events"] = args.ranks * args.per_rank
    summary["cores"] = os.cpu_count()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
