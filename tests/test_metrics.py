"""recorder.metrics(): this rank's and host's figures for the training loop's own dashboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import recorder
from analysis import formulas
from analysis.vocabulary import FAMILY
from conftest import JOBS, clean_env, run_job, torchrun
from recorder.schema import COLLECTIVE_SCHEMA
from recorder.tally import Reader, Totals, busy_ns, family
from synthetic import T0, event


def test_a_training_loop_logs_the_figures_to_tensorboard(tmp_path: Path):
    out, traces = tmp_path / "out", tmp_path / "traces"
    out.mkdir()
    steps = 40
    env = clean_env(COMMTRACE_DIR=str(traces), JOB_OUT=str(out), COMMTRACE_FLUSH_S="0.2")
    run_job(torchrun(2, JOBS / "metrics.py", str(steps), "20"), env)
    rank0 = json.loads((out / "metrics0.json").read_text())["figures"]
    rank1 = json.loads((out / "metrics1.json").read_text())["figures"]
    # Rank 1 took metrics() only before the loop and after it (with a flush): every all_reduce.
    assert rank1["all_reduce/count"] == 2 * steps
    for figures in (rank0, rank1):
        assert figures["all_reduce/busbw_GBps"] > 0 and 0 < figures["comm_share"] <= 1
        assert figures["all_reduce/max_latency_ms"] >= figures["all_reduce/latency_ms"] > 0
        assert figures["dropped_events"] == 0
    # Rank 1 sleeps 20 ms before each step: rank 0 waits for it in each step's first all_reduce (the
    # second, issued by both at once, is the transfer alone: its shortest), rank 1 hardly ever.
    assert rank0["all_reduce/wait_ms"] > 5 > rank1["all_reduce/wait_ms"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"commtrace/all_reduce/count", "commtrace/all_reduce/busbw_GBps", "commtrace/comm_share"} <= set(
        events.Tags()["scalars"]
    )
    counts = events.Scalars("commtrace/all_reduce/count")
    assert {c.step for c in counts} <= set(range(0, steps, 5)) and len(counts) >= 3
    # Each all_reduce is in exactly one interval: the ones logged every 5 steps and the last one.
    assert sum(c.value for c in counts) + rank0["all_reduce/count"] == 2 * steps


def test_nothing_recorded_is_an_empty_dict():
    assert not recorder.is_enabled()
    assert recorder.metrics() == {}


def _rows(spans: list[tuple[int, int]], op: str = "all_reduce", nbytes: int = 1 << 20, pg_size: int = 4) -> pa.Table:
    rows = [event(0, i, op, pg_size, nbytes, nbytes, T0 + s, T0 + e) for i, (s, e) in enumerate(spans)]
    return pa.Table.from_pylist(rows, schema=COLLECTIVE_SCHEMA)


def test_busy_time_counts_overlapping_operations_once():
    start = np.array([0, 5, 20, 22, 40])
    end = np.array([10, 8, 30, 25, 41])
    assert busy_ns(start, end) == 10 + 10 + 1


def test_figures_are_the_interval_since_the_last_call():
    totals = Totals()
    reader = Reader(totals)
    # 4 all_reduces of 1 MiB in a 4-rank group: 2 ms each except one of 10 ms (it waited 8 ms).
    totals.add(_rows([(0, 2_000_000), (3_000_000, 5_000_000), (6_000_000, 16_000_000), (20_000_000, 22_000_000)]))
    figures = reader.read(dropped=3, host=None)
    assert figures["all_reduce/count"] == 4
    assert figures["all_reduce/latency_ms"] == pytest.approx(4.0)
    assert figures["all_reduce/max_latency_ms"] == pytest.approx(10.0)
    assert figures["all_reduce/wait_ms"] == pytest.approx(2.0)  # 8 ms of waiting over 4
    bus = 4 * (1 << 20) * formulas.bus_factor("all_reduce", 4)
    assert figures["all_reduce/busbw_GBps"] == pytest.approx(bus / 16_000_000)
    assert figures["comm_busy_s"] == pytest.approx(0.016) and figures["dropped_events"] == 3
    totals.add(_rows([(30_000_000, 31_000_000)], op="all_gather_into_tensor"))
    host = dict.fromkeys(("rx_bytes", "tx_bytes", "errors", "drops", "retrans_segs", "timeouts"), 0)
    host.update(t_ns=10**9, out_segs=100)
    figures = reader.read(dropped=3, host=host)
    assert "all_reduce/count" not in figures and figures["all_gather_into_tensor/count"] == 1
    assert figures["dropped_events"] == 0 and "host/rx_Bps" not in figures  # the host's first look
    later = {**host, "t_ns": 3 * 10**9, "tx_bytes": 4 * 10**9, "out_segs": 300, "retrans_segs": 4, "drops": 2}
    figures = reader.read(dropped=3, host=later)
    assert figures["host/tx_Bps"] == pytest.approx(2e9) and figures["host/tcp_retrans_pct"] == pytest.approx(2.0)
    assert figures["host/drops"] == 2


def test_op_families_and_sizes_agree_with_the_analysis():
    assert {op: family(op) for op in FAMILY} == FAMILY
    for op in FAMILY:
        totals = Totals()
        totals.add(_rows([(0, 1_000_000)], op=op, nbytes=4096, pg_size=8))
        bus_bytes = totals.ops[op][1]
        size = {"all_gather": 4096, "gather": 4096 * 8, "scatter": 4096 * 8}.get(FAMILY[op], 4096)
        assert bus_bytes == pytest.approx(size * formulas.bus_factor(FAMILY[op], 8)), op
