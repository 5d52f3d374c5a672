"""diagnose's report in words: one sentence per finding that a person can check against the trace,
and the report for people (``analyze-trace diagnose``)."""

from __future__ import annotations

from analysis import text
from analysis.load import problem_kind


def outside_words(r: dict) -> str:
    """What a straggler's verdict rests on, in words a person can check against the trace."""
    spread = f" (±{text.duration_ms(r['longer_spread_ms'])})" if r.get("longer_spread_ms") is not None else ""
    return (
        f"spent {text.duration_ms(r['longer_ms'])}{spread} more outside communication than the median rank, "
        f"in {r['steps_longer']} of {r['steps']} steps (a step takes {text.duration_ms(r['step_ms'])})"
    )


def _who(rank: int, host: str | None) -> str:
    return f"rank {rank}" + (f" ({text.clean(host)})" if host else "")


def _group(pg: str | None, labels: dict[str, str]) -> str:
    label = labels.get(pg) if pg is not None else None
    return f"group {text.clean(pg)}" + (f" ({text.clean(label)})" if label else "")


def _gbit(gigabytes_per_s: float | None) -> str:
    return text.bits_per_s(None if gigabytes_per_s is None else gigabytes_per_s * 1e9)


def link_sentences(report: dict) -> list[dict]:
    """One entry per host with a bad link: slow (the probe), lossy (its TCP connections or totals),
    or both; and one per interface whose NIC counted errors or drops."""
    hosts: dict[str, dict] = {}
    for s in report["slow_links"]:
        hosts.setdefault(s["host"], {"interface": s["interface"]})["slow"] = s
    for p in report["packet_loss"]:
        if p["source"] != "net_dev":
            entry = hosts.setdefault(p["host"], {"interface": p["interface"]})
            entry["lossy"] = p
            entry["interface"] = entry["interface"] or p["interface"]
    out = []
    for host, entry in hosts.items():
        parts = []
        slow, lossy = entry.get("slow"), entry.get("lossy")
        if slow:
            e = slow["evidence"]
            parts.append(
                f"the probe measured {_gbit(e['median_gbps'])} to and from its peers (best pair "
                f"{_gbit(e['best_gbps'])}), where other pairs reach {_gbit(e['others_median_gbps'])}"
            )
        if lossy and lossy["source"] == "tcp_conn":
            e = lossy["evidence"]
            parts.append(
                f"{lossy['loss_pct']:.3g} % of the bytes its {e['connections']} TCP connections of the job sent "
                f"were retransmitted (each at least {e['min_loss_pct']:.3g} %; connections elsewhere "
                f"{(e['others_median_loss_pct'] or 0):.3g} %)"
            )
        elif lossy:
            parts.append(
                f"{lossy['loss_pct']:.3g} % of its TCP segments were retransmitted (host totals: every host that "
                "sends into a lossy link shows this; record per-connection samples to tell which)"
            )
        what = " and ".join(w for w, present in (("slow", slow), ("lossy", lossy)) if present)
        where = text.clean(host) + (f" {text.clean(entry['interface'])}" if entry["interface"] else "")
        out.append(
            {
                "kind": "link",
                "host": host,
                "interface": entry["interface"],
                "slow": bool(slow),
                "lossy": bool(lossy),
                "summary": f"{where}: a {what} link: " + "; ".join(parts),
            }
        )
    for p in report["packet_loss"]:
        if p["source"] == "net_dev":
            out.append(
                {
                    "kind": "nic_errors",
                    "host": p["host"],
                    "interface": p["interface"],
                    "summary": f"{text.clean(p['host'])} {text.clean(p['interface'])}: {p['loss_pct']:.3g} % of "
                    "its packets were counted as errors or drops by the NIC",
                }
            )
    return out


def sentences(report: dict, labels: dict[str, str]) -> list[dict]:
    """``report``'s job findings as ``{"kind", "summary", ...}``, in the order of :data:`KINDS`."""
    out = []
    for d in report["dead_ranks"]:
        out.append(
            {
                "kind": "dead_rank",
                "rank": d["rank"],
                "summary": f"{_who(d['rank'], d['host'])} stopped recording without closing its trace (a crash "
                f"or a kill); its last operation: {text.clean(d['last_op'])} seq {d['last_seq']} on "
                f"{_group(d['last_pg'], labels)}, {text.clean(d['last_status'])}",
            }
        )
    out += [_hang(h, labels) for h in report["hangs"]]
    for d in report["desyncs"]:
        if d["kind"] == "op":
            what = f"called {text.clean(d['culprit_op'])} where the others called {text.clean(d['expected_op'])}"
        else:
            what = f"called {text.clean(d['culprit_op'])} with a different {d['kind']} from the others"
        out.append(
            {
                "kind": "desync",
                "pg": d["pg"],
                "seq": d["seq"],
                "rank": d["culprit_rank"],
                "summary": f"{_group(d['pg'], labels)} seq {d['seq']}: rank {d['culprit_rank']} {what}",
            }
        )
    out += link_sentences(report)
    for s in report["stragglers"]:
        late = (
            f"arrived last at {s['times_last']} collectives, {text.duration_ms(s['mean_lateness_ms'])} late on "
            f"average (p95 {text.duration_ms(s['p95_lateness_ms'])}, score {s['outlier_score']:.3g})"
        )
        if s.get("outside_z") is not None:
            summary = f"{_who(s['rank'], s['host'])} {outside_words(s)}; it {late}"
        elif s["compute_share"] is None:
            summary = (
                f"{_who(s['rank'], s['host'])} {late}; the source has no completion times, so a slow rank cannot "
                "be told from a slow link"
            )
        else:
            summary = (
                f"{_who(s['rank'], s['host'])} {late}; {text.percent(s['compute_share'])} of its lateness is time "
                "spent outside communication"
            )
        out.append({"kind": "straggler", "rank": s["rank"], "summary": summary})
    return out


def _hang(h: dict, labels: dict[str, str]) -> dict:
    parts = []
    if h["missing_ranks"]:
        parts.append(f"ranks {text.ranks(h['missing_ranks'])} never issued it")
    if h["stuck_ranks"]:
        parts.append(f"ranks {text.ranks(h['stuck_ranks'])} are stuck in it")
    for stack in (h.get("stacks") or [])[:1]:
        parts.append(f"rank {stack['rank']} called it from {text.clean(_caller(stack['frames']))}")
    return {
        "kind": "hang",
        "pg": h["pg"],
        "seq": h["seq"],
        "summary": f"{_group(h['pg'], labels)} stopped at seq {h['seq']} ({text.clean(h['op'] or '?')}): "
        + ", ".join(parts),
    }


def _caller(frames: list[str]) -> str:
    """The innermost frame of a stack outside torch.distributed and commtrace's recorder: the
    caller's own code (the innermost frame if every one is in those)."""
    for frame in frames:
        if "/torch/" not in frame and "/recorder/" not in frame:
            return frame
    return frames[0]


def source_lines(source: dict | None) -> list[str]:
    """An imported run's source and what it cannot tell, for the head of a report."""
    if not source:
        return []
    backends = ", ".join(text.clean(b) for b in source.get("backends") or [])
    name = f"{text.clean(source.get('name') or source.get('kind'))} {text.clean(source.get('version') or '')}"
    lines = [f"imported from {name}" + (f" ({backends})" if backends else "") + "; what it cannot tell:"]
    return lines + [f"  - {text.clean(line)}" for line in (source.get("limits") or {}).values()]


def describe(report: dict) -> list[str]:
    """diagnose's report for people: the job's findings, then the recording's health, a sentence each."""
    hosts = ", ".join(text.clean(h) for h in report["hosts"]) or "?"
    lines = [f"run {text.clean(report['run_id'])}: world size {report['world_size']}, hosts {hosts}"]
    lines += source_lines(report.get("source")) + [""]
    job = report["findings"]
    if job:
        lines.append(f"the job: {len(job)} finding{'s' if len(job) > 1 else ''}")
        lines += [f"  - {f['kind'].replace('_', ' ')}: {f['summary']}" for f in job]
    else:
        lines.append("the job: nothing flagged (no straggler, slow or lossy link, hang, desync or dead rank)")
    lines.append("")
    recording = report["recording"] + [{"kind": problem_kind(p), "summary": text.clean(p)} for p in report["problems"]]
    if recording:
        lines.append(f"the recording: {len(recording)} thing{'s' if len(recording) > 1 else ''} to know")
        lines += [f"  - {f['kind'].replace('_', ' ')}: {f['summary']}" for f in recording]
    else:
        lines.append(
            "the recording: nothing to report beyond what the source cannot tell"
            if report.get("source")
            else "the recording: nothing to report (no rank missing, nothing dropped, clock offsets measured)"
        )
    return lines
