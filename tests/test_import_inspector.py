"""NCCL Inspector logs imported as a commtrace run. The fixtures (tests/fixtures/inspector/make.py)
are written from the format NCCL's README documents, not by an NCCL run: an 8-rank job on two hosts,
three communicators, a slow rank, in verbose, plain and Prometheus form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis import diagnose, findings, formulas
from analysis.cli import main
from analysis.load import Run

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "inspector"
KNOWN = {"algbw": 277.210914, "busbw": 485.119099}  # the README's AllReduce: 17179869184 B, 8 ranks, 61974 us


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("inspector")
    out = {}
    for kind in ("verbose", "plain", "prometheus"):
        assert main(["import", "inspector", str(FIXTURES / kind), "-o", str(root / kind)]) == 0
        out[kind] = Run.open(root / kind)
    return out


def _records(kind: str) -> list[dict]:
    decoder, out = json.JSONDecoder(), []
    for path in sorted((FIXTURES / kind).iterdir()):
        text, at = path.read_text(), 0
        while at < len(text.rstrip()):
            obj, at = decoder.raw_decode(text, at)
            out.append(obj)
            while at < len(text) and text[at].isspace():
                at += 1
    return out


@pytest.mark.parametrize("kind", ["verbose", "plain", "prometheus"])
def test_the_readme_s_known_answer(runs, kind):
    (row,) = findings.collectives(runs[kind]).filter(op="all_reduce").to_dicts()
    assert row["algbw_GBps"] == pytest.approx(KNOWN["algbw"], rel=1e-3)
    assert row["busbw_GBps"] == pytest.approx(KNOWN["busbw"], rel=1e-3)


def test_every_record_s_bandwidth_from_the_imported_sizes_and_times_agrees_with_inspector_s(runs):
    """commtrace's S and bus factor over each rank's own device time, against the figures Inspector wrote."""
    run = runs["verbose"]
    mine = run.sql(f"""
        SELECT rank, pg, seq, {formulas.message_bytes_sql()} AS s, gpu_duration_ns, pg_size, family
        FROM (SELECT *, {formulas.family_sql("op")} AS family FROM collectives)
    """).to_dicts()
    by_key = {(r["rank"], r["pg"], r["seq"]): r for r in mine}
    records = _records("verbose")
    assert len(records) == len(by_key) == 240
    for rec in records:
        h, m, p = rec["header"], rec["metadata"], rec["coll_perf"]
        rank = m["pid"] - 40100  # the fixtures' processes: pid 40100 + global rank
        r = by_key[(rank, h["id"], p["coll_sn"])]
        algbw = r["s"] / r["gpu_duration_ns"]
        assert algbw == pytest.approx(p["coll_algobw_gbs"], rel=1e-3)
        assert algbw * formulas.bus_factor(r["family"], r["pg_size"]) == pytest.approx(p["coll_busbw_gbs"], rel=1e-3)


def test_processes_become_ranks_and_communicators_groups(runs):
    run = runs["plain"]
    assert run.world_size == 8 and run.hosts == ["node-a", "node-b"]
    assert {pg: sorted(r) for pg, r in run.members.items()} == {
        "0x7f8c496ae9f661": list(range(8)),
        "0x1ad2c00f111816": [0, 1, 2, 3],
        "0x2be62dedaa9764": [4, 5, 6, 7],
    }


def test_the_slow_rank_is_named_where_inspector_has_times_and_not_guessed_where_it_has_none(runs, capsys):
    (slow,) = diagnose.diagnose(runs["verbose"])["stragglers"]
    assert slow["rank"] == 5 and slow["host"] == "node-b"
    plain = diagnose.diagnose(runs["plain"])
    assert plain["stragglers"] == [] and "no_start_times" in plain["source"]["limits"]
    assert "no_start_times" not in runs["verbose"].source["limits"]
    assert main(["diagnose", str(runs["plain"].path)]) == 0
    said = capsys.readouterr().out
    assert "imported from NCCL Inspector v4.0" in said and "NCCL_INSPECTOR_DUMP_VERBOSE=1" in said


def test_prometheus_files_give_each_communicator_s_latest_collective(runs):
    run = runs["prometheus"]
    assert run.sql("SELECT count(*) AS n FROM collectives")["n"][0] == 16
    assert "prometheus" in run.source["limits"]


def test_lines_that_are_not_records_are_counted_and_a_file_of_none_is_one_line(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    good = (FIXTURES / "plain" / "node-a-pid40100.log").read_text().splitlines()
    (logs / "a.log").write_text("\n".join([good[0], "{not json", '{"header": 1}', "[" * 100_000, good[1]]) + "\n")
    assert main(["import", "inspector", str(logs), "-o", str(tmp_path / "run"), "--format", "json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["entries"] == 2 and done["skipped"] == 3
    (logs / "b.log").write_text('{"something": "else"}\n')
    assert main(["import", "inspector", str(logs), "-o", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "not an NCCL Inspector log" in err and err.count("\n") == 1
    assert not (tmp_path / "run2").exists()


COMMANDS = [
    ["summary"], ["collectives"], ["stragglers"], ["network"], ["latency"], ["steps"], ["hangs"],
    ["diagnose", "--format", "json"], ["sql", "SELECT count(*) FROM collectives"], ["watch", "--once"],
]  # fmt: skip


@pytest.mark.parametrize("kind", ["verbose", "plain", "prometheus", "flight_recorder_gloo"])
def test_every_command_reads_an_imported_run(runs, tmp_path, capsys, kind):
    """Where the source has no times, the commands say less, never fail."""
    if kind == "flight_recorder_gloo":
        fixture = Path(__file__).resolve().parent / "fixtures" / "flight_recorder" / "rank0.pickle"
        dumps = tmp_path / "dumps"
        dumps.mkdir()
        (dumps / "trace_rank_0").write_bytes(fixture.read_bytes())
        assert main(["import", "fr", str(dumps), "-o", str(tmp_path / "fr")]) == 0
        run = str(tmp_path / "fr")
    else:
        run = str(runs[kind].path)
    for command in COMMANDS:
        assert main([command[0], run, *command[1:]]) in (0, 1), command
    untimed = kind in ("plain", "flight_recorder_gloo")  # may have nothing to compare: said in one line, exit 2
    assert main(["compare", run, run]) in ((0, 2) if untimed else (0,))
    for command, out in (("export", "trace.json"), ("report", "report.html"), ("compact", "compacted")):
        assert main([command, run, "-o", str(tmp_path / out)]) == 0, command
    assert "Traceback" not in capsys.readouterr().err
