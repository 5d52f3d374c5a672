"""Figures in words a person reads at a terminal or in the report: one vocabulary for every front door.

The findings keep machine-readable columns with units in their names (``p50_ms``, ``busbw_GBps``,
``size_bytes``); what people read is made here from those names, so that ``analyze-trace``'s tables,
the HTML report and the notebooks say the same thing the same way:

- sizes in B, KiB, MiB, GiB (1 KiB = 1024 B); a message size is always S as nccl-tests defines it
  per op (``analysis.formulas``), and headers that hold one say so ("size S");
- durations in µs, ms or s, whichever reads best;
- rates with their unit in the header: GB/s (1e9 bytes a second) for bandwidth between ranks,
  Gbit/s for what a NIC or link carries;
- a process group by its id and its description, or by its ranks where it has none;
- rank lists as ranges ("0-3, 6").

Everything taken from a trace passes through :func:`clean` before it reaches a terminal: a trace may
come from someone else's machine, and control characters in a host or group name could rewrite the
screen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

import polars as pl

S_NOTE = (
    "S = the message size as nccl-tests defines it: all_gather the whole output, reduce_scatter the whole "
    "input, gather/scatter the whole gathered or scattered buffer, the others the input"
)
# Control characters, and the bidirectional overrides that reorder what a terminal shows around them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """``value`` as text with control characters (escape sequences, newlines) made visible and harmless."""
    return _CONTROL.sub(lambda m: _escape(ord(m.group())), str(value))


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def size(nbytes: float | None) -> str:
    """4.0 KiB, 1.50 MiB, 812 B."""
    if nbytes is None or (isinstance(nbytes, float) and math.isnan(nbytes)):
        return ""
    value = float(nbytes)
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{_sig(value / scale)} {unit}"
    return f"{value:.0f} B"


def duration_ms(ms: float | None) -> str:
    """A duration given in milliseconds, in µs, ms or s, whichever reads best: 850 µs, 12.3 ms, 1.52 s."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return ""
    if abs(ms) >= 1000:
        return f"{_sig(ms / 1000)} s"
    if abs(ms) >= 1 or ms == 0:
        return f"{_sig(ms)} ms"
    return f"{_sig(ms * 1000)} µs"


def bits_per_s(bytes_per_s: float | None) -> str:
    """A link's rate, given in bytes a second, in Gbit/s or, below 1 Gbit/s, Mbit/s."""
    if bytes_per_s is None:
        return "?"
    bits = bytes_per_s * 8
    return f"{_sig(bits / 1e9)} Gbit/s" if bits >= 1e9 else f"{_sig(bits / 1e6)} Mbit/s"


def percent(fraction: float | None) -> str:
    """0.462 -> "46 %"; below 10 %, one decimal."""
    if fraction is None:
        return ""
    value = fraction * 100
    return f"{value:.0f} %" if abs(value) >= 10 or value == 0 else f"{value:.1f} %"


def number(value: float | None) -> str:
    """A plain figure to three significant digits (more where the integer part needs them)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return str(value)
    return _sig(value)


def _sig(value: float) -> str:
    if value == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def ranks(values: Iterable[int] | None) -> str:
    """[0, 1, 2, 3, 6] -> "0-3, 6"."""
    numbers = sorted({int(v) for v in values or []})
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return ", ".join(parts)


def group_label(desc: str | None, members: Iterable[int] | None) -> str:
    """A process group in words: its description, or its ranks where it has none (torch calls a group
    made without one "undefined")."""
    if desc and desc not in ("undefined", "None"):
        return str(desc)
    listed = ranks(members)
    return f"ranks {listed}" if listed else "?"


# -- tables ---------------------------------------------------------------------------------------
# What people are shown of the findings that have more columns than a screen holds (the CLI and the
# report show the same).
SUMMARY_COLUMNS = ["pg", "group", "op", "family", "ranks", "events", "size_bytes", "total_bytes"]
SUMMARY_COLUMNS += ["p50_ms", "p95_ms", "max_ms", "not_ok"]
COLLECTIVES_COLUMNS = ["pg", "group", "op", "family", "pg_size", "size_bucket", "count", "bytes"]
COLLECTIVES_COLUMNS += ["p50_ms", "p95_ms", "p99_ms", "algbw_GBps", "busbw_GBps"]
STRAGGLERS_COLUMNS = ["rank", "host", "flagged", "steps", "steps_longer", "longer_ms", "longer_spread_ms"]
STRAGGLERS_COLUMNS += ["excess_ms_per_step", "outside_z", "times_last", "mean_lateness_ms", "p95_lateness_ms"]
STRAGGLERS_COLUMNS += ["outlier_score", "verdict"]

# Column names carry their unit; the header a person reads, and how a cell is written, follow from it.
_HEADERS = {
    "pg": "pg",
    "pg_size": "ranks",
    "size_bucket": "size S from",
    "size_bytes": "size S",
    "mean_size_bytes": "mean size S",
    "total_bytes": "total S",
    "times_last": "times last",
    "outlier_score": "score",
    "compute_share": "outside comm",
    "mean_gap_ms": "mean gap",
    "excess_gap_ms": "gap over others",
    "gap_score": "gap score",
    "steps_longer": "steps longer",
    "longer_ms": "longer by",
    "longer_spread_ms": "±",
    "excess_ms_per_step": "excess per step",
    "outside_z": "z",
    "not_ok": "not ok",
    "missing_ranks": "never issued it",
    "stuck_ranks": "stuck in it",
    "culprit_rank": "culprit",
    "tcp_retrans_pct": "retransmitted %",
    "error_drop_pct": "errors+drops %",
    "algbw_GBps": "algbw (GB/s)",
    "busbw_GBps": "busbw (GB/s)",
}
_UNIT_SUFFIXES = (
    ("_GBps", " (GB/s)"),
    ("_gbitps", " (Gbit/s)"),
    ("_Gbitps", " (Gbit/s)"),
    ("_mbitps", " (Mbit/s)"),
    ("_pct", " %"),
    ("_ms", ""),
    ("_us", ""),
    ("_s", ""),
    ("_bytes", ""),
)


def header(column: str) -> str:
    if column.endswith(("_a", "_b")):  # one of two runs side by side (compare)
        return f"{header(column[:-2])} {column[-1].upper()}"
    if column in _HEADERS:
        return _HEADERS[column]
    for suffix, unit in _UNIT_SUFFIXES:
        if column.endswith(suffix):
            return column[: -len(suffix)].replace("_", " ") + unit
    return column.replace("_", " ")


def cell(column: str, value: object) -> str:
    """One value of ``column`` as a person reads it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, list | tuple):
        if all(isinstance(v, int) for v in value):
            return ranks(value)
        return ", ".join(clean(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{clean(k)} {clean(v)}" for k, v in value.items())
    if isinstance(value, int | float):
        if column.endswith(("_a", "_b")):
            return cell(column[:-2], value)
        if column.endswith("_ms"):
            return duration_ms(value)
        if column.endswith("_us"):
            return duration_ms(value / 1000)
        if column.endswith("_s") and not column.endswith("_GBps"):
            return duration_ms(value * 1000)
        if column.endswith("bytes") or column == "size_bucket":
            return size(value)
        if column.endswith("_pct"):
            return f"{value:.3g}"
        if column in ("pg_size", "rank", "seq") or isinstance(value, int):
            return str(value)
        return number(value)
    return clean(value)


def _numeric(values: Sequence[object]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


def table(
    frame: pl.DataFrame | Sequence[dict],
    columns: Sequence[str] | None = None,
    headers: dict[str, str] | None = None,
    formatters: dict[str, Callable[[object], str]] | None = None,
) -> str:
    """A plain text table: a header, a rule, one line a row; numbers to the right, text to the left.
    ``columns`` picks and orders them (default: all); ``headers`` and ``formatters`` override the
    header and the cell text of some."""
    rows = frame.to_dicts() if isinstance(frame, pl.DataFrame) else list(frame)
    if columns is None:
        columns = frame.columns if isinstance(frame, pl.DataFrame) else list(dict.fromkeys(k for r in rows for k in r))
        if "pg" in columns and "group" in columns:  # a group's label beside its id
            columns = [c for c in columns if c != "group"]
            columns.insert(columns.index("pg") + 1, "group")
    columns = [c for c in columns if not rows or c in rows[0]]
    formatters = formatters or {}
    heads = [(headers or {}).get(c) or header(c) for c in columns]
    body = [[formatters[c](r.get(c)) if c in formatters else cell(c, r.get(c)) for c in columns] for r in rows]
    right = [_numeric([r.get(c) for r in rows]) for c in columns]
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(out).rstrip()

    return "\n".join([line(heads), line(["-" * w for w in widths]), *(line(b) for b in body)])
