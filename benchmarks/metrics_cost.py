"""What ``recorder.metrics()`` costs: per call, and in the flusher (folding each segment into the totals).

One process records on torch's fake backend (no communication). Several op kinds run (all_reduce,
all_gather_into_tensor, broadcast, isend/irecv), then the flusher writes them and ``metrics()`` is
called in batches, alternating with an empty loop of the same length (the floor). The flusher's
part is timed directly: ``Totals.add`` on the segments of a run of that size, and replacing the
rank's live file (recorder.live) after a flush. Prints one JSON line.

    python benchmarks/metrics_cost.py [--calls 20000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

import recorder
from recorder import _state
from recorder.groups import GROUPS
from recorder.records import ISSUE_DTYPE, OPS
from recorder.tally import Totals
from recorder.writer import wall_minus_mono


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--ops", type=int, default=2_000, help="operations of each kind recorded first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, recorder.recording(tmp, sample_hz=0, clock_sync=False):
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
        small, gathered = torch.ones(16), torch.empty(64)
        for _ in range(args.ops):
            dist.all_reduce(small)
            dist.all_gather_into_tensor(gathered, small)
            dist.broadcast(small, src=0)
            dist.isend(small, dst=1).wait()
            dist.irecv(small, src=1).wait()
        recorder.flush()
        figures = recorder.metrics()
        per_call, floor = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter_ns()
            for _ in range(args.calls):
                recorder.metrics()
            per_call.append((time.perf_counter_ns() - t0) / args.calls / 1e3)
            t0 = time.perf_counter_ns()
            for _ in range(args.calls):
                pass
            floor.append((time.perf_counter_ns() - t0) / args.calls / 1e3)
        # The flusher's side: fold a segment of each size into fresh totals.
        import glob

        import pyarrow as pa
        import pyarrow.parquet as pq

        from recorder.schema import COLLECTIVE_SCHEMA

        files = sorted(glob.glob(os.path.join(tmp, "*", "rank=*", "collectives-*.parquet")))
        table = pa.concat_tables(pq.read_table(f).replace_schema_metadata(None) for f in files)
        table = table.select(COLLECTIVE_SCHEMA.names).cast(COLLECTIVE_SCHEMA)
        fold = {}
        for rows in (100, 1000, 10_000):
            part = table.slice(0, rows)
            times = []
            for _ in range(args.repeats):
                totals = Totals()
                t0 = time.perf_counter_ns()
                totals.add(part)
                times.append((time.perf_counter_ns() - t0) / 1e3)
            fold[str(rows)] = round(statistics.median(times), 1)
        # The rank's live file, replaced after every flush: what the flusher adds for watch (the
        # state of 1,000 operations taken, 10 still in flight; then the file written).
        flusher = _state.session.flusher
        issues = np.zeros(1000, dtype=ISSUE_DTYPE)
        issues["id"] = np.arange(1000)
        issues["seq"] = np.arange(1000)
        issues["op"] = OPS.code("all_reduce")
        issues["t0"] = time.monotonic_ns()
        live = []
        for _ in range(args.repeats * 10):
            t0 = time.perf_counter_ns()
            flusher.live.update(issues, issues[-10:], GROUPS, wall_minus_mono())
            flusher._write_live(False)
            live.append((time.perf_counter_ns() - t0) / 1e3)
        ops = sorted(k.split("/")[0] for k in figures if k.endswith("/count"))
        dist.destroy_process_group()
    assert _state.session is None
    print(
        json.dumps(
            {
                "metrics_call_us": {
                    "min": round(min(per_call), 2),
                    "median": round(statistics.median(per_call), 2),
                    "max": round(max(per_call), 2),
                },
                "empty_loop_us": round(statistics.median(floor), 3),
                "ops_in_figures": ops,
                "figures": len(figures),
                "fold_us_per_segment": fold,
                "live_file_us_per_flush": round(statistics.median(live), 1),
                "python": sys.version.split()[0],
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
