"""The recording's own health: how far the trace can be trusted, apart from what the job did.

A trace can be incomplete or imprecise for reasons of its own: a rank whose recorder never started or
stepped aside after a failure of its own, events dropped because the writer could not keep up, a
clock offset measured in fewer rounds than asked or with a round trip so long that lateness
comparisons below it mean nothing, clocks that drifted apart during the run, a recorder that made
the job wait. None of these is a fault of the job, and ``diagnose --fail-on-problem`` does not
count them; ``--fail-on-recording`` does.

:func:`per_rank` is a row per rank of what its metadata says; :func:`findings` the rows worth a
person's attention, each with a sentence that says what it means for the analysis.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import polars as pl

from analysis import metadata, text
from analysis.load import Run

MAX_LISTED_RANKS = 1_000_000  # a world size beyond this in metadata is not enumerated


@dataclass(frozen=True)
class Limits:
    clock_uncertainty_ms: float = 0.5  # half the round trip: lateness below it is not meaningful
    clock_drift_ms: float = 1.0  # end offset - start offset, beyond the two measurements' uncertainty
    close_wait_s: float = 1.0  # closing the trace held the job's exit up this long
    probe_wait_s: float = 30.0  # the link probe (asked for, and a few seconds by design) took this long
    background_wait_s: float = 10.0  # setting the trace up took this long (the job did not wait)
    many_segments: int = 2000  # this many small collective segments make every query slow (compact them)
    small_segment_bytes: int = 64 << 10  # a segment's mean size below this: small


# waits_s keys in the rank metadata: what the recorder waited for, whether the job waited with it,
# and the Limits field past which it is worth saying
_WAITS = {
    "close_s": ("closing the trace (destroy_process_group or exit)", True, "close_wait_s"),
    "close_startup_s": ("closing, waiting for the trace to be set up", True, "close_wait_s"),
    "probe_start_s": ("the link probe at start-up", True, "probe_wait_s"),
    "probe_end_s": ("the link probe at shutdown", True, "probe_wait_s"),
    "run_id_s": ("agreeing on the run id (in the background)", False, "background_wait_s"),
    "clock_start_s": ("measuring the clock offset (in the background)", False, "background_wait_s"),
}


def _whole(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _clock(meta: dict, phase: str) -> dict:
    return (meta.get("clock") or {}).get(phase) or {}


def _segment_ranks(run: Run) -> dict[int, int]:
    counts: dict[int, int] = {}
    for path in run.segments:
        match = re.fullmatch(r"rank=(\d+)", os.path.basename(os.path.dirname(path)))
        if match:
            rank = int(match.group(1))
            counts[rank] = counts.get(rank, 0) + 1
    return counts


def per_rank(run: Run) -> pl.DataFrame:
    """Per rank that wrote metadata: host, whether it closed its trace, segments, events dropped,
    its clock offset to rank 0 (rounds measured of those asked, the offset and its uncertainty, the
    drift to the last measurement), why its recorder stopped early (if it did), and the longest
    wait the recorder put on the job."""
    segments = _segment_ranks(run)
    rows = []
    for rank in sorted(run.ranks):
        meta = run.ranks[rank]
        start, end = _clock(meta, "start"), _clock(meta, "end")
        config = meta.get("config") or {}
        rtt, offset, end_offset = start.get("rtt_ns"), start.get("offset_ns"), end.get("offset_ns")
        user_waits = [(v, k) for k, v in metadata.waits(meta).items() if k in _WAITS and _WAITS[k][1]]
        longest = max(user_waits) if user_waits else (None, None)
        rows.append(
            {
                "rank": rank,
                "host": str(meta.get("host")) if meta.get("host") is not None else None,
                "closed": bool(meta.get("closed")),
                "segments": segments.get(rank, 0),
                "dropped_events": meta.get("dropped_events") or 0,
                "clock_rounds": None if start.get("reference") else start.get("rounds"),
                "clock_rounds_asked": start.get("rounds_asked") or _whole(config.get("clock_rounds")),
                "clock_offset_ms": None if offset is None else offset / 1e6,
                "clock_uncertainty_ms": None if rtt is None or start.get("reference") else rtt / 2e6,
                "clock_drift_ms": None if offset is None or end_offset is None else (end_offset - offset) / 1e6,
                "clock_error": str(start["error"]) if start.get("error") else None,
                "failure": str(meta["failure"]) if meta.get("failure") else None,
                "longest_wait_s": longest[0],
                "longest_wait": _WAITS[longest[1]][0] if longest[1] else None,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "rank": pl.Int64,
            "host": pl.String,
            "closed": pl.Boolean,
            "segments": pl.Int64,
            "dropped_events": pl.Int64,
            "clock_rounds": pl.Int64,
            "clock_rounds_asked": pl.Int64,
            "clock_offset_ms": pl.Float64,
            "clock_uncertainty_ms": pl.Float64,
            "clock_drift_ms": pl.Float64,
            "clock_error": pl.String,
            "failure": pl.String,
            "longest_wait_s": pl.Float64,
            "longest_wait": pl.String,
        },
    )


def findings(run: Run, limits: Limits = Limits()) -> list[dict]:
    """What in the recording deserves attention: ``{"kind", "rank", "host", "summary"}`` each (and
    the figures behind it). Kinds: missing_metadata, no_segments, recorder_stopped, dropped_events,
    clock, clock_drift, slow_recorder, many_segments."""
    out: list[dict] = []
    hosts = {r: str(m.get("host")) for r, m in run.ranks.items() if m.get("host") is not None}
    world = run.world_size
    if world and 0 < world <= MAX_LISTED_RANKS:
        missing = sorted(set(range(world)) - set(run.ranks))
        if missing:
            out.append(
                {
                    "kind": "missing_metadata",
                    "rank": None,
                    "host": None,
                    "ranks": missing,
                    "summary": f"rank{'s' if len(missing) > 1 else ''} {text.ranks(missing)} of {world} wrote no "
                    "metadata: their recorder never started, or their files are missing; they are judged from "
                    "the events alone",
                }
            )
    for row in per_rank(run).to_dicts():
        out += _rank_findings(row, run.ranks[row["rank"]], hosts, limits)
    out += _many_segments(run, limits)
    return out


def _many_segments(run: Run, limits: Limits) -> list[dict]:
    """A run of thousands of small segments (recorded before the writer merged them): every query
    opens each file, so the analysis is tens of times slower than it need be; say how to fix it."""
    count = len(run.segments)
    if count < limits.many_segments:
        return []
    try:
        mean = sum(os.path.getsize(p) for p in run.segments) / count
    except OSError:
        return []
    if mean >= limits.small_segment_bytes:
        return []
    summary = (
        f"{count:,} small collective segments (mean {text.size(mean)}; recorded before the writer merged them): "
        f"every query opens each one; analyze-trace compact {text.clean(run.path)} -o NEW writes a copy that "
        "reads like a few (20x faster measured)"
    )
    return [{"kind": "many_segments", "rank": None, "host": None, "summary": summary, "segments": count}]


def _finding(row: dict, kind: str, summary: str, **figures) -> dict:
    host = row["host"]
    who = f"rank {row['rank']}" + (f" ({text.clean(host)})" if host else "")
    return {"kind": kind, "rank": row["rank"], "host": host, "summary": f"{who}: {summary}", **figures}


def _rank_findings(row: dict, meta: dict, hosts: dict[int, str], limits: Limits) -> list[dict]:
    out = []
    if row["segments"] == 0:
        out.append(_finding(row, "no_segments", "no readable collective segment; nothing it did is in the trace"))
    if row["failure"]:
        summary = f"recording stopped early ({text.clean(row['failure'])}); its trace ends there"
        out.append(_finding(row, "recorder_stopped", summary, failure=row["failure"]))
    if row["dropped_events"]:
        summary = (
            f"{row['dropped_events']} events dropped (the writer could not keep up); counts, bandwidth and "
            "hang detection miss them"
        )
        out.append(_finding(row, "dropped_events", summary, dropped_events=row["dropped_events"]))
    out += _clock_findings(row, hosts, limits)
    waits = metadata.waits(meta)
    for key, (what, user, limit) in _WAITS.items():
        wait = waits.get(key)
        if wait is None or wait < getattr(limits, limit):
            continue
        took = text.duration_ms(wait * 1000)
        summary = f"the job waited {took} for {what}" if user else f"{what} took {took}"
        out.append(_finding(row, "slow_recorder", summary, wait_s=wait, waited_for=key))
    return out


def _clock_findings(row: dict, hosts: dict[int, str], limits: Limits) -> list[dict]:
    """The clock findings of one rank (rank 0 is the reference and has none)."""
    rank = row["rank"]
    if rank == 0:
        return []
    out: list[dict] = []
    asked, rounds = row["clock_rounds_asked"], row["clock_rounds"]
    same_host = hosts.get(rank) is not None and hosts.get(rank) == hosts.get(0)
    impact = (
        "it shares rank 0's host and clock, so lateness is unaffected"
        if same_host
        else "its arrival times are compared on its own clock"
    )
    if row["clock_error"] or (rounds is not None and asked and rounds < asked):
        why = f" ({text.clean(row['clock_error'])})" if row["clock_error"] else ""
        summary = f"clock offset to rank 0 measured in {rounds or 0} of {asked or '?'} rounds{why}"
        if not rounds:
            summary += f"; {impact}"
        out.append(_finding(row, "clock", summary, rounds=rounds or 0, rounds_asked=asked))
    elif rounds is None and row["clock_offset_ms"] is None and not same_host:
        summary = f"no clock offset to rank 0 was measured; {impact}"
        out.append(_finding(row, "clock", summary, rounds=0, rounds_asked=asked))
    uncertainty = row["clock_uncertainty_ms"]
    if uncertainty is not None and uncertainty > limits.clock_uncertainty_ms and not same_host:
        summary = (
            f"clock offset known to ±{text.duration_ms(uncertainty)} only (round trip "
            f"{text.duration_ms(2 * uncertainty)}): lateness below that is not meaningful"
        )
        out.append(_finding(row, "clock", summary, uncertainty_ms=uncertainty))
    drift = row["clock_drift_ms"]
    if drift is not None and abs(drift) > limits.clock_drift_ms + 2 * (uncertainty or 0.0) and not same_host:
        summary = (
            f"clock drifted {text.duration_ms(abs(drift))} from rank 0's between its first and last "
            "measurement; lateness late in the run is off by up to that"
        )
        out.append(_finding(row, "clock_drift", summary, drift_ms=drift))
    return out
