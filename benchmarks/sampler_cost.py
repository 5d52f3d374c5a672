"""CPU cost of the host sampler at COMMTRACE_SAMPLE_HZ with every source this host has.

Runs a real sampler thread for --seconds (with a few live TCP connections of this process, so the
per-connection source has work) and reports the sampler thread's CPU time as a share of one core.

    python benchmarks/sampler_cost.py [--seconds 20] [--hz 10]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time

from recorder.sampler import Sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--flush-s", type=float, default=5.0, help="COMMTRACE_SAMPLE_FLUSH_S")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out of the steady-state figure")
    args = parser.parse_args()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    clients = [socket.create_connection(server.getsockname()) for _ in range(4)]
    accepted = [server.accept()[0] for _ in clients]
    with tempfile.TemporaryDirectory() as tmp:
        sampler = Sampler(tmp, f"cost-{time.time_ns()}", "bench", hz=args.hz, flush_s=args.flush_s)
        sampler.start()
        start = time.monotonic()
        warm_cpu = warm_at = None
        while time.monotonic() - start < args.seconds:
            for c in clients:
                c.sendall(b"x" * 65536)
            for a in accepted:
                a.recv(1 << 20)
            time.sleep(0.05)
            if warm_at is None and time.monotonic() - start >= args.warmup:
                warm_cpu, warm_at = sampler.cpu_s, time.monotonic()
        wall = time.monotonic() - start
        steady = (sampler.cpu_s - warm_cpu) / (time.monotonic() - warm_at)
        sampler.close()
        result = {
            "hz": args.hz,
            "seconds": round(wall, 2),
            "samples": sampler.samples,
            "sources": [s.name for s in sampler.sources],
            "sampler_cpu_s": round(sampler.cpu_s, 4),
            "share_of_one_core_pct": round(100 * sampler.cpu_s / wall, 4),
            "steady_share_of_one_core_pct": round(100 * steady, 4),
            "segments": sampler.writer.index,
            "bytes_on_disk": sampler.writer.bytes_written,
        }
    for s in clients + accepted + [server]:
        s.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
