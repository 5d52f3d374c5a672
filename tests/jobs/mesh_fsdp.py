"""DeviceMesh groups, DTensor and FSDP2 on CPU (gloo), knowing nothing about commtrace.

python mesh_fsdp.py PORT        # 4 ranks: a 2 x 2 mesh ("dp", "tp")
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 2
LAYERS = 2


def run(rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
    sharded = distribute_tensor(torch.arange(16.0).reshape(4, 4), mesh["tp"], [Shard(0)])
    full = sharded.redistribute(mesh["tp"], [Replicate()]).to_local()
    assert full.sum().item() == 120.0

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(LAYERS)))
    for layer in model:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(STEPS):
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(4, sys.argv[1]), nprocs=4)
