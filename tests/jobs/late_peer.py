"""Rank 1 arrives late (sleeps) to an async all_reduce and to a send; rank 0 issued both at once.

python late_peer.py PORT DELAY_S
"""

import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank: int, port: str, delay: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dist.barrier()
    if rank == 1:
        time.sleep(delay)
    work = dist.all_reduce(torch.ones(1000), async_op=True)
    if rank == 0:
        time.sleep(delay / 10)  # do something else while the collective is in flight
    work.wait()
    if rank == 0:
        dist.irecv(torch.zeros(10), src=1).wait()
    else:
        time.sleep(delay)
        dist.send(torch.ones(10), dst=0)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], float(sys.argv[2])), nprocs=2)
