"""A hang: rank 2 never issues the default group's next all_reduce, so ranks 0 and 1 block in it.

Launch with torchrun (3 ranks). Each rank writes its pid to $JOB_OUT/pid<rank> when it reaches the
hang (rank 2 then sleeps; the others are inside the collective soon after).
"""

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    before = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank = dist.get_rank()
    t = torch.ones(64)
    for _ in range(before):
        dist.all_reduce(t)
    with open(os.path.join(os.environ["JOB_OUT"], f"pid{rank}"), "w") as fh:
        fh.write(str(os.getpid()))
    if rank == 2:
        time.sleep(600)  # never issues the next all_reduce
    dist.all_reduce(t)  # ranks 0 and 1 wait here for rank 2
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
