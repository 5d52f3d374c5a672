"""A small real model trained with DDP across the lab's hosts (one rank per host, gloo, env://).

    python lab/jobs/ddp_train.py [--steps 30] [--hidden 1024]

Knobs of the lab's scenarios, read from the environment (the job's, not the recorder's):
  LAB_SLEEP_RANK, LAB_SLEEP_MS  that rank computes this much longer before every other step
  LAB_CLOCK_SHIFT_MS            this process's wall clock reads that much ahead
"""

from __future__ import annotations

import os
import time

shift_ns = int(float(os.environ.get("LAB_CLOCK_SHIFT_MS", "0")) * 1e6)
if shift_ns:  # every wall-clock read in Python, the recorder's included, sees the shifted clock
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + shift_ns
    time.time = lambda: _time() + shift_ns / 1e9

import argparse  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sleepy = int(os.environ.get("LAB_SLEEP_RANK", "-1")) == rank
    pause_s = float(os.environ.get("LAB_SLEEP_MS", "0")) / 1e3
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(512, args.hidden),
        nn.ReLU(),
        nn.Linear(args.hidden, args.hidden),
        nn.ReLU(),
        nn.Linear(args.hidden, 10),
    )
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1.0)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        if sleepy and step % 2 == 1:
            time.sleep(pause_s)
        x = torch.randn(32, 512, generator=generator)
        y = torch.randint(0, 10, (32,), generator=generator)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
