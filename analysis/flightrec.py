"""PyTorch Flight Recorder dumps as a commtrace run (``analyze-trace import fr``).

Flight Recorder keeps the last ``TORCH_FR_BUFFER_SIZE`` operations of every rank in a ring buffer
and dumps it on a watchdog timeout (``TORCH_FR_DUMP_TEMP_FILE`` + rank), on demand, or in-process
(``torch._C._distributed_c10d._dump_fr_trace`` / ``_dump_fr_trace_json``): one file per rank, its
rank the number the file name ends with (as torch's own ``torchfrtrace`` reads them). A pickled
dump is read by :mod:`analysis.safepickle` (plain values only; nothing in it is run), a JSON one by
``json``. Fields used, as torch's ``FlightRecorderDetail.hpp`` writes them (version 2.x):
``version``, ``pg_config`` (group name -> desc and global ranks), and per entry ``record_id``,
``process_group`` (name, desc), ``collective_seq_id``, ``p2p_seq_id``, ``profiling_name``
(``nccl:all_reduce``, ``nccl:send 0->1``, ``nccl:recv 1<-0``), ``input_sizes``/``input_dtypes``,
``output_sizes``/``output_dtypes``, ``state``, ``retired``, ``time_created_ns``,
``time_discovered_completed_ns``, ``duration_ms``, ``is_p2p`` and ``frames``.

Each entry becomes one event: seq is ``collective_seq_id - 1`` (the recorder counts from 0, Flight
Recorder from 1, so the two agree on the same job), the op is named as the recorder names it, bytes
are the tensors' elements times their element size. An entry that completed (``retired``, or state
``completed``) is ``ok``; any other is ``in_flight``. What the source cannot tell is said in the
run's ``source.limits``: gloo entries have no completion time (and the recorder's bandwidth and
time-outside-communication figures need one), Flight Recorder names no root of a broadcast, and
gloo's ``pg_config`` is empty, so a subgroup's members are the ranks whose dumps use it.
"""

from __future__ import annotations

import json
import os

from analysis import importing, safepickle
from analysis.segments import TraceError

MAX_BYTES = safepickle.MAX_BYTES
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
LIMITS = {
    "no_end_times": "gloo entries carry no start or completion time, only when the call was made: arrival "
    "lateness is known, transfer time and bandwidth are not",
    "discovered_end": "completion times are when Flight Recorder's watchdog noticed the completion "
    "(time_discovered_completed_ns), an upper bound: bandwidth from them is a lower bound",
    "no_root": "Flight Recorder does not record the root of a broadcast, reduce, gather or scatter",
    "no_p2p_gloo": "gloo's Flight Recorder does not record send and recv",
    "p2p_seq": "send/recv are numbered per (group, direction, peer) from the first one in each dump: a "
    "ring buffer that had dropped some on one side pairs them wrongly",
    "members_seen": "gloo's pg_config is empty: a group's members are the ranks whose dumps hold its "
    "operations (all dumped ranks for the default group)",
    "ring_buffer": "each dump holds only the last TORCH_FR_BUFFER_SIZE operations of its rank",
    "aligned": "collectives older than the oldest one every member's dump still holds were left out (a ring "
    "buffer that wrapped on some ranks only)",
    "no_clock": "each rank's times are its own host's wall clock; no offset between hosts was measured",
}


def read_dump(path: str) -> dict:
    """A dump file's contents (pickle or JSON), checked to be a Flight Recorder dump; TraceError if not."""
    why = _file_problem(path)
    if why:
        raise TraceError(f"{path}: {why}")
    with open(path, "rb") as fh:
        head = fh.read(1)
        fh.seek(0)
        try:
            dump = safepickle.load(fh) if head == b"\x80" else json.load(fh)  # a pickle opens with PROTO
        except safepickle.UnsafePickle as exc:
            raise TraceError(f"{path}: refused: {exc}") from None
        except RecursionError:
            raise TraceError(f"{path}: not a Flight Recorder dump (nested too deep)") from None
        except (ValueError, UnicodeDecodeError) as exc:
            why = f"neither a pickle nor JSON: {exc.__class__.__name__}"
            raise TraceError(f"{path}: not a Flight Recorder dump ({why})") from None
    if not isinstance(dump, dict) or not isinstance(dump.get("entries"), list) or "version" not in dump:
        raise TraceError(f"{path}: not a Flight Recorder dump (no version and entries)")
    return dump


def _file_problem(path: str) -> str | None:
    try:
        import stat

        info = os.stat(path)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc.__class__.__name__})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > MAX_BYTES:
        return f"larger than {MAX_BYTES >> 20} MiB"
    return None


def dump_files(paths: list[str]) -> dict[int, str]:
    """rank -> dump file, for files and folders of files named with their rank at the end."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
            files += [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
        else:
            files.append(path)
    out: dict[int, str] = {}
    for path in files:
        rank = importing.rank_of(path)
        if rank is None:
            raise TraceError(f"{path}: its name does not end with its rank (as Flight Recorder names dumps)")
        if rank in out:
            raise TraceError(f"{path} and {out[rank]} are both rank {rank}'s dump")
        out[rank] = path
    if not out:
        raise TraceError(f"{', '.join(paths)}: no dump files")
    return out


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


def _op(profiling_name) -> tuple[str | None, str | None, str | None]:
    """(backend, op as the recorder names it, its argument: "0->1" of a send) of a profiling name."""
    if not isinstance(profiling_name, str) or ":" not in profiling_name:
        return None, None, None
    backend, _, name = profiling_name[:256].partition(":")
    kind, _, argument = name.partition(" ")
    return backend, OPS.get(kind, kind), argument or None


def members(dumps: dict[int, dict]) -> tuple[dict[str, list[int]], dict[str, str | None], bool]:
    """pg -> its members' global ranks, pg -> its description, and whether any group's members had
    to be inferred.

    From ``pg_config`` where it names the group (ProcessGroupNCCL fills it); otherwise (gloo leaves it
    empty) the ranks whose dumps hold the group's operations, and every dumped rank for the default
    group (desc ``default_pg``)."""
    listed: dict[str, set[int]] = {}
    for dump in dumps.values():
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
                listed.setdefault(name[:256], set()).update(good)
    seen: dict[str, set[int]] = {}
    descs: dict[str, str | None] = {}
    for rank, dump in dumps.items():
        for entry in dump["entries"]:
            group = entry.get("process_group") if isinstance(entry, dict) else None
            if isinstance(group, list | tuple) and len(group) == 2 and isinstance(group[0], str):
                pg = group[0][:256]
                seen.setdefault(pg, set()).add(rank)
                descs.setdefault(pg, _text(group[1]))
    inferred = False
    out = {}
    for pg, ranks in seen.items():
        if pg in listed:
            out[pg] = sorted(listed[pg])
        else:
            inferred = True
            out[pg] = sorted(set(dumps) if descs.get(pg) == "default_pg" else ranks)
    return out, descs, inferred


def _frames(frames, limit: int = 32) -> list[str]:
    """A call's stack as "name (file:line)" lines, innermost first, as Flight Recorder lists them."""
    out = []
    for frame in frames[:limit] if isinstance(frames, list | tuple) else ():
        if isinstance(frame, dict):
            name, file, line = _text(frame.get("name"), 200), _text(frame.get("filename"), 200), frame.get("line")
            out.append(f"{name or '?'} ({file or '?'}:{line if _int(line) is not None else '?'})")
    return out


class _Stats:
    def __init__(self) -> None:
        self.entries = self.skipped = self.timed = self.untimed = self.p2p = 0
        self.backends: set[str] = set()
        self.versions: set[str] = set()


def _event(entry, groups: dict[str, list[int]], stats: _Stats) -> dict | None:
    """One entry's event fields (seq not yet given to send/recv), or None for a marker or an unreadable entry."""
    group = entry.get("process_group") if isinstance(entry, dict) else None
    backend, op, argument = _op(entry.get("profiling_name")) if isinstance(entry, dict) else (None, None, None)
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


def rank_rows(rank: int, dump: dict, groups: dict[str, list[int]], stats: _Stats) -> importing.Rank:
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
        if event["status"] != "ok" and len(stacks) < 16:
            stacks.append({k: event[k] for k in ("pg", "seq", "op")} | {"frames": _frames(entry.get("frames"))})
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


def import_dumps(paths: list[str], out: str) -> dict:
    """Write the run directory ``out`` from the Flight Recorder dumps in ``paths`` (files, or folders
    of them); returns what was read (ranks, entries, the source's limits)."""
    files = dump_files(paths)
    dumps = {rank: read_dump(path) for rank, path in sorted(files.items())}
    groups, descs, inferred = members(dumps)
    stats = _Stats()
    ranks = {rank: rank_rows(rank, dump, groups, stats) for rank, dump in dumps.items()}
    cut = _aligned(ranks)
    world = max([max(r) + 1 for pg, r in groups.items() if descs.get(pg) == "default_pg"] + [max(dumps) + 1])
    limits = ["ring_buffer", "no_root"]
    if stats.untimed:
        limits.append("no_end_times")
    if stats.timed:
        limits.append("discovered_end")
    if "gloo" in stats.backends:
        limits.append("no_p2p_gloo")
    if stats.p2p:
        limits.append("p2p_seq")
    if inferred:
        limits.append("members_seen")
    if cut:
        limits.append("aligned")
    limits.append("no_clock")
    source = {
        "kind": "flight_recorder",
        "name": "PyTorch Flight Recorder",
        "version": ", ".join(sorted(stats.versions)),
        "backends": sorted(stats.backends),
        "files": [os.path.abspath(files[r])[-1024:] for r in sorted(files)],
        "entries": stats.entries,
        "entries_skipped": stats.skipped,
        "end_times": stats.untimed == 0,
        "limits": {key: LIMITS[key] for key in limits},
    }
    if cut:
        source["limits"]["aligned"] += " (" + ", ".join(f"group {pg}: {n:,}" for pg, n in sorted(cut.items())) + ")"
    run_id = importing.new_run_id("fr")
    for rank, data in ranks.items():
        mine = [{"pg": pg, "desc": descs.get(pg), "size": len(r), "ranks": r, "backend": _backend(stats)}
                for pg, r in groups.items() if rank in r]  # fmt: skip
        data.meta.update(world_size=world, process_groups=mine, source=source)
    run_meta = {"run_id": run_id, "world_size": world, "source": source, "created_ns": _created(ranks)}
    importing.write_run(out, run_meta, ranks)
    return {"run": out, "ranks": len(ranks), "entries": stats.entries, "skipped": stats.skipped, "source": source}


def _aligned(ranks: dict[int, importing.Rank]) -> dict[str, int]:
    """Leave out of each rank's events the collectives of a group older than the oldest one every
    member's dump still holds (as torchfrtrace aligns dumps): a ring buffer that wrapped on one rank
    and not on another must not read as a rank that never issued them. Returns, per group, how many
    events were left out."""
    first: dict[str, int] = {}
    for data in ranks.values():
        c = data.columns
        oldest: dict[str, int] = {}
        for pg, seq, op in zip(c["pg"], c["seq"], c["op"], strict=True):
            if op not in ("send", "recv") and seq < oldest.get(pg, seq + 1):
                oldest[pg] = seq
        for pg, seq in oldest.items():
            first[pg] = max(first.get(pg, seq), seq)
    cut: dict[str, int] = {}
    for data in ranks.values():
        c = data.columns
        drop = [i for i, (pg, seq, op) in enumerate(zip(c["pg"], c["seq"], c["op"], strict=True))
                if op not in ("send", "recv") and seq < first[pg]]  # fmt: skip
        if not drop:
            continue
        for i in drop:
            cut[c["pg"][i]] = cut.get(c["pg"][i], 0) + 1
        gone = set(drop)
        for name, values in c.items():
            c[name] = [v for i, v in enumerate(values) if i not in gone]
    return cut


def _backend(stats: _Stats) -> str | None:
    return next(iter(stats.backends)) if len(stats.backends) == 1 else None


def _created(ranks: dict[int, importing.Rank]) -> int | None:
    starts = [t for data in ranks.values() for t in data.columns["t_start_ns"][:1] if t is not None]
    return min(starts) if starts else None
