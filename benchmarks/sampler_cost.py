"""CPU cost of the host sampler at COMMTRACE_SAMPLE_HZ with every source this host has.

Runs a real sampler thread for --seconds (with a few live TCP connections of this process, so the
per-connection source has work) and reports the sampler thread's CPU time as a share of one core.
Side by side, in the same process and for the same seconds, a bare thread wakes at the same rate
and does nothing: its share is the floor that waking a thread costs on this machine (on VMs it is
a large part of the sampler's figure), reported so that the two can be told apart.

With ``--against``, samplers of other settings run in the same process for the same seconds, each
measured on its own thread's CPU clock: the trade-off between how fresh the host figures of a live
view are (``analyze-trace watch``) and what they cost, side by side.

    python benchmarks/sampler_cost.py [--seconds 40] [--hz 10] [--flush-s 10] [--live-s 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time

from recorder.sampler import Sampler


class BareWaker(threading.Thread):
    """Wakes ``hz`` times a second, exactly as the sampler's loop schedules itself, and does nothing."""

    def __init__(self, hz: float) -> None:
        super().__init__(daemon=True)
        self.period_s = 1.0 / hz
        self.stop = threading.Event()

    def run(self) -> None:
        next_tick = time.monotonic()
        while not self.stop.is_set():
            next_tick += self.period_s
            time.sleep(max(0.0, next_tick - time.monotonic()))

    @property
    def cpu_s(self) -> float:
        return time.clock_gettime(time.pthread_getcpuclockid(self.ident))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--flush-s", type=float, default=10.0, help="COMMTRACE_SAMPLE_FLUSH_S")
    parser.add_argument("--live-s", type=float, default=2.0, help="COMMTRACE_SAMPLE_LIVE_S")
    parser.add_argument(
        "--against",
        default="",
        help="other FLUSH_S:LIVE_S settings measured side by side, in the same seconds (how fresh host "
        "figures can be had: flushing more often, or the latest counters alone)",
    )
    parser.add_argument(
        "--warmup", type=float, default=12.0, help="seconds left out of the steady figure (past the first flush)"
    )
    args = parser.parse_args()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    clients = [socket.create_connection(server.getsockname()) for _ in range(4)]
    accepted = [server.accept()[0] for _ in clients]
    settings = [(args.flush_s, args.live_s)]
    settings += [tuple(float(x) for x in pair.split(":")) for pair in args.against.split(",") if pair]
    with tempfile.TemporaryDirectory() as tmp:
        samplers = [
            Sampler(os.path.join(tmp, str(i)), f"cost-{i}-{time.time_ns()}", "bench", hz=args.hz, flush_s=f, live_s=lv)
            for i, (f, lv) in enumerate(settings)
        ]
        for sampler in samplers:
            sampler.start()
        floor = BareWaker(args.hz)
        floor.start()
        start = time.monotonic()
        warm = None
        while time.monotonic() - start < args.seconds:
            for c in clients:
                c.sendall(b"x" * 65536)
            for a in accepted:
                a.recv(1 << 20)
            time.sleep(0.05)
            if warm is None and time.monotonic() - start >= args.warmup:
                warm = ([s.cpu_s for s in samplers], floor.cpu_s, time.monotonic())
        end = ([s.cpu_s for s in samplers], floor.cpu_s, time.monotonic())
        wall = end[2] - start
        steady_s = end[2] - warm[2]
        floor.stop.set()
        for sampler in samplers:
            sampler.close()
        configs = [
            {
                "flush_s": f,
                "live_s": lv,
                "host_figures_at_most_s_old": lv if lv > 0 else f,
                "steady_share_of_one_core_pct": round(100 * (end[0][i] - warm[0][i]) / steady_s, 4),
                "segments_per_hour": round(samplers[i].writer.index / wall * 3600),
                "latest_counters_us_each": round(samplers[i].live.cpu_s / samplers[i].live.updates * 1e6, 1)
                if samplers[i].live is not None and samplers[i].live.updates
                else None,
            }
            for i, (f, lv) in enumerate(settings)
        ]
        sampler = samplers[0]
        result = {
            "hz": args.hz,
            "flush_s": args.flush_s,
            "live_s": args.live_s,
            "seconds": round(wall, 2),
            "samples": sampler.samples,
            "sources": sampler.source_names,
            "sampler_cpu_s": round(end[0][0], 4),
            "share_of_one_core_pct": round(100 * end[0][0] / wall, 4),
            "steady_share_of_one_core_pct": configs[0]["steady_share_of_one_core_pct"],
            "bare_wakeups_share_of_one_core_pct": round(100 * (end[1] - warm[1]) / steady_s, 4),
            "segments": sampler.writer.index,
            "bytes_on_disk": sampler.writer.bytes_written,
            "configs": configs,
        }
        for sampler in samplers:
            try:
                os.unlink(sampler.election.pid_file)
            except OSError:
                pass
    for s in clients + accepted + [server]:
        s.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
