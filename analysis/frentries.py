"""Flight Recorder entries as commtrace events: the conversion of one rank's dump
(:mod:`analysis.flightrec` reads the dumps and writes the run).
"""

from __future__ import annotations

import json

from analysis import importing

# Flight Recorder's op names (torch/distributed/flight_recorder/components/types.py) -> the recorder's.
OPS = {
    "_broadcast_oop": "broadcast",
    "_reduce_oop": "reduce",
    "all_gather_single": "all_gather_into_tensor",
    "_all_gather_base": "all_gather_into_tensor",
    "all_gather_v": "all_gather",
    "reduce_scatter_single": "reduce_scatter_tensor",
    "_reduce_scatter_base": "reduce_scatter_tensor",
    "reduce_scatter_v": "reduce_scatter",
    "all_to_all_v_single": "all_to_all_single",
    "allreduce_coalesced": "all_reduce_coalesced",
    "all_reduce_barrier": "barrier",
}
COALESCED = {
    "all_reduce": "all_reduce_coalesced",
    "all_gather": "all_gather_coalesced",
    "all_gather_into_tensor": "all_gather_into_tensor_coalesced",
    "reduce_scatter_tensor": "reduce_scatter_tensor_coalesced",
}
NOT_OPERATIONS = {"coalesced", "split", "new_window"}  # markers and communicator set-up, not data movement
# c10::ScalarType names -> (the recorder's dtype name, bytes per element).
DTYPES = {
    "Float": ("float32", 4), "Double": ("float64", 8), "Half": ("float16", 2), "BFloat16": ("bfloat16", 2),
    "Long": ("int64", 8), "Int": ("int32", 4), "Short": ("int16", 2), "Char": ("int8", 1), "Byte": ("uint8", 1),
    "Bool": ("bool", 1), "ComplexFloat": ("complex64", 8), "ComplexDouble": ("complex128", 16),
    "ComplexHalf": ("complex32", 4), "UInt16": ("uint16", 2), "UInt32": ("uint32", 4), "UInt64": ("uint64", 8),
    "Float8_e4m3fn": ("float8_e4m3fn", 1), "Float8_e5m2": ("float8_e5m2", 1),
    "Float8_e4m3fnuz": ("float8_e4m3fnuz", 1), "Float8_e5m2fnuz": ("float8_e5m2fnuz", 1),
    "Float8_e8m0fnu": ("float8_e8m0fnu", 1),
}  # fmt: skip
def _text(value, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 63 else None


def _elements(sizes) -> list[int]:
    """Elements of each tensor of an ``input_sizes``/``output_sizes`` list (shapes), 0 where unreadable."""
    out = []
    for shape in sizes if isinstance(sizes, list | tuple) else ():
        n = 1
        for d in shape if isinstance(shape, list | tuple) else (0,):
            n = n * d if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 else 0
        out.append(n)
    return out


def _bytes(sizes, dtypes) -> tuple[int, int, str | None]:
    """(elements, bytes, first dtype's name) of one side of an entry."""
    elements = _elements(sizes)
    names = dtypes if isinstance(dtypes, list | tuple) else ()
    total = 0
    for i, n in enumerate(elements):
        name = names[i] if i < len(names) else (names[0] if names else None)
        total += n * DTYPES.get(name, (None, 0))[1] if isinstance(name, str) else 0
    first = names[0] if names and isinstance(names[0], str) else None
    return sum(elements), min(total, (1 << 63) - 1), (DTYPES.get(first, (first, 0))[0] if first else None)


def op_of(profiling_name) -> tuple[str | None, str | None, str | None]:
    """(backend, op as the recorder names it, its argument: "0->1" of a send) of a profiling name."""
    if not isinstance(profiling_name, str) or ":" not in profiling_name:
        return None, None, None
    backend, _, name = profiling_name[:256].partition(":")
    kind, _, argument = name.partition(" ")
    return backend, OPS.get(kind, kind), argument or None


def config_groups(dump: dict) -> dict[str, list[int]]:
    """pg -> its members' global ranks, as this rank's ``pg_config`` names them (ProcessGroupNCCL
    fills it; gloo leaves one entry named "" with no ranks, which names nothing)."""
    out: dict[str, list[int]] = {}
    config = dump.get("pg_config")
    for name, group in (config.items() if isinstance(config, dict) else ()):
        ranks = group.get("ranks") if isinstance(group, dict) else None
        if isinstance(ranks, str) and len(ranks) < 1 << 24:
            try:
                ranks = json.loads(ranks)
            except ValueError:
                ranks = None
        if isinstance(name, str) and name and isinstance(ranks, list) and ranks:
            good = {r for r in ranks if isinstance(r, int) and not isinstance(r, bool) and 0 <= r < 1_000_000}
            out[name[:256]] = sorted(good)
    return out


def frames(stack, limit: int = 32) -> list[str]:
    """A call's stack as "name (file:line)" lines, innermost first, as Flight Recorder lists them."""
    out = []
    for frame in stack[:limit] if isinstance(stack, list | tuple) else ():
        if isinstance(frame, dict):
            name, file, line = _text(frame.get("name"), 200), _text(frame.get("filename"), 200), frame.get("line")
            out.append(f"{name or '?'} ({file or '?'}:{line if _int(line) is not None else '?'})")
    return out


class Stats:
    """What one rank's dump held, beyond its events: counts, and per group its description and the
    oldest collective seq (to align ranks whose ring buffers wrapped at different points)."""

    def __init__(self) -> None:
        self.entries = self.skipped = self.timed = self.untimed = self.p2p = 0
        self.backends: set[str] = set()
        self.versions: set[str] = set()
        self.descs: dict[str, str | None] = {}
        self.oldest: dict[str, int] = {}


def _event(entry, groups: dict[str, list[int]], stats: Stats) -> dict | None:
    """One entry's event fields (seq not yet given to send/recv), or None for a marker or an unreadable entry."""
    group = entry.get("process_group") if isinstance(entry, dict) else None
    backend, op, argument = op_of(entry.get("profiling_name")) if isinstance(entry, dict) else (None, None, None)
    if not (isinstance(group, list | tuple) and len(group) == 2 and isinstance(group[0], str) and op):
        stats.skipped += 1
        return None
    if op in NOT_OPERATIONS:
        return None
    pg = group[0][:256]
    ranks = groups.get(pg, [])
    done = entry.get("retired") is True or entry.get("state") == "completed"
    n_in, b_in, dtype = _bytes(entry.get("input_sizes"), entry.get("input_dtypes"))
    _, b_out, dtype_out = _bytes(entry.get("output_sizes"), entry.get("output_dtypes"))
    end = _int(entry.get("time_discovered_completed_ns")) or None
    duration = entry.get("duration_ms")
    stats.backends.add(backend[:32])
    stats.untimed += done and end is None
    stats.timed += end is not None
    p2p = op in ("send", "recv")
    stats.p2p += p2p
    seq = None if p2p else _int(entry.get("collective_seq_id"))
    if not p2p and seq is None:
        stats.skipped += 1
        return None
    return dict(
        pg=pg, pg_desc=_text(group[1]), pg_size=len(ranks) or None, seq=None if p2p else seq - 1, op=op,
        count=n_in, bytes_in=b_in, bytes_out=b_out, dtype=dtype or dtype_out,
        peer=_peer(op, argument, ranks) if p2p else None, t_start_ns=_int(entry.get("time_created_ns")),
        t_end_ns=end if done else None, status="ok" if done else "in_flight", coalesced=False,
        gpu_duration_ns=int(duration * 1e6) if isinstance(duration, int | float) and 0 <= duration < 1e9 else None,
        backend=backend[:32], device="cuda" if backend == "nccl" else None,
    )  # fmt: skip


def _coalesce(c: dict[str, list], row: int, event: dict) -> None:
    """Add ``event`` to the event at ``row`` of the same (group, seq): one event of a coalesced collective."""
    c["op"][row] = COALESCED.get(c["op"][row], c["op"][row])
    c["coalesced"][row] = True
    for name in ("count", "bytes_in", "bytes_out"):
        c[name][row] += event[name]
    if event["status"] != "ok":
        c["status"][row], c["t_end_ns"][row] = "in_flight", None


def rank_rows(rank: int, dump: dict, groups: dict[str, list[int]], stats: Stats) -> importing.Rank:
    """One rank's dump as events (see the module's docstring), its in-flight calls' stacks in its metadata."""
    out = importing.Rank(rank)
    at: dict[tuple[str, int], int] = {}  # (pg, seq) -> row of a collective (coalesced ones merge into it)
    p2p: dict[tuple[str, str, int | None], int] = {}  # (pg, op, peer) -> next seq
    stacks = []
    stats.versions.add(str(dump.get("version"))[:32])
    for entry in dump["entries"]:
        stats.entries += 1
        event = _event(entry, groups, stats)
        if event is None:
            continue
        if event["seq"] is None:
            key = (event["pg"], event["op"], event["peer"])
            event["seq"] = p2p.get(key, 0)
            p2p[key] = event["seq"] + 1
        else:
            row = at.get((event["pg"], event["seq"]))
            if row is not None:
                _coalesce(out.columns, row, event)
                continue
            at[(event["pg"], event["seq"])] = len(out)
        pg = event["pg"]
        stats.descs.setdefault(pg, event["pg_desc"])
        if event["op"] not in ("send", "recv") and event["seq"] < stats.oldest.get(pg, event["seq"] + 1):
            stats.oldest[pg] = event["seq"]
        if event["status"] != "ok" and len(stacks) < 16:
            stacks.append({k: event[k] for k in ("pg", "seq", "op")} | {"frames": frames(entry.get("frames"))})
        out.add(rank=rank, **event)
    out.meta["stacks"] = stacks
    return out


def _peer(op: str, argument: str | None, ranks: list[int]) -> int | None:
    """The global rank on the other side of "nccl:send 0->1" / "nccl:recv 1<-0" (group ranks)."""
    try:
        other = int(argument.split("->")[1]) if op == "send" else int(argument.split("<-")[1])
    except (AttributeError, IndexError, ValueError):
        return None
    return ranks[other] if 0 <= other < len(ranks) else None
