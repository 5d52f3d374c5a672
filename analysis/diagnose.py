"""All findings at once, reduced to what was flagged: the ``diagnose`` JSON contract.

The object (``analyze-trace diagnose --format json``; other tools parse it, so fields are only ever
added, never renamed):

    {"run_id": str, "world_size": int | null, "hosts": [str],
     "stragglers":  [{"rank", "host", "times_last", "mean_lateness_ms", "p95_lateness_ms", "outlier_score",
                      "compute_share", "verdict", "excess_gap_ms", "gap_score", "steps", "steps_longer",
                      "longer_ms", "longer_spread_ms", "excess_ms_per_step", "noise_ms", "outside_z", "step_ms"}],
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
(``source`` "net_dev"). A rank is listed in ``stragglers`` when it spends longer
outside communication than the other ranks, step after step (analysis.outside): ``steps_longer``
of ``steps`` steps, by ``longer_ms`` (± ``longer_spread_ms``) in those steps, ``outside_z`` the
z-score against the run's step-to-step noise. A slow or lossy link cannot make a rank look like
that (it lengthens every rank's collectives, not one rank's time between them), so a rank behind
one can be listed too. Where the run's steps cannot be told, arrival lateness judges instead (the
``steps`` fields are then null) and a rank on a host named in ``slow_links`` or (from its
connections) ``packet_loss`` is not listed: behind a bad link it finishes late and so starts late,
and the link is the finding. ``excess_gap_ms`` and ``gap_score`` say how much longer than the
other ranks a rank spent outside communication per collective, over the whole run.
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
from analysis.load import Run
from analysis.sentences import describe, outside_words, sentences  # noqa: F401  (diagnose.describe: the report for people)
from analysis.vocabulary import KINDS


@dataclass(frozen=True)
class Thresholds:
    # A straggler spends longer outside communication than the other ranks, step after step
    # (analysis.outside):
    straggler_outside_z: float = 5.0  # beyond any step-to-step noise of the run
    straggler_min_steps: int = 3  # in at least this many steps
    # and costs the job at least this share of its step time: its extra time, over every step. (A
    # slow link leaves small, steady differences between ranks, under 1 %, that are not noise.)
    straggler_min_cost_share: float = 0.01
    # Where steps cannot be told (no group spans every rank), arrival lateness judges instead:
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
    or the first gate it did not pass.

    Where the run's steps could be told, on time outside communication alone: a slow or lossy link
    lengthens every rank's collectives, not one rank's time between them, so a rank behind a bad
    link is judged like any other (it can be a straggler too). Otherwise on arrival lateness, and a
    rank behind a bad link is excused (its lateness is the link's)."""
    flagged, verdicts = [], []
    for r in frame.to_dicts():
        if r.get("outside_z") is not None:
            why, slow = _outside_verdict(r, thresholds)
        else:
            why, slow = _lateness_verdict(r, hosts_by_rank.get(r["rank"]), bad_link_hosts, thresholds)
        if slow:
            flagged.append(r["rank"])
        verdicts.append(why)
    return frame.with_columns(
        pl.col("rank").is_in(flagged).alias("flagged"), pl.Series("verdict", verdicts, dtype=pl.String)
    )


def _outside_verdict(r: dict, t: Thresholds) -> tuple[str, bool]:
    longer, steps = r["steps_longer"], r["steps"]
    if r["outside_z"] <= t.straggler_outside_z:
        return (
            f"spends no longer outside communication than the others beyond step-to-step noise "
            f"({text.duration_ms(r['excess_ms_per_step'])} per step, z {r['outside_z']:.3g} <= "
            f"{t.straggler_outside_z:g})",
            False,
        )
    if longer < t.straggler_min_steps:
        return f"longer outside communication in only {longer} of {steps} steps (under {t.straggler_min_steps})", False
    if r["excess_ms_per_step"] < t.straggler_min_cost_share * (r["step_ms"] or 0.0):
        return (
            f"{text.duration_ms(r['excess_ms_per_step'])} longer outside communication per step: under "
            f"{text.percent(t.straggler_min_cost_share)} of a step ({text.duration_ms(r['step_ms'])})",
            False,
        )
    return f"a slow rank: {outside_words(r)}", True


def _lateness_verdict(r: dict, host, bad_link_hosts: set, t: Thresholds) -> tuple[str, bool]:
    """The lateness gates in order. Without completion times (an imported source that has none),
    the share of lateness spent outside communication is unknown and its gate is not applied: the
    verdict says that a slow rank and the rank's slow link cannot be told apart."""
    share = r["compute_share"] or 0.0
    unknown_share = r.get("mean_gap_ms") is None
    if r["outlier_score"] is None:
        return "too few collectives to judge", False
    if r["outlier_score"] <= t.straggler_score:
        return f"arrives with its peers (score {r['outlier_score']:.3g} <= {t.straggler_score:g})", False
    if r["mean_lateness_ms"] < t.straggler_min_lateness_ms:
        late = text.duration_ms(r["mean_lateness_ms"])
        return f"late by only {late} on average (under {text.duration_ms(t.straggler_min_lateness_ms)})", False
    if r["times_last"] < t.straggler_min_times_last:
        return f"last only {r['times_last']} times (under {t.straggler_min_times_last})", False
    if share < t.straggler_min_compute_share and not unknown_share:
        return (
            f"only {text.percent(share)} of its lateness is time outside communication (under "
            f"{text.percent(t.straggler_min_compute_share)}): it starts late because its collectives end late",
            False,
        )
    if host is not None and host in bad_link_hosts:
        return f"behind the bad link of {text.clean(host)}: the link is the finding", False
    if unknown_share:
        late = text.duration_ms(r["mean_lateness_ms"])
        return (
            f"a late rank: {late} after the first on average, last {r['times_last']} times (no completion "
            "times in the source, so a slow rank cannot be told from a slow link)",
            True,
        )
    return f"a slow rank: {text.percent(share)} of its lateness is time spent outside communication", True


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


def _stacks(run: Run, hang: dict) -> list[dict] | None:
    """The stuck ranks' call stacks in the hung collective, where the source recorded them."""
    found = []
    for rank in hang["stuck_ranks"]:
        for stack in run.ranks.get(rank, {}).get("stacks") or []:
            if stack.get("pg") == hang["pg"] and stack.get("seq") == hang["seq"] and stack.get("frames"):
                found.append({"rank": rank, "frames": stack["frames"]})
                break
    return found or None


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
        hangs=[Hang(**r, stacks=_stacks(run, r)) for r in findings.hangs(run).to_dicts()],
        desyncs=[Desync(**r) for r in findings.desyncs(run).to_dicts()],
        dead_ranks=_dead_ranks(run, thresholds, hosts_by_rank),
        problems=list(run.problems),
        recording=health.findings(run),
        source=run.source,
    ).as_dict()
    named = [x["pg"] for x in report["hangs"] + report["desyncs"]] + [x["last_pg"] for x in report["dead_ranks"]]
    report["findings"] = sentences(report, run.group_labels(named))
    return report


def window_verdict(run: Run, thresholds: Thresholds = Thresholds()) -> dict:
    """What a window of a running job can be judged on (``analyze-trace watch``; ``run`` holds the
    window's rows, Run.of_rows): ``stragglers`` and ``packet_loss`` as in the report, judged exactly
    as :func:`diagnose` judges a whole run. Hangs, desyncs and dead ranks need the whole run: watch
    says them from the ranks' live files."""
    hosts_by_rank = {r: m.get("host") for r, m in run.ranks.items()}
    packet_loss = _packet_loss(run, thresholds)
    stragglers = _stragglers(run, thresholds, hosts_by_rank, bad_link_hosts([], packet_loss))
    return {"stragglers": [s.as_dict() for s in stragglers], "packet_loss": [p.as_dict() for p in packet_loss]}


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
    keys += ("excess_gap_ms", "gap_score", "steps", "steps_longer", "longer_ms", "longer_spread_ms")
    keys += ("excess_ms_per_step", "noise_ms", "outside_z", "step_ms")
    return [
        Straggler(**{k: r.get(k) for k in keys}, host=hosts_by_rank.get(r["rank"]), verdict=r["verdict"])
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
        FROM collectives WHERE t_start_ns IS NOT NULL GROUP BY rank ORDER BY rank
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


def flagged(report: dict) -> bool:
    """Whether the job had a fault (what ``--fail-on-problem`` gates on)."""
    return any(report[k] for k, _, _ in KINDS)


def recording_flagged(report: dict) -> bool:
    """Whether the recording itself needs attention (what ``--fail-on-recording`` gates on)."""
    return bool(report.get("recording") or report.get("problems"))
