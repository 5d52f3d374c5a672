"""A small, ordinary DDP training script: it knows nothing about commtrace.

    COMMTRACE_DIR=traces torchrun --nproc-per-node 4 examples/train_ddp.py --steps 20

Trains a two-layer MLP on synthetic data with gloo (CPU), with a subgroup all_reduce of a metric
every few steps, so that the trace shows DDP's gradient buckets, broadcasts and a second group.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--bucket-mb", type=float, default=1.0)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    metrics = dist.new_group(list(range(0, world, 2)))  # even ranks share a metric

    generator = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        x = torch.randn(64, 256, generator=generator)
        y = torch.randint(0, 10, (64,), generator=generator)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        if step % 5 == 0 and rank % 2 == 0:
            dist.all_reduce(loss.detach().clone(), group=metrics)
    if rank == 0 and os.environ.get("VERBOSE"):
        print(f"final loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
