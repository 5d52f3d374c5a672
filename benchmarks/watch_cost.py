"""``analyze-trace watch`` on a large running job: the first frame against ``diagnose``, then each
refresh with one second of new segments, and the watcher's memory as the run grows.

From the synthetic 64-rank x 200k-collective run (benchmarks/synthetic_run.py, generated once into
--run), a run that is still being written is made in --live: each rank's rows up to ``--tail`` seconds
before the end are written by the recorder's own SegmentWriter; the rest are held back. Then,
side by side and alternating, fresh processes time ``analyze-trace diagnose --format json`` and a
watcher's first frame on that run. Then one watcher, in this process, takes its first frame and,
``--tail`` times, one more second of every rank's rows is written (64 new segments, merged as the
recorder merges them) and the watcher refreshes: each refresh's seconds and this process's
resident memory after it. Targets (the issue's): first frame <= diagnose; a refresh with 1 s of
new segments < 0.5 s; memory flat.

    python benchmarks/watch_cost.py [--run /tmp/commtrace-scale-64x200k] [--tail 20]
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

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from synthetic_run import generate  # noqa: E402

from analysis.watch import Options, Watcher  # noqa: E402
from recorder.schema import COLLECTIVE_SCHEMA  # noqa: E402
from recorder.writer import SegmentWriter  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_live(run: str, live: str, tail_s: int) -> list[tuple[SegmentWriter, list]]:
    """``live``: ``run`` up to ``tail_s`` seconds before each rank's end; per rank its writer and its
    held-back rows, one table a second."""
    shutil.rmtree(live, ignore_errors=True)
    os.makedirs(live)
    shutil.copy(os.path.join(run, "run.json"), live)
    for host in glob.glob(os.path.join(run, "host=*")):
        shutil.copytree(host, os.path.join(live, os.path.basename(host)))
    held = []
    for rank_dir in sorted(glob.glob(os.path.join(run, "rank=*"))):
        out = os.path.join(live, os.path.basename(rank_dir))
        os.makedirs(out)
        for meta in glob.glob(os.path.join(rank_dir, "rank-*.json")):
            with open(meta) as fh:
                data = json.load(fh)
            data["closed"] = False  # still running
            with open(os.path.join(out, os.path.basename(meta)), "w") as fh:
                json.dump(data, fh)
        files = sorted(glob.glob(os.path.join(rank_dir, "collectives-*.parquet")))
        table = pa.concat_tables(pq.read_table(f).replace_schema_metadata(None) for f in files)
        table = table.select(COLLECTIVE_SCHEMA.names).cast(COLLECTIVE_SCHEMA)
        end = pc.max(table["t_end_ns"]).as_py()
        cut = end - tail_s * 10**9
        writer = SegmentWriter(out, "live-0", {"commtrace.rank": str(int(table["rank"][0].as_py()))})
        before = table.filter(pc.less(table["t_end_ns"], cut))
        for start in range(0, before.num_rows, 10_000):
            writer.write(before.slice(start, 10_000))
        seconds = []
        for k in range(tail_s):
            lo, hi = cut + k * 10**9, cut + (k + 1) * 10**9
            within = pc.and_(pc.greater_equal(table["t_end_ns"], lo), pc.less(table["t_end_ns"], hi))
            seconds.append(table.filter(within))
        held.append((writer, seconds))
    return held


def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def timed(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/commtrace-scale-64x200k")
    parser.add_argument("--live", default="/tmp/commtrace-watch-live")
    parser.add_argument("--tail", type=int, default=20, help="seconds written while watching")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(args.run):
        generate(args.run)
    held = make_live(args.run, args.live, args.tail)
    bin_dir = os.path.dirname(sys.executable)
    diagnose = [os.path.join(bin_dir, "analyze-trace"), "diagnose", args.live, "--format", "json"]
    first = [sys.executable, "-c", f"from analysis.watch import Watcher; Watcher({args.live!r}).refresh()"]
    diag_s, first_s = [], []
    for _ in range(args.repeats):
        diag_s.append(timed(diagnose))
        first_s.append(timed(first))
    watcher = Watcher(args.live, Options(interval_s=1.0))
    start = time.monotonic()
    watcher.refresh()
    in_process_first = time.monotonic() - start
    refresh_s, memory = [], [round(rss_mib())]
    new_rows = []
    for k in range(args.tail):
        rows = 0
        for writer, seconds in held:
            writer.write(seconds[k])
            rows += seconds[k].num_rows
        new_rows.append(rows)
        start = time.monotonic()
        frame = watcher.refresh()
        refresh_s.append(time.monotonic() - start)
        memory.append(round(rss_mib()))
    shutil.rmtree(args.live, ignore_errors=True)
    result = {
        "ranks": len(held),
        "diagnose_s": spread(diag_s),
        "first_frame_s": spread(first_s),
        "first_frame_in_process_s": round(in_process_first, 3),
        "refresh_s": {
            "min": round(min(refresh_s), 3),
            "median": round(statistics.median(refresh_s), 3),
            "max": round(max(refresh_s), 3),
            "first_five": [round(x, 3) for x in refresh_s[:5]],
            "last_five": [round(x, 3) for x in refresh_s[-5:]],
        },
        "new_rows_per_refresh": round(statistics.median(new_rows)),
        "rss_mib": {"after_first": memory[0], "after_refreshes": memory[1:]},
        "window_rows": watcher.rows.num_rows if watcher.rows is not None else 0,
        "stragglers_in_window": [s["rank"] for s in frame["stragglers"]],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
