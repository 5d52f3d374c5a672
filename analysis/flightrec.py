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

import concurrent.futures
import gc
import json
import multiprocessing
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis import frcolumns, frentries, importing, safepickle
from analysis.segments import TraceError

MAX_BYTES = safepickle.MAX_BYTES
PARALLEL_BYTES = 32 << 20  # dumps larger than this in all are read by parallel processes
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


def _convert(rank: int, path: str, segment: str, run_id: str) -> dict:
    # The dump is millions of small containers and no cycle: the collector's passes over them (while
    # they are built, converted and freed) would only cost time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _convert_one(rank, path, segment, run_id)
    finally:
        if collecting:
            gc.enable()


def _convert_one(rank: int, path: str, segment: str, run_id: str) -> dict:
    """Read one rank's dump, write its events to ``segment``; what the rest of the import needs of it
    (run in a worker process for large dumps: only this small summary comes back)."""
    dump = read_dump(path)
    config = frentries.config_groups(dump)
    stats = frentries.Stats()
    try:
        table, stacks = frcolumns.rank_table(rank, dump, config, stats)
    except frcolumns.Unusual:  # a value of an unexpected type or size: entry by entry, each value checked
        stats = frentries.Stats()
        data = frentries.rank_rows(rank, dump, config, stats)
        table, stacks = data.table(), data.meta["stacks"]
    del dump
    starts = table["t_start_ns"].drop_null()[:1].to_pylist()
    importing.write_segment(segment, table, rank, run_id)
    return {
        "rank": rank, "config": config, "descs": stats.descs, "oldest": stats.oldest, "rows": table.num_rows,
        "stacks": stacks, "first_ns": starts[0] if starts else None,
        "counts": (stats.entries, stats.skipped, stats.timed, stats.untimed, stats.p2p),
        "backends": sorted(stats.backends), "versions": sorted(stats.versions),
    }  # fmt: skip


def _workers(files: dict[int, str]) -> int:
    """Processes to read the dumps with: one per core, as many as memory holds (a dump's plain
    values take ~12x its size), one for small inputs."""
    sizes = [os.path.getsize(p) for p in files.values() if os.path.isfile(p)]
    if sum(sizes) < PARALLEL_BYTES or len(files) < 2:
        return 1
    try:
        with open("/proc/meminfo") as fh:
            available = next(int(line.split()[1]) << 10 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = 4 << 30
    return max(1, min(len(files), os.cpu_count() or 1, available // (12 * max(sizes) + 1)))


def _convert_all(files: dict[int, str], output: importing.Output, run_id: str) -> list[dict]:
    jobs = [(rank, path, output.segment(rank), run_id) for rank, path in sorted(files.items())]
    workers = _workers(files)
    if workers == 1:
        return [_convert(*job) for job in jobs]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(_convert, *zip(*jobs, strict=True)))


def members(summaries: list[dict]) -> tuple[dict[str, list[int]], dict[str, str | None], bool]:
    """pg -> its members' global ranks, pg -> its description, and whether any group's members had
    to be inferred.

    From ``pg_config`` where it names the group (ProcessGroupNCCL fills it); otherwise (gloo leaves it
    empty) the ranks whose dumps hold the group's operations, and every dumped rank for the default
    group (desc ``default_pg``)."""
    listed: dict[str, set[int]] = {}
    seen: dict[str, set[int]] = {}
    descs: dict[str, str | None] = {}
    for s in summaries:
        for pg, ranks in s["config"].items():
            listed.setdefault(pg, set()).update(ranks)
        for pg, desc in s["descs"].items():
            seen.setdefault(pg, set()).add(s["rank"])
            descs.setdefault(pg, desc)
    everyone = {s["rank"] for s in summaries}
    out = {pg: sorted(listed[pg] if pg in listed else everyone if descs.get(pg) == "default_pg" else ranks)
           for pg, ranks in seen.items()}  # fmt: skip
    return out, descs, any(pg not in listed for pg in seen)


def _fix(segment: str, rank: int, run_id: str, sizes: dict[str, int], floors: dict[str, int]) -> dict[str, int]:
    """Give a segment's events their group's size where its own dump did not name it, and leave out
    collectives older than ``floors`` (see :func:`import_dumps`); returns how many were left out, per group."""
    table = pq.read_table(segment)
    pg = table["pg"].cast(pa.string())
    size = pc.if_else(pc.is_null(table["pg_size"]), pc.cast(_lookup(pg, sizes, 0), pa.int32()), table["pg_size"])
    p2p = pc.is_in(table["op"].cast(pa.string()), pa.array(["send", "recv"]))
    keep = pc.or_(p2p, pc.greater_equal(table["seq"], _lookup(pg, floors, -(1 << 62))))
    fixed = table.set_column(table.schema.get_field_index("pg_size"), "pg_size", size)
    importing.write_segment(segment, fixed.filter(keep), rank, run_id)
    gone = pa.table({"pg": pg}).filter(pc.invert(keep)).group_by("pg").aggregate([([], "count_all")])
    return dict(zip(gone["pg"].to_pylist(), gone["count_all"].to_pylist(), strict=True))


def _lookup(keys: pa.ChunkedArray, values: dict[str, int], missing: int) -> pa.ChunkedArray:
    names = list(values)
    at = pc.index_in(keys, pa.array(names, pa.string()))
    return pc.fill_null(pc.take(pa.array(list(values.values()), pa.int64()), at), missing)


def import_dumps(paths: list[str], out: str) -> dict:
    """Write the run directory ``out`` from the Flight Recorder dumps in ``paths`` (files, or folders
    of them); returns what was read (ranks, entries, the source's limits).

    Each rank's dump is read and its events written by itself (in parallel processes for large
    dumps), so memory holds one dump per process at a time. Then groups get their members, and a
    group's collectives older than the oldest one every member's dump still holds are left out (as
    torchfrtrace aligns dumps): a ring buffer that wrapped on one rank and not on another must not
    read as a rank that never issued them."""
    files = dump_files(paths)
    run_id = importing.new_run_id("fr")
    with importing.Output(out) as output:
        summaries = _convert_all(files, output, run_id)
        groups, descs, inferred = members(summaries)
        floors = {}
        for pg, ranks in groups.items():
            oldest = [s["oldest"][pg] for s in summaries if pg in s["oldest"] and s["rank"] in ranks]
            floors[pg] = max(oldest) if oldest else 0
        sizes = {pg: len(ranks) for pg, ranks in groups.items()}
        cut: dict[str, int] = {}
        for s in summaries:
            behind = {pg for pg, seq in s["oldest"].items() if seq < floors[pg]}
            if behind or set(s["descs"]) - set(s["config"]):
                for pg, n in _fix(output.segment(s["rank"]), s["rank"], run_id, sizes, floors).items():
                    cut[pg] = cut.get(pg, 0) + n
        source = _source(files, summaries, inferred, {pg: n for pg, n in cut.items() if n})
        world = max([max(r) + 1 for pg, r in groups.items() if descs.get(pg) == "default_pg"] + [max(files) + 1])
        backend = source["backends"][0] if len(source["backends"]) == 1 else None
        metas = {}
        for s in summaries:
            mine = [{"pg": pg, "desc": descs.get(pg), "size": len(r), "ranks": r, "backend": backend}
                    for pg, r in groups.items() if s["rank"] in r]  # fmt: skip
            metas[s["rank"]] = {"world_size": world, "process_groups": mine, "source": source, "stacks": s["stacks"]}
        starts = [s["first_ns"] for s in summaries if s["first_ns"] is not None]
        run_meta = {"run_id": run_id, "world_size": world, "source": source, "created_ns": min(starts, default=None)}
        output.commit(run_meta, metas)
    entries, skipped = source["entries"], source["entries_skipped"]
    return {"run": out, "ranks": len(files), "entries": entries, "skipped": skipped, "source": source}


def _source(files: dict[int, str], summaries: list[dict], inferred: bool, cut: dict[str, int]) -> dict:
    """The run's ``source``: Flight Recorder, its versions, and what these dumps cannot tell."""
    entries, skipped, timed, untimed, p2p = (sum(s["counts"][i] for s in summaries) for i in range(5))
    backends = sorted({b for s in summaries for b in s["backends"]})
    wanted = [
        ("ring_buffer", True), ("no_root", True), ("no_end_times", untimed), ("discovered_end", timed),
        ("no_p2p_gloo", "gloo" in backends), ("p2p_seq", p2p), ("members_seen", inferred), ("aligned", cut),
        ("no_clock", True),
    ]  # fmt: skip
    limits = {key: LIMITS[key] for key, applies in wanted if applies}
    if cut:
        limits["aligned"] += " (" + ", ".join(f"group {pg}: {n:,}" for pg, n in sorted(cut.items())) + ")"
    return {
        "kind": "flight_recorder", "name": "PyTorch Flight Recorder",
        "version": ", ".join(sorted({v for s in summaries for v in s["versions"]})), "backends": backends,
        "files": [os.path.abspath(files[r])[-1024:] for r in sorted(files)], "entries": entries,
        "entries_skipped": skipped, "end_times": untimed == 0, "limits": limits,
    }  # fmt: skip
