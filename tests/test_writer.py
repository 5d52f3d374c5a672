"""The writer's join of packed issue and completion records into rows, on hand-made records: every
status, the null encodings, group ranks made global, and what is carried to the next flush."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from recorder import records as C
from recorder.writer import build_segment, dones_from, issues_from

NULL32, NULL64 = C.NULL32, C.NULL64


def _group(name: str, ranks: list[int], backend: str = "gloo"):
    return SimpleNamespace(name=name, desc=f"{name} desc", size=len(ranks), ranks=ranks, backend=backend)


def _issue(rid, t0, op, group=0, n=16, dtype=torch.float32, peer=NULL32, root=NULL32, step=NULL64, api=None, **kw):
    return C.ISSUE.pack(
        rid,
        t0,
        kw.get("seq", rid),
        n,
        n,
        step,
        group,
        peer,
        root,
        C.OPS.code(op),
        -1 if dtype is None else C.DTYPES.code(dtype),
        -1 if api is None else C.APIS.code(api),
        kw.get("is_async", False),
        False,
        kw.get("device", C.DEVICE_NONE if dtype is None else C.DEVICE_CPU),
    )


def test_build_segment_joins_statuses_nulls_and_global_ranks():
    groups = [_group("0", [0, 1, 2, 3]), _group("sub", [4, 6])]
    issues = b"".join(
        [
            _issue(0, 1_000, "all_reduce", step=7),
            _issue(1, 2_000, "send", group=1, peer=1, api="isend", is_async=True),
            _issue(2, 3_000, "broadcast", group=1, root=0, n=4, dtype=torch.float16),
            _issue(3, 90_000, "barrier", dtype=None),  # recent and unfinished: carried, not written
            _issue(4, 5_000, "all_reduce", device=C.DEVICE_CUDA, is_async=True),
        ]
    )
    dones = b"".join(
        [
            C.DONE.pack(0, 1_500, NULL64, C.OK),
            C.DONE.pack(1, 2_700, NULL64, C.ERROR),
            C.DONE.pack(0, 9_999, NULL64, C.ERROR),  # a second completion of 0: the first one counts
            C.DONE.pack(4, 5_900, 1_234, C.OK),
        ]
    )
    table, carry = build_segment(issues_from(issues), dones_from(dones), groups, 2, 10**12, {}, 50_000)
    rows = {r["seq"]: r for r in table.to_pylist()}
    assert sorted(rows) == [0, 1, 2, 4]
    assert carry["id"].tolist() == [3]

    ar = rows[0]
    assert (ar["op"], ar["pg"], ar["pg_size"], ar["rank"], ar["backend"]) == ("all_reduce", "0", 4, 2, "gloo")
    assert (ar["count"], ar["bytes_in"], ar["bytes_out"], ar["dtype"]) == (16, 64, 64, "float32")
    assert (ar["t_start_ns"], ar["t_end_ns"], ar["status"]) == (10**12 + 1_000, 10**12 + 1_500, "ok")
    assert (ar["step"], ar["api"], ar["peer"], ar["root"], ar["gpu_duration_ns"]) == (7, None, None, None, None)
    assert (ar["async_op"], ar["coalesced"], ar["device"]) == (False, False, "cpu")

    send = rows[1]
    assert (send["pg"], send["peer"], send["status"], send["api"]) == ("sub", 6, "error", "isend")
    assert send["async_op"]
    assert send["step"] is None

    bcast = rows[2]  # issued before the cut-off, never completed: written in flight
    assert (bcast["root"], bcast["status"], bcast["t_end_ns"]) == (4, "in_flight", None)
    assert (bcast["dtype"], bcast["bytes_in"]) == ("float16", 8)

    gpu = rows[4]
    assert (gpu["device"], gpu["gpu_duration_ns"], gpu["status"]) == ("cuda", 1_234, "ok")

    # The segment's dictionaries hold only the names it uses.
    assert sorted(table["op"].combine_chunks().dictionary.to_pylist()) == ["all_reduce", "broadcast", "send"]

    # The carried barrier, written at the end (no cut-off): in flight, no tensor.
    final, rest = build_segment(carry, dones_from(b""), groups, 2, 0, {}, None)
    (barrier,) = final.to_pylist()
    assert (barrier["op"], barrier["dtype"], barrier["device"], barrier["bytes_in"]) == ("barrier", None, None, 0)
    assert barrier["status"] == "in_flight" and len(rest) == 0


def _segments_of(per_segment: int, segments: int, groups) -> list:
    """``segments`` tables of ``per_segment`` completed all_reduces each, seqs running on."""
    tables = []
    for s in range(segments):
        ids = range(s * per_segment, (s + 1) * per_segment)
        issues = b"".join(_issue(i, 1_000 + 10 * i, "all_reduce") for i in ids)
        dones = b"".join(C.DONE.pack(i, 1_005 + 10 * i, NULL64, C.OK) for i in ids)
        table, _ = build_segment(issues_from(issues), dones_from(dones), groups, 0, 10**12, {}, None)
        tables.append(table)
    return tables


def test_small_segments_are_merged_and_the_merged_ones_replace_them(tmp_path):
    """A slow job's one-second segments end as few files holding every row once, each merged one
    naming the files it replaced; the analysis reads every row once, also when a recorder stopped
    between writing a merged segment and removing what it replaces."""
    import json

    import pyarrow.parquet as pq

    from analysis.load import Run
    from recorder.writer import MERGE_SEGMENTS, REPLACES_KEY, SegmentWriter

    groups = [_group("0", [0])]
    rank_dir = tmp_path / "run" / "rank=00000"
    writer = SegmentWriter(str(rank_dir), "1-2", {"commtrace.run_id": "run", "commtrace.rank": "0"})
    written = 3 * MERGE_SEGMENTS - 2 + 5  # three merges (the 2nd and 3rd fold in the merge before), 5 after
    for table in _segments_of(10, written, groups):
        writer.write(table)
    files = sorted(rank_dir.glob("collectives-*.parquet"))
    assert len(files) == 6 and writer.merges == 3
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert sorted(r["seq"] for r in rows) == list(range(10 * written))
    merged = pq.read_metadata(files[0]).metadata
    assert len(json.loads(merged[REPLACES_KEY.encode()])) == MERGE_SEGMENTS  # 59 small + the previous merge
    assert writer.rows_written == len(rows) and writer.bytes_written == sum(f.stat().st_size for f in files)

    # A recorder stopped between the two steps: the replaced files are still there.
    replaced = json.loads(merged[REPLACES_KEY.encode()])
    small = _segments_of(10, 1, groups)[0]
    small = small.replace_schema_metadata({**writer.metadata, "commtrace.groups": "{}"})
    pq.write_table(small, rank_dir / replaced[-1])
    (tmp_path / "run" / "rank=00000" / "rank-1-2.json").write_text(json.dumps({"rank": 0, "world_size": 1}))
    run = Run.open(tmp_path / "run")
    assert run.sql("SELECT count(*) AS n, count(DISTINCT seq) AS d FROM collectives").row(0) == (len(rows), len(rows))
    assert not run.problems


def test_the_writer_sampler_and_synthetic_runs_never_load_torch():
    """The record layout is declared once, in recorder.records, without torch: the writer, the sampler
    and the analysis tests' synthetic runs use it in processes that never load torch."""
    import subprocess
    import sys

    from conftest import ROOT, clean_env

    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import recorder.writer, recorder.sampler, synthetic\n"
        "from recorder.records import ISSUE, ISSUE_DTYPE, DONE, DONE_DTYPE\n"
        "assert ISSUE.size == ISSUE_DTYPE.itemsize and DONE.size == DONE_DTYPE.itemsize\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
