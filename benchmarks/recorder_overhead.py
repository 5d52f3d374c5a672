"""Added cost per collective call: the same call on a recording and a plain group, paired in one run.

Uses torch's fake backend (no communication at all), so what is measured is the cost of the call
path itself. Both groups live in one process; batches alternate between them so that machine
noise hits both alike. Each recorded batch includes the writer's work for its events (turning
them into a Parquet segment, in the recorder's thread, holding the GIL), flushed before its clock
stops: the figure is everything recording costs per call, not only the caller's side. Prints one
JSON line per operation with min/median/max of the paired difference in microseconds per call.

    python benchmarks/recorder_overhead.py [--calls 20000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

import recorder
from recorder import _state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_groups import recording_and_plain_groups  # noqa: E402


def _ops(world: int):
    small = torch.ones(16)
    gathered = torch.empty(16 * world)

    def all_reduce(group):
        dist.all_reduce(small, group=group)

    def all_gather_into_tensor(group):
        dist.all_gather_into_tensor(gathered, small, group=group)

    def isend_irecv(group):
        a = dist.isend(small, dst=1, group=group)
        b = dist.irecv(small, src=1, group=group)
        a.wait()
        b.wait()

    return {"all_reduce": all_reduce, "all_gather_into_tensor": all_gather_into_tensor, "isend_irecv_pair": isend_irecv}


def _time(fn, group, calls: int, flush: bool = False) -> float:
    """Microseconds per call; with ``flush``, the writer's work for these calls is done (and timed)
    before the clock stops, so that each batch pays exactly for its own events."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(group)
    if flush:
        _state.session.flush()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--world", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The writer runs only when told to (inside the recorded batches' timing, see _time): left to
        # its own schedule it would flush during whichever batch happens to be running, plain or not.
        recorder.enable(tmp, clock_sync=False, run_id="overhead", flush_s=3600, flush_events=10**9, max_buffered=10**7)
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.world)
        recorded, plain = recording_and_plain_groups(args.world)
        assert type(recorded).__name__ == "RecordingProcessGroup" and type(plain) is dist.ProcessGroup
        results = []
        for name, fn in _ops(args.world).items():
            _time(fn, recorded, 2000)
            _time(fn, plain, 2000)
            base, rec, diff = [], [], []
            for _ in range(args.repeats):
                b = _time(fn, plain, args.calls)
                r = _time(fn, recorded, args.calls, flush=True)
                base.append(b)
                rec.append(r)
                diff.append(r - b)
            results.append(
                {
                    "op": name,
                    "plain_us_median": round(statistics.median(base), 3),
                    "recorded_us_median": round(statistics.median(rec), 3),
                    "added_us_min": round(min(diff), 3),
                    "added_us_median": round(statistics.median(diff), 3),
                    "added_us_max": round(max(diff), 3),
                    "calls_per_batch": args.calls,
                    "repeats": args.repeats,
                }
            )
        dropped = _state.events.dropped if _state.events else None
        recorder.disable()
        dist.destroy_process_group()
    for row in results:
        row["dropped_events"] = dropped
        print(json.dumps(row))


if __name__ == "__main__":
    main()
