"""A real gloo DDP training loop (2 ranks) with recording on and off, paired: the slowdown users would see.

With ``--in-process CHUNKS``, one recorded job switches recording on and off from one step to the
next (on, off, off, on, ...), for ``CHUNKS`` chunks of ``--steps`` steps; each chunk gives one
slowdown figure, the ratio of the trimmed mean step times (5 % cut at each end). The same processes
and warm caches, and a slow second of the machine hits both sides alike, so this sees a cost of a
percent that separate jobs cannot. What it cannot see is the cost of the recorder's threads (the
writer's flush, the sampler), which are alive in both halves and land on either.

Otherwise each run is a fresh ``torchrun`` job (``--ranks``, one thread each) that trains a small MLP with
DistributedDataParallel and times ``--steps`` steps after a warm-up, between barriers. Runs alternate
off/on/on/off... so that drift in the machine's speed hits both sides alike; each adjacent off/on
pair gives one slowdown figure. Prints one JSON line: step time with and without recording and the
slowdown in % (min/median/max over pairs), and the events recorded per step.

    python benchmarks/ddp_overhead.py [--pairs 6] [--steps 1500]
    python benchmarks/ddp_overhead.py --in-process 8 --steps 1000 [--ranks 1]

``--time-calls`` also times the group's ``allreduce`` as DDP's reducer calls it, in the recorded
and the unrecorded steps: the recorder's cost per bucket, as a training step's cold caches make it.
``--ranks 1`` runs the same loop as a one-rank job, which leaves the machine's second core to the
gloo threads and the recorder's: it tells a cost of the recorder's own work from a cost of two ranks
fighting for two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from footprint import trace_footprint  # noqa: E402


def worker(steps: int, warmup: int, out: str, chunks: int = 0, time_calls: bool = False) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.5)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(32, 256, generator=generator), torch.randint(0, 10, (32,), generator=generator))]

    def step() -> None:
        x, y = batches[0]
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if chunks:  # in one recorded job: recording on and off in alternate steps (on, off, off, on, ...)
        from recorder import _state

        session, events, results = _state.session, _state.events, []
        calls = {True: [0, 0], False: [0, 0]}  # recording on/off: ns inside the group's allreduce, calls
        if time_calls:
            from recorder.capture import RecordingProcessGroup

            override, clock = RecordingProcessGroup.allreduce, time.perf_counter_ns

            def allreduce(self, *args, **kwargs):  # DDP's bucket all_reduce, as its reducer calls it
                t0 = clock()
                try:
                    return override(self, *args, **kwargs)
                finally:
                    entry = calls[_state.events is not None]
                    entry[0] += clock() - t0
                    entry[1] += 1

            RecordingProcessGroup.allreduce = allreduce
        for _ in range(chunks):
            times: dict[bool, list[float]] = {True: [], False: []}
            dist.barrier()
            for i in range(steps):
                on = (i % 4) in (0, 3)
                _state.events = events if on else None
                t0 = time.perf_counter()
                step()
                times[on].append(time.perf_counter() - t0)
            _state.events = events
            results.append((_trimmed_mean(times[False]), _trimmed_mean(times[True])))
        if rank == 0:
            with open(out, "w") as fh:
                timed = {}
                if time_calls:
                    off, on = (calls[k][0] / max(calls[k][1], 1) / 1e3 for k in (False, True))
                    timed = {"allreduce_us_off": round(off, 2), "allreduce_us_on": round(on, 2)}
                json.dump({"pairs": results, "recording": session is not None, **timed}, fh)
        dist.destroy_process_group()
        return
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"seconds": elapsed, "steps": steps}, fh)
    dist.destroy_process_group()


def _trimmed_mean(values: list[float], cut: float = 0.05) -> float:
    """The mean without the ``cut`` share at each end: a step that met a page fault or a flush of the
    machine's other tenant says nothing about recording."""
    values = sorted(values)
    k = int(len(values) * cut)
    return statistics.fmean(values[k : len(values) - k])


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


_reruns: list[str] = []  # jobs run again after torch's abort (reported as aborted_jobs_rerun)


def _job(trace_dir: str | None, out: str, steps: int, warmup: int, *extra: str, ranks: int = 2) -> dict:
    """One torchrun job of the worker (recorded into ``trace_dir`` if given); its result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    env.pop("COMMTRACE_DIR", None)
    if trace_dir is not None:
        env["COMMTRACE_DIR"] = trace_dir
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    command += ["--master-port", _free_port()]
    command += [os.path.abspath(__file__), "--worker", "--steps", str(steps), "--warmup", str(warmup), "--out", out]
    for _ in range(3):
        proc = subprocess.run([*command, *extra], env=env, capture_output=True, text=True, timeout=1800)
        # This CPU build of torch now and then aborts a gloo DDP rank, recorded or not (a few % of
        # plain runs here, tests/test_disk.py): such a job says nothing about the recorder; run it again.
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
        _reruns.append(proc.stderr[-2000:])
        if trace_dir is not None:  # the footprint counts the job that ran to the end only
            shutil.rmtree(trace_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"the training job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out) as fh:
        return json.load(fh)


def _summary(pairs: list[tuple[float, float]]) -> dict:
    """Step times (s) of (off, on) pairs: the medians in ms, and the slowdown in % per pair."""
    slowdown = [(on - off) / off * 100 for off, on in pairs]
    return {
        "step_ms_off_median": round(statistics.median(off for off, _ in pairs) * 1e3, 4),
        "step_ms_on_median": round(statistics.median(on for _, on in pairs) * 1e3, 4),
        "slowdown_pct_min": round(min(slowdown), 3),
        "slowdown_pct_median": round(statistics.median(slowdown), 3),
        "slowdown_pct_max": round(max(slowdown), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--ranks", type=int, default=2, help="ranks of the job (1 leaves this machine's second core idle)"
    )
    parser.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="CHUNKS",
        help="instead: one recorded job, recording on and off in alternate steps, CHUNKS chunks of --steps steps",
    )
    parser.add_argument(
        "--time-calls",
        action="store_true",
        help="with --in-process: also time each bucket all_reduce call, recording on and off",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.warmup, args.out, args.in_process, args.time_calls)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.in_process:
            extra = ("--in-process", str(args.in_process)) + (("--time-calls",) if args.time_calls else ())
            result = _job(
                os.path.join(tmp, "traces"),
                os.path.join(tmp, "result.json"),
                args.steps,
                args.warmup,
                *extra,
                ranks=args.ranks,
            )
            assert result["recording"], "the job was not recorded"
            print(
                json.dumps(
                    {
                        "mode": "in_process",
                        **_summary(result["pairs"]),
                        "chunks": args.in_process,
                        "steps": args.steps,
                        "ranks": args.ranks,
                        **{k: v for k, v in result.items() if k.startswith("allreduce_us")},
                        "aborted_jobs_rerun": len(_reruns),
                    }
                )
            )
            return
        pairs = []
        for pair in range(args.pairs):
            times = {}
            for record in (False, True) if pair % 2 == 0 else (True, False):
                k = 2 * pair + record
                trace_dir = os.path.join(tmp, f"traces-{k}") if record else None
                result = _job(
                    trace_dir, os.path.join(tmp, f"result-{k}.json"), args.steps, args.warmup, ranks=args.ranks
                )
                times[record] = result["seconds"] / args.steps
            pairs.append((times[False], times[True]))
        events, size = trace_footprint(tmp)
    per_step = events / args.pairs / 2 / (args.steps + args.warmup)
    extra = {"events_per_step_per_rank": round(per_step, 2), "bytes_per_event": round(size / max(events, 1), 2)}
    extra["aborted_jobs_rerun"] = len(_reruns)
    print(json.dumps({**_summary(pairs), **extra, "pairs": args.pairs, "steps": args.steps, "ranks": args.ranks}))


if __name__ == "__main__":
    main()
