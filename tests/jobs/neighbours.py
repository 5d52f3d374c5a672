"""A small torchrun job for the restart, second-job and DataLoader-worker tests.

    torchrun ... neighbours.py OPS [--fail-first-attempt] [--loader]

Each rank issues OPS all_reduces (one per batch with ``--loader``, whose batches come from a
DataLoader with 2 forked worker processes) and a barrier. With ``--fail-first-attempt``, rank 1 of
torchrun's first attempt exits with code 3 after the barrier, so the agent restarts the group
(``--max-restarts``). The default group's store is prefixed by the attempt, as a job that restarts
under the agent's shared store must do: gloo's connection keys of the failed attempt would
otherwise still be there. Writes $JOB_OUT/rank{R}-attempt{A}.json: pid, the loader workers' pids,
the final sum, whether pandas was imported.
"""

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset


class Pids(Dataset):
    """Each item says which process made it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return torch.tensor([float(os.getpid())])


def main() -> None:
    ops, fail_first, loader = int(sys.argv[1]), "--fail-first-attempt" in sys.argv, "--loader" in sys.argv
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=datetime.timedelta(seconds=60),
    )
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt-{attempt}", store), rank=rank, world_size=world)
    t, workers = torch.ones(100), set()
    if loader:
        data = DataLoader(Pids(ops), batch_size=1, num_workers=2, multiprocessing_context="fork")
        for batch in data:
            workers.add(int(batch.item()))
            dist.all_reduce(t)
    else:
        for _ in range(ops):
            dist.all_reduce(t)
    dist.barrier()
    dist.destroy_process_group()  # a recorder writes its last segments, samples and probe here
    facts = {"pid": os.getpid(), "workers": sorted(workers), "sum": float(t[0]), "pandas": "pandas" in sys.modules}
    with open(os.path.join(os.environ["JOB_OUT"], f"rank{rank}-attempt{attempt}.json"), "w") as fh:
        json.dump(facts, fh)
    if fail_first and attempt == 0 and rank == 1:
        sys.exit(3)


if __name__ == "__main__":
    main()
