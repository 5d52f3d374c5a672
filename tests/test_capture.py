"""Real multi-process gloo jobs, recorded with nothing but COMMTRACE_DIR set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import JOBS, WORLD, clean_env, free_port, load_events, rank_meta, run_dirs, run_job, torchrun

DDP_STEPS = 3  # as in jobs/all_ops.py
PARAMS = 10 * 10 + 10  # nn.Linear(10, 10): one DDP bucket


def _default(rows, rank):
    return [r for r in rows if r["rank"] == rank and r["pg"] == "0" and r["op"] not in ("send", "recv")]


def test_one_run_directory_with_every_rank(spawned):
    dirs = run_dirs(spawned["traces"])
    assert len(dirs) == 1
    names = sorted(p.name for p in dirs[0].iterdir() if p.is_dir())
    assert [n for n in names if n.startswith("rank=")] == [f"rank={r:05d}" for r in range(WORLD)]
    assert len([n for n in names if n.startswith("host=")]) == 1  # one sampler for the one host
    assert (dirs[0] / "run.json").exists()
    assert sorted(rank_meta(spawned["traces"])) == list(range(WORLD))


OBJECT_APIS = ("broadcast_object_list", "gather_object", "scatter_object_list")


def test_exact_counts_per_op_and_size_on_every_rank(spawned):
    for rank in range(WORLD):
        got = Counter((r["op"], r["count"]) for r in _default(spawned["rows"], rank) if r["api"] not in OBJECT_APIS)
        assert got == Counter(
            {
                ("all_reduce", 1000): 2,  # sync and async
                ("all_gather", 10): 1,
                ("all_gather_into_tensor", 10): 1,
                ("broadcast", 1000): 1,
                ("reduce", 1000): 1,
                ("all_to_all_single", 4 * WORLD): 1,
                ("all_to_all", 2 * WORLD): 1,
                ("gather", 5): 1,
                ("scatter", 6 * WORLD if rank == 0 else 0): 1,
                ("reduce_scatter_tensor", 3 * WORLD): 1,
                ("barrier", 0): 1,
                ("monitored_barrier", 0): 1,
                ("all_gather", 1): 2,  # all_gather_object's size exchange, DDP's verification
                ("all_gather", 24): 1,  # all_gather_object's payload (pickled dict)
                ("all_reduce_coalesced", 10): 1,
                ("reduce_scatter", 3 * WORLD): 1,
                ("all_reduce", 8): 1,  # functional collective
                ("broadcast", 6): 1,  # DDP: parameter shape verification
                ("broadcast", PARAMS): 1,  # DDP: module state sync at construction
                ("all_reduce", PARAMS): DDP_STEPS,  # DDP reducer: one bucket per step, from C++
                ("broadcast", 3): 1,  # DDP: bucket rebuild after the first step
                ("broadcast", 1): 1,
            }
        ), f"rank {rank}"


def test_object_collectives_are_labelled_with_their_api(spawned):
    # What torch 2.13 makes each object collective of (sizes first, then the pickled payload).
    expected = {
        "broadcast_object_list": ["broadcast", "broadcast"],
        "gather_object": ["all_gather", "gather"],
        "scatter_object_list": ["broadcast", "scatter", "scatter"],
    }
    for rank in range(WORLD):
        rows = sorted(_default(spawned["rows"], rank), key=lambda r: r["seq"])
        for api, ops in expected.items():
            assert [r["op"] for r in rows if r["api"] == api] == ops, (rank, api)
            assert all(r["root"] in (None, 0) for r in rows if r["api"] == api)


def test_byte_sizes_follow_nccl_tests(spawned):
    rows = _default(spawned["rows"], 1)
    by_op = {r["op"]: r for r in rows if r["api"] is None}
    assert by_op["all_gather_into_tensor"]["bytes_in"] == 40
    assert by_op["all_gather_into_tensor"]["bytes_out"] == 40 * WORLD
    assert by_op["reduce_scatter_tensor"]["bytes_in"] == 12 * WORLD
    assert by_op["reduce_scatter_tensor"]["bytes_out"] == 12
    assert by_op["broadcast"]["root"] == WORLD - 1 or any(r["root"] == WORLD - 1 for r in rows)
    gather = by_op["gather"]
    assert (gather["bytes_in"], gather["bytes_out"], gather["root"]) == (20, 0, 0)
    assert all(r["dtype"] == "float32" for r in rows if r["op"] == "all_reduce")


def test_seq_is_the_same_operation_on_every_member(spawned):
    by_key: dict[tuple, dict[int, dict]] = {}
    for r in spawned["rows"]:
        if r["op"] in ("send", "recv"):
            continue
        by_key.setdefault((r["pg"], r["seq"]), {})[r["rank"]] = r
    assert len(by_key) > 20
    for (pg, seq), ranks in by_key.items():
        members = set(range(WORLD)) if pg == "0" else {1, 3}
        assert set(ranks) == members, (pg, seq)
        assert len({r["op"] for r in ranks.values()}) == 1, (pg, seq)
        assert len({r["bytes_in"] for r in ranks.values() if r["op"] not in ("gather", "scatter")}) <= 1


def test_subgroup_membership(spawned):
    sub = [r for r in spawned["rows"] if r["pg"] != "0"]
    assert sorted(r["rank"] for r in sub) == [1, 3]
    assert {(r["pg_size"], r["op"], r["count"]) for r in sub} == {(2, "all_reduce", 16)}
    meta = rank_meta(spawned["traces"])[3]
    groups = {g["pg"]: g for g in meta["process_groups"]}
    assert groups[sub[0]["pg"]]["ranks"] == [1, 3]


def test_point_to_point_and_batch(spawned):
    p2p = [r for r in spawned["rows"] if r["op"] in ("send", "recv")]
    plain = {
        (r["rank"], r["op"], r["peer"], r["count"], r["async_op"])
        for r in p2p
        if r["api"] in ("send", "recv", "isend", "irecv")
    }
    assert plain == {
        (0, "send", 1, 7, False),
        (1, "recv", 0, 7, False),
        (0, "send", 1, 9, True),
        (1, "recv", 0, 9, True),
    }
    objects = [(r["rank"], r["op"], r["peer"]) for r in p2p if r["api"] in ("send_object_list", "recv_object_list")]
    assert sorted(objects) == [(0, "send", 1)] * 2 + [(1, "recv", 0)] * 2
    # The k-th send from 0 to 1 and the k-th receive on 1 from 0 are the same message.
    sends = sorted((r["seq"], r["count"]) for r in p2p if r["rank"] == 0 and r["op"] == "send" and r["peer"] == 1)
    recvs = sorted((r["seq"], r["count"]) for r in p2p if r["rank"] == 1 and r["op"] == "recv" and r["peer"] == 0)
    assert sends == recvs and len(sends) == 5
    batch = [r for r in p2p if r["api"] == "batch_isend_irecv"]
    assert len(batch) == 2 * WORLD
    for r in batch:
        expected_peer = (r["rank"] + 1) % WORLD if r["op"] == "send" else (r["rank"] - 1) % WORLD
        assert r["peer"] == expected_peer and r["count"] == 3 and r["async_op"]
    assert all(r["status"] == "ok" and r["t_end_ns"] is not None for r in p2p)


def test_completion_times(spawned):
    rows = spawned["rows"]
    assert all(r["status"] == "ok" for r in rows)
    assert all(r["t_end_ns"] >= r["t_start_ns"] for r in rows)
    asynchronous = [r for r in rows if r["async_op"]]
    assert len(asynchronous) >= WORLD * (DDP_STEPS + 4)
    assert all(r["t_end_ns"] > r["t_start_ns"] for r in asynchronous)


def test_ddp_reducer_is_seen_from_cpp(spawned):
    for rank in range(WORLD):
        reducer = [r for r in _default(spawned["rows"], rank) if r["op"] == "all_reduce" and r["count"] == PARAMS]
        assert len(reducer) == DDP_STEPS
        assert all(r["async_op"] and r["api"] is None for r in reducer)


def test_matches_flight_recorder(spawned):
    """Every collective PyTorch's Flight Recorder saw is in our log, same op and sizes, same order."""
    # gloo's Flight Recorder names some operations by the gloo algorithm that runs them.
    fr_name = {
        "all_reduce_coalesced": "all_reduce",
        "all_gather_into_tensor": "all_gather",
        "all_to_all_single": "all_to_all",
        "reduce_scatter_tensor": "all_reduce",
    }
    for rank in range(WORLD):
        fr = spawned["facts"][rank]["flight_recorder"]["entries"]
        for pg in {r["pg"] for r in spawned["rows"] if r["rank"] == rank}:
            theirs = [e for e in fr if e["process_group"][0] == pg and not e["is_p2p"]]
            ours = [
                r
                for r in spawned["rows"]
                if r["rank"] == rank and r["pg"] == pg and r["op"] not in ("send", "recv", "monitored_barrier")
            ]
            ours.sort(key=lambda r: r["seq"])
            expected = []
            for mine in ours:
                if mine["op"] == "reduce_scatter":  # gloo runs it as one all_reduce per member
                    expected += [("gloo:all_reduce", mine["count"] // mine["pg_size"])] * mine["pg_size"]
                else:
                    expected.append(("gloo:" + fr_name.get(mine["op"], mine["op"]), mine["count"]))
            seen = [(e["profiling_name"], sum(_numel(s) for s in e["input_sizes"])) for e in theirs]
            assert seen == expected, (rank, pg)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_clock_offsets_in_metadata(spawned):
    meta = rank_meta(spawned["traces"])
    assert meta[0]["clock"]["start"]["reference"] is True
    for rank in range(1, WORLD):
        start, end = meta[rank]["clock"]["start"], meta[rank]["clock"]["end"]
        # Same machine, same clock: the measured offset is within the round trip.
        assert abs(start["offset_ns"]) <= max(start["rtt_ns"], 200_000)
        assert 0 < start["rtt_ns"] < 50_000_000 and start["rounds"] == start["rounds_asked"] == 5
        assert end["rounds"] == 5 and end["measured_at_ns"] > start["measured_at_ns"]
        assert abs(end["offset_ns"]) <= max(end["rtt_ns"], 200_000)


def test_no_secrets_and_allow_listed_environment(spawned):
    for meta in rank_meta(spawned["traces"]).values():
        assert "COMMTRACE_DIR" in meta["env"] and "MASTER_PORT" in meta["env"]
        assert not any("SECRET" in k or k == "PATH" or k == "HOME" for k in meta["env"])


def test_torchrun_and_results_bitwise_identical(tmp_path: Path):
    """torchrun with only the variable set records every rank; training results do not change."""
    results = {}
    for mode in ("plain", "recorded"):
        out = tmp_path / mode
        out.mkdir()
        env = clean_env(JOB_OUT=str(out), SECRET_TOKEN="do-not-record-me")
        if mode == "recorded":
            env["COMMTRACE_DIR"] = str(tmp_path / "traces")
        run_job(torchrun(2, JOBS / "all_ops.py"), env)
        results[mode] = {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(2)}
    for r in range(2):
        assert results["plain"][r]["params"] == results["recorded"][r]["params"]
        assert results["plain"][r]["recorder_loaded"] is False
        assert results["recorded"][r]["recorder_loaded"] is True
    rows = load_events(tmp_path / "traces").to_pylist()
    assert {r["rank"] for r in rows} == {0, 1}
    assert len(run_dirs(tmp_path / "traces")) == 1
    for path in (tmp_path / "traces").rglob("*"):
        if path.is_file():
            assert b"do-not-record-me" not in path.read_bytes()


def test_async_end_is_completion_not_enqueue(tmp_trace):
    """An async all_reduce and an irecv end when the late peer's data has arrived, not when issued."""
    delay = 0.4
    run_job([str(JOBS / "late_peer.py"), free_port(), str(delay)], clean_env(COMMTRACE_DIR=str(tmp_trace)))
    rows = {(r["rank"], r["op"]): r for r in load_events(tmp_trace).to_pylist() if r["op"] != "barrier"}
    early = rows[(0, "all_reduce")]
    assert early["async_op"]
    assert (early["t_end_ns"] - early["t_start_ns"]) / 1e9 >= 0.9 * delay
    late = rows[(1, "all_reduce")]
    assert (late["t_end_ns"] - late["t_start_ns"]) / 1e9 < 0.5 * delay
    recv = rows[(0, "recv")]
    assert recv["async_op"] and recv["api"] == "irecv"
    assert (recv["t_end_ns"] - recv["t_start_ns"]) / 1e9 >= 0.9 * delay


def test_plain_calls_beside_a_labelled_call_in_another_thread(tmp_path: Path):
    """A thread's label is per thread: another thread's plain collectives, issued while it is inside
    a labelled call, are recorded without a label, and recording goes on."""
    out = tmp_path / "out.json"
    proc = run_job([str(JOBS / "label_threads.py"), str(out)], clean_env(TRACES=str(tmp_path / "traces")))
    assert json.loads(out.read_text())["still_recording"]
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[commtrace] WARNING")], proc.stderr
    rows = load_events(tmp_path / "traces").to_pylist()
    reduces = [r for r in rows if r["op"] == "all_reduce"]
    assert len(reduces) == 5 and all(r["api"] is None and r["status"] == "ok" for r in reduces)
    assert {r["api"] for r in rows if r["op"] == "broadcast"} == {"broadcast_object_list"}


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "plain"])
def test_callback_threads_keep_their_python_state(tmp_path: Path, recorded: bool):
    """gloo's worker threads keep one Python thread state while recording instead of one per callback
    (each fresh one costs an mmap and a munmap): a threading.local set in a callback there survives."""
    out = tmp_path / "out.json"
    env = clean_env(COMMTRACE_DIR=str(tmp_path / "traces")) if recorded else clean_env()
    run_job([str(JOBS / "async_callbacks.py"), free_port(), str(out)], env)
    facts = json.loads(out.read_text())
    assert facts["sum"] == 2.0**20  # 20 in-place sums of ones over 2 ranks
    counts = [calls for on_worker, calls in facts["seen"] if on_worker]
    assert len(counts) >= 10, facts["seen"]  # most callbacks ran on gloo's thread, as intended
    if recorded:
        assert max(counts) >= len(counts) // 2, counts  # one state per worker thread, reused
        assert len(load_events(tmp_path / "traces")) > 0
    else:  # torch without the recorder: a fresh state per call (what the test would see without the fix)
        assert max(counts) == 1, counts
