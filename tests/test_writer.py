"""The writer's join of packed issue and completion records into rows, on hand-made records: every
status, the null encodings, group ranks made global, and what is carried to the next flush."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from recorder import capture as C
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
