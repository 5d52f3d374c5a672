"""A frame of ``analyze-trace watch`` (analysis.watchframe) as text for a terminal."""

from __future__ import annotations

import datetime

from analysis import text
from analysis.sentences import outside_words

_BUCKET = {"size_bucket": text.size}
_PROGRESS_HEADERS = {
    "completed": "last seq done",
    "issued": "last seq issued",
    "ops_per_s": "collectives/s",
    "behind": "behind the furthest",
}


def _who(rank: int, host: str | None) -> str:
    return f"rank {rank}" + (f" ({text.clean(host)})" if host else "")


def render(frame: dict, interval_s: float) -> str:
    when = datetime.datetime.fromtimestamp(frame["time_ns"] / 1e9).strftime("%H:%M:%S")
    hosts = frame.get("hosts") or []
    lines = [
        f"commtrace watch · run {text.clean(frame['run_id'])} · {frame.get('world_size') or '?'} ranks on "
        f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} · {frame['state']} · refresh {frame['refresh']} "
        f"(every {interval_s:g} s) · {when}",
        "",
    ]
    lines += _hang(frame)
    lines += _progress(frame)
    if frame["bandwidth"]:
        lines += ["", "bus bandwidth: this interval, and the run so far"]
        lines.append(
            text.table(
                frame["bandwidth"],
                ["group", "op", "size_bucket", "count", "busbw_GBps", "p50_ms", "run_count", "run_busbw_GBps"],
                headers={"count": "n", "busbw_GBps": "busbw GB/s", "p50_ms": "p50 ms", "run_count": "run n",
                         "run_busbw_GBps": "run busbw GB/s", "size_bucket": "size"},
                formatters=_BUCKET,
            )
        )  # fmt: skip
    lines += _late(frame, frame["window"]["seconds"])
    lines += _hosts(frame)
    lines += _recording(frame)
    return "\n".join(lines)


def _hang(frame: dict) -> list[str]:
    hang = frame.get("hang")
    if not hang:
        return []
    parts = [
        f"HANG SUSPECTED: {text.clean(hang.get('group') or hang['pg'])} seq {hang['seq']} {text.clean(hang['op'])}, "
        f"for {hang['for_s']:.0f} s"
    ]
    if hang["never_issued"]:
        parts.append(f"ranks that never issued it: {text.ranks(hang['never_issued'])}")
    parts.append(f"ranks stuck in it: {text.ranks(hang['stuck_ranks'])}")
    if hang["not_writing"]:
        parts.append(f"members not writing: {text.ranks(hang['not_writing'])}")
    return ["; ".join(parts), ""]


def _progress(frame: dict) -> list[str]:
    rows = []
    for p in frame["progress"]:
        behind = ", ".join(f"rank {b['rank']} (-{b['by']})" for b in p["behind"][:4]) or "none"
        rows.append(
            {
                "group": p.get("group") or p["pg"],
                "ranks": p["ranks"],
                "completed": p["completed"],
                "issued": p["issued"],
                "ops_per_s": p.get("ops_per_s"),
                "behind": behind,
            }
        )
    lines = []
    if rows:
        lines.append(text.table(rows, headers=_PROGRESS_HEADERS, formatters={"ops_per_s": text.number}))
    for op in frame["inflight"][:3]:
        lines.append(
            f"in flight: {_who(op['rank'], None)} {text.clean(op['op'])} seq {op['seq']} on "
            f"{text.clean(op.get('group') or op['pg'])} "
            f"for {text.duration_ms(op['for_s'] * 1e3)} ({op['inflight']} in flight)"
        )
    return lines


def _late(frame: dict, window_s: float) -> list[str]:
    lines = []
    if frame["late"]:
        lines += ["", "latest arrivals this interval (mean lateness against the first to arrive)"]
        lines.append(
            text.table(
                frame["late"],
                ["rank", "host", "mean_late_ms", "times_last", "collectives", "run_mean_late_ms"],
                headers={"mean_late_ms": "late ms", "run_mean_late_ms": "run late ms"},
            )
        )
    if frame["stragglers"]:
        lines += ["", f"stragglers over the last {window_s:.3g} s (as diagnose judges them):"]
        for s in frame["stragglers"]:
            lines.append(f"  {_who(s['rank'], s.get('host'))} {outside_words(s)}")
    else:
        lines += ["", f"stragglers over the last {window_s:.3g} s: none"]
    return lines


def _hosts(frame: dict) -> list[str]:
    lines = []
    if frame["host_figures"]:
        newest = max((h["newest_sample_ns"] or 0) for h in frame["host_figures"])
        rows = [
            {
                "host": h["host"],
                "rx": text.bits_per_s(h["rx_Bps"]),
                "tx": text.bits_per_s(h["tx_Bps"]),
                "retrans_pct": h["retrans_pct"],
                "errors": h["errors"],
                "drops": h["drops"],
                "sample age s": round((frame["time_ns"] - (h["newest_sample_ns"] or newest)) / 1e9, 1),
            }
            for h in frame["host_figures"]
        ]
        lines += ["", "hosts (their latest samples)", text.table(rows, headers={"retrans_pct": "TCP retrans %"})]
    for p in frame["packet_loss"]:
        where = f"{text.clean(p['host'])}" + (f" {text.clean(p['interface'])}" if p.get("interface") else "")
        lines.append(f"  packet loss at {where}: {p['loss_pct']:.2f} % ({p['source']})")
    return lines


def _recording(frame: dict) -> list[str]:
    rec = frame["recording"]
    parts = []
    if rec["dropped_events"]:
        parts.append("dropped events: " + ", ".join(f"rank {r}: {n}" for r, n in rec["dropped_events"].items()))
    if rec["stopped_writing"]:
        parts.append(f"stopped writing: {text.ranks(rec['stopped_writing'])}")
    if rec["closed"] and frame["state"] != "ended":
        parts.append(f"closed: {text.ranks(rec['closed'])}")
    lines = ["", f"recording: {frame['ranks_writing']} ranks writing" + (f"; {'; '.join(parts)}" if parts else "")]
    lines += [f"  {text.clean(p)}" for p in rec["problems"][:5]]
    if len(rec["problems"]) > 5:
        lines.append(f"  ... and {len(rec['problems']) - 5} more (--format json lists them all)")
    return lines
