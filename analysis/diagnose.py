"""All findings at once, reduced to what was flagged: the ``diagnose`` JSON contract.

The object (``analyze-trace diagnose --format json``; other tools parse it, so fields are only ever
added, never renamed):

    {"run_id": str, "world_size": int | null, "hosts": [str],
     "stragglers":  [{"rank", "host", "times_last", "mean_lateness_ms", "p95_lateness_ms", "outlier_score",
                      "compute_share", "verdict", "excess_gap_ms", "gap_score"}],
     "slow_links":  [{"host", "interface", "evidence"}],
     "packet_loss": [{"host", "interface", "connection", "source", "loss_pct", "evidence"?}],
     "hangs":       [{"pg", "seq", "op", "missing_ranks", "stuck_ranks"}],
     "desyncs":     [{"pg", "seq", "culprit_rank", "kind", "expected_op", "culprit_op"}],
     "dead_ranks":  [{"rank", "host", "last_op", "last_pg", "last_seq", "last_status", "last_event_ns"}],
     "problems":    [str],
     "findings":    [{"kind", "summary", ...}],
     "recording":   [{"kind", "rank", "host", "summary", ...}]}

Every list holds only what was flagged; a healthy run has them all empty. ``packet_loss`` names
a host whose link loses packets, from the job's own TCP connections (``source`` "tcp_conn",
``connection`` null, ``evidence`` with the connection figures; see findings.lossy_hosts), or, for
a run without per-connection samples, any host whose TCP retransmission total is high (``source``
"snmp"; every host that sends into a lossy link shows it); and any interface with errors or drops
(``source`` "net_dev"). A rank on a host named in ``slow_links`` or (from its connections)
``packet_loss`` is not listed in ``stragglers``: behind a bad link it finishes late and so starts
late, and the link is the finding. ``excess_gap_ms`` and ``gap_score`` say how much longer than the
other ranks a listed rank spent outside communication per collective (findings.stragglers).
``problems`` lists files that could not be read. ``slow_links`` comes from the link probe
(COMMTRACE_PROBE) and is empty for a run recorded without it; its ``evidence`` holds the probe's
figures (GB/s): the best and median of the host's pairs and the median of the other pairs.

``findings`` is the job's faults once more, one entry each in the order to read them, each with a
``summary``: a sentence a person can check against the trace. A host whose link is both slow and
lossy is one entry (``kind`` "link", with ``slow`` and ``lossy``). ``recording`` is the recording's
own health (``analysis.health``): ranks that recorded nothing or stopped early, dropped events,
clock offsets missing, incomplete or uncertain, a recorder that made the job wait. It is apart from
the job's faults: :func:`flagged` is about the job, :func:`recording_flagged` about the recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from analysis import findings, health, text
from analysis.contract import (
    ConnectionEvidence,
    DeadRank,
    Desync,
    Hang,
    PacketLoss,
    ProbeEvidence,
    Report,
    SlowLink,
    Straggler,
)
from analysis.load import Run, problem_kind
from analysis.vocabulary import KINDS


@dataclass(frozen=True)
class Thresholds:
    straggler_score: float = 3.5  # robust z-score of a rank's mean lateness
    straggler_min_lateness_ms: float = 1.0  # and late by at least this on average
    straggler_min_times_last: int = 5  # and the last to arrive at least this often (a few late arrivals are noise)
    # and late at least partly for time spent outside communication (a loose gate: with overlapping
    # asynchronous collectives the share understates)
    straggler_min_compute_share: float = 0.25
    loss_pct: float = 0.5  # TCP retransmitted / sent, per host or connection
    dead_after_s: float = 2.0  # others kept writing this long after a rank's last event
    slow_link_factor: float = 0.5  # every probed pair of the host below this x the other pairs' median


def judge_stragglers(
    frame: pl.DataFrame, hosts_by_rank: dict, bad_link_hosts: set, thresholds: Thresholds = Thresholds()
) -> pl.DataFrame:
    """``findings.stragglers``' rows with ``flagged`` and ``verdict``: why each rank is a straggler,
    or the first gate it did not pass."""
    t = thresholds
    flagged, verdicts = [], []
    for r in frame.to_dicts():
        share = r["compute_share"] or 0.0
        host = hosts_by_rank.get(r["rank"])
        if r["outlier_score"] is None:
            why = "too few collectives to judge"
        elif r["outlier_score"] <= t.straggler_score:
            why = f"arrives with its peers (score {r['outlier_score']:.3g} <= {t.straggler_score:g})"
        elif r["mean_lateness_ms"] < t.straggler_min_lateness_ms:
            late = text.duration_ms(r["mean_lateness_ms"])
            why = f"late by only {late} on average (under {text.duration_ms(t.straggler_min_lateness_ms)})"
        elif r["times_last"] < t.straggler_min_times_last:
            why = f"last only {r['times_last']} times (under {t.straggler_min_times_last})"
        elif share < t.straggler_min_compute_share:
            why = (
                f"only {text.percent(share)} of its lateness is time outside communication (under "
                f"{text.percent(t.straggler_min_compute_share)}): it starts late because its collectives end late"
            )
        elif host is not None and host in bad_link_hosts:
            why = f"behind the bad link of {text.clean(host)}: the link is the finding"
        else:
            why = f"a slow rank: {text.percent(share)} of its lateness is time spent outside communication"
            flagged.append(r["rank"])
        verdicts.append(why)
    return frame.with_columns(
        pl.col("rank").is_in(flagged).alias("flagged"), pl.Series("verdict", verdicts, dtype=pl.String)
    )


def judged_stragglers(
    run: Run, report: dict | None = None, thresholds: Thresholds = Thresholds(), min_skew_ms: float = 1.0
) -> pl.DataFrame:
    """``findings.stragglers`` with each rank's host and the verdict on it (``flagged``, ``verdict``);
    ``report``: the run's diagnose report if already made (for the hosts behind bad links)."""
    report = report if report is not None else diagnose(run, thresholds)
    hosts = {r: m.get("host") for r, m in run.ranks.items()}
    frame = findings.stragglers(run, min_skew_ms)
    frame = frame.with_columns(pl.Series("host", [hosts.get(r) for r in frame["rank"]], dtype=pl.String))
    return judge_stragglers(frame, hosts, bad_link_hosts(report["slow_links"], report["packet_loss"]), thresholds)


def diagnose(run: Run, thresholds: Thresholds = Thresholds()) -> dict:
    """The report (the JSON contract above, built from the typed records of analysis.contract)."""
    hosts_by_rank = {r: m.get("host") for r, m in run.ranks.items()}
    packet_loss = _packet_loss(run, thresholds)
    slow_links = _slow_links(run, thresholds)
    report = Report(
        run_id=run.run_id,
        world_size=run.world_size,
        hosts=run.hosts,
        stragglers=_stragglers(run, thresholds, hosts_by_rank, bad_link_hosts(slow_links, packet_loss)),
        slow_links=slow_links,
        packet_loss=packet_loss,
        hangs=[Hang(**r) for r in findings.hangs(run).to_dicts()],
        desyncs=[Desync(**r) for r in findings.desyncs(run).to_dicts()],
        dead_ranks=_dead_ranks(run, thresholds, hosts_by_rank),
        problems=list(run.problems),
        recording=health.findings(run),
    ).as_dict()
    named = [x["pg"] for x in report["hangs"] + report["desyncs"]] + [x["last_pg"] for x in report["dead_ranks"]]
    report["findings"] = _sentences(report, run.group_labels(named))
    return report


def _packet_loss(run: Run, thresholds: Thresholds) -> list[PacketLoss]:
    """Loss is pinned on a host by the job's own connections where the sampler saw them; the hosts'
    TCP totals (every host that sends into a lossy link retransmits) only where it did not. Any
    interface with errors or drops besides."""
    per_connection = run.sql("SELECT 1 FROM samples WHERE source = 'tcp_conn' LIMIT 1").height > 0
    if per_connection:
        lossy = [
            PacketLoss(
                r["host"],
                r["interface"],
                None,
                "tcp_conn",
                r["loss_pct"],
                ConnectionEvidence(r["connections"], r["min_loss_pct"], r["others_loss_pct"]),
            )
            for r in findings.lossy_hosts(run, thresholds.loss_pct).to_dicts()
        ]
    else:
        lossy = [
            PacketLoss(r["host"], None, None, "snmp", r["tcp_retrans_pct"])
            for r in findings.tcp_loss(run).to_dicts()
            if r["connection"] == "all"
            and r["tcp_retrans_pct"] is not None
            and r["tcp_retrans_pct"] >= thresholds.loss_pct
        ]
    return lossy + [
        PacketLoss(r["host"], r["interface"], None, "net_dev", r["error_drop_pct"])
        for r in findings.network(run).to_dicts()
        if r["error_drop_pct"] is not None and r["error_drop_pct"] >= thresholds.loss_pct
    ]


def _slow_links(run: Run, thresholds: Thresholds) -> list[SlowLink]:
    return [
        SlowLink(
            r["host"], r["interface"], ProbeEvidence(r["pairs"], r["best_GBps"], r["median_GBps"], r["others_GBps"])
        )
        for r in findings.slow_links(run, thresholds.slow_link_factor).to_dicts()
    ]


def _stragglers(run: Run, thresholds: Thresholds, hosts_by_rank: dict, behind_bad_links: set) -> list[Straggler]:
    judged = judge_stragglers(findings.stragglers(run), hosts_by_rank, behind_bad_links, thresholds)
    keys = ("rank", "times_last", "mean_lateness_ms", "p95_lateness_ms", "outlier_score", "compute_share")
    return [
        Straggler(
            **{k: r[k] for k in keys},
            host=hosts_by_rank.get(r["rank"]),
            verdict=r["verdict"],
            excess_gap_ms=r.get("excess_gap_ms"),
            gap_score=r.get("gap_score"),
        )
        for r in judged.to_dicts()
        if r["flagged"]
    ]


def bad_link_hosts(slow_links: list, packet_loss: list) -> set:
    """Hosts behind a slow or lossy link (records of analysis.contract, or their JSON form). A rank there
    finishes its collectives late and so starts the next ones late: its lateness is the link's,
    already reported, and it is not called a slow rank."""
    slow = [x if isinstance(x, dict) else x.as_dict() for x in slow_links]
    lossy = [x if isinstance(x, dict) else x.as_dict() for x in packet_loss]
    return {x["host"] for x in slow} | {x["host"] for x in lossy if x["source"] != "net_dev"}


def _dead_ranks(run: Run, thresholds: Thresholds, hosts_by_rank: dict) -> list[DeadRank]:
    """Ranks that never closed their trace (a crash, a kill -9) while the others closed theirs or went on
    writing for a while after them. If no rank closed, the job may still be running: only the second
    rule applies; and only the second to a rank without metadata, which cannot say whether it closed
    (the recording's health names it)."""
    closed = {r for r, m in run.ranks.items() if m.get("closed")}
    if run.world_size and sum(1 for r in closed if r < run.world_size) == run.world_size:
        return []  # every rank closed its trace: none died (and no need to scan the events)
    last = run.sql("""
        SELECT rank, arg_max(op, t_start_ns) AS last_op, arg_max(pg, t_start_ns) AS last_pg,
               arg_max(seq, t_start_ns) AS last_seq, arg_max(status, t_start_ns) AS last_status,
               max(coalesce(t_end_ns, t_start_ns)) AS last_event_ns
        FROM collectives GROUP BY rank ORDER BY rank
    """).to_dicts()
    if not last:
        return []
    latest = max(r["last_event_ns"] for r in last)
    return [
        DeadRank(**r, host=hosts_by_rank.get(r["rank"]))
        for r in last
        if r["rank"] not in closed
        and (
            (closed - {r["rank"]} and r["rank"] in run.ranks)
            or latest - r["last_event_ns"] > thresholds.dead_after_s * 1e9
        )
    ]


# -- the findings in words --------------------------------------------------------------------------
def _who(rank: int, host: str | None) -> str:
    return f"rank {rank}" + (f" ({text.clean(host)})" if host else "")


def _group(pg: str | None, labels: dict[str, str]) -> str:
    label = labels.get(pg) if pg is not None else None
    return f"group {text.clean(pg)}" + (f" ({text.clean(label)})" if label else "")


def _gbit(gigabytes_per_s: float | None) -> str:
    return text.bits_per_s(None if gigabytes_per_s is None else gigabytes_per_s * 1e9)


def _link_sentences(report: dict) -> list[dict]:
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


def _sentences(report: dict, labels: dict[str, str]) -> list[dict]:
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
    for h in report["hangs"]:
        parts = []
        if h["missing_ranks"]:
            parts.append(f"ranks {text.ranks(h['missing_ranks'])} never issued it")
        if h["stuck_ranks"]:
            parts.append(f"ranks {text.ranks(h['stuck_ranks'])} are stuck in it")
        out.append(
            {
                "kind": "hang",
                "pg": h["pg"],
                "seq": h["seq"],
                "summary": f"{_group(h['pg'], labels)} stopped at seq {h['seq']} ({text.clean(h['op'] or '?')}): "
                + ", ".join(parts),
            }
        )
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
    out += _link_sentences(report)
    for s in report["stragglers"]:
        out.append(
            {
                "kind": "straggler",
                "rank": s["rank"],
                "summary": f"{_who(s['rank'], s['host'])} arrived last at {s['times_last']} collectives, "
                f"{text.duration_ms(s['mean_lateness_ms'])} late on average (p95 "
                f"{text.duration_ms(s['p95_lateness_ms'])}, score {s['outlier_score']:.3g}); "
                f"{text.percent(s['compute_share'])} of its lateness is time spent outside communication",
            }
        )
    return out


def describe(report: dict) -> list[str]:
    """diagnose's report for people: the job's findings, then the recording's health, a sentence each."""
    hosts = ", ".join(text.clean(h) for h in report["hosts"]) or "?"
    lines = [f"run {text.clean(report['run_id'])}: world size {report['world_size']}, hosts {hosts}", ""]
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
        lines.append("the recording: nothing to report (no rank missing, nothing dropped, clock offsets measured)")
    return lines


def flagged(report: dict) -> bool:
    """Whether the job had a fault (what ``--fail-on-problem`` gates on)."""
    return any(report[k] for k, _, _ in KINDS)


def recording_flagged(report: dict) -> bool:
    """Whether the recording itself needs attention (what ``--fail-on-recording`` gates on)."""
    return bool(report.get("recording") or report.get("problems"))
