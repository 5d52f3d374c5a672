"""Groups created right after ``init_process_group``, as DeepSpeed's ``initialize`` does.

Launch with torchrun: ``new_groups.py N``: the default group, then N groups of every rank made at
once, a barrier on each, and the default group destroyed. Every group's rendezvous goes through the
job's store while the recorder sets its trace up: a wait of the recorder's on torch's store client
held these up for 8-10 s. Each rank then writes $JOB_OUT/threads-<rank>.json: the threads still alive
after ``destroy_process_group``.
"""

import json
import os
import sys
import threading

import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    for _ in range(int(sys.argv[1])):
        group = dist.new_group(list(range(dist.get_world_size())))
        dist.barrier(group=group)
    rank = dist.get_rank()
    dist.destroy_process_group()
    if os.environ.get("JOB_OUT"):
        alive = sorted(t.name for t in threading.enumerate() if t.is_alive())
        with open(os.path.join(os.environ["JOB_OUT"], f"threads-{rank}.json"), "w") as fh:
            json.dump(alive, fh)


if __name__ == "__main__":
    main()
