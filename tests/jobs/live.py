"""A training loop an operator changes while it runs, for the live-view tests (analyze-trace watch).

Launch with torchrun (4 ranks). Each step waits ``--data-ms`` for its batch (a sleep: steady on
shared cores), then two all_reduces (a gradient bucket and a loss). Files in $JOB_OUT switch
things on mid-run: ``slow`` makes rank 2 wait ``--slow-ms`` longer for each batch (a straggler);
``stop`` makes rank 3 stop issuing collectives (it sleeps; the others block in the next all_reduce).
The job runs until ``--seconds`` have passed or it is killed.
"""

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--data-ms", type=float, default=20.0)
    parser.add_argument("--slow-ms", type=float, default=30.0)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank = dist.get_rank()
    out = os.environ["JOB_OUT"]
    grads, loss = torch.ones(4096), torch.ones(1)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        wait = args.data_ms
        if rank == 2 and os.path.exists(os.path.join(out, "slow")):
            wait += args.slow_ms
        if rank == 3 and os.path.exists(os.path.join(out, "stop")):
            time.sleep(3600)  # never issues the next all_reduce
        time.sleep(wait / 1e3)
        dist.all_reduce(grads)
        dist.all_reduce(loss)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
