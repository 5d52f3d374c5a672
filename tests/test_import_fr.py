"""Flight Recorder dumps imported as a commtrace run: one real gloo job recorded by commtrace and by
Flight Recorder at once (a late rank, a desync, a hang, dumps taken while the job is stuck) gives the
same events and the same verdicts both ways, and the verdicts torchfrtrace gives on the same dumps,
plus what torchfrtrace cannot say (the late rank, the stuck call's stack). Hostile and broken dumps
get one line and exit 2."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from analysis import diagnose, flightrec, frcolumns, frentries, vocabulary
from analysis.cli import main
from analysis.load import Run
from conftest import JOBS, clean_env, run_dirs, start_job, torchrun


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[str, Path]:
    """The job of tests/jobs/flight_recorder.py, ended once every rank dumped its Flight Recorder."""
    root = tmp_path_factory.mktemp("fr")
    traces, out = root / "traces", root / "out"
    out.mkdir()
    env = clean_env(
        COMMTRACE_DIR=str(traces),
        JOB_OUT=str(out),
        COMMTRACE_SAMPLE_HZ="0",
        COMMTRACE_FLUSH_S="0.2",
        COMMTRACE_HANG_DUMP_S="1",
        TORCH_FR_BUFFER_SIZE="2000",
        DUMP_AFTER_S="2.5",
    )
    proc = start_job(torchrun(3, JOBS / "flight_recorder.py"), env)
    try:
        deadline = time.monotonic() + 120
        while not all((out / f"done{r}").exists() for r in range(3)):
            assert proc.poll() is None, f"the job ended early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the ranks did not dump their Flight Recorder"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    (recorded,) = run_dirs(traces)
    runs = {"recorded": recorded, "pickle": root / "from-pickle", "json": root / "from-json", "dumps": out}
    for kind in ("pickle", "json"):
        assert main(["import", "fr", str(out / kind), "-o", str(runs[kind])]) == 0
    return runs


def _events(run: Path) -> set[tuple]:
    """Each rank's collectives (send/recv left out: gloo's Flight Recorder does not record them), by
    family: Flight Recorder names gloo's all_gather_into_tensor all_gather."""
    rows = duckdb.sql(f"""
        SELECT DISTINCT rank, pg, seq, op, bytes_in, bytes_out, dtype, status
        FROM read_parquet('{run}/rank=*/*.parquet', union_by_name = true, hive_partitioning = false)
    """).fetchall()
    return {(r, pg, seq, vocabulary.FAMILY.get(op, op), b_in, b_out, dtype, status)
            for r, pg, seq, op, b_in, b_out, dtype, status in rows if op not in vocabulary.P2P_OPS}  # fmt: skip


def test_the_imported_run_holds_the_recorder_s_events_seq_by_seq(job):
    recorded = _events(job["recorded"])
    assert len(recorded) > 50
    assert _events(job["pickle"]) == recorded
    assert _events(job["json"]) == recorded


def _verdicts(report: dict) -> tuple:
    hangs = [(h["pg"], h["seq"], h["op"], h["missing_ranks"], h["stuck_ranks"]) for h in report["hangs"]]
    desyncs = [(d["pg"], d["seq"], d["culprit_rank"], d["kind"]) for d in report["desyncs"]]
    return hangs, desyncs


def test_hang_and_desync_verdicts_agree_with_the_recorder_s_own_run(job):
    recorded = diagnose.diagnose(Run.open(job["recorded"]))
    assert _verdicts(recorded) == ([("0", 17, "all_reduce", [2], [0, 1])], [("0", 15, 2, "dtype")])
    for kind in ("pickle", "json"):
        assert _verdicts(diagnose.diagnose(Run.open(job[kind]))) == _verdicts(recorded)


def test_verdicts_agree_with_torchfrtrace_on_the_same_dumps(job, tmp_path):
    """torchfrtrace cannot read gloo's dumps as torch writes them (gloo leaves pg_config empty, and
    it fails with a KeyError); it reads a copy given the pg_config ProcessGroupNCCL would write.
    Its sequence numbers count from 1, commtrace's from 0."""
    fails = _torchfrtrace(job["dumps"] / "pickle")
    assert fails.returncode != 0 and "KeyError" in fails.stderr
    given = tmp_path / "given"
    given.mkdir()
    for rank in range(3):
        with open(job["dumps"] / "pickle" / f"trace_rank_{rank}", "rb") as fh:
            dump = pickle.load(fh)  # the test's own job wrote it
        dump["pg_config"] = {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1, 2]"}}
        if rank < 2:
            dump["pg_config"]["1"] = {"name": "1", "desc": "undefined", "ranks": "[0, 1]"}
        (given / f"trace_rank_{rank}").write_bytes(pickle.dumps(dump))
    said = _torchfrtrace(given)
    assert said.returncode == 0, said.stderr[-2000:]
    log = said.stdout + said.stderr
    errors = re.search(r"Collective sequence number: (\d+) has errors.*?Culprit rank (\d+)", log, re.S)
    missing = re.search(r"Not all ranks joining collective, sequence number: (\d+).*?missing ranks: \{([\d, ]+)\}", log, re.S)  # noqa: E501
    assert errors and missing, log[-3000:]
    hangs, desyncs = _verdicts(diagnose.diagnose(Run.open(job["pickle"])))
    assert (desyncs[0][1], desyncs[0][2]) == (int(errors[1]) - 1, int(errors[2]))
    assert (hangs[0][1], hangs[0][3]) == (int(missing[1]) - 1, [int(r) for r in missing[2].split(",")])


def _torchfrtrace(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.flight_recorder.fr_trace", str(folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_what_torchfrtrace_does_not_say_the_late_rank_and_the_stuck_call(job, capsys):
    report = diagnose.diagnose(Run.open(job["pickle"]))
    (late,) = report["stragglers"]
    assert late["rank"] == 1 and late["times_last"] >= 8
    (hang,) = report["hangs"]
    assert {s["rank"] for s in hang["stacks"]} == {0, 1}
    job_line = next(f for f in hang["stacks"][0]["frames"] if "flight_recorder.py" in f)
    source = (JOBS / "flight_recorder.py").read_text().splitlines()
    line = int(re.search(r":(\d+)\)$", job_line)[1])
    assert "ranks 0 and 1 wait here" in source[line - 1]
    assert main(["diagnose", str(job["pickle"]), "--fail-on-problem"]) == 1
    said = capsys.readouterr().out
    assert "imported from PyTorch Flight Recorder 2.10 (gloo)" in said and "no completion time" in said
    assert f"flight_recorder.py:{line})" in said
    assert main(["report", str(job["pickle"]), "-o", str(job["pickle"].parent / "report.html")]) == 0
    page = (job["pickle"].parent / "report.html").read_text()
    assert "Imported from PyTorch Flight Recorder 2.10 (gloo)" in page and "no start or completion time" in page


def test_json_and_pickle_dumps_say_the_same_but_only_the_pickle_has_stacks(job):
    a, b = Run.open(job["pickle"]), Run.open(job["json"])
    assert a.source["limits"] == b.source["limits"] and a.source["end_times"] is False
    assert all(s["frames"] for s in a.ranks[0]["stacks"]) and not any(s["frames"] for s in b.ranks[0]["stacks"])


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line_exit_2(capsys, argv: list[str], says: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_a_dump_that_would_run_code_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "trace_rank_0").write_bytes(pickle.dumps({"version": "2.10", "entries": [_RunsCode(marker)]}, protocol=2))
    _one_line_exit_2(capsys, ["import", "fr", str(dumps), "-o", str(tmp_path / "run")], "refused")
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dumps"]  # nothing half-written left behind


@pytest.mark.parametrize(
    "files, says",
    [
        ({"trace_rank_0": b'{"entries": []}'}, "not a Flight Recorder dump"),
        ({"trace_rank_0": b"\x80\x02}q\x00."}, "not a Flight Recorder dump"),
        ({"trace_rank_0": b"garbage"}, "neither a pickle nor JSON"),
        ({"trace_rank": b"{}"}, "does not end with its rank"),
        ({"a_1": b"{}", "b_1": b"{}"}, "are both rank 1's dump"),
    ],
    ids=["no version", "not a dict", "garbage", "no rank", "two rank 1"],
)
def test_broken_dumps_get_one_line(tmp_path, capsys, files, says):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for name, data in files.items():
        (dumps / name).write_bytes(data)
    _one_line_exit_2(capsys, ["import", "fr", str(dumps), "-o", str(tmp_path / "run")], says)
    assert not (tmp_path / "run").exists()


def test_an_existing_output_is_never_written_over(tmp_path, capsys):
    fixtures = Path(__file__).resolve().parent / "fixtures" / "flight_recorder"
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine").write_text("kept")
    _one_line_exit_2(capsys, ["import", "fr", str(fixtures / "rank0.json"), "-o", str(out)], "exists")
    assert [p.name for p in out.iterdir()] == ["mine"]
    assert main(["import", "fr", str(fixtures / "rank0.json"), "-o", str(tmp_path / "new"), "--format", "json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["ranks"] == 1 and done["entries"] == 4 and done["source"]["version"] == "2.10"


def _entry(record_id, pg, seq, name, sizes, state="completed", t=0, **extra):
    """One entry as ProcessGroupNCCL's Flight Recorder writes it (FlightRecorderDetail.hpp, version 2.10)."""
    return {
        "record_id": record_id, "pg_id": int(pg[0]), "process_group": list(pg), "collective_seq_id": seq,
        "p2p_seq_id": 0, "op_id": record_id + 1, "profiling_name": f"nccl:{name}", "time_created_ns": t,
        "input_sizes": sizes, "input_dtypes": ["BFloat16"] * len(sizes), "output_sizes": sizes,
        "output_dtypes": ["BFloat16"] * len(sizes), "state": state, "retired": state == "completed",
        "time_discovered_started_ns": t + 1000 if state != "scheduled" else None,
        "time_discovered_completed_ns": t + 5_000_000 if state == "completed" else None,
        "duration_ms": 4.0 if state == "completed" else None, "timeout_ms": 600000, "is_p2p": False,
        "frames": [{"name": "train_step", "filename": "train.py", "line": 42}], **extra,
    }  # fmt: skip


def _nccl_dumps(tmp_path: Path) -> Path:
    """NCCL-shaped dumps of 4 ranks: the default group and a "tp" group of ranks 2 and 3."""
    world, pair = ("0", "default_pg"), ("1", "tp")
    config = {
        "0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1, 2, 3]"},
        "1": {"name": "1", "desc": "tp", "ranks": "[2, 3]"},
    }
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    t0 = 1_700_000_000_000_000_000
    for rank in range(4):
        entries = []
        first = 3 if rank == 1 else 1  # rank 1's buffer wrapped past seqs 1 and 2
        for seq in range(first, 7):
            state = "started" if (seq == 6 and rank == 3) else "completed"
            entries.append(_entry(len(entries) + 10 * seq, world, seq, "all_reduce", [[1024]], state, t0 + seq * 10**8))
        if rank in (2, 3):
            entries.append(_entry(100, pair, 1, "all_reduce", [[8]], t=t0))
            entries.append(_entry(101, pair, 1, "all_reduce", [[16]], t=t0))
            entries.append(_entry(102, pair, 1, "coalesced", [], t=t0))
            name = "send 0->1" if rank == 2 else "recv 1<-0"
            entries.append(_entry(103, pair, 1, name, [[64]], t=t0, is_p2p=True))
        dump = {"version": "2.10", "pg_config": config, "pg_status": {}, "entries": entries}
        (dumps / f"nccl_trace_rank_{rank}").write_bytes(pickle.dumps(dump, protocol=2))
    return dumps


def test_nccl_dumps_ring_buffers_coalesced_groups_and_peers(tmp_path):
    """NCCL-shaped dumps: pg_config names the members, times are the watchdog's, a coalesced pair of
    all_reduces is one event, sends name their peers as global ranks, rank 1's ring buffer no longer
    holds the group's first collectives (not a hang), and rank 3 is still inside the last one."""
    dumps = _nccl_dumps(tmp_path)
    out = tmp_path / "run"
    assert main(["import", "fr", str(dumps), "-o", str(out)]) == 0
    run = Run.open(out)
    limits = run.source["limits"]
    assert "discovered_end" in limits and "aligned" in limits
    assert "members_seen" not in limits and "no_end_times" not in limits
    assert {pg: sorted(r) for pg, r in run.members.items()} == {"0": [0, 1, 2, 3], "1": [2, 3]}
    rows = {(r["rank"], r["pg"], r["op"]): r for r in run.sql("SELECT * FROM raw_collectives").to_dicts()}
    coalesced = rows[(2, "1", "all_reduce_coalesced")]
    assert coalesced["bytes_in"] == (8 + 16) * 2 and coalesced["coalesced"] and coalesced["seq"] == 0
    assert rows[(2, "1", "send")]["peer"] == 3 and rows[(3, "1", "recv")]["peer"] == 2
    done = rows[(0, "0", "all_reduce")]
    assert done["gpu_duration_ns"] == 4_000_000 and done["t_end_ns"] - done["t_start_ns"] == 5_000_000
    assert run.sql("SELECT min(seq) AS s FROM raw_collectives WHERE pg = '0'")["s"][0] == 2  # FR seq 3, from 0
    report = diagnose.diagnose(run)
    assert _verdicts(report) == ([("0", 5, "all_reduce", [], [3])], [])
    assert report["hangs"][0]["stacks"] == [{"rank": 3, "frames": ["train_step (train.py:42)"]}]


def _both_ways(dump: dict) -> tuple:
    """The events of one dump converted column by column and entry by entry."""
    config = frentries.config_groups(dump)
    fast, careful = frentries.Stats(), frentries.Stats()
    table, stacks = frcolumns.rank_table(0, dump, config, fast)
    rows = frentries.rank_rows(0, dump, config, careful)
    return (table, stacks, vars(fast)), (rows.table(), rows.meta["stacks"], vars(careful))


def test_the_column_by_column_conversion_gives_what_the_entry_by_entry_one_gives(job, tmp_path):
    dumps = sorted((job["dumps"] / "pickle").iterdir()) + sorted((job["dumps"] / "json").iterdir())
    dumps += sorted(_nccl_dumps(tmp_path).iterdir())
    for path in dumps:
        (table, stacks, stats), (expected, expected_stacks, expected_stats) = _both_ways(flightrec.read_dump(str(path)))
        assert table.equals(expected), path
        assert stacks == expected_stacks and stats == expected_stats, path


def test_a_dump_the_fast_conversion_does_not_take_is_read_entry_by_entry(tmp_path):
    dump = pickle.loads((_nccl_dumps(tmp_path) / "nccl_trace_rank_0").read_bytes())
    dump["entries"][1]["collective_seq_id"] = "two"  # a string where a number belongs
    dump["entries"][2]["input_sizes"] = [[1 << 62, 1 << 62]]  # a product past 64 bits
    with pytest.raises(frcolumns.Unusual):
        frcolumns.rank_table(0, dump, {}, frentries.Stats())
    dumps = tmp_path / "odd"
    dumps.mkdir()
    (dumps / "nccl_trace_rank_0").write_bytes(pickle.dumps(dump))
    assert main(["import", "fr", str(dumps), "-o", str(tmp_path / "run")]) == 0
    run = Run.open(tmp_path / "run")
    assert run.source["entries_skipped"] == 1
    assert run.sql("SELECT bytes_in FROM raw_collectives WHERE seq = 2")["bytes_in"][0] == 0  # out of range: 0
