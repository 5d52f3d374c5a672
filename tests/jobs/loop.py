"""Collectives in a loop until killed (or for --seconds): for crash and signal tests.

Launch with torchrun. Each rank writes its pid to $JOB_OUT/pid<rank> once the loop is running.
"""

import os
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    t = torch.ones(256)
    dist.all_reduce(t)
    out = os.environ.get("JOB_OUT")
    if out:
        with open(os.path.join(out, f"pid{rank}"), "w") as fh:
            fh.write(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        dist.all_reduce(t)
        time.sleep(0.005)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
