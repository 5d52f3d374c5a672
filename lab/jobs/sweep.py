"""A collective sweep like nccl-tests: several ops at several message sizes (one rank per lab host).

    python lab/jobs/sweep.py [--min-bytes 1024] [--max-bytes 4194304] [--iters 5]

Each (op, size) runs ``--iters`` times after one warm-up. Ops: all_reduce, all_gather_into_tensor,
reduce_scatter_tensor, broadcast, all_to_all_single. The knobs of lab/jobs/knobs.py apply.
"""

from __future__ import annotations

import knobs

knobs.shift_clock()

import argparse  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-bytes", type=int, default=1024)
    parser.add_argument("--max-bytes", type=int, default=4 << 20)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    size, k = args.min_bytes, 0
    while size <= args.max_bytes:
        n = max(size // 4 // world * world, world)
        full, shard = torch.ones(n), torch.ones(n // world)
        ops = {
            "all_reduce": lambda f=full: dist.all_reduce(f),
            "all_gather_into_tensor": lambda f=full, s=shard: dist.all_gather_into_tensor(f, s),
            "reduce_scatter_tensor": lambda f=full, s=shard: dist.reduce_scatter_tensor(s, f),
            "broadcast": lambda f=full: dist.broadcast(f, src=0),
            "all_to_all_single": lambda f=full: dist.all_to_all_single(torch.empty_like(f), f),
        }
        for op in ops.values():
            for _ in range(args.iters + 1):
                knobs.straggle(rank, k)
                k += 1
                op()
        size *= 4
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
