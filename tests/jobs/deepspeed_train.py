"""A small DeepSpeed training job that knows nothing about commtrace (the engine under OpenRLHF).

Launch with torchrun: ``deepspeed_train.py STAGES STEPS`` (STAGES e.g. ``0,1,2,3``). For each ZeRO
stage in turn, an MLP is trained for STEPS steps by an engine from ``deepspeed.initialize``, on
CPU over gloo, with DeepSpeed's comms logger on. Each rank writes $JOB_OUT/rank<R>.json: per
stage, the loss of every step (as exact hex floats), DeepSpeed's own count of each collective by
op and message size (its comms logger), and the stage's span on this rank's wall clock; and how
long start-up (to the first engine) and shutdown (``destroy_process_group`` to the end) took.
"""

import importlib
import json
import os
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import deepspeed.comm as ds_comm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def train(stage: int, steps: int, rank: int) -> list[str]:
    torch.manual_seed(stage)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "comms_logger": {"enabled": True, "prof_all": True, "verbose": False},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }
    # A torch optimizer: DeepSpeed's own (cpu_adam) would compile an extension on first use.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    generator = torch.Generator().manual_seed(1000 * stage + rank)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 64, generator=generator)
        y = torch.randint(0, 8, (8,), generator=generator)
        loss = nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item().hex())
    engine.destroy()
    return losses


def main() -> None:
    stages, steps = [int(s) for s in sys.argv[1].split(",")], int(sys.argv[2])
    # DeepSpeed's CPU backend compiles a shared-memory all_reduce (used by inference only) on its
    # first start on a machine, for a minute; training never calls it. (`deepspeed.comm.torch` as
    # an attribute is the torch module itself: import it by name.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    t0 = time.monotonic()
    deepspeed.init_distributed(dist_backend="gloo")
    rank = ds_comm.get_rank()
    logger = ds_comm.comms_logger
    out = {"stages": {}}
    for stage in stages:
        logger.comms_dict = {}
        began = time.time_ns()
        losses = train(stage, steps, rank)
        if "init_s" not in out:
            out["init_s"] = time.monotonic() - t0
        counts = {op: {str(size): v[0] for size, v in sizes.items()} for op, sizes in logger.comms_dict.items()}
        out["stages"][str(stage)] = {"losses": losses, "comms_logger": counts, "t0_ns": began, "t1_ns": time.time_ns()}
    t_exit = time.monotonic()
    ds_comm.destroy_process_group()
    out["exit_s"] = time.monotonic() - t_exit
    if os.environ.get("JOB_OUT"):
        with open(os.path.join(os.environ["JOB_OUT"], f"rank{rank}.json"), "w") as fh:
            json.dump(out, fh)


if __name__ == "__main__":
    main()
