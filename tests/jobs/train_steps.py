"""A small DDP training loop that knows nothing about commtrace, for the disk and failure tests.

Launch with torchrun; ``--steps`` steps of an MLP over gloo, then rank 0 writes the final parameters
to $JOB_OUT/params.json so that a recorded run can be compared with a plain one bit for bit.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        x = torch.randn(16, 32, generator=generator)
        y = torch.randint(0, 4, (16,), generator=generator)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    if rank == 0 and os.environ.get("JOB_OUT"):
        params = [p.detach().flatten().tolist() for p in model.parameters()]
        with open(os.path.join(os.environ["JOB_OUT"], "params.json"), "w") as fh:
            json.dump(params, fh)
    dist.barrier()  # every rank done with DDP's buckets before the group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
