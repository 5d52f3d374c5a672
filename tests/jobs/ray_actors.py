"""Ray actors training together over gloo, as OpenRLHF launches them; nothing here knows commtrace.

``ray_actors.py WORLD PORT OUT``: a local Ray instance, WORLD actors, each calling
``init_process_group("gloo")`` with its rank (the driver hands out ranks and the rendezvous address,
as OpenRLHF's actor groups do), training a small DDP model for a few steps, and destroying the
group. The driver writes OUT: each actor's pid and final parameters.
"""

import json
import sys

import ray


@ray.remote
class Trainer:
    def __init__(self, rank: int, world: int, port: int) -> None:
        self.rank, self.world, self.port = rank, world, port

    def train(self, steps: int) -> dict:
        import os

        import torch
        import torch.distributed as dist
        from torch import nn

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{self.port}", rank=self.rank, world_size=self.world
        )
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(self.rank)
        for _ in range(steps):
            x = torch.randn(8, 16, generator=generator)
            y = torch.randint(0, 4, (8,), generator=generator)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        dist.barrier()
        dist.destroy_process_group()
        params = [p.detach().flatten().tolist() for p in model.parameters()]
        return {"pid": os.getpid(), "params": params}


def main() -> None:
    world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ray.init(num_cpus=world, include_dashboard=False, log_to_driver=True)
    actors = [Trainer.remote(rank, world, port) for rank in range(world)]
    results = ray.get([a.train.remote(10) for a in actors])
    ray.shutdown()
    with open(out, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
