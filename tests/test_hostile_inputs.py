"""Broken and hostile runs, one named case each: every one ends in exit 0 with the damage listed, or exit 2
with one line; never a traceback, a hang, an escape sequence on the terminal, or a write outside ``-o``.

Each run is a copy of ``sample_traces/healthy`` (or ``lossy``, which has NIC samples) with one thing
changed, as an attacker or an unlucky user would change it.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.cli import main
from conftest import ROOT, clean_env

SAMPLES = ROOT / "sample_traces"
COMMANDS = ("summary", "collectives", "stragglers", "hangs", "diagnose")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``analyze-trace`` in this process (a traceback fails the test as an exception)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _cli_process(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """``analyze-trace`` in a process of its own, for what might hang."""
    return subprocess.run(
        [sys.executable, "-m", "analysis.cli", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _copy(tmp_path: Path, sample: str = "healthy") -> Path:
    run = tmp_path / "run"
    shutil.copytree(SAMPLES / sample, run)
    return run


def _meta_path(run: Path, rank: int) -> Path:
    return Path(glob.glob(str(run / f"rank={rank:05d}" / "rank-*.json"))[0])


def _edit_meta(run: Path, rank: int, change) -> None:
    path = _meta_path(run, rank)
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _survives(run: Path, commands=COMMANDS, problem: str | None = None) -> None:
    """Every command: exit 0 with ``problem`` among the warnings (if given), or exit 2 with one line."""
    for command in commands:
        proc = _cli(command, str(run))
        assert "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])
        if proc.returncode == 2:
            assert len(proc.stderr.strip().splitlines()) == 1, (command, proc.stderr)
            continue
        assert proc.returncode == 0, (command, proc.returncode, proc.stderr[-2000:])
        assert "\x1b" not in proc.stdout
        if problem is not None and command != "diagnose":
            assert problem in proc.stdout, (command, proc.stdout[:2000])


# -- 2. query errors are the user's, at once, and drop nothing ---------------------------------------
def test_a_query_error_is_said_at_once_and_drops_no_segment(tmp_path):
    run = _copy(tmp_path)
    for k in range(40):  # many segments: bisecting them one by one is what took minutes
        for seg in (run / "rank=00000").glob("collectives-*.parquet"):
            shutil.copy(seg, run / "rank=00000" / f"collectives-9-copy-{k:06d}.parquet")
            break
    began = time.monotonic()
    proc = _cli("sql", str(run), "SELECT nosuchcol FROM collectives")
    assert time.monotonic() - began < 30
    assert proc.returncode == 2 and proc.stderr.startswith("analyze-trace: query failed: Binder Error")
    assert "skipped" not in proc.stdout and "unreadable" not in proc.stderr


def test_sizes_beyond_any_job_are_said_not_blamed_on_the_files(tmp_path):
    """Two segments whose bytes_in is 2^62: sums overflow 64 bits. That is the values' doing, not the
    files': no segment is dropped as unreadable (the old code dropped them silently and summed one
    rank), and the sums saturate."""
    run = _copy(tmp_path)
    for rank in (0, 1):
        seg = sorted((run / f"rank={rank:05d}").glob("collectives-*.parquet"))[0]
        table = pq.read_table(seg)
        huge = pa.array([1 << 62] * table.num_rows, pa.int64())
        table = table.set_column(table.schema.get_field_index("bytes_in"), "bytes_in", huge)
        pq.write_table(table.replace_schema_metadata(pq.read_metadata(seg).metadata), seg)
    _survives(run, ("summary", "collectives", "diagnose"))
    proc = _cli("summary", str(run), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(r["ranks"] == 3 for r in rows) and max(r["bytes_in"] for r in rows) == (1 << 63) - 1


# -- 3. metadata of the wrong type ---------------------------------------------------------------------
MUTATIONS = {
    "clock a string": lambda m: m.update(clock="s"),
    "clock.start not an object": lambda m: m["clock"].update(start=1),
    "offset_ns text": lambda m: m["clock"]["start"].update(offset_ns="x"),
    "offset_ns 10^30": lambda m: m["clock"]["start"].update(offset_ns=10**30),
    "offset_ns 8e18": lambda m: m["clock"]["start"].update(offset_ns=8 * 10**18),
    "rank 10^30": lambda m: m.update(rank=10**30),
    "a group rank 10^30": lambda m: m["process_groups"][0].update(ranks=[0, 10**30]),
    "process_groups a number": lambda m: m.update(process_groups=1),
    "world_size text": lambda m: m.update(world_size="x"),
    "dropped_events text": lambda m: m.update(dropped_events="many"),
    "host a list": lambda m: m.update(host=["a"]),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_metadata_of_the_wrong_type_is_left_out_and_said(tmp_path, mutation):
    run = _copy(tmp_path)
    _edit_meta(run, 1, MUTATIONS[mutation])
    _survives(run, ("summary", "diagnose"), problem="rank=00001/")
    if mutation in ("dropped_events text", "host a list"):  # what broke report (the property test runs it on any)
        proc = _cli("report", str(run), "-o", str(tmp_path / "report.html"))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_rank_offset_of_8e18_is_not_applied(tmp_path):
    from analysis import Run

    run = _copy(tmp_path)
    _edit_meta(run, 1, lambda m: m["clock"]["start"].update(offset_ns=8 * 10**18))
    loaded = Run.open(run)
    assert any("rank=00001/" in p and "offset_ns" in p for p in loaded.problems), loaded.problems
    assert "offset_ns" not in loaded.ranks[1]["clock"]["start"]


@pytest.mark.parametrize("content", ["[1]", '"s"', "42", "[" * 100_000 + "]" * 100_000, "NaN"])
def test_run_json_that_is_not_an_object(tmp_path, content):
    run = _copy(tmp_path)
    (run / "run.json").write_text(content)
    _survives(run, ("summary", "diagnose"), problem="run.json")


def test_rank_json_nested_too_deep(tmp_path):
    run = _copy(tmp_path)
    _meta_path(run, 2).write_text("[" * 100_000 + "]" * 100_000)
    _survives(run, ("summary", "diagnose"), problem="nested too deep")


# -- 4. numbers beyond any job ---------------------------------------------------------------------------
def test_a_world_size_of_a_billion_costs_nothing(tmp_path):
    run = _copy(tmp_path)
    for rank in (0, 1, 2):
        _edit_meta(run, rank, lambda m: m.update(world_size=10**9))
    began = time.monotonic()
    _survives(run, ("diagnose",))
    assert time.monotonic() - began < 30


def test_a_rank_of_999999_costs_nothing(tmp_path):
    run = _copy(tmp_path)
    _edit_meta(run, 2, lambda m: m.update(rank=999_999))
    began = time.monotonic()
    _survives(run, ("summary", "diagnose"))
    assert time.monotonic() - began < 30


# -- 6 and 7. names that are math text or terminal escapes -------------------------------------------
def test_math_text_in_names_draws_literally(tmp_path):
    run = _copy(tmp_path, "lossy")
    for rank in (0, 1, 2):
        _edit_meta(run, rank, lambda m: m.update(host="$\\frac{$"))
    (run / "run.json").write_text(json.dumps({"run_id": "$\\x$ run"}))
    for args in (["-o", str(tmp_path / "a.html")], ["--compare", str(run), "-o", str(tmp_path / "b.html")]):
        proc = _cli("report", str(run), *args)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_escape_sequences_in_names_never_reach_the_terminal(tmp_path):
    run = _copy(tmp_path)
    evil = "x\n\x1b[31mnothing flagged\x1b]0;pwned\x07"
    for rank in (0, 1, 2):
        _edit_meta(run, rank, lambda m: m.update(host=evil))
    for command in COMMANDS:
        proc = _cli(command, str(run))
        assert proc.returncode in (0, 1) and "\x1b" not in proc.stdout and "\x07" not in proc.stdout, command
        assert "\nnothing flagged" not in proc.stdout


# -- 8. a FIFO where a file should be --------------------------------------------------------------------
@pytest.mark.parametrize(
    "where",
    ["rank=00001/collectives-9-fifo-000000.parquet", "run.json", "rank=00001/rank-fifo.json", "host=h9/nic-9.parquet"],
)
def test_a_fifo_in_a_run_is_skipped_not_waited_on(tmp_path, where):
    run = _copy(tmp_path, "lossy")
    target = run / where
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    proc = _cli_process("diagnose", str(run), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not a regular file" in proc.stdout


# -- 9 and 10. output files ------------------------------------------------------------------------------
def test_a_planted_link_cannot_redirect_the_output(tmp_path):
    """The temporary name is unpredictable and created exclusively; a link at ``-o`` is refused
    without --force and replaced (not followed) with it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    out = tmp_path / "trace.json"
    (tmp_path / f"trace.json.{os.getpid()}.tmp").symlink_to(victim)  # the name the old scheme used
    assert main(["export", str(SAMPLES / "healthy"), "-o", str(out)]) == 0  # in this process: this pid
    assert victim.read_text() == "the user's own file" and not out.is_symlink()
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "nowhere")
    refused = _cli("export", str(SAMPLES / "healthy"), "-o", str(link))
    assert refused.returncode == 2 and "exists" in refused.stderr and link.is_symlink()
    forced = _cli("export", str(SAMPLES / "healthy"), "-o", str(link), "--force")
    assert forced.returncode == 0 and not link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_export_writes_strict_json(tmp_path):
    """A collective at t_start_ns = 0 and NIC samples nanoseconds apart: no NaN, no Infinity."""
    run = _copy(tmp_path, "lossy")
    seg = sorted((run / "rank=00000").glob("collectives-*.parquet"))[0]
    table = pq.read_table(seg)
    starts = table.column("t_start_ns").to_pylist()
    starts[0] = 0
    table = table.set_column(table.schema.get_field_index("t_start_ns"), "t_start_ns", pa.array(starts, pa.int64()))
    pq.write_table(table.replace_schema_metadata(pq.read_metadata(seg).metadata), seg)
    nic = sorted(run.glob("host=*/nic-*.parquet"))[0]
    table = pq.read_table(nic)
    base = table.column("t_ns")[0].as_py()
    table = table.set_column(0, "t_ns", pa.array([base + i for i in range(table.num_rows)], pa.int64()))
    pq.write_table(table.replace_schema_metadata(pq.read_metadata(nic).metadata), nic)
    out = tmp_path / "trace.json"
    assert _cli("export", str(run), "-o", str(out)).returncode == 0

    def refuse(constant):
        raise ValueError(constant)

    trace = json.loads(out.read_text(), parse_constant=refuse)
    assert trace["traceEvents"]


# -- sql: the user's queries read the run, and nothing else unless asked ---------------------------------
def test_sql_reads_the_run_and_nothing_else(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the trace's")
    run, written = str(SAMPLES / "healthy"), tmp_path / "written.csv"
    for query in (
        f"SELECT content FROM read_text('{secret}')",
        f"COPY (SELECT 1) TO '{written}'",
        f"ATTACH '{tmp_path / 'other.db'}'",
        "SET enable_external_access = true",
        "INSTALL httpfs",
    ):
        proc = _cli("sql", run, query)
        assert proc.returncode == 2 and proc.stderr.startswith("analyze-trace: query failed:"), (query, proc.stderr)
    assert not written.exists() and not (tmp_path / "other.db").exists()
    assert _cli("sql", run, "SELECT count(*) AS n FROM samples", "--format", "json").returncode == 0
    lifted = _cli("sql", run, f"SELECT content FROM read_text('{secret}')", "--allow-external-access")
    assert lifted.returncode == 0 and "not the trace's" in lifted.stdout


# -- 5. Parquet logical types and nulls where the recorder writes none -------------------------------
def _rewrite_column(seg: Path, column: str, make) -> None:
    table = pq.read_table(seg)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, make(table.column(column)))
    pq.write_table(table.replace_schema_metadata(pq.read_metadata(seg).metadata), seg)


@pytest.mark.parametrize(
    ("column", "make"),
    [
        ("t_start_ns", lambda c: c.cast(pa.timestamp("ns"))),
        ("t_start_ns", lambda c: c.cast(pa.timestamp("us"))),
        ("op", lambda c: c.cast(pa.binary())),
    ],
)
def test_a_segment_whose_columns_are_typed_otherwise_is_skipped(tmp_path, column, make):
    run = _copy(tmp_path)
    seg = sorted((run / "rank=00001").glob("collectives-*.parquet"))[0]
    _rewrite_column(seg, column, make)
    for command in ("summary", "diagnose"):
        proc = _cli(command, str(run), "--format", "json")
        assert proc.returncode == 0, (command, proc.stderr)
    proc = _cli("summary", str(run))
    assert f"rank=00001/{seg.name}: skipped (columns of the wrong type: {column}" in proc.stdout, proc.stdout[:600]
    assert _cli("export", str(run), "-o", str(tmp_path / "trace.json")).returncode == 0


def test_rows_without_a_rank_are_left_out_not_fatal(tmp_path):
    run = _copy(tmp_path)
    seg = sorted((run / "rank=00002").glob("collectives-*.parquet"))[0]
    _rewrite_column(seg, "rank", lambda c: pa.nulls(len(c), pa.int32()))
    for command in ("summary", "stragglers", "hangs", "diagnose"):
        assert _cli(command, str(run)).returncode == 0, command
    assert _cli("export", str(run), "-o", str(tmp_path / "trace.json")).returncode == 0
    assert _cli("report", str(run), "-o", str(tmp_path / "report.html")).returncode == 0


# -- 12. a comparison that compared nothing does not pass a regression gate ----------------------------
def test_compare_against_a_run_without_collectives_is_not_a_pass(tmp_path):
    run = _copy(tmp_path)
    for seg in run.glob("rank=*/collectives-*.parquet"):
        table = pq.read_table(seg)
        pq.write_table(table.slice(0, 0).replace_schema_metadata(pq.read_metadata(seg).metadata), seg)
    proc = _cli("compare", str(SAMPLES / "healthy"), str(run), "--fail-on-regression")
    assert proc.returncode == 2 and "nothing to compare" in proc.stderr, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1


def test_glob_characters_in_names_read_each_file_once(tmp_path):
    """A run folder named run[0] and a segment named with a "*": every file read exactly once (DuckDB
    expands globs in the file names it is given)."""
    run = tmp_path / "run[0]"
    shutil.copytree(SAMPLES / "healthy", run)
    shutil.copytree(SAMPLES / "lossy", tmp_path / "run0")  # what "run[0]" means as a glob
    first = sorted((run / "rank=00000").glob("collectives-*.parquet"))[0]
    shutil.copy(first, run / "rank=00000" / "collectives-*.parquet")  # as a glob: every segment of the rank
    expected = sum(pq.read_metadata(p).num_rows for p in run.glob("rank=*/collectives-*.parquet"))
    proc = _cli("summary", str(run), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert sum(r["events"] for r in json.loads(proc.stdout)) == expected


# -- 12. messages that say what is wrong ---------------------------------------------------------------
def test_an_unreadable_rank_folder_is_said_not_reported_as_a_hang(tmp_path):
    """A rank folder the analysis may not list: said, with the reason; the rank is not judged (no
    hang with it missing). As root, permissions bind only without CAP_DAC_OVERRIDE: dropped here."""
    run = _copy(tmp_path)
    os.chmod(run / "rank=00001", 0)
    command = [sys.executable, "-m", "analysis.cli", "diagnose", str(run), "--format", "json"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv to drop the permission override")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *command]
    try:
        proc = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        os.chmod(run / "rank=00001", 0o755)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["hangs"] == [] and report["dead_ranks"] == [], report
    assert any("rank=00001: unreadable (Permission denied)" in p for p in report["problems"]), report["problems"]


def test_rows_naming_a_rank_outside_the_run_are_left_out_and_said(tmp_path):
    run = _copy(tmp_path)
    seg = sorted((run / "rank=00001").glob("collectives-*.parquet"))[0]
    _rewrite_column(seg, "rank", lambda c: pa.array([1000] * len(c), pa.int32()))
    proc = _cli("diagnose", str(run), "--format", "json")
    report = json.loads(proc.stdout)
    assert any("rows name rank 1000, outside the run's 3 ranks; left out" in p for p in report["problems"])
    assert report["hangs"] and report["hangs"][0]["missing_ranks"] == [1], report["hangs"]  # not "nothing flagged"
    summary = json.loads(_cli("summary", str(run), "--format", "json").stdout)
    assert {r["ranks"] for r in summary} == {2}, summary


def test_rows_that_contradict_their_footer_are_compared_one_by_one(tmp_path):
    """A segment rewritten with a collective recorded twice keeps a footer that no longer describes
    it: the footer no longer vouches for the group, and the rows are what the findings read."""
    from analysis.load import Run

    run = _copy(tmp_path)
    seg = sorted((run / "rank=00001").glob("collectives-*.parquet"))[0]
    table = pq.read_table(seg)
    doubled = pa.concat_tables([table, table.slice(5, 1)])
    pq.write_table(doubled.replace_schema_metadata(pq.read_metadata(seg).metadata), seg)
    opened = Run.open(run)
    assert not opened.settled()
    assert any(
        "its rows contradict its footer (the footer counts 26 collectives, the rows hold 27)" in p
        for p in opened.problems
    ), opened.problems
    proc = _cli("diagnose", str(run))
    assert "footer contradicts rows" in proc.stdout, proc.stdout


# -- 11. long strings cost what short ones do ----------------------------------------------------------------
def test_a_megabyte_name_costs_nothing(tmp_path):
    """A 1 MB host name in every row of three ~5 kB sample files is cut as it is read, and diagnose
    stays small (it took 7.5 GB and 30 s); rows whose group is 1 MB long are left out and said."""
    run = _copy(tmp_path, "lossy")
    for nic in sorted(run.glob("host=*/nic-*.parquet")):
        _rewrite_column(nic, "host", lambda c: pa.array(["h" * 1_000_000] * len(c), pa.string()))
    seg = sorted((run / "rank=00001").glob("collectives-*.parquet"))[0]
    _rewrite_column(seg, "pg", lambda c: pa.array(["g" * 1_000_000] * len(c), pa.string()))
    _rewrite_column(seg, "pg_desc", lambda c: pa.array(["d" * 1_000_000] * len(c), pa.string()))
    code = (
        "import sys\nfrom analysis.cli import main\ncode = main(sys.argv[1:])\n"
        "peak = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print(peak, file=sys.stderr)\nsys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "diagnose", str(run)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024
    assert peak_mib < 1024, peak_mib
    rows = pq.read_metadata(seg).num_rows
    assert f"rank=00001/{seg.name}: {rows} rows carry a group, op or status longer than 1024 characters" in proc.stdout
    assert "h" * 1025 not in proc.stdout


# -- 13. export streams ---------------------------------------------------------------------------------------
def test_export_streams_its_events(tmp_path, monkeypatch):
    """The slices pass through Python a batch at a time: holding them all (what export did) would
    keep every event's dict alive at once."""
    import tracemalloc

    from analysis import export
    from analysis.load import Run

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synthetic_run import generate

    generate(str(tmp_path / "run"), ranks=8, per_rank=2_500, straggler=3, segments=2)
    run = Run.open(tmp_path / "run")
    events = run.sql("SELECT count(*) FROM collectives").item()
    monkeypatch.setattr(export, "SLICE_BATCH", 256)
    stream = export.trace_events(run)
    tracemalloc.start()
    try:
        seen = sum(1 for event in stream if event["ph"] == "X")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == events
    assert peak < events * 200, (peak, events)  # an event's dict alone is ~1 kB
    out = tmp_path / "trace.json"
    assert export.write(run, str(out)) == len(json.loads(out.read_text())["traceEvents"])


def test_compact_makes_a_run_of_many_small_segments_read_like_few(tmp_path):
    """A run recorded before the recorder merged its segments (800 small files): ``compact`` writes a
    copy with one segment per rank that diagnoses the same, vouched for by the same footers; the run
    itself is untouched, a damaged segment is carried over and still reported, and an existing output
    is refused with one line."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synthetic_run import generate

    from analysis.load import Run

    run, out = tmp_path / "run", tmp_path / "compacted"
    generate(str(run), ranks=8, per_rank=500, straggler=3, segments=100, merge=False)
    damaged = sorted((run / "rank=00002").glob("collectives-*.parquet"))[7]
    damaged.write_bytes(damaged.read_bytes()[:300])
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    proc = _cli("compact", str(run), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert len(list(out.glob("rank=*/collectives-*.parquet"))) == 8 + 1  # and the damaged one, as it was
    reports = [json.loads(_cli("diagnose", str(r), "--format", "json").stdout) for r in (run, out)]
    for report in reports:
        report.pop("run_id", None)
    assert reports[0] == reports[1]
    assert any(damaged.name in p for p in reports[1]["problems"])
    assert Run.open(out).settled() == Run.open(run).settled()
    again = _cli("compact", str(run), "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("column", "bad"),
    [("pg_size", pa.array([], pa.timestamp("ns"))), ("step", pa.array([], pa.string())), ("port", None)],
)
def test_a_column_beyond_the_required_ones_under_another_type_skips_its_file(tmp_path, column, bad):
    """Found by test_hostile_properties: a segment whose pg_size was a TIMESTAMP passed the inspection
    (which checked only the columns every file must have) and failed the summary's arithmetic with a
    traceback. Every column the queries read is checked where a file has it."""
    run = _copy(tmp_path, "lossy")
    folder = "host=*/nic-*.parquet" if column == "port" else "rank=00000/collectives-*.parquet"
    path = sorted(glob.glob(str(run / folder)))[0]
    table = pq.read_table(path)
    metadata = pq.read_metadata(path).metadata
    typed = pa.timestamp("ns") if bad is None else bad.type
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, pa.nulls(table.num_rows, typed)).replace_schema_metadata(metadata)
    pq.write_table(table, path)
    name = os.path.relpath(path, run)
    for command in (*COMMANDS, "steps", "network"):
        result = _cli(command, str(run))
        assert result.returncode == 0, (command, result.stderr)
        assert f"{name}: skipped (columns of the wrong type: {column} (" in result.stdout, (command, result.stdout)
