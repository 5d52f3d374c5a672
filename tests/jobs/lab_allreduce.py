"""All-reduces of a large tensor between lab hosts (launched once per host by the lab, env://).

lab_allreduce.py ITERATIONS MEGABYTES

For the lab's scenarios (these are the job's, not the recorder's settings):
  LAB_SLEEP_RANK, LAB_SLEEP_MS  that rank sleeps before every other all_reduce (a compute straggler)
  LAB_CLOCK_SHIFT_MS            this process's wall clock reads that much ahead (a host whose clock is off)
"""

import os
import sys
import time

shift_ns = int(float(os.environ.get("LAB_CLOCK_SHIFT_MS", "0")) * 1e6)
if shift_ns:  # every wall-clock read in Python, the recorder's included, sees the shifted clock
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + shift_ns
    time.time = lambda: _time() + shift_ns / 1e9

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> None:
    iterations, megabytes = int(sys.argv[1]), float(sys.argv[2])
    dist.init_process_group("gloo")
    sleepy = int(os.environ.get("LAB_SLEEP_RANK", "-1")) == dist.get_rank()
    pause_s = float(os.environ.get("LAB_SLEEP_MS", "0")) / 1e3
    time.sleep(0.5)  # let the host's sampler take its first sample before the traffic
    t = torch.ones(int(megabytes * 1e6 / 4))
    for i in range(iterations):
        if sleepy and i % 2 == 1:
            time.sleep(pause_s)
        dist.all_reduce(t)
    dist.barrier()  # no pause before destroy: the sampler's last look comes from destroy_process_group
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
