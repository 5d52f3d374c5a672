"""A real framework's start-up and exit, recorded and not: DeepSpeed jobs under torchrun, side by side.

Runs ``--pairs`` pairs of 2-rank DeepSpeed jobs (``tests/jobs/deepspeed_train.py``: ZeRO stage
``--stage``, gloo on CPU), one recorded by ``COMMTRACE_DIR`` alone and one not, in alternating order,
one job at a time. Per job: start-up (``init_distributed`` to the first engine, the slower rank),
exit (``destroy_process_group`` to the end, the slower rank), the whole torchrun's wall time, c10d
store timeouts in its output, and for recorded jobs whether every rank's clock offset was measured in
full. Prints one JSON object; the promise it checks: no recorded job slower to start or to exit than
the slowest unrecorded one by more than a second, and no store timeout.

    python benchmarks/framework_startup.py --pairs 10
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "jobs", "deepspeed_train.py")


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _read(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def one_job(recorded: bool, stage: int, steps: int, scratch: str) -> dict:
    out = tempfile.mkdtemp(dir=scratch)
    traces = os.path.join(out, "traces")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMMTRACE_", "TORCH_FR"))}
    env.update(JOB_OUT=out, DS_ACCELERATOR="cpu")
    if recorded:
        env["COMMTRACE_DIR"] = traces
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _port()]
    started = time.monotonic()
    proc = subprocess.run([*command, JOB, str(stage), str(steps)], env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [_read(os.path.join(out, f"rank{r}.json")) for r in (0, 1)]
    result = {
        "recorded": recorded,
        "init_s": round(max(r["init_s"] for r in ranks), 3),
        "exit_s": round(max(r["exit_s"] for r in ranks), 3),
        "wall_s": round(wall, 3),
        "store_timeouts": (proc.stdout + proc.stderr).count("timed out"),
    }
    if recorded:
        metas = [_read(p) for p in glob.glob(os.path.join(traces, "*", "rank=*", "rank-*.json"))]
        clocks = [m["clock"].get("start", {}) for m in metas if m["rank"] != 0]
        result["clock_complete"] = len(metas) == 2 and all(
            c.get("rounds") == c.get("rounds_asked") and not c.get("error") for c in clocks
        )
    return result


def _figures(jobs: list[dict], key: str) -> dict:
    values = [j[key] for j in jobs]
    return {"min": min(values), "median": round(statistics.median(values), 3), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--stage", type=int, default=2, help="ZeRO stage (default 2)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    jobs = []
    with tempfile.TemporaryDirectory(prefix="commtrace-ds-") as scratch:
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for recorded in order:
                jobs.append(one_job(recorded, args.stage, args.steps, scratch))
                print(json.dumps(jobs[-1]), file=sys.stderr)
    plain = [j for j in jobs if not j["recorded"]]
    recorded = [j for j in jobs if j["recorded"]]
    summary = {
        "framework": "deepspeed",
        "stage": args.stage,
        "pairs": args.pairs,
        "plain": {k: _figures(plain, k) for k in ("init_s", "exit_s", "wall_s")},
        "recorded": {k: _figures(recorded, k) for k in ("init_s", "exit_s", "wall_s")},
        "store_timeouts": {
            "plain": sum(j["store_timeouts"] for j in plain),
            "recorded": sum(j["store_timeouts"] for j in recorded),
        },
        "clock_complete": sum(j["clock_complete"] for j in recorded),
        # the promise: no recorded job slower than the slowest unrecorded one by more than a second
        "worst_init_over_plain_max_s": round(max(j["init_s"] for j in recorded) - max(j["init_s"] for j in plain), 3),
        "worst_exit_over_plain_max_s": round(max(j["exit_s"] for j in recorded) - max(j["exit_s"] for j in plain), 3),
        "jobs": jobs,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
