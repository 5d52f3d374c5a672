"""Groups created right after ``init_process_group``, as DeepSpeed's ``initialize`` does.

Launch with torchrun: ``new_groups.py N``: the default group, then N groups of every rank made at
once, a barrier on each, and the default group destroyed. Every group's rendezvous goes through the
job's store while the recorder sets its trace up: a wait of the recorder's on torch's store client
held these up for 8-10 s.
"""

import sys

import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    for _ in range(int(sys.argv[1])):
        group = dist.new_group(list(range(dist.get_world_size())))
        dist.barrier(group=group)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
