"""All-reduces of a large tensor between lab hosts (launched once per host by the lab, env://).

lab_allreduce.py ITERATIONS MEGABYTES
"""

import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    iterations, megabytes = int(sys.argv[1]), float(sys.argv[2])
    dist.init_process_group("gloo")
    time.sleep(0.5)  # let the host's sampler take its first sample before the traffic
    t = torch.ones(int(megabytes * 1e6 / 4))
    for _ in range(iterations):
        dist.all_reduce(t)
    dist.barrier()  # no pause before destroy: the sampler's last look comes from destroy_process_group
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
