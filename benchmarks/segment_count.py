"""What the number of segments costs the analysis: the same events in few files and in many.

One synthetic run's events (8 ranks x 25,000 collectives, 200k events) written three ways by the
recorder's own SegmentWriter: 20 segments per rank (160 files); 2,500 segments per rank as this
recorder writes them (small segments merged as they accumulate: ~23 files per rank); and 2,500
segments per rank kept as recorders before merging wrote them (20,000 files). ``diagnose`` runs on
each in fresh processes, alternated, ``--repeats`` times: median wall time and peak RSS. The
20,000 unmerged segments are then compacted (``analyze-trace compact``: its time, and diagnose on the
copy). Then one page of one of the 20,000 files is damaged and ``diagnose`` runs once more: the
time to find and skip it. One JSON line per layout.

    python benchmarks/segment_count.py [--repeats 3] [--scratch /tmp/commtrace-segments]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from synthetic_run import generate  # noqa: E402

LAYOUTS = {  # name: (segments per rank, merged)
    "160 segments": (20, False),
    "20,000 segments written merged": (2500, True),
    "20,000 segments, unmerged": (2500, False),
}


# analyze-trace diagnose in a fresh process that reports its own peak RSS on its last stderr line.
_DIAGNOSE = (
    "import sys\n"
    "from analysis.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _diagnose(run: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of one ``analyze-trace diagnose`` in a fresh process."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _DIAGNOSE, "diagnose", run], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"diagnose {run} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc.stdout


def _damage_one_page(run: str) -> str:
    victim = sorted(glob.glob(os.path.join(run, "rank=00003", "collectives-*.parquet")))[1234]
    with open(victim, "rb") as fh:
        data = bytearray(fh.read())
    for i in range(200, min(1200, len(data) - 100)):
        data[i] = (data[i] * 7 + 13) & 0xFF
    with open(victim, "wb") as fh:
        fh.write(data)
    return victim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scratch", default="/tmp/commtrace-segments")
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    os.makedirs(args.scratch)
    runs = {}
    for i, (name, (segments, merge)) in enumerate(LAYOUTS.items()):
        runs[name] = os.path.join(args.scratch, f"run{i}")
        generate(runs[name], ranks=8, per_rank=25_000, straggler=3, segments=segments, merge=merge)
    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, float] = {}
    verdicts: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds, peak, out = _diagnose(run)
            times[name].append(seconds)
            peaks[name] = peak
            verdicts[name] = out.split("\n", 1)[1]  # without the first line (the run's name)
    base = statistics.median(times["160 segments"])
    for name, run in runs.items():
        files = len(glob.glob(os.path.join(run, "rank=*", "collectives-*.parquet")))
        median = statistics.median(times[name])
        print(
            json.dumps(
                {
                    "layout": name,
                    "files": files,
                    "diagnose_s": round(median, 2),
                    "min_s": round(min(times[name]), 2),
                    "max_s": round(max(times[name]), 2),
                    "vs_160": round(median / base, 2),
                    "peak_mib": round(peaks[name]),
                    "same_verdict": verdicts[name] == verdicts["160 segments"],
                }
            )
        )
    unmerged = runs["20,000 segments, unmerged"]
    compacted = os.path.join(args.scratch, "compacted")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "analysis.cli", "compact", unmerged, "-o", compacted],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=3600,
    )
    compact_s = time.perf_counter() - started
    seconds = [_diagnose(compacted)[0] for _ in range(args.repeats)]
    print(
        json.dumps(
            {
                "layout": "20,000 segments, unmerged, compacted",
                "compact_s": round(compact_s, 1),
                "files": len(glob.glob(os.path.join(compacted, "rank=*", "collectives-*.parquet"))),
                "diagnose_s": round(statistics.median(seconds), 2),
                "vs_160": round(statistics.median(seconds) / base, 2),
            }
        )
    )
    victim = _damage_one_page(unmerged)
    seconds, _, out = _diagnose(runs["20,000 segments, unmerged"])
    print(
        json.dumps(
            {
                "layout": "20,000 segments, unmerged, one page damaged",
                "diagnose_s": round(seconds, 1),
                "skipped_named": os.path.basename(victim) in out,
            }
        )
    )
    shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
