"""All findings at once, reduced to what was flagged: the ``diagnose`` JSON contract.

The object (``analyze-trace diagnose --format json``; other tools parse it, so fields are only ever
added, never renamed):

    {"run_id": str, "world_size": int | null, "hosts": [str],
     "stragglers":  [{"rank", "host", "times_last", "mean_lateness_ms", "p95_lateness_ms", "outlier_score",
                      "compute_share"}],
     "slow_links":  [{"host", "interface", "evidence"}],
     "packet_loss": [{"host", "interface", "connection", "source", "loss_pct", "evidence"?}],
     "hangs":       [{"pg", "seq", "op", "missing_ranks", "stuck_ranks"}],
     "desyncs":     [{"pg", "seq", "culprit_rank", "kind", "expected_op", "culprit_op"}],
     "dead_ranks":  [{"rank", "host", "last_op", "last_pg", "last_seq", "last_status", "last_event_ns"}],
     "problems":    [str]}

Every list holds only what was flagged; a healthy run has them all empty. ``packet_loss`` names
a host whose link loses packets, from the job's own TCP connections (``source`` "tcp_conn",
``connection`` null, ``evidence`` with the connection figures; see findings.lossy_hosts), or, for
a run without per-connection samples, any host whose TCP retransmission total is high (``source``
"snmp"; every host that sends into a lossy link shows it); and any interface with errors or drops
(``source`` "net_dev"). A rank on a host named in ``slow_links`` or (from its connections)
``packet_loss`` is not listed in ``stragglers``: behind a bad link it finishes late and so starts
late, and the link is the finding. ``problems`` lists files
that could not be read. ``slow_links`` comes from the link probe (COMMTRACE_PROBE) and is empty for
a run recorded without it; its ``evidence`` holds the probe's figures (GB/s): the best and median
of the host's pairs and the median of the other pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis import findings
from analysis.load import Run


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


def diagnose(run: Run, thresholds: Thresholds = Thresholds()) -> dict:
    hosts_by_rank = {r: m.get("host") for r, m in run.ranks.items()}
    # Loss is pinned on a host by the job's own connections where the sampler saw them; the hosts'
    # TCP totals (every host that sends into a lossy link retransmits) only where it did not.
    run.ensure_deltas()
    per_connection = run.sql("SELECT 1 FROM samples WHERE source = 'tcp_conn' LIMIT 1").height > 0
    if per_connection:
        packet_loss = [
            {
                "host": r["host"],
                "interface": r["interface"],
                "connection": None,
                "source": "tcp_conn",
                "loss_pct": r["loss_pct"],
                "evidence": {
                    "connections": r["connections"],
                    "min_loss_pct": r["min_loss_pct"],
                    "others_median_loss_pct": r["others_loss_pct"],
                },
            }
            for r in findings.lossy_hosts(run, thresholds.loss_pct).to_dicts()
        ]
    else:
        packet_loss = [
            {
                "host": r["host"],
                "interface": None,
                "connection": None,
                "source": "snmp",
                "loss_pct": r["tcp_retrans_pct"],
            }
            for r in findings.tcp_loss(run).to_dicts()
            if r["connection"] == "all"
            and r["tcp_retrans_pct"] is not None
            and r["tcp_retrans_pct"] >= thresholds.loss_pct
        ]
    packet_loss += [
        {
            "host": r["host"],
            "interface": r["interface"],
            "connection": None,
            "source": "net_dev",
            "loss_pct": r["error_drop_pct"],
        }
        for r in findings.network(run).to_dicts()
        if r["error_drop_pct"] is not None and r["error_drop_pct"] >= thresholds.loss_pct
    ]
    slow_links = [
        {
            "host": r["host"],
            "interface": r["interface"],
            "evidence": {
                "source": "probe",
                "pairs": r["pairs"],
                "best_gbps": r["best_gbps"],
                "median_gbps": r["median_gbps"],
                "others_median_gbps": r["others_gbps"],
            },
        }
        for r in findings.slow_links(run, thresholds.slow_link_factor).to_dicts()
    ]
    # A rank behind a slow or lossy link finishes its collectives late and so starts the next ones
    # late: its lateness is the link's, already reported, and it is not called a slow rank.
    bad_link_hosts = {x["host"] for x in slow_links} | {x["host"] for x in packet_loss if x["source"] != "net_dev"}
    stragglers = [
        {
            **{
                k: r[k]
                for k in ("rank", "times_last", "mean_lateness_ms", "p95_lateness_ms", "outlier_score", "compute_share")
            },
            "host": hosts_by_rank.get(r["rank"]),
        }
        for r in findings.stragglers(run).to_dicts()
        if r["outlier_score"] is not None
        and r["outlier_score"] > thresholds.straggler_score
        and r["mean_lateness_ms"] >= thresholds.straggler_min_lateness_ms
        and r["times_last"] >= thresholds.straggler_min_times_last
        and (r["compute_share"] or 0.0) >= thresholds.straggler_min_compute_share
        and hosts_by_rank.get(r["rank"]) not in bad_link_hosts
    ]
    return {
        "run_id": run.run_id,
        "world_size": run.world_size,
        "hosts": run.hosts,
        "stragglers": stragglers,
        "slow_links": slow_links,
        "packet_loss": packet_loss,
        "hangs": findings.hangs(run).to_dicts(),
        "desyncs": findings.desyncs(run).to_dicts(),
        "dead_ranks": _dead_ranks(run, thresholds, hosts_by_rank),
        "problems": list(run.problems),
    }


def _dead_ranks(run: Run, thresholds: Thresholds, hosts_by_rank: dict) -> list[dict]:
    """Ranks that never closed their trace (a crash, a kill -9) while the others closed theirs or went on
    writing for a while after them. If no rank closed, the job may still be running: only the second
    rule applies."""
    closed = {r for r, m in run.ranks.items() if m.get("closed")}
    if run.world_size and closed >= set(range(run.world_size)):
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
        {**r, "host": hosts_by_rank.get(r["rank"])}
        for r in last
        if r["rank"] not in closed
        and (closed - {r["rank"]} or latest - r["last_event_ns"] > thresholds.dead_after_s * 1e9)
    ]


def flagged(report: dict) -> bool:
    return any(report[k] for k in ("stragglers", "slow_links", "packet_loss", "hangs", "desyncs", "dead_ranks"))
