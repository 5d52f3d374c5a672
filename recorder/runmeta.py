"""What a run's metadata files say about the job, and how they are written.

``run.json`` (written once, by rank 0) and each rank's ``rank-<incarnation>.json`` (rewritten as
the rank goes on, last at close) share the job's fields below; docs/trace-format.md lists them all.
Only environment variables of known prefixes are written, never one whose name looks secret.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time

from recorder.schema import SCHEMA_VERSION, safe_name

ENV_PREFIXES = ("TORCH_", "NCCL_", "COMMTRACE_", "GLOO_", "TORCHELASTIC_", "MASTER_", "OMP_", "CUDA_")
ENV_NAMES = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "GROUP_WORLD_SIZE",
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_NODEID",
    "SLURM_NNODES",
    "SLURM_JOB_NAME",
    "HOSTNAME",
)
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH", "COOKIE")


def allowed_env(env: dict[str, str]) -> dict[str, str]:
    """The part of the environment safe to write down: known prefixes, never anything secret-like."""
    out = {}
    for name, value in env.items():
        if not (name.startswith(ENV_PREFIXES) or name in ENV_NAMES):
            continue
        if any(word in name.upper() for word in SECRET_WORDS):
            continue
        out[name] = value
    return dict(sorted(out.items()))


def job_id(env: dict[str, str]) -> str | None:
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "LSB_JOBID", "PBS_JOBID", "JOB_ID"):
        value = env.get(name)
        if value and value != "none":
            return value
    return None


def new_run_id(env: dict[str, str]) -> str:
    """A fresh run id: the local time, the scheduler's job id if any, a random part, the restart."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    job = job_id(env)
    parts = [stamp] + ([safe_name(job, 12)] if job else []) + [secrets.token_hex(3)]
    restart = env.get("TORCHELASTIC_RESTART_COUNT")
    if restart and restart != "0":
        parts.append(f"r{safe_name(restart)}")
    return "-".join(parts)


def job_fields(run_id: str | None, world_size: int | None) -> dict:
    """The fields run.json and every rank's metadata share."""
    import torch

    env = dict(os.environ)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "world_size": world_size,
        "job_id": job_id(env),
        "restart_count": int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "recorder_version": version(),
    }


def atomic_json(path: str, payload: dict, exclusive: bool = False) -> None:
    """Write ``payload`` to ``path`` whole or not at all; ``exclusive``: never replace an existing file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True, default=str)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
    finally:  # a full disk must not leave a half file behind
        if os.path.exists(tmp):
            os.unlink(tmp)


def version() -> str:
    try:
        from importlib.metadata import version

        return version("commtrace")
    except Exception:
        return "unknown"


def int_env(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None
