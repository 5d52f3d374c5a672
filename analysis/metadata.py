"""The one boundary where a run's JSON metadata becomes typed values.

A trace may come from another machine or another person, and its JSON files can hold anything: the
wrong types, numbers beyond any real job (a world size of 10^9, a clock offset of 8e18 ns, a rank of
10^30), strings of megabytes, nesting a hundred thousand levels deep, or not be a file at all (a FIFO
would block the reader forever). Everything the analysis reads of ``run.json`` and ``rank-*.json``
passes through here: a field of the wrong type or out of bounds is left out and said in one
``problems`` line per file; what remains has the types the rest of the analysis relies on.
"""

from __future__ import annotations

import json
import math
import os
import stat

MAX_FILE_BYTES = 16 << 20  # a metadata file larger than this is not read
MAX_RANKS = 1_000_000  # ranks are below this, world sizes at most this
MAX_TEXT = 256  # names (hosts, groups, versions) are cut to this many characters
MAX_MESSAGE = 1024  # an error message kept in metadata
MAX_NS = 10**15  # a clock offset or round trip beyond ~11.6 days is not believed
MAX_COUNT = 1 << 62
MAX_GROUPS = 100_000


def regular_file_problem(path: str) -> str | None:
    """Why ``path`` is not a file to read (a FIFO, a device, a folder, unreadable), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc.__class__.__name__})"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, a device or a folder)"
    return None


def read_json(path: str, problems: list[str], name: str | None = None):
    """The JSON value in ``path``, or None with the reason in ``problems`` (one line)."""
    name = name or os.path.basename(path)
    why = regular_file_problem(path)
    if why is None and os.path.getsize(path) > MAX_FILE_BYTES:
        why = f"larger than {MAX_FILE_BYTES >> 20} MiB"
    if why is None:
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh, parse_constant=_no_constant)
        except RecursionError:
            why = "nested too deep"
        except (OSError, ValueError) as exc:
            why = f"unreadable ({exc.__class__.__name__})"
    problems.append(f"{name}: skipped ({why})")
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


# -- typed values ---------------------------------------------------------------------------------
class _Bad(Exception):
    """A value that is not what its field holds; the message says what it should be."""


def _int(lo: int, hi: int):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _Bad(f"a whole number from {lo} to {hi}")
        return value

    return check


def _float(lo: float, hi: float):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Bad(f"a number from {lo:g} to {hi:g}")
        if not lo <= value <= hi:
            raise _Bad(f"a number from {lo:g} to {hi:g}")
        return float(value)

    return check


def _text(limit: int = MAX_TEXT):
    def check(value):
        if not isinstance(value, str):
            raise _Bad("text")
        return value if len(value) <= limit else value[: limit - 1] + "…"

    return check


def _flag(value):
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _ranks(value):
    if not isinstance(value, list) or len(value) > MAX_RANKS:
        raise _Bad(f"a list of at most {MAX_RANKS} ranks")
    return [_int(0, MAX_RANKS - 1)(r) for r in value]


def _each(items: list[tuple[str, object, object]]) -> tuple[list[tuple[str, object]], list[str]]:
    """Check each (name, value, kind): the values that passed (an object or a list within keeps its
    good parts) and what the others should have been."""
    good, bad = [], []
    for name, value, kind in items:
        try:
            good.append((name, kind(value)))
        except _Partial as exc:
            good.append((name, exc.good))
            bad += [f"{name}{b}" if b.startswith("[") else f"{name}.{b}" for b in exc.bad]
        except _Bad as exc:
            bad.append(f"{name} ({exc})")
    return good, bad


class _Partial(_Bad):
    """An object or a list some of whose parts were bad: the good ones, and what the bad ones should be."""

    def __init__(self, good, bad: list[str]) -> None:
        super().__init__("; ".join(bad))
        self.good, self.bad = good, bad


def _record(fields: dict):
    """An object with these fields (each checked; unknown ones dropped)."""

    def check(value):
        if not isinstance(value, dict):
            raise _Bad("an object")
        good, bad = _each([(key, value[key], kind) for key, kind in fields.items() if value.get(key) is not None])
        if bad:
            raise _Partial(dict(good), bad)
        return dict(good)

    return check


def _list_of(kind, limit: int):
    def check(value):
        if not isinstance(value, list) or len(value) > limit:
            raise _Bad(f"a list of at most {limit}")
        good, bad = _each([(f"[{i}]", item, kind) for i, item in enumerate(value)])
        if bad:
            raise _Partial([v for _, v in good], bad)
        return [v for _, v in good]

    return check


def _map_of(kind, limit: int):
    """An object of named values of ``kind`` (names cut to MAX_TEXT)."""

    def check(value):
        if not isinstance(value, dict) or len(value) > limit:
            raise _Bad(f"an object of at most {limit} entries")
        good, bad = _each([(str(key)[:MAX_TEXT], item, kind) for key, item in value.items()])
        if bad:
            raise _Partial(dict(good), bad)
        return dict(good)

    return check


def _scalars(value):
    """An object of plain values (settings, the environment): text cut short, nothing nested."""
    if not isinstance(value, dict):
        raise _Bad("an object")
    out = {}
    for key, item in list(value.items())[:1000]:
        if isinstance(item, bool | int) or (isinstance(item, float) and math.isfinite(item)):
            out[str(key)[:MAX_TEXT]] = item
        elif isinstance(item, str):
            out[str(key)[:MAX_TEXT]] = _text()(item)
    return out


_CLOCK = _record(
    {
        "offset_ns": _int(-MAX_NS, MAX_NS),
        "rtt_ns": _int(0, MAX_NS),
        "rounds": _int(0, 10_000),
        "rounds_asked": _int(1, 10_000),
        "reference": _flag,
        "error": _text(MAX_MESSAGE),
        "measured_at_ns": _int(0, 1 << 62),
        "wait_s": _float(0, 1e9),
    }
)
_GROUP = _record(
    {
        "pg": _text(),
        "desc": _text(),
        "size": _int(1, MAX_RANKS),
        "ranks": _ranks,
        "backend": _text(),
        "group_rank": _int(-1, MAX_RANKS - 1),
    }
)
# What run.json and every rank-*.json say alike about the job and the software.
_JOB_FIELDS = {
    "run_id": _text(),
    "world_size": _int(1, MAX_RANKS),
    "job_id": _text(),
    "restart_count": _int(0, 1 << 31),
    "torch_version": _text(),
    "python_version": _text(),
    "recorder_version": _text(),
    "schema_version": _int(0, 1 << 31),
}
# An imported run (analysis.importing): where its events came from and what that source cannot tell.
_SOURCE = _record(
    {
        "kind": _text(),
        "name": _text(),
        "version": _text(),
        "backends": _list_of(_text(), 64),
        "files": _list_of(_text(MAX_MESSAGE), MAX_RANKS),
        "entries": _int(0, MAX_COUNT),
        "entries_skipped": _int(0, MAX_COUNT),
        "end_times": _flag,
        "start_times": _flag,
        "limits": _map_of(_text(MAX_MESSAGE), 64),
    }
)
# The stacks of the calls a rank had in flight, innermost frame first (Flight Recorder's frames).
_STACK = _record({"pg": _text(), "seq": _int(-1, MAX_COUNT), "op": _text(), "frames": _list_of(_text(512), 64)})
RANK_FIELDS = {
    **_JOB_FIELDS,
    "source": _SOURCE,
    "stacks": _list_of(_STACK, 64),
    "rank": _int(0, MAX_RANKS - 1),
    "local_rank": _int(0, MAX_RANKS - 1),
    "host": _text(),
    "pid": _int(0, 1 << 31),
    "incarnation": _text(),
    "started_ns": _int(0, 1 << 62),
    "updated_ns": _int(0, 1 << 62),
    "closed": _flag,
    "config": _scalars,
    "env": _scalars,
    "clock": _record({"start": _CLOCK, "end": _CLOCK}),
    "process_groups": _list_of(_GROUP, MAX_GROUPS),
    "dropped_events": _int(0, MAX_COUNT),
    "failure": _text(MAX_MESSAGE),
    "waits_s": _scalars,
    "segments_written": _int(0, MAX_COUNT),
    "rows_written": _int(0, MAX_COUNT),
    "bytes_written": _int(0, MAX_COUNT),
    "recorder_cpu_s": _float(0, 1e12),
    "sampler": _scalars,
}
# A rank's live file (recorder.live): where it is while the job runs.
LIVE_FIELDS = {
    "version": _int(0, 1 << 31),
    "rank": _int(0, MAX_RANKS - 1),
    "pid": _int(0, 1 << 31),
    "t_ns": _int(0, 1 << 62),
    "flush_s": _float(0, 1e6),
    "groups": _map_of(_record({"issued": _int(-1, MAX_COUNT), "completed": _int(-1, MAX_COUNT)}), MAX_GROUPS),
    "inflight": _int(0, MAX_COUNT),
    "oldest": _record(
        {
            "pg": _text(),
            "seq": _int(-1, MAX_COUNT),
            "op": _text(),
            "peer": _int(-1, MAX_RANKS),
            "t_start_ns": _int(0, 1 << 62),
        }
    ),
    "dropped": _int(0, MAX_COUNT),
    "closed": _flag,
}
RUN_FIELDS = {**_JOB_FIELDS, "created_ns": _int(0, 1 << 62), "created_by_host": _text(), "source": _SOURCE}


def typed(value, fields: dict, name: str, problems: list[str]) -> dict:
    """``value`` (parsed JSON) as an object of ``fields``; what is bad or unknown is left out, said once."""
    try:
        return _record(fields)(value)
    except _Partial as exc:
        problems.append(f"{name}: ignored {', '.join(exc.bad)[:400]}")
        return exc.good
    except _Bad:
        problems.append(f"{name}: ignored (not a JSON object)")
        return {}


def waits(meta: dict) -> dict[str, float]:
    """A rank's ``waits_s`` with the values that are numbers of seconds."""
    values = (meta.get("waits_s") or {}).items()
    return {k: float(v) for k, v in values if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0}
