"""What a native hot path would save: capture._record's blocking path in C, timed against the Python one.

An experiment, not part of the recorder. ``native_hot_path.c`` reads the same objects and appends
the same records as ``capture._record`` does for a blocking ``all_reduce`` (the benchmark checks
that both write identical records, ids and times aside), called from the same Python override.
This compiles it with the C compiler Python was built with, then times an ``all_reduce`` of 16
floats on torch's fake backend on a plain group, on a recording group with recording off, recording
in Python and recording in C, interleaved, caches warm and cold (as benchmarks/recorder_profile.py).
Prints one JSON line per regime: microseconds added per call against the plain group. The writer's
share (recorder_profile.py: writer_us_per_op) comes on top of either.

    python benchmarks/native_hot_path.py [--repeats 9] [--sweep-mb 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_groups import interleaved_medians, recording_and_plain_groups, time_calls  # noqa: E402


def build(directory: str):
    """Compile native_hot_path.c into ``directory`` and import it."""
    path = os.path.join(directory, "_fastrec" + sysconfig.get_config_var("EXT_SUFFIX"))
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    command = [*compiler, "-O2", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"]]
    command += [os.path.join(HERE, "native_hot_path.c"), "-o", path]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"could not compile native_hot_path.c: {proc.stderr.strip()[-2000:]}")
    spec = importlib.util.spec_from_file_location("_fastrec", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sweep-mb", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import recorder
    from recorder import _state
    from recorder import capture as C
    from recorder.records import ISSUE_DTYPE, OPS

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        native = build(tmp)
        recorder.enable(tmp, clock_sync=False, run_id="native", flush_s=3600, flush_events=10**9, max_buffered=10**7)
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
        events = _state.events
        recorded, plain = recording_and_plain_groups(4)
        small = torch.ones(16)
        dist.all_reduce(small, group=recorded)  # the group's info and twin exist from here on
        native.init(_state, C._dtype_codes, C._native_wait)
        python_override = C.RecordingProcessGroup.allreduce
        record, base, code = native.record, C._PG.allreduce, OPS.code("all_reduce")

        def native_override(self, *args, **kwargs):
            if _state.events is not None and len(args) == 2 and type(args[0]) is list and len(args[0]) == 1:
                x = args[0][0]
                return record(self, base, args[0], args[1], x, x.numel(), code)
            return python_override(self, *args, **kwargs)

        def records(override) -> np.ndarray:
            """The issue record one call writes, without its id, time and sequence number."""
            events.clear()
            C.RecordingProcessGroup.allreduce = override
            try:
                dist.all_reduce(small, group=recorded)
            finally:
                C.RecordingProcessGroup.allreduce = python_override
            rows = np.frombuffer(bytes(events.issues), dtype=ISSUE_DTYPE).copy()
            events.clear()
            return rows[[n for n in ISSUE_DTYPE.names if n not in ("id", "t0", "seq")]]

        theirs, ours = records(python_override), records(native_override)
        if theirs.tolist() != ours.tolist():
            raise SystemExit(f"the native path writes {ours}, the Python path {theirs}")

        sweep = torch.ones(args.sweep_mb * 2**20 // 4)

        def blocking(group) -> None:
            dist.all_reduce(small, group=group)

        overrides = {"plain": python_override, "override": python_override, "python": python_override}
        overrides["native"] = native_override

        def batch(name: str, calls: int, cold: bool) -> float:
            group = plain if name == "plain" else recorded
            _state.events = None if name == "override" else events
            C.RecordingProcessGroup.allreduce = overrides[name]
            try:
                return time_calls(blocking, group, calls, sweep if cold else None)
            finally:
                C.RecordingProcessGroup.allreduce = python_override
                _state.events = events
                events.clear()

        for regime, calls in (("warm", 20000), ("cold", 400)):
            cold = regime == "cold"
            med = interleaved_medians(list(overrides), lambda n, k, cold=cold: batch(n, k, cold), calls, args.repeats)
            row = {"regime": regime, "plain_us": round(med["plain"], 3)}
            for name in ("override", "python", "native"):
                row[f"{name}_added_us"] = round(med[name] - med["plain"], 3)
            row["repeats"] = args.repeats
            print(json.dumps(row))
            sys.stdout.flush()
        recorder.disable()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
