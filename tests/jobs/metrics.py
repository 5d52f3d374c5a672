"""recorder.metrics() from a training loop, logged to TensorBoard by rank 0 (recorder.callbacks).

Launch with torchrun (2 ranks) under COMMTRACE_DIR. Each step: two all_reduces of 64 KiB (rank 1
waits --slow-ms before each step, so rank 0 waits for it in the first all_reduce of each step; the
second, which both issue at once, takes the transfer alone). Every 5 steps rank 0
logs the figures; at the end every rank flushes and writes metrics() (everything since its last
call) to $JOB_OUT/metrics<rank>.json.
"""

import json
import os
import sys
import time

import torch
import torch.distributed as dist

import recorder
from recorder.callbacks import TensorBoardLogger


def main() -> None:
    steps, slow_ms = int(sys.argv[1]), float(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = os.environ["JOB_OUT"]
    log = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        log = TensorBoardLogger(SummaryWriter(os.path.join(out, "tb")), every=5)
    grads = torch.ones(16384)
    assert recorder.metrics() is not None
    for step in range(steps):
        if rank == 1:
            time.sleep(slow_ms / 1e3)
        dist.all_reduce(grads)
        dist.all_reduce(grads)
        if log is not None:
            log(step)
    recorder.flush()
    with open(os.path.join(out, f"metrics{rank}.json"), "w") as fh:
        json.dump({"figures": recorder.metrics()}, fh)
    if log is not None:
        log.writer.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
