"""The analysis side on real traces, in an interpreter where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import WORLD, clean_env

NO_TORCH = "import sys; sys.modules['torch'] = None; from analysis.cli import main; sys.exit(main(sys.argv[1:]))"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], env=clean_env(), capture_output=True, text=True, timeout=120
    )


def test_summary_without_torch(spawned):
    proc = _cli("summary", str(spawned["run"]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["pg"], r["op"]): r for r in json.loads(proc.stdout)}
    assert rows[("0", "barrier")]["events"] == WORLD
    assert rows[("0", "all_reduce")]["ranks"] == WORLD
    total = sum(r["events"] for r in rows.values())
    assert total == len(spawned["rows"])


def test_bad_input_is_one_line_and_exit_2(tmp_path, spawned):
    for target, expected in (
        (tmp_path / "missing", "no such directory"),
        (tmp_path, "not a commtrace run directory"),
        (spawned["traces"], "it holds runs"),
    ):
        proc = _cli("summary", str(target))
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr


def test_unreadable_segment_is_reported_not_fatal(tmp_path, spawned):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(spawned["run"], run)
    victim = sorted(run.glob("rank=00001/collectives-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _cli("summary", str(run))
    assert proc.returncode == 0, proc.stderr
    assert f"warning: rank=00001/{victim.name}: skipped" in proc.stdout


def test_collectives_and_stragglers_without_torch(spawned):
    proc = _cli("collectives", str(spawned["run"]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {"pg", "op", "size_bucket", "algbw_gbps", "busbw_gbps", "p50_ms"} <= set(rows[0])
    proc = _cli("stragglers", str(spawned["run"]), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("rank,collectives,times_last")
    assert len(proc.stdout.splitlines()) == 1 + WORLD


def test_hangs_on_a_healthy_run(spawned):
    proc = _cli("hangs", str(spawned["run"]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"hangs": [], "desyncs": []}
    proc = _cli("hangs", str(spawned["run"]))
    assert "no hang and no desync" in proc.stdout


def test_sql_over_the_views(spawned):
    proc = _cli("sql", str(spawned["run"]), "SELECT count(DISTINCT rank) AS ranks FROM collectives", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"ranks": WORLD}]
    proc = _cli("sql", str(spawned["run"]), "SELECT nonsense FROM nowhere")
    assert proc.returncode == 2 and proc.stderr.startswith("analyze-trace: query failed:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_export_perfetto_trace(spawned, tmp_path):
    out = tmp_path / "trace.json"
    proc = _cli("export", str(spawned["run"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    trace = json.loads(out.read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(spawned["rows"])
    assert {e["pid"] for e in slices} == set(range(WORLD))
    assert all(e["dur"] >= 0 and e["ts"] >= 0 and e["name"] for e in slices)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {f"rank {r}" for r in range(WORLD)} <= {n.split(" (")[0] for n in names}
    assert any(e["ph"] == "C" for e in trace["traceEvents"])  # the host's loopback throughput
    before = out.read_bytes()
    again = _cli("export", str(spawned["run"]), "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and out.read_bytes() == before


def test_diagnose_json_on_a_real_healthy_run(spawned):
    proc = _cli("diagnose", str(spawned["run"]), "--format", "json", "--fail-on-problem")
    report = json.loads(proc.stdout)
    assert report["world_size"] == WORLD and report["hosts"]
    assert report["hangs"] == [] and report["desyncs"] == [] and report["dead_ranks"] == []
    # stragglers may be flagged on a busy 2-core machine; the exit code follows what was flagged
    assert proc.returncode == (1 if any(report[k] for k in ("stragglers", "packet_loss")) else 0)


def test_compare_cli_exit_codes(spawned):
    same = _cli("compare", str(spawned["run"]), str(spawned["run"]), "--fail-on-regression", "--format", "json")
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert report["collectives"] and not any(r["regression"] for r in report["collectives"])
    bad = _cli("compare", str(spawned["run"]), "/nonexistent/run")
    assert bad.returncode == 2 and "no such directory" in bad.stderr


def test_latency_and_steps_cli(spawned):
    proc = _cli("latency", str(spawned["run"]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    ops = {r["op"] for r in json.loads(proc.stdout)}
    assert "send/recv" in ops and "all_reduce" in ops
    proc = _cli("steps", str(spawned["run"]))
    assert proc.returncode == 0 and "no steps were marked" in proc.stdout


def test_progress_only_on_a_terminal(spawned):
    import os
    import select

    slow = "SELECT count(*) AS n FROM range(1000000000) t(i) WHERE i % 7 = 3"  # a couple of seconds
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", NO_TORCH, "sql", str(spawned["run"]), slow, "--format", "csv"],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        out, _ = proc.communicate(timeout=120)
        os.close(slave)
        slave = None
        seen = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0 and out.splitlines() == ["n", "142857143"]  # stdout holds the result only
    assert b"analyze-trace sql ..." in seen  # shown while the query ran, on the terminal only
    piped = _cli("sql", str(spawned["run"]), "SELECT 1 AS one", "--format", "csv")
    assert piped.stderr == ""
