"""A 3-rank gloo job recorded by commtrace and by PyTorch's Flight Recorder at once, that desyncs and
then hangs, each rank dumping its Flight Recorder while the job is stuck.

Ops: eight all_reduces to which rank 1 comes 20 ms late (a slow rank); broadcast, all_gather,
all_gather_into_tensor, reduce, gather, scatter, barrier, a send/recv pair, an all_reduce on a
subgroup of ranks 0 and 1; then a desync gloo lets through (rank 2 all_reduces 512 float16 elements
where the others all_reduce 256 float32 ones: the byte counts agree); then a hang (rank 2 never
issues the last all_reduce; ranks 0 and 1 block in it).
A thread on every rank writes the rank's Flight Recorder dump, as torch pickles it and as JSON, to
$JOB_OUT/pickle/trace_rank_<rank> and $JOB_OUT/json/trace_rank_<rank>, DUMP_AFTER_S seconds after the
rank reached the hang, then $JOB_OUT/done<rank>; the test then ends the job.

Launch with torchrun (3 ranks), TORCH_FR_BUFFER_SIZE set.
"""

import datetime
import os
import threading
import time

import torch
import torch.distributed as dist


def dump(rank: int, after_s: float) -> None:
    time.sleep(after_s)
    c10d = torch._C._distributed_c10d
    out = os.environ["JOB_OUT"]
    for kind, data in (("pickle", c10d._dump_fr_trace()), ("json", c10d._dump_fr_trace_json())):
        os.makedirs(os.path.join(out, kind), exist_ok=True)
        with open(os.path.join(out, kind, f"trace_rank_{rank}"), "wb") as fh:
            fh.write(data)
    open(os.path.join(out, f"done{rank}"), "w").close()


def main() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    pair = dist.new_group([0, 1])
    t = torch.ones(64)
    for _ in range(8):
        if rank == 1:
            time.sleep(0.02)
        dist.all_reduce(t)
    dist.broadcast(t, src=1)
    dist.all_gather([torch.empty(64) for _ in range(world)], t)
    dist.all_gather_into_tensor(torch.empty(64 * world), t)
    dist.reduce(t, dst=0)
    dist.gather(t, [torch.empty(64) for _ in range(world)] if rank == 0 else None, dst=0)
    dist.scatter(t, [torch.ones(64) for _ in range(world)] if rank == 2 else None, src=2)
    dist.barrier()
    if rank == 0:
        dist.send(torch.ones(32), dst=1)
    elif rank == 1:
        dist.recv(torch.empty(32), src=0)
    if rank < 2:
        dist.all_reduce(torch.ones(128), group=pair)
    dist.all_reduce(torch.ones(512, dtype=torch.float16) if rank == 2 else torch.ones(256))  # the desync
    dist.all_reduce(t)
    threading.Thread(target=dump, args=(rank, float(os.environ.get("DUMP_AFTER_S", "3"))), daemon=True).start()
    if rank == 2:
        time.sleep(600)  # never issues the last all_reduce
    dist.all_reduce(t)  # ranks 0 and 1 wait here for rank 2
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
