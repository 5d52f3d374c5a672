"""The analysis survives whatever files it is given: one clear line and exit 2 where nothing can be
analysed, a partial analysis (with the problem listed) where something can, never a traceback.

The loader is fuzzed with hypothesis: segments cut short at any byte, bytes flipped, random bytes,
Parquet files of the wrong shape, broken metadata, newer schema versions, beside good segments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.cli import main
from synthetic import T0, event, write_run

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
GOOD = SAMPLES / "healthy"
SEGMENT = next(GOOD.glob("rank=00000/collectives-*.parquet")).read_bytes()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_clear_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("analyze-trace: "), err
    assert "Traceback" not in err


@st.composite
def damaged_segment(draw) -> bytes:
    """What a segment can look like after a crash, a bad copy, or a stranger's tool."""
    kind = draw(st.sampled_from(["cut", "flip", "random", "foreign", "wrong_types", "newer", "empty"]))
    if kind == "cut":
        return SEGMENT[: draw(st.integers(0, len(SEGMENT) - 1))]
    if kind == "flip":
        data = bytearray(SEGMENT)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=2048))
    sink = pa.BufferOutputStream()
    if kind == "foreign":  # a Parquet file, but not ours
        pq.write_table(pa.table({"x": list(range(draw(st.integers(0, 50))))}), sink)
    elif kind == "wrong_types":  # our metadata, our column names, nonsense types
        names = ["rank", "pg", "seq", "op", "bytes_in", "bytes_out", "t_start_ns", "t_end_ns", "status"]
        table = pa.table({n: pa.array([draw(st.text(max_size=5))]) for n in names})
        pq.write_table(table.replace_schema_metadata({"commtrace.schema_version": "1"}), sink)
    elif kind == "newer":
        table = pq.read_table(pa.BufferReader(SEGMENT))
        version = str(draw(st.integers(2, 10**6)))
        pq.write_table(table.replace_schema_metadata({"commtrace.schema_version": version}), sink)
    else:
        pq.write_table(pa.table({"rank": pa.array([], pa.int32())}), sink)
    return sink.getvalue().to_pybytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(damaged_segment(), min_size=1, max_size=3), metadata=st.binary(max_size=64) | st.none())
def test_fuzzed_segments_never_traceback(tmp_path_factory, capsys, segments, metadata):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(GOOD, run)
    rank_dir = run / "rank=00001"
    for i, data in enumerate(segments):
        (rank_dir / f"collectives-9-fuzz-{i:06d}.parquet").write_bytes(data)
    if metadata is not None:
        next(rank_dir.glob("rank-*.json")).write_bytes(metadata)
    for command in ("diagnose", "summary", "hangs"):
        code, out, err = _cli(capsys, command, str(run), "--format", "json")
        assert "Traceback" not in err
        assert code in (0, 1), (command, err)  # the good segments are still analysed
        if command == "diagnose":
            report = json.loads(out)
            assert report["world_size"] == 3
            # One damaged file may have several problems (rows outside the run, and a footer that
            # says otherwise): count the files named.
            named = {p.split(": ", 1)[0] for p in report["problems"] if "fuzz" in p}
            broken = [d for d in segments if d != SEGMENT]
            assert len(named) <= len(broken)


def test_only_damaged_segments_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "rank=00000").mkdir(parents=True)
    (run / "rank=00000" / "collectives-1-x-000000.parquet").write_bytes(SEGMENT[: len(SEGMENT) // 2])
    code, _, err = _cli(capsys, "diagnose", str(run))
    assert code == 2
    _one_clear_line(err)
    assert "no readable collective segments" in err and "not a readable Parquet file" in err


@pytest.mark.parametrize(
    "setup, says",
    [
        (lambda p: p.mkdir(), "no rank=* folders"),
        (lambda p: None, "no such directory"),
        (lambda p: p.write_text("not a directory"), "not a directory"),
        (lambda p: shutil.copytree(SAMPLES, p, ignore=shutil.ignore_patterns("*.md")), "it holds runs"),
    ],
    ids=["empty", "missing", "a file", "a directory of runs"],
)
def test_wrong_directory_is_one_line_and_exit_2(tmp_path, capsys, setup, says):
    target = tmp_path / "target"
    setup(target)
    for command in ("summary", "diagnose", "report"):
        extra = ["-o", str(tmp_path / "r.html")] if command == "report" else []
        code, _, err = _cli(capsys, command, str(target), *extra)
        assert code == 2, command
        _one_clear_line(err)
        assert says in err


def test_newer_schema_says_upgrade(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(GOOD, run)
    for path in run.glob("rank=*/collectives-*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({"commtrace.schema_version": "99"}), path)
    code, _, err = _cli(capsys, "diagnose", str(run))
    assert code == 2
    _one_clear_line(err)
    assert "newer than this analysis" in err and "upgrade commtrace" in err


def test_mixed_runs_in_one_directory_are_told_apart(tmp_path, capsys):
    """Two runs side by side under one COMMTRACE_DIR: each is its own run; their parent is not one."""
    for name in ("a", "b"):
        write_run(tmp_path / name, [event(r, 0, "all_reduce", 2, 64, 64, T0, T0 + 1000) for r in range(2)], 2)
    code, _, err = _cli(capsys, "summary", str(tmp_path))
    assert code == 2 and "it holds runs" in err
    code, out, _ = _cli(capsys, "summary", str(tmp_path / "a"), "--format", "json")
    assert code == 0 and json.loads(out)[0]["events"] == 2
