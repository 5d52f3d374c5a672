"""NCCL Inspector logs as a commtrace run (``analyze-trace import inspector``).

NCCL Inspector (NCCL 2.28+, ``NCCL_PROFILER_PLUGIN=.../libnccl-profiler-inspector.so``,
``NCCL_INSPECTOR_ENABLE=1``) writes, per process, one JSON object per collective per communicator,
in the format its ``ext-profiler/inspector/README.md`` documents (output format v4.0): ``header``
(``id`` of the communicator, ``rank`` in it, ``n_ranks``, ``nnodes``), ``metadata`` (``hostname``,
``pid``, ``dump_timestamp_us``, ``inspector_output_format_version``) and ``coll_perf`` (``coll``,
``coll_sn``, ``coll_msg_size_bytes``, ``coll_exec_time_us``, ``coll_timing_source``,
``coll_algobw_gbs``, ``coll_busbw_gbs``; with ``NCCL_INSPECTOR_DUMP_VERBOSE=1`` also
``event_trace_ts``: the collective's start and each channel's kernel start and stop, in µs). With
``NCCL_INSPECTOR_PROM_DUMP=1`` it writes Prometheus textfiles instead (the latest collective of each
communicator, its size rounded in a label); both are read.

A process is a (hostname, pid); its global rank is its rank in the largest communicator, where that
communicator holds every process seen (else processes are numbered by host and pid, and that is
said). Each record becomes one event: the group is the communicator's id, seq its ``coll_sn``, the
op the recorder's name for ``coll``. ``coll_msg_size_bytes`` is what each rank sends or receives
(AllReduce's buffer, AllGather's input, ReduceScatter's output; Inspector's own bandwidth is
``coll_msg_size_bytes`` x n / time for those two), so bytes are laid out as the recorder lays them.
The device time is ``gpu_duration_ns``. Verbose records give times: the start is the first
channel's kernel start (the rank's arrival on the device; the collective's host-side start where no
kernel is listed) and the end the last kernel stop. Without verbose output there are no times:
bandwidth comes from each instance's shortest device time (the last rank to arrive waits least, so
its kernel time is the transfer), and arrival lateness is not known.
"""

from __future__ import annotations

import json
import os
import re

from analysis import importing
from analysis.segments import TraceError

MAX_FILE_BYTES = 4 << 30
# Inspector's collective names -> the recorder's op names; how the bytes of a record are laid out.
OPS = {
    "AllReduce": "all_reduce",
    "AllGather": "all_gather_into_tensor",
    "ReduceScatter": "reduce_scatter_tensor",
    "Broadcast": "broadcast",
    "Reduce": "reduce",
    "AllToAll": "all_to_all_single",
    "Send": "send",
    "Recv": "recv",
}
LIMITS = {
    "no_start_times": "no event times without NCCL_INSPECTOR_DUMP_VERBOSE=1: arrival lateness, stragglers "
    "and time outside communication are not known; bandwidth is from each collective's shortest device time",
    "kernel_times": "times are the device kernels' (the first channel's start, the last one's stop): a rank's "
    "arrival is when its kernel started, not when the host issued the call",
    "ranks_guessed": "no communicator spans every process: global ranks are numbered by host and pid",
    "prometheus": "Prometheus textfiles hold only each communicator's latest collective, its size rounded",
    "no_dtype": "Inspector does not record element types or counts",
    "no_clock": "each rank's times are its own host's clock; no offset between hosts was measured",
}
_PROM_LINE = re.compile(r"^(nccl_[a-z_]+)\{(.*)\}\s+(\S+)")
_PROM_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_SIZE = re.compile(r"^([\d.]+)\s*([KMGTP]?)B$")


def _files(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
        else:
            out.append(path)
    if not out:
        raise TraceError(f"{', '.join(paths)}: no log files")
    return out


def _int(value, lo: int = 0, hi: int = 1 << 62) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi else None


def _num(value) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e18
    return float(value) if ok else None


def _record(obj) -> dict | None:
    """One JSON object as a typed record, or None if it is not an Inspector record."""
    if not isinstance(obj, dict):
        return None
    header, meta, perf = obj.get("header"), obj.get("metadata"), obj.get("coll_perf")
    if not all(isinstance(x, dict) for x in (header, meta, perf)):
        return None
    rec = {
        "comm": header.get("id"), "comm_rank": _int(header.get("rank"), 0, 1 << 24),
        "n_ranks": _int(header.get("n_ranks"), 1, 1 << 24), "host": meta.get("hostname"),
        "pid": _int(meta.get("pid"), 0, 1 << 31), "version": meta.get("inspector_output_format_version"),
        "coll": perf.get("coll"), "sn": _int(perf.get("coll_sn")), "bytes": _int(perf.get("coll_msg_size_bytes")),
        "exec_us": _num(perf.get("coll_exec_time_us")), "timing": perf.get("coll_timing_source"),
    }  # fmt: skip
    if not (isinstance(rec["comm"], str) and isinstance(rec["host"], str) and isinstance(rec["coll"], str)):
        return None
    if None in (rec["comm_rank"], rec["n_ranks"], rec["pid"], rec["sn"], rec["bytes"]):
        return None
    trace = perf.get("event_trace_ts")
    if isinstance(trace, dict):
        kernels = [k for k in trace.get("kernel_events") or [] if isinstance(k, dict)]
        starts = [t for k in kernels if (t := _int(k.get("kernel_start_ts"), 1)) is not None]
        stops = [t for k in kernels if (t := _int(k.get("kernel_stop_ts"), 1)) is not None]
        rec["start_us"] = min(starts) if starts else _int(trace.get("coll_start_ts"), 1)
        rec["end_us"] = max(stops) if stops else None
        rec["kernel"] = bool(starts)
    return rec


def _json_records(text: str) -> tuple[list[dict], int]:
    """The records of a JSON-lines (or pretty-printed, concatenated) log, and how many objects were not records."""
    decoder = json.JSONDecoder()
    records, bad, at, end = [], 0, 0, len(text)
    while True:
        while at < end and text[at] in " \t\r\n":
            at += 1
        if at >= end:
            return records, bad
        try:
            obj, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            bad += 1
            nxt = text.find("\n{", at)
            if nxt < 0:
                return records, bad
            at = nxt + 1
            continue
        rec = _record(obj)
        if rec is None:
            bad += 1
        else:
            records.append(rec)


def _prom_size(text: str) -> int | None:
    found = _SIZE.match(text.strip())
    if not found:
        return None
    return int(float(found[1]) * 1024 ** " KMGTP".index(found[2] or " "))


def _prom_records(text: str) -> tuple[list[dict], int]:
    """Records from a Prometheus textfile: one per (communicator, rank, coll_sn), from its metrics."""
    by_key: dict[tuple, dict] = {}
    bad = 0
    for line in text.splitlines():
        found = _PROM_LINE.match(line)
        if not found:
            bad += bool(line.strip()) and not line.lstrip().startswith("#")
            continue
        labels = dict(_PROM_LABEL.findall(found[2]))
        try:
            value = float(found[3])
            key = (labels["comm_id"], int(labels["rank"]), labels["hostname"], int(labels.get("pid") or 0),
                   int(labels["coll_sn"]))  # fmt: skip
            n_ranks = int(labels["n_ranks"])
        except (KeyError, ValueError):
            bad += 1
            continue
        rec = by_key.setdefault(key, {
            "comm": key[0], "comm_rank": key[1], "n_ranks": n_ranks, "host": key[2], "pid": key[3],
            "version": "prometheus", "coll": labels.get("collective", "?"), "sn": key[4],
            "bytes": _prom_size(labels.get("message_size", "")), "exec_us": None,
            "timing": labels.get("coll_timing_source"),
        })  # fmt: skip
        if found[1] == "nccl_collective_exec_time_microseconds":
            rec["exec_us"] = value
    records = [r for r in by_key.values() if r["bytes"] is not None]
    return records, bad + len(by_key) - len(records)


def read_logs(paths: list[str]) -> tuple[list[dict], int, bool]:
    """Every record of the logs in ``paths``, how many objects or lines were not records, and
    whether any file was a Prometheus textfile."""
    records, bad, prometheus = [], 0, False
    for path in _files(paths):
        try:
            if os.path.getsize(path) > MAX_FILE_BYTES:
                raise TraceError(f"{path}: larger than {MAX_FILE_BYTES >> 30} GiB")
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise TraceError(f"{path}: cannot read it ({exc.strerror or exc.__class__.__name__})") from None
        head = text.lstrip()[:1]
        if head in ("#", "n"):
            found, skipped = _prom_records(text)
            prometheus = prometheus or bool(found)
        else:
            found, skipped = _json_records(text)
        if not found and text.strip():
            raise TraceError(f"{path}: not an NCCL Inspector log (no record of the documented format)")
        records += found
        bad += skipped
    if not records:
        raise TraceError(f"{', '.join(paths)}: no NCCL Inspector records")
    return records, bad, prometheus


def global_ranks(records: list[dict]) -> tuple[dict[tuple, int], bool]:
    """(host, pid) -> global rank: its rank in the largest communicator if that one holds every
    process, else the processes numbered by host and pid (the second value says which)."""
    processes = sorted({(r["host"], r["pid"]) for r in records})
    sizes: dict[str, int] = {}
    ranks_in: dict[str, dict[tuple, int]] = {}
    for r in records:
        sizes[r["comm"]] = r["n_ranks"]
        ranks_in.setdefault(r["comm"], {})[(r["host"], r["pid"])] = r["comm_rank"]
    world = max(sizes, key=lambda c: (sizes[c], len(ranks_in[c]), c))
    placed = ranks_in[world]
    if len(placed) == len(processes) and len(set(placed.values())) == len(placed):
        return dict(placed), False
    return {p: i for i, p in enumerate(processes)}, True


def _bytes(op: str, size: int, n: int) -> tuple[int, int]:
    """(bytes in, bytes out) of a rank, as the recorder lays them out, from Inspector's message size."""
    if op == "all_gather_into_tensor":
        return size, size * n
    if op == "reduce_scatter_tensor":
        return size * n, size
    return size, size


def import_logs(paths: list[str], out: str) -> dict:
    """Write the run directory ``out`` from the NCCL Inspector logs in ``paths`` (files, or folders
    of them); returns what was read (ranks, records, the source's limits)."""
    records, bad, prometheus = read_logs(paths)
    placed, guessed = global_ranks(records)
    members: dict[str, list[tuple[int, int]]] = {}
    for r in records:
        members.setdefault(r["comm"], []).append((r["comm_rank"], placed[(r["host"], r["pid"])]))
    groups = {comm: [g for _, g in sorted(set(pairs))] for comm, pairs in members.items()}
    ranks: dict[int, importing.Rank] = {}
    seen: set[tuple] = set()
    timed = kernel = 0
    for r in sorted(records, key=lambda r: (r["comm"], r["sn"])):
        rank = placed[(r["host"], r["pid"])]
        if (rank, r["comm"], r["sn"]) in seen:
            continue
        seen.add((rank, r["comm"], r["sn"]))
        op = OPS.get(r["coll"], r["coll"][:64].lower())
        b_in, b_out = _bytes(op, r["bytes"], r["n_ranks"])
        start, end = r.get("start_us"), r.get("end_us")
        if end is None and start is not None and r["exec_us"] is not None:
            end = start + r["exec_us"]
        timed += start is not None and end is not None
        kernel += bool(r.get("kernel"))
        data = ranks.setdefault(rank, importing.Rank(rank, {"host": r["host"][:256], "pid": r["pid"]}))
        data.add(
            rank=rank, pg=r["comm"][:256], pg_size=r["n_ranks"], seq=r["sn"], op=op, bytes_in=b_in, bytes_out=b_out,
            t_start_ns=start * 1000 if start is not None and end is not None else None,
            t_end_ns=end * 1000 if start is not None and end is not None else None,
            gpu_duration_ns=round(r["exec_us"] * 1000) if r["exec_us"] is not None else None,
            status="ok", backend="nccl", device="cuda", async_op=True,
        )  # fmt: skip
    limits = ["kernel_times"] if kernel else []
    if timed < len(seen):
        limits.insert(0, "no_start_times")
    limits += (["ranks_guessed"] if guessed else []) + (["prometheus"] if prometheus else []) + ["no_dtype", "no_clock"]
    versions = sorted({str(r["version"])[:32] for r in records if r.get("version")})
    source = {
        "kind": "nccl_inspector", "name": "NCCL Inspector", "version": ", ".join(versions), "backends": ["nccl"],
        "files": [os.path.abspath(f)[-1024:] for f in _files(paths)][:100_000], "entries": len(records),
        "entries_skipped": bad, "end_times": timed == len(seen), "start_times": timed == len(seen),
        "limits": {key: LIMITS[key] for key in limits},
    }  # fmt: skip
    world = max(placed.values()) + 1
    for rank, data in ranks.items():
        mine = [{"pg": c, "size": len(g), "ranks": g, "backend": "nccl"} for c, g in groups.items() if rank in g]
        data.meta.update(world_size=world, process_groups=mine, source=source)
    run_meta = {"run_id": importing.new_run_id("inspector"), "world_size": world, "source": source}
    importing.write_run(out, run_meta, ranks)
    return {"run": out, "ranks": len(ranks), "entries": len(records), "skipped": bad, "source": source}
