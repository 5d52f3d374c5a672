"""Async all_reduces with a user callback that counts, per thread, how often it ran in that thread's state.

A callback that runs on gloo's worker thread gets a Python thread state from pybind11 for the call;
``threading.local`` lives in that state, so the count shows whether the state outlived the call.

python async_callbacks.py PORT OUT_JSON
"""

import json
import os
import sys
import threading

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

OPS = 20


def run(rank: int, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    main, local, seen = threading.get_ident(), threading.local(), []

    def count(fut) -> None:
        local.calls = getattr(local, "calls", 0) + 1
        seen.append((threading.get_ident() != main, local.calls))

    t = torch.ones(1 << 20)
    for _ in range(OPS):
        dist.barrier()
        work = dist.all_reduce(t, async_op=True)  # 4 MB: still running when the callback is added
        work.get_future().add_done_callback(count)
        work.wait()
    dist.barrier()
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"seen": seen, "sum": float(t[0])}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
