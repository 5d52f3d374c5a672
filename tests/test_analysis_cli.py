"""The analysis side on real traces, in an interpreter where torch cannot be imported."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import ROOT, WORLD, clean_env

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
    assert proc.stdout.splitlines()[0].startswith("rank,collectives,times_last")  # columns are only added
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


def _two_group_run(path):
    """Two ranks: all_reduce on the default group, all_gather_into_tensor (1 KiB in, 2 KiB out) on a
    group made without a description, as DeepSpeed's cloned world group is."""
    from synthetic import T0, event, write_run

    rows = []
    for seq in range(8):
        base = T0 + seq * 10_000_000
        for rank in (0, 1):
            rows.append(event(rank, seq, "all_reduce", 2, 4096, 4096, base, base + 2_000_000))
            rows.append(
                event(rank, seq, "all_gather_into_tensor", 2, 1024, 2048, base + 5_000_000, base + 6_000_000, pg="1")
            )
    run = write_run(path, rows, 2)
    for rank in (0, 1):
        meta_path = run / f"rank={rank:05d}" / "rank-1-0000.json"
        meta = json.loads(meta_path.read_text())
        meta["process_groups"] = [
            {"pg": "0", "desc": "default_pg", "ranks": [0, 1], "size": 2},
            {"pg": "1", "desc": "undefined", "ranks": [0, 1], "size": 2},
        ]
        meta_path.write_text(json.dumps(meta))
    return run


def test_one_vocabulary_for_ops_sizes_groups_and_bandwidth(tmp_path):
    """summary and collectives name an op as it was called, with its nccl-tests family; both measure a
    message as nccl-tests' S (all_gather: the whole output); a group without a description is named by
    its ranks; bandwidth columns say GB/s, and the old names stay in JSON for scripts."""
    run = _two_group_run(tmp_path / "run")
    summary = {r["op"]: r for r in json.loads(_cli("summary", str(run), "--format", "json").stdout)}
    gather = summary["all_gather_into_tensor"]
    assert (gather["family"], gather["size_bytes"], gather["group"]) == ("all_gather", 2048, "ranks 0-1")
    assert gather["bytes_in"] == 8 * 2 * 1024  # kept for scripts: the inputs, summed
    assert summary["all_reduce"]["group"] == "default_pg"
    rows = {r["op"]: r for r in json.loads(_cli("collectives", str(run), "--format", "json").stdout)}
    gather = rows["all_gather_into_tensor"]
    assert (gather["family"], gather["size_bucket"], gather["group"]) == ("all_gather", 2048, "ranks 0-1")
    assert gather["algbw_GBps"] == gather["algbw_gbps"] == 2048 / 1_000_000  # 2 KiB in 1 ms
    assert gather["busbw_GBps"] == gather["busbw_gbps"] == 2048 / 1_000_000 / 2

    table = _cli("collectives", str(run)).stdout
    assert "algbw (GB/s)" in table and "busbw (GB/s)" in table and "size S from" in table and "total S" in table
    line = next(x for x in table.splitlines() if "all_gather_into_tensor" in x)
    assert line.split()[:5] == ["1", "ranks", "0-1", "all_gather_into_tensor", "all_gather"]
    assert "2 KiB" in line and "1 ms" in line
    table = _cli("summary", str(run)).stdout
    assert "median size S" in table and "S = the message size as nccl-tests defines it" in table
    line = next(x for x in table.splitlines() if "all_gather_into_tensor" in x)
    assert "2 KiB" in line and "32 KiB" in line  # S per call, and 16 calls' worth


def test_text_output_says_each_finding_in_a_sentence():
    """A slow and lossy link is one finding that says both, with its figures in the units people use;
    the JSON keeps its lists and gains the sentences."""
    run = str(ROOT / "sample_traces" / "lossy")
    proc = _cli("diagnose", run)
    assert proc.returncode == 0, proc.stderr
    findings = [line for line in proc.stdout.splitlines() if line.startswith("  - ")]
    assert len(findings) == 1, proc.stdout
    assert findings[0].startswith("  - link: labs-host1 eth0: a slow and lossy link: the probe measured ")
    assert "Mbit/s to and from its peers" in findings[0] and "Gbit/s" in findings[0]
    assert "% of the bytes its 4 TCP connections of the job sent were retransmitted" in findings[0]
    report = json.loads(_cli("diagnose", run, "--format", "json").stdout)
    assert [x["host"] for x in report["slow_links"]] == [x["host"] for x in report["packet_loss"]] == ["labs-host1"]
    (link,) = report["findings"]
    assert (link["kind"], link["host"], link["slow"], link["lossy"]) == ("link", "labs-host1", True, True)


def test_stragglers_table_says_who_is_flagged_and_why():
    straggler = _cli("stragglers", str(ROOT / "sample_traces" / "straggler")).stdout
    rows = {int(line.split()[0]): line for line in straggler.splitlines() if line[:4].strip().isdigit()}
    # the sample's straggler pauses 100 ms before every other all_reduce
    assert "  yes  " in rows[0] and re.search(r"a slow rank: spent 10\d ms \(±\d+ µs\) more outside", rows[0])
    assert "in 10 of 26 steps" in rows[0]
    assert all("  no  " in rows[r] and "no longer outside communication than the others" in rows[r] for r in (1, 2))
    assert "A straggler has z above 5" in straggler
    # behind a lossy link, lateness is the link's: the table says which gate a late rank did not pass
    lossy = json.loads(_cli("stragglers", str(ROOT / "sample_traces" / "lossy"), "--format", "json").stdout)
    assert not any(r["flagged"] for r in lossy) and all(r["verdict"] for r in lossy)


def test_csv_of_every_sample_for_hangs_and_diagnose():
    """Lists (rank lists, evidence) do not break CSV: one line per finding, exit 0."""
    for sample in ("healthy", "lossy", "slow-link", "straggler", "sweep", "sweep-slow-link"):
        run = str(ROOT / "sample_traces" / sample)
        for command in ("hangs", "diagnose"):
            proc = _cli(command, run, "--format", "csv")
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, (sample, command, proc.stderr)


def test_csv_of_nested_values_from_sql():
    """A query's lists and structs reach CSV as text, not a traceback."""
    query = "SELECT rank, list(seq ORDER BY seq) AS seqs, {'n': count(*)} AS counted FROM collectives GROUP BY rank"
    proc = _cli("sql", str(ROOT / "sample_traces" / "healthy"), query, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "rank,seqs,counted" and len(lines) == 4
    assert lines[1].split(",")[1].startswith("0 1 2 ") and '""n"":' in lines[1]
