"""A small real model trained with DDP across the lab's hosts (one rank per host, gloo, env://).

    python lab/jobs/ddp_train.py [--steps 30] [--hidden 1024] [--data-ms 0]

``--data-ms``: each step first waits this long for its batch (an input pipeline's wait, the same on
every rank): a step time that the lab's shared cores do not make noisy, against which a straggler's
extra time is a known share.

The knobs of lab/jobs/knobs.py apply (a straggler, a shifted clock).
"""

from __future__ import annotations

import knobs

knobs.shift_clock()

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--data-ms", type=float, default=0.0)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
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
        time.sleep(args.data_ms / 1e3)
        knobs.straggle(rank, step)
        x = torch.randn(32, 512, generator=generator)
        y = torch.randint(0, 10, (32,), generator=generator)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
