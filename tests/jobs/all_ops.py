"""A training-like script that issues every kind of operation once (or a known number of times).

It knows nothing about commtrace: tests run it with COMMTRACE_DIR set and compare the trace with
the operations below. Launch with torchrun (env://) or as ``python all_ops.py spawn WORLD PORT``.
Writes per-rank facts (final parameters, Flight Recorder dump) into $JOB_OUT.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc
import torch.multiprocessing as mp

DDP_STEPS = 3
SKIP = os.environ.get("ALL_OPS_SKIP", "")


def run(rank: int, world: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    t = torch.arange(1000, dtype=torch.float32) * (rank + 1)

    dist.all_reduce(t)  # all_reduce 4000 B
    dist.all_reduce(t, async_op=True).wait()  # all_reduce async
    outs = [torch.zeros(10) for _ in range(world)]
    dist.all_gather(outs, torch.ones(10))  # all_gather 40 B in
    gathered = torch.zeros(10 * world)
    dist.all_gather_into_tensor(gathered, torch.ones(10))  # all_gather_into_tensor
    dist.broadcast(t, src=world - 1)  # broadcast root=world-1
    dist.reduce(t, dst=0)  # reduce
    dist.all_to_all_single(torch.zeros(4 * world), torch.ones(4 * world))
    dist.all_to_all([torch.zeros(2) for _ in range(world)], [torch.ones(2) for _ in range(world)])
    g_out = [torch.zeros(5) for _ in range(world)] if rank == 0 else None
    dist.gather(torch.ones(5), g_out, dst=0)  # gather
    s_in = [torch.ones(6) for _ in range(world)] if rank == 0 else None
    dist.scatter(torch.zeros(6), s_in, src=0)  # scatter
    dist.reduce_scatter_tensor(torch.zeros(3), torch.ones(3 * world))
    dist.barrier()
    if "monitored" not in SKIP:
        dist.monitored_barrier()
    if rank == 0:
        dist.send(torch.ones(7), dst=1)
    elif rank == 1:
        dist.recv(torch.zeros(7), src=0)
    ops = [
        dist.P2POp(dist.isend, torch.ones(3), (rank + 1) % world),
        dist.P2POp(dist.irecv, torch.zeros(3), (rank - 1) % world),
    ]
    if "batch" not in SKIP:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    objs = [None] * world
    dist.all_gather_object(objs, {"rank": rank})
    dist.reduce_scatter(torch.zeros(3), [torch.ones(3) for _ in range(world)])
    dist.broadcast_object_list([{"from": 0}], src=0)
    dist.gather_object({"rank": rank}, [None] * world if rank == 0 else None, dst=0)
    dist.scatter_object_list([None], [{"to": r} for r in range(world)] if rank == 0 else None, src=0)
    if rank == 0:
        dist.send_object_list([{"hello": 1}], dst=1)
        dist.isend(torch.ones(9), dst=1).wait()
    elif rank == 1:
        dist.recv_object_list([None], src=0)
        dist.irecv(torch.zeros(9), src=0).wait()
    dist.all_reduce_coalesced([torch.ones(4), torch.ones(6)])

    sub = dist.new_group([r for r in range(world) if r % 2 == 1])  # odd ranks
    if rank % 2 == 1:
        dist.all_reduce(torch.ones(16), group=sub)

    r = fc.all_reduce(torch.ones(8), "sum", dist.group.WORLD)  # functional collective
    fc.wait_tensor(r)

    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(10, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(DDP_STEPS):
        opt.zero_grad()
        model(torch.randn(4, 10)).sum().backward()
        opt.step()

    out_dir = os.environ.get("JOB_OUT")
    if out_dir:
        params = [p.detach().tolist() for p in model.parameters()]
        facts = {"rank": rank, "params": params, "recorder_loaded": "recorder" in sys.modules}
        if os.environ.get("TORCH_FR_BUFFER_SIZE"):
            from torch._C._distributed_c10d import _dump_fr_trace_json

            facts["flight_recorder"] = json.loads(_dump_fr_trace_json(True, True))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(facts, fh)
    dist.destroy_process_group()
    # After a functional collective on gloo, torch 2.13 aborts during interpreter shutdown in about
    # one run in six, recorded or not ("terminate called without an active exception"): leave
    # directly, everything (the trace included) has been written by now.
    os._exit(0)


def _spawned(rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    run(rank, world)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "spawn":
        world = int(sys.argv[2])
        mp.spawn(_spawned, args=(world, sys.argv[3]), nprocs=world)
    else:
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
