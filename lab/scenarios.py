"""A misbehaving network on one machine: the lab's scenarios, recorded as a real user would record them.

    python -m lab.scenarios SCENARIO OUT_DIR [--run-id NAME] [--hosts 3] [--culprit N]
                            [--workload ddp|sweep] [--seed S]

Brings up ``--hosts`` hosts (network namespaces with their own hostnames on a bridge), runs one
rank of a real gloo job on each with the recorder switched on by its environment variables only
(``COMMTRACE_DIR``, plus ``COMMTRACE_PROBE=1``), and tears the lab down whatever happens.

Scenarios (the culprit is host/rank ``--culprit``, chosen at random if not given):

- ``healthy``: nothing wrong.
- ``slow-link``: the culprit's link is shaped to ``--rate-mbit`` in both directions (tc tbf).
- ``lossy``: the culprit's link drops packets (tbf at 500 Mbit with a queue of ~13 packets).
- ``straggler``: the culprit's rank computes ``--delay-ms`` longer before every other step.
- ``clock-shift``: a straggler, and another rank whose wall clock reads ``--shift-ms`` ahead.

Workloads (lab/jobs/): ``ddp`` trains a small MLP with DistributedDataParallel; ``sweep`` runs five
collectives at sizes from 1 KiB to 4 MiB, like nccl-tests. Prints one JSON line: the scenario, the
culprit (index, hostname, rank) and the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from lab.network import Lab, lab_available

JOBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jobs")
SCENARIOS = ("healthy", "slow-link", "lossy", "straggler", "clock-shift")
WORKLOADS = {
    "ddp": ["ddp_train.py", "--steps", "20", "--hidden", "128"],
    "sweep": ["sweep.py", "--max-bytes", str(1 << 20), "--iters", "3"],
}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@dataclass(frozen=True)
class Faults:
    """What is wrong in one lab run; any combination. Hosts and ranks are the same index (one rank per host).

    ``straggler``: that rank computes ``delay_ms`` longer before every ``every``-th step.
    ``link``: that host's link is ``link_kind`` "slow" (tbf at ``rate_mbit``) or "lossy" (tbf at 500
    Mbit with a queue of ~13 packets: bursts overflow it). ``shifted``: that host's wall clock reads
    ``shift_ms`` ahead.
    """

    straggler: int | None = None
    delay_ms: float = 100.0
    every: int = 2
    link: int | None = None
    link_kind: str = "slow"
    rate_mbit: float = 100.0
    shifted: int | None = None
    shift_ms: float = 400.0

    def injected(self) -> dict:
        """What is wrong, and nothing else (no setting of a fault not injected)."""
        out: dict = {}
        if self.straggler is not None:
            out.update(straggler=self.straggler, delay_ms=self.delay_ms, every=self.every)
        if self.link is not None:
            out.update(link=self.link, link_kind=self.link_kind)
            if self.link_kind == "slow":
                out["rate_mbit"] = self.rate_mbit
        if self.shifted is not None:
            out.update(shifted=self.shifted, shift_ms=self.shift_ms)
        return out

    def knobs(self, hosts: int) -> dict[int, dict[str, str]]:
        """Each rank's LAB_* environment (lab/jobs/knobs.py)."""
        knobs: dict[int, dict[str, str]] = {rank: {} for rank in range(hosts)}
        if self.straggler is not None:
            for rank in range(hosts):
                knobs[rank].update(
                    LAB_SLEEP_RANK=str(self.straggler), LAB_SLEEP_MS=str(self.delay_ms), LAB_SLEEP_EVERY=str(self.every)
                )
        if self.shifted is not None:
            knobs[self.shifted]["LAB_CLOCK_SHIFT_MS"] = str(self.shift_ms)
        return knobs


def scenario_faults(
    scenario: str,
    culprit: int,
    hosts: int,
    rng: random.Random,
    rate_mbit: float = 100.0,
    delay_ms: float = 100.0,
    shift_ms: float = 400.0,
) -> Faults:
    """The faults of one named scenario, its culprit given."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
    if scenario == "slow-link":
        return Faults(link=culprit, link_kind="slow", rate_mbit=rate_mbit)
    if scenario == "lossy":
        return Faults(link=culprit, link_kind="lossy")
    if scenario == "straggler":
        return Faults(straggler=culprit, delay_ms=delay_ms)
    if scenario == "clock-shift":
        shifted = rng.choice([h for h in range(hosts) if h != culprit])
        return Faults(straggler=culprit, delay_ms=delay_ms, shifted=shifted, shift_ms=shift_ms)
    return Faults()


def run(
    scenario: str,
    out_dir: str,
    run_id: str | None = None,
    hosts: int = 3,
    culprit: int | None = None,
    workload: str = "ddp",
    rate_mbit: float = 100.0,
    delay_ms: float = 100.0,
    shift_ms: float = 400.0,
    seed: int | None = None,
    timeout_s: float = 300.0,
    tag: str | None = None,
) -> dict:
    """Run one scenario; returns what was injected and where the trace is."""
    rng = random.Random(seed)
    culprit = rng.randrange(hosts) if culprit is None else culprit
    faults = scenario_faults(scenario, culprit, hosts, rng, rate_mbit, delay_ms, shift_ms)
    info = record(faults, out_dir, run_id, hosts, WORKLOADS[workload], timeout_s, tag)
    return {
        "scenario": scenario,
        "workload": workload,
        "culprit": None
        if scenario == "healthy"
        else {"host": culprit, "hostname": info["hostnames"][culprit], "rank": culprit},
        "shifted_rank": faults.shifted,
        **info,
    }


def record(
    faults: Faults,
    out_dir: str,
    run_id: str | None = None,
    hosts: int = 3,
    job: list[str] | None = None,
    timeout_s: float = 300.0,
    tag: str | None = None,
) -> dict:
    """Record one real job (``job``: a script of lab/jobs/ and its arguments) on ``hosts`` lab hosts with
    ``faults``; returns the hosts' names, the run directory and the straggler's pauses as they took."""
    why = lab_available()
    if why:
        raise RuntimeError(why)
    knobs = faults.knobs(hosts)
    os.makedirs(out_dir, exist_ok=True)
    handle, pauses = tempfile.mkstemp(prefix="lab-pauses-", suffix=".txt")
    os.close(handle)
    if faults.straggler is not None:
        knobs[faults.straggler]["LAB_PAUSES_FILE"] = pauses
    with Lab(hosts, tag=tag) as lab:
        if faults.link is not None and faults.link_kind == "slow":
            lab.shape(faults.link, faults.rate_mbit)
        elif faults.link is not None:
            lab.shape(faults.link, 500, limit_bytes=20000)
        port = _free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("COMMTRACE_", "LAB_", "PYTEST"))}
        procs = []
        script, *args = job or WORKLOADS["ddp"]
        for rank in range(hosts):
            env = {
                **base,
                **knobs[rank],
                "COMMTRACE_DIR": os.path.abspath(out_dir),
                "COMMTRACE_PROBE": "1",
                "RANK": str(rank),
                "WORLD_SIZE": str(hosts),
                "LOCAL_RANK": "0",
                "MASTER_ADDR": lab.ip(0),
                "MASTER_PORT": port,
                "GLOO_SOCKET_IFNAME": "eth0",
                "OMP_NUM_THREADS": "1",  # as torchrun sets it: the lab's hosts share this machine's cores
            }
            if run_id:
                env["COMMTRACE_RUN_ID"] = run_id
            argv = [sys.executable, os.path.join(JOBS, script), *args]
            procs.append(lab.spawn(rank, argv, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        failures = []
        for rank, proc in enumerate(procs):
            try:
                out, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"rank {rank} exited {proc.returncode}: {out[-2000:]}")
        hostnames = list(lab.hostnames)
    with open(pauses) as fh:
        paused = [float(line) for line in fh if line.strip()]
    os.unlink(pauses)
    if failures:
        raise RuntimeError("; ".join(failures))
    runs = sorted(
        (os.path.join(out_dir, d) for d in os.listdir(out_dir) if os.path.isdir(os.path.join(out_dir, d))),
        key=os.path.getmtime,
    )
    return {
        "hostnames": hostnames,
        "run": os.path.join(out_dir, run_id) if run_id else runs[-1],
        "pauses_ms": paused,  # the straggler's pauses as they really took
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("out_dir", help="COMMTRACE_DIR: the run is written in a folder under it")
    parser.add_argument("--run-id", help="COMMTRACE_RUN_ID: the run folder's name (default: the recorder's)")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--culprit", type=int)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="ddp")
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--shift-ms", type=float, default=400.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tag", help="names the lab's hosts lab<TAG>-host<i> (default: from the process id)")
    args = parser.parse_args()
    try:
        info = run(
            args.scenario,
            args.out_dir,
            args.run_id,
            args.hosts,
            args.culprit,
            args.workload,
            args.rate_mbit,
            args.delay_ms,
            args.shift_ms,
            args.seed,
            tag=args.tag,
        )
    except (RuntimeError, ValueError) as exc:
        print(f"lab.scenarios: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(info))


if __name__ == "__main__":
    main()
