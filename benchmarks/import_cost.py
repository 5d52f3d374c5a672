"""What ``analyze-trace import fr`` costs on large dumps, beside reading commtrace's own segments.

Writes one Flight Recorder dump of ``--entries`` entries as torch pickles it (protocol 2; an entry
as torch 2.13 writes one for NCCL: sizes, dtypes, watchdog times, three stack frames), then links
it under ``--ranks`` rank names (the ranks agree: a healthy run). Then, alternated ``--repeats``
times, in fresh processes: ``analyze-trace import fr`` of those dumps (wall time, the largest
process's peak RSS and the sum over processes), and ``analyze-trace summary`` and
``analyze-trace diagnose`` of the imported run: reading the same events from commtrace's segments;
and, as the floor, only decoding the dumps (the least any import of them costs in Python).
Prints one JSON line.

    python benchmarks/import_cost.py [--ranks 64] [--entries 1000000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_764_000_000_000_000_000


def write_dump(path: str, entries: int) -> int:
    frames = [
        {"name": "all_reduce", "filename": "/opt/torch/distributed/distributed_c10d.py", "line": 3245},
        {"name": "train_step", "filename": "/work/train.py", "line": 88},
        {"name": "<module>", "filename": "/work/train.py", "line": 120},
    ]
    rows = []
    for i in range(entries):
        t = T0 + i * 1_000_000
        rows.append({
            "record_id": i, "pg_id": 0, "process_group": ("0", "default_pg"), "collective_seq_id": i + 1,
            "p2p_seq_id": 0, "op_id": i + 1, "profiling_name": "nccl:all_reduce", "time_created_ns": t,
            "input_sizes": [[4096, 1024]], "input_dtypes": ["BFloat16"], "output_sizes": [[4096, 1024]],
            "output_dtypes": ["BFloat16"], "state": "completed", "retired": True, "timeout_ms": 600000,
            "time_discovered_started_ns": t + 10_000, "time_discovered_completed_ns": t + 800_000,
            "duration_ms": 0.75, "is_p2p": False, "thread_id": "140466158570368", "thread_name": "python",
            "frames": frames,
        })  # fmt: skip
    dump = {"version": "2.10", "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0]"}},
            "pg_status": {}, "comm_lib_version": "2.27.5", "entries": rows}  # fmt: skip
    data = pickle.dumps(dump, protocol=2)
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


# Only decodes every dump (the refusing unpickler, collector off), one process per core as the
# import does: the least any import of these dumps costs in Python.
_DECODE = (
    "import concurrent.futures, gc, os, sys; from analysis import safepickle\n"
    "def load(path):\n"
    "    gc.disable()\n"
    "    with open(path, 'rb') as fh:\n"
    "        return len(safepickle.load(fh)['entries'])\n"
    "with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:\n"
    "    print(sum(pool.map(load, sys.argv[1:])))\n"
)

# Runs a command and prints the peak RSS (KiB) of the largest of its processes, pool workers included.
_WRAP = (
    "import resource, subprocess, sys; "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def timed(command: list[str]) -> tuple[float, int, int]:
    """(wall s, peak RSS MiB of the largest process, peak RSS MiB of all its processes at once,
    sampled every 0.2 s)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _WRAP, *command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak_sum = 0
    while proc.poll() is None:
        peak_sum = max(peak_sum, _tree_rss(proc.pid))
        time.sleep(0.2)
    wall = time.monotonic() - started
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {err[-2000:]}")
    return wall, int(out.split()[-1]) >> 10, peak_sum >> 20


def _tree_rss(pid: int) -> int:
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as fh:
                pids += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scratch", default=tempfile.gettempdir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="commtrace-import-", dir=args.scratch)
    try:
        dumps = os.path.join(work, "dumps")
        os.mkdir(dumps)
        started = time.monotonic()
        size = write_dump(os.path.join(dumps, "nccl_trace_rank_0"), args.entries)
        for rank in range(1, args.ranks):
            os.link(os.path.join(dumps, "nccl_trace_rank_0"), os.path.join(dumps, f"nccl_trace_rank_{rank}"))
        print(f"dumps written in {time.monotonic() - started:.0f} s", file=sys.stderr)
        cli = [sys.executable, "-m", "analysis.cli"]
        results: dict[str, list] = {"decode only": [], "import": [], "summary": [], "diagnose": []}
        files = sorted(os.path.join(dumps, name) for name in os.listdir(dumps))
        for i in range(args.repeats):
            run = os.path.join(work, f"run{i}")
            results["decode only"].append(timed([sys.executable, "-c", _DECODE, *files]))
            results["import"].append(timed([*cli, "import", "fr", dumps, "-o", run]))
            results["summary"].append(timed([*cli, "summary", run]))
            results["diagnose"].append(timed([*cli, "diagnose", run]))
            print(f"pass {i + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in results.items()), file=sys.stderr)
            if i + 1 < args.repeats:
                shutil.rmtree(run)
        out = {"ranks": args.ranks, "entries_per_rank": args.entries, "dump_mib": round(size / 2**20, 1)}
        for key, values in results.items():
            out[key] = {
                "wall_s": round(statistics.median(v[0] for v in values), 1),
                "largest_process_mib": max(v[1] for v in values),
                "all_processes_mib": max(v[2] for v in values),
            }
        out["import_vs_summary"] = round(out["import"]["wall_s"] / out["summary"]["wall_s"], 2)
        out["import_vs_decode_only"] = round(out["import"]["wall_s"] / out["decode only"]["wall_s"], 2)
        out["import_vs_diagnose"] = round(out["import"]["wall_s"] / out["diagnose"]["wall_s"], 2)
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
