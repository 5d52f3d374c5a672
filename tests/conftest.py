"""Shared helpers: run real multi-process jobs and read what the recorder wrote."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "jobs"

# The suite gates every change, so its property tests draw the same examples on every run: a red run
# means the change broke something. COMMTRACE_EXPLORE=1 draws new ones each run, to look for what
# nobody thought of (how a TIMESTAMP pg_size and a rank's metadata replaced twice were found); a case
# found that way becomes a named test.
try:
    from hypothesis import settings as _hypothesis

    _hypothesis.register_profile("gate", derandomize=True)
    _hypothesis.register_profile("explore", derandomize=False)
    _hypothesis.load_profile("explore" if os.environ.get("COMMTRACE_EXPLORE") else "gate")
except ImportError:  # the property tests skip themselves
    pass


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMMTRACE_", "TORCH_FR", "PYTEST"))}
    env.update(extra)
    return env


def run_job(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"job failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def start_job(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A job left running (for tests that signal or kill it); its stderr is kept for the failure message."""
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def torchrun(nproc: int, script: Path, *args: str) -> list[str]:
    """Arguments for ``python -m torch.distributed.run`` on this machine, on a free port."""
    return [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        free_port(),
        str(script),
        *args,
    ]


def run_dirs(trace_dir: Path) -> list[Path]:
    return sorted({Path(p).parent for p in glob.glob(str(trace_dir / "*" / "rank=*"))})


def load_events(trace_dir: Path) -> pa.Table:
    files = sorted(glob.glob(str(trace_dir / "*" / "rank=*" / "collectives-*.parquet")))
    assert files, f"no segments under {trace_dir}"
    return pa.concat_tables(pq.read_table(f) for f in files)


def rank_meta(trace_dir: Path) -> dict[int, dict]:
    out = {}
    for path in glob.glob(str(trace_dir / "*" / "rank=*" / "rank-*.json")):
        with open(path) as fh:
            meta = json.load(fh)
        out[meta["rank"]] = meta
    return out


@pytest.fixture
def tmp_trace(tmp_path: Path) -> Path:
    d = tmp_path / "traces"
    d.mkdir()
    return d


WORLD = 4


@pytest.fixture(scope="session")
def spawned(tmp_path_factory) -> dict:
    """One 4-rank run of jobs/all_ops.py under torch.multiprocessing.spawn, with Flight Recorder on."""
    base = tmp_path_factory.mktemp("spawned")
    traces, out = base / "traces", base / "out"
    out.mkdir()
    # Clock offsets measured every 0.2 s: the last one, the run's end offset, is checked too.
    env = clean_env(
        COMMTRACE_DIR=str(traces), JOB_OUT=str(out), TORCH_FR_BUFFER_SIZE="4000", COMMTRACE_CLOCK_INTERVAL_S="0.2"
    )
    run_job([str(JOBS / "all_ops.py"), "spawn", str(WORLD), free_port()], env)
    rows = load_events(traces).to_pylist()
    facts = {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)}
    return {"traces": traces, "run": run_dirs(traces)[0], "rows": rows, "facts": facts}
