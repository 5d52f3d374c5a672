"""Recorder memory over a long run, and bytes on disk per event.

A process issues ``--calls`` collectives (default 1,000,000: all_reduce, every 10th an
all_gather_into_tensor) on torch's fake backend as fast as it can, far faster than any real job,
so the writer is at its busiest. The same loop runs with recording off and on, each in a fresh
process; their peak private memory (anonymous RSS, sampled every 2 ms) differs by what the recorder
holds; the shared library pages it maps (pyarrow's code, shared by every rank of a host) are
reported apart. Private memory is also sampled every 100k calls on the recorded run: bounded
memory means it stops growing. Prints one JSON line.

    python benchmarks/recorder_memory.py [--calls 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from footprint import trace_footprint  # noqa: E402


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class _Peak:
    """The largest private (anonymous) RSS seen, sampled every 2 ms from a thread (the writer's
    peaks last a few ms and fall between the loop's own samples)."""

    def __init__(self) -> None:
        import threading

        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _status("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status("RssAnon"))


def child(calls: int, record: bool, trace_dir: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if record:
        import recorder
        from recorder import _state

        recorder.enable(trace_dir, clock_sync=False, run_id="memory")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    small, gathered = torch.ones(16), torch.empty(64)
    peak = _Peak()
    samples = []
    for i in range(calls):
        if i % 10 == 9:
            dist.all_gather_into_tensor(gathered, small)
        else:
            dist.all_reduce(small)
        if i % 100_000 == 0:
            samples.append((i, _status("RssAnon")))
    dropped = rows = bytes_written = None
    if record:
        session = _state.session
        dropped = session.events.dropped
        recorder.disable()  # flushes what is buffered
        rows, bytes_written = trace_footprint(trace_dir)
    samples.append((calls, _status("RssAnon")))
    anon_peak = peak.stop()
    dist.destroy_process_group()
    return {
        "anon_peak": anon_peak,
        "file": _status("RssFile"),
        "peak": _status("VmHWM"),
        "samples": samples,
        "dropped": dropped,
        "rows": rows,
        "bytes": bytes_written,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--trace-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.calls, args.child == "on", args.trace_dir)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "on"):
            command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--calls", str(args.calls)]
            command += ["--trace-dir", os.path.join(tmp, mode)]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=1800, env={**os.environ})
            if proc.returncode != 0:
                raise SystemExit(f"the {mode} run failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    on, off = results["on"], results["off"]
    after_warmup = [rss for i, rss in on["samples"] if i >= 100_000] or [rss for _, rss in on["samples"]]
    mib = 1 << 20
    print(
        json.dumps(
            {
                "calls": args.calls,
                # what one rank holds privately because of the recorder (its buffer, the writer's
                # work, pyarrow's own heap); shared library pages are counted apart
                "recorder_private_peak_mib": round((on["anon_peak"] - off["anon_peak"]) / mib, 1),
                "recorder_shared_file_mib": round((on["file"] - off["file"]) / mib, 1),
                "peak_rss_mib_on": round(on["peak"] / mib, 1),
                "peak_rss_mib_off": round(off["peak"] / mib, 1),
                "private_growth_after_100k_calls_mib": round((max(after_warmup) - after_warmup[0]) / mib, 1),
                "private_mib_every_100k_calls": [round(rss / mib, 1) for _, rss in on["samples"]],
                "events_written": on["rows"],
                "events_dropped": on["dropped"],
                "bytes_per_event": round(on["bytes"] / max(on["rows"], 1), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
