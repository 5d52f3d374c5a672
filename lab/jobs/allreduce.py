"""All-reduces of a large tensor between lab hosts (launched once per host by the lab, env://).

allreduce.py ITERATIONS MEGABYTES

The knobs of lab/jobs/knobs.py apply (a straggler, a shifted clock).
"""

import sys
import time

import knobs

knobs.shift_clock()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> None:
    iterations, megabytes = int(sys.argv[1]), float(sys.argv[2])
    dist.init_process_group("gloo")
    time.sleep(0.5)  # let the host's sampler take its first sample before the traffic
    t = torch.ones(int(megabytes * 1e6 / 4))
    for i in range(iterations):
        knobs.straggle(dist.get_rank(), i)
        dist.all_reduce(t)
    dist.barrier()  # no pause before destroy: the sampler's last look comes from destroy_process_group
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
