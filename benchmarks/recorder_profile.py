"""Where the recorder's cost per call goes: each part of the hot path knocked out in turn, warm and cold.

``recorder_overhead.py`` gives the total; this splits it. On torch's fake backend (no communication),
an ``all_reduce`` of 16 floats is timed on a plain group, on a recording group with recording off
(what subclassing ``ProcessGroup`` alone costs: pybind's trampoline into Python and the forward to
the twin), on the same group recording, and recording with one part of ``capture._record`` removed
(a copy of its source with that part cut out; the benchmark fails if the hot path no longer has the
part). What a part costs is what removing it saves.

Two regimes:

* warm: calls back to back, everything in the CPU's caches (the figure the budget's 1 us target
  was set against); every part is knocked out in turn;
* cold: between calls the benchmark sweeps a buffer of ``--sweep-mb`` MB, as a training step's
  kernels do between two collectives, so that every call finds the interpreter, torch's bindings and
  the recorder's objects out of cache. This is the regime of a real training loop (see
  benchmarks/ddp_overhead.py); only the call itself is timed, blocking and asynchronous (as DDP's
  buckets: the completion then comes from a future callback). Cutting one part out saves about as
  much as cutting any other there (the misses are shared, not additive), so it gives totals only.

Also the writer's share: the time to turn one flush of records into a Parquet segment, per
operation. Prints one JSON line per regime and kind of call.

    python benchmarks/recorder_profile.py [--repeats 9] [--sweep-mb 64]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

import recorder
from recorder import _state
from recorder import capture as C

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_groups import interleaved_medians, recording_and_plain_groups, time_calls  # noqa: E402

# Each part of capture._record, as (what it is, [(source text, what replaces it)]).
PARTS = [
    ("opts.asyncOp read", [('getattr(opts, "asyncOp", True)', "False")]),
    (
        "dtype and device reads",
        [
            (
                """            dtype = _dtype_codes.get(tensor.dtype)
            if dtype is None:
                dtype = DTYPES.code(tensor.dtype)
            device = DEVICE_CUDA if tensor.is_cuda else DEVICE_CPU""",
                """            dtype = 0
            device = DEVICE_CPU""",
            )
        ],
    ),
    ("two clock reads", [("_mono()", "0")]),
    ("issue record (pack, append)", [("            buf += _issue(", "            (")]),
    ("completion record (pack, append)", [("            ev.complete(rid, OK)", "            pass")]),
    ("inline wait", [("            _native_wait(work)", "            pass")]),
    (
        "group lookup and seq",
        [
            (
                "        info = pg._ct_info or info_of(pg)",
                "        info = pg._ct_info",
            ),
            (
                """            seq = info.seq
            info.seq = seq + 1""",
                "            seq = 0",
            ),
        ],
    ),
]


def _without(part: list[tuple[str, str]]):
    """capture._record with one part cut out, compiled in capture's namespace."""
    source = textwrap.dedent(inspect.getsource(C._record))
    for old, new in part:
        if old not in source:
            raise SystemExit(f"capture._record changed: this benchmark no longer finds {old.strip()!r}")
        source = source.replace(old, new)
    namespace: dict = {}
    exec(compile(source, "<recorder_profile>", "exec"), vars(C), namespace)  # noqa: S102 - our own source
    return namespace["_record"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sweep-mb", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the sweep stays on this core, as one rank's kernels would
    with tempfile.TemporaryDirectory() as tmp:
        recorder.enable(tmp, clock_sync=False, run_id="profile", flush_s=3600, flush_events=10**9, max_buffered=10**7)
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
        events = _state.events
        recorded, plain = recording_and_plain_groups(4)
        small = torch.ones(16)
        sweep = torch.ones(args.sweep_mb * 2**20 // 4)
        real_record = C._record
        variants = {"plain": None, "override": None, "recorded": real_record}
        variants.update({name: _without(part) for name, part in PARTS})

        def blocking(group) -> None:
            dist.all_reduce(small, group=group)

        def asynchronous(group) -> None:  # as DDP's buckets: completion followed by a future callback
            dist.all_reduce(small, group=group, async_op=True).wait()

        def batch(name: str, call, calls: int, cold: bool) -> float:
            """Microseconds per call of variant ``name`` (fake_groups.time_calls)."""
            group = plain if name == "plain" else recorded
            _state.events = None if name == "override" else events
            C._record = variants[name] or real_record
            try:
                return time_calls(call, group, calls, sweep if cold else None)
            finally:
                C._record = real_record
                _state.events = events
                events.clear()

        # Warm: every part, blocking calls. Cold: the totals only (there, cutting any one part saves
        # about as much as any other: the misses are shared, not additive), blocking and asynchronous.
        runs = [
            ("warm", "blocking", blocking, list(variants), 20000),
            ("cold", "blocking", blocking, ["plain", "override", "recorded"], 400),
            ("cold", "async", asynchronous, ["plain", "override", "recorded"], 400),
        ]
        for regime, kind, call, names, calls in runs:
            cold = regime == "cold"
            med = interleaved_medians(
                names, lambda n, k, call=call, cold=cold: batch(n, call, k, cold), calls, args.repeats
            )
            override = med["override"] - med["plain"]
            added = med["recorded"] - med["plain"]
            row = {
                "regime": regime,
                "call": kind,
                "plain_us": round(med["plain"], 3),
                "override_alone_us": round(override, 3),
                "recording_added_us": round(added, 3),
                "calls_per_batch": calls,
                "repeats": args.repeats,
            }
            if not cold:
                parts = {name: round(med["recorded"] - med[name], 3) for name, _ in PARTS}
                row["parts_us"] = parts
                row["rest_us"] = round(added - override - sum(parts.values()), 3)
                row["writer_us_per_op"] = round(_writer_cost(_state.session, small, recorded), 3)
            print(json.dumps(row))
        recorder.disable()
        dist.destroy_process_group()


def _writer_cost(session, small: torch.Tensor, group, ops: int = 20000, repeats: int = 5) -> float:
    """The writer's time per operation: one flush of ``ops`` recorded all_reduces into a segment."""
    costs = []
    for _ in range(repeats):
        for _ in range(ops):
            dist.all_reduce(small, group=group)
        t0 = time.perf_counter()
        session.flush()
        costs.append((time.perf_counter() - t0) / ops * 1e6)
    return statistics.median(costs)


if __name__ == "__main__":
    main()
