"""Analysis of a run larger than memory: ``analyze-trace diagnose`` on 2x10^8 events, DuckDB capped.

Generates (once, into --run) a synthetic run in the recorder's exact format (64 ranks x 3,125,000
collectives, one injected straggler; benchmarks/synthetic_run.py), then runs the real CLI with
COMMTRACE_ANALYSIS_MEMORY set well below the data's size, so that DuckDB must spill. Reports wall
seconds, the process's peak RSS and whether the straggler was found. Target: completes, <= 4 GB RSS.

    python benchmarks/analysis_out_of_core.py [--run /tmp/commtrace-ooc-2e8] [--memory-limit 2GB]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from analysis_scale import timed  # noqa: E402
from synthetic_run import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/commtrace-ooc-2e8")
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--per-rank", type=int, default=3_125_000)
    parser.add_argument("--segments", type=int, default=100, help="segments per rank")
    parser.add_argument("--straggler", type=int, default=37)
    parser.add_argument("--memory-limit", default="2GB")
    args = parser.parse_args()
    if not os.path.exists(args.run):
        start = time.monotonic()
        info = generate(args.run, args.ranks, args.per_rank, args.straggler, segments=args.segments)
        print(f"generated {info['collectives']:,} collectives in {time.monotonic() - start:.0f} s", file=sys.stderr)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.run) for f in files)
    os.environ["COMMTRACE_ANALYSIS_MEMORY"] = args.memory_limit
    command = [os.path.join(os.path.dirname(sys.executable), "analyze-trace"), "diagnose", args.run, "--format", "json"]
    wall, rss_mib, report = timed(command)
    found = sorted(s["rank"] for s in report["stragglers"])
    print(
        json.dumps(
            {
                "events": args.ranks * args.per_rank,
                "bytes_on_disk": size,
                "memory_limit": args.memory_limit,
                "wall_s": round(wall, 1),
                "peak_rss_mib": rss_mib,
                "completed": True,
                "stragglers_found": found,
                "exactly_the_injected_one": found == [args.straggler] and not report["hangs"] and not report["desyncs"],
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
