"""A desync gloo does not notice: at the default group's 4th collective, rank 2 of 3 all_reduces 512
float16 elements where the others all_reduce 256 float32 ones. The byte counts agree, so the
collective completes, and every rank carries on with a wrong sum.

Launch with torchrun (3 ranks). Each rank writes the outcome of that collective to $JOB_OUT/rank<R>.
"""

import os

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for _ in range(3):
        dist.all_reduce(torch.ones(256))
    t = torch.ones(512, dtype=torch.float16) if rank == 2 else torch.ones(256)
    outcome = "completed"
    try:
        dist.all_reduce(t)
    except Exception as exc:
        outcome = type(exc).__name__
    with open(os.path.join(os.environ["JOB_OUT"], f"rank{rank}"), "w") as fh:
        fh.write(f"{outcome} {float(t[0])}")
    for _ in range(2):
        dist.all_reduce(torch.ones(256))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
