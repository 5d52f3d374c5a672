"""The CUDA path: NCCL works polled off the hot path and timed with CUDA events. Needs a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import recorder
from conftest import load_events

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs CUDA and NCCL"),
]


def test_nccl_collectives_get_device_time(tmp_path):
    with recorder.recording(tmp_path, clock_sync=False, flush_s=0.1):
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=torch.device("cuda", 0))
        t = torch.ones(1 << 24, device="cuda")
        for _ in range(10):
            dist.all_reduce(t)
        work = dist.all_reduce(t, async_op=True)
        work.wait()
        torch.cuda.synchronize()
        dist.destroy_process_group()
    rows = [r for r in load_events(tmp_path).to_pylist() if r["op"] == "all_reduce"]
    assert len(rows) == 11
    assert all(r["device"] == "cuda" and r["backend"] == "nccl" and r["status"] == "ok" for r in rows)
    assert all(r["t_end_ns"] >= r["t_start_ns"] for r in rows)
    assert all(r["gpu_duration_ns"] and r["gpu_duration_ns"] > 0 for r in rows)
    assert all(r["bytes_in"] == 4 << 24 for r in rows)
