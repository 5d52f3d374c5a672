"""Findings from the hosts' network counters and the link probe: traffic per interface, loss and
errors, the worst intervals, the probed links.

Each is a function from a loaded run's views (``counter_deltas``, ``samples``, ``probe``) to a
polars DataFrame; the counters that mean trouble are named in :mod:`analysis.vocabulary`.
"""

from __future__ import annotations

import polars as pl

from analysis.load import Run, remembered
from analysis.segments import sql_string
from analysis.vocabulary import BAD_COUNTERS_SQL, RDMA_TRAFFIC_SQL


@remembered
def network(run: Run) -> pl.DataFrame:
    """Per host and interface: bytes moved, mean and peak throughput, errors and drops.

    From /proc/net/dev deltas between samples; throughput in Gbit/s over each sampling interval.
    """
    return run.sql("""
        WITH d AS (
            SELECT host, device AS interface, counter, delta, bytes, (t1_ns - t0_ns) / 1e9 AS seconds
            FROM counter_deltas WHERE source = 'net_dev'
        ),
        per_interface AS (
            -- Each counter's deltas on its own: the sampler keeps a counter's samples only around
            -- changes, so different counters' intervals need not line up.
            SELECT host, interface,
                   sum(bytes) FILTER (WHERE counter = 'tx_bytes') AS tx,
                   sum(bytes) FILTER (WHERE counter = 'rx_bytes') AS rx,
                   sum(seconds) FILTER (WHERE counter = 'tx_bytes') AS tx_seconds,
                   max(bytes / nullif(seconds, 0)) FILTER (WHERE counter = 'tx_bytes') AS peak_tx,
                   max(bytes / nullif(seconds, 0)) FILTER (WHERE counter = 'rx_bytes') AS peak_rx,
                   sum(delta) FILTER (WHERE counter IN ('rx_errs', 'tx_errs', 'rx_frame', 'tx_carrier')) AS errors,
                   sum(delta) FILTER (WHERE counter IN ('rx_drop', 'tx_drop', 'rx_fifo', 'tx_fifo')) AS drops,
                   sum(delta) FILTER (WHERE counter IN ('rx_packets', 'tx_packets')) AS packets
            FROM d GROUP BY host, interface
        )
        SELECT host, interface,
               CAST(tx AS BIGINT) AS tx_bytes, CAST(rx AS BIGINT) AS rx_bytes,
               round(tx * 8 / 1e9 / nullif(tx_seconds, 0), 6) AS mean_tx_gbitps,
               round(peak_tx * 8 / 1e9, 6) AS peak_tx_gbitps,
               round(peak_rx * 8 / 1e9, 6) AS peak_rx_gbitps,
               CAST(errors AS BIGINT) AS errors, CAST(drops AS BIGINT) AS drops,
               round(100.0 * (coalesce(errors, 0) + coalesce(drops, 0)) / nullif(packets, 0), 6) AS error_drop_pct
        FROM per_interface
        WHERE tx > 0 OR rx > 0 OR errors > 0 OR drops > 0
        ORDER BY host, interface
    """)


def host_offsets_ctes(run: Run) -> str | None:
    """CTEs ``rank_hosts(rank, host)`` and ``host_offsets(host, offset_ns)``: the ns that move a host's
    sample times onto rank 0's timeline (the measured offset of the host's lowest rank); None when
    no rank names its host."""
    hosts = sorted((rank, str(meta.get("host"))) for rank, meta in run.ranks.items() if meta.get("host"))
    if not hosts:
        return None
    values = ", ".join(f"({rank}, {sql_string(host)})" for rank, host in hosts)
    return f"""
        rank_hosts(rank, host) AS (VALUES {values}),
        host_offsets AS (
            SELECT h.host, arg_min(coalesce(o.offset_ns, 0), h.rank) AS offset_ns
            FROM rank_hosts h LEFT JOIN clock_offsets o USING (rank) GROUP BY h.host
        )"""


@remembered
def bad_intervals(run: Run, worst: int | None = None) -> pl.DataFrame:
    """Sampling intervals in which a host's loss or error counters moved, and the collectives of that
    host's ranks that overlapped them (what the bad interval may have slowed down).

    Sample times are the host's clock; they are moved onto rank 0's timeline with the measured offset
    of the host's lowest rank. A collective overlaps if it started before the interval ended and
    ended (or, in flight, started) after it began. ``worst``: only that many intervals, those whose
    counter moved most (matching every interval of a long, lossy run against every collective of
    the host's ranks is the costly part).
    """
    hosts = host_offsets_ctes(run)
    if hosts is None:
        return pl.DataFrame()
    return run.sql(f"""
        WITH {hosts},
        bad AS (
            SELECT d.host, d.source, d.device, d.counter, d.delta,
                   d.t0_ns + coalesce(h.offset_ns, 0) AS t0_ns, d.t1_ns + coalesce(h.offset_ns, 0) AS t1_ns
            FROM counter_deltas d LEFT JOIN host_offsets h USING (host)
            WHERE d.delta > 0 AND ({BAD_COUNTERS_SQL})
            ORDER BY d.delta DESC, t0_ns
            {"" if worst is None else f"LIMIT {int(worst)}"}
        ),
        overlapping AS (
            SELECT b.host, b.source, b.device, b.counter, b.t0_ns, b.t1_ns, c.rank, c.pg, c.op
            FROM bad b
            JOIN rank_hosts h ON h.host = b.host
            JOIN collectives c ON c.rank = h.rank AND c.t_start_ns < b.t1_ns
                               AND coalesce(c.t_end_ns, c.t_start_ns) > b.t0_ns
        )
        SELECT b.host, b.source, b.device, b.counter, b.t0_ns, b.t1_ns,
               round((b.t1_ns - b.t0_ns) / 1e9, 3) AS seconds, CAST(b.delta AS BIGINT) AS delta,
               count(o.rank) AS overlapping_collectives,
               coalesce(list(DISTINCT o.pg || ':' || o.op ORDER BY o.pg || ':' || o.op)
                        FILTER (WHERE o.rank IS NOT NULL), []) AS ops
        FROM bad b LEFT JOIN overlapping o
             ON o.host = b.host AND o.source = b.source AND o.device = b.device AND o.counter = b.counter
            AND o.t0_ns = b.t0_ns
        GROUP BY ALL
        ORDER BY b.t0_ns, b.host, b.source, b.device, b.counter
    """)


# Per host, the interface (not loopback) that sent the most bytes: where a host's link problem lives.
_BUSIEST_INTERFACE_SQL = """
    SELECT host, arg_max(interface, tx_bytes) AS interface
    FROM (SELECT host, device AS interface, sum(bytes) AS tx_bytes FROM counter_deltas
          WHERE source = 'net_dev' AND counter = 'tx_bytes' AND device <> 'lo' GROUP BY ALL)
    GROUP BY host
"""


@remembered
def links(run: Run) -> pl.DataFrame:
    """The link probe's host-pair matrix: per (source host, destination host), the median bandwidth
    (measured where the data arrived; GB/s and Gbit/s) and 8-byte exchange latency over both probe
    phases, and each phase's bandwidth (GB/s)."""
    return run.sql("""
        SELECT src_host, dst_host, count(*) AS measurements,
               round(median(bandwidth_gbps), 6) AS bandwidth_GBps,
               round(median(bandwidth_gbps) * 8, 4) AS bandwidth_Gbitps,
               round(median(latency_us), 1) AS latency_us,
               round(median(bandwidth_gbps) FILTER (WHERE phase = 'start'), 6) AS start_GBps,
               round(median(bandwidth_gbps) FILTER (WHERE phase = 'end'), 6) AS end_GBps
        FROM probe GROUP BY src_host, dst_host ORDER BY src_host, dst_host
    """)


@remembered
def slow_links(run: Run, factor: float = 0.5) -> pl.DataFrame:
    """Hosts whose link is slow: every probed pair that involves the host (either direction) is slower
    than ``factor`` x the median of the pairs that do not involve it (bandwidths in GB/s).

    A slow host link slows all of that host's pairs and none of the others', so the comparison names
    the host rather than a pair; it needs at least three probed hosts (with two, both ends of the one
    slow pair are equally suspect, and nothing is flagged). ``interface`` is the host's busiest
    interface in the counter samples, if any.
    """
    return run.sql(
        f"""
        WITH pairs AS (
            SELECT src_host, dst_host, median(bandwidth_gbps) AS gbps FROM probe GROUP BY ALL
        ),
        hosts AS (SELECT src_host AS host FROM pairs UNION SELECT dst_host FROM pairs),
        per_host AS (
            SELECT h.host,
                   count(*) FILTER (WHERE p.src_host = h.host OR p.dst_host = h.host) AS pairs,
                   max(p.gbps) FILTER (WHERE p.src_host = h.host OR p.dst_host = h.host) AS best_gbps,
                   median(p.gbps) FILTER (WHERE p.src_host = h.host OR p.dst_host = h.host) AS median_gbps,
                   median(p.gbps) FILTER (WHERE p.src_host <> h.host AND p.dst_host <> h.host) AS others_gbps
            FROM hosts h, pairs p GROUP BY h.host
        ),
        busiest AS ({_BUSIEST_INTERFACE_SQL})
        SELECT p.host, b.interface, p.pairs, round(p.best_gbps, 6) AS best_GBps,
               round(p.median_gbps, 6) AS median_GBps, round(p.others_gbps, 6) AS others_GBps
        FROM per_host p LEFT JOIN busiest b USING (host)
        WHERE (SELECT count(*) FROM hosts) >= 3 AND p.others_gbps IS NOT NULL AND p.best_gbps < ? * p.others_gbps
        ORDER BY p.host
    """,
        [factor],
    )


@remembered
def lossy_hosts(run: Run, threshold_pct: float = 0.5, min_bytes: int = 1 << 20) -> pl.DataFrame:
    """Hosts whose link loses packets, from the job's own TCP connections (sock_diag).

    A lossy link makes every connection through it retransmit, in both directions, while the
    sender's host totals (/proc/net/snmp) rise on every host that sends to it; so loss is pinned
    on a host by its connections: each connection with at least ``min_bytes`` sent counts for both
    its ends (the remote end found by its IP among the addresses the hosts' own connections use). A
    host is lossy when every one of its connections (at least two) retransmitted at least
    ``threshold_pct`` of the bytes sent, and the median connection not involving it lost less than a
    quarter of that. Needs three hosts or more, like the link probe.
    """
    return run.sql(
        f"""
        WITH conn AS (
            SELECT host, device,
                   regexp_replace(split_part(device, '>', 1), ':[0-9]+$', '') AS local_ip,
                   regexp_replace(split_part(device, '>', 2), ':[0-9]+$', '') AS remote_ip,
                   sum(delta) FILTER (WHERE counter = 'bytes_retrans') AS retrans,
                   sum(delta) FILTER (WHERE counter = 'bytes_sent') AS sent
            FROM counter_deltas WHERE source = 'tcp_conn' GROUP BY host, device
        ),
        ip_host AS (SELECT DISTINCT local_ip AS ip, host FROM conn),
        c AS (
            SELECT conn.host AS a, ih.host AS b, coalesce(retrans, 0) AS retrans, sent,
                   100.0 * coalesce(retrans, 0) / sent AS loss_pct
            FROM conn JOIN ip_host ih ON ih.ip = conn.remote_ip
            WHERE sent >= ? AND ih.host <> conn.host
        ),
        hosts AS (SELECT a AS host FROM c UNION SELECT b FROM c),
        per_host AS (
            SELECT h.host,
                   count(*) FILTER (WHERE h.host IN (c.a, c.b)) AS connections,
                   min(c.loss_pct) FILTER (WHERE h.host IN (c.a, c.b)) AS min_loss_pct,
                   100.0 * sum(c.retrans) FILTER (WHERE h.host IN (c.a, c.b))
                         / sum(c.sent) FILTER (WHERE h.host IN (c.a, c.b)) AS loss_pct,
                   median(c.loss_pct) FILTER (WHERE h.host NOT IN (c.a, c.b)) AS others_loss_pct
            FROM hosts h, c GROUP BY h.host
        ),
        busiest AS ({_BUSIEST_INTERFACE_SQL})
        SELECT p.host, b.interface, p.connections, round(p.loss_pct, 4) AS loss_pct,
               round(p.min_loss_pct, 4) AS min_loss_pct, round(p.others_loss_pct, 4) AS others_loss_pct
        FROM per_host p LEFT JOIN busiest b USING (host)
        WHERE (SELECT count(*) FROM hosts) >= 3 AND p.connections >= 2 AND p.min_loss_pct >= ?
              AND coalesce(p.others_loss_pct, 0) * 4 < p.min_loss_pct
        ORDER BY p.host
    """,
        [min_bytes, threshold_pct],
    )


@remembered
def tcp_loss(run: Run) -> pl.DataFrame:
    """TCP retransmission rate as the loss figure on TCP transports, per host and per connection.

    Per host: dRetransSegs / dOutSegs from /proc/net/snmp, and the timeouts. Per connection (the job's
    own, from sock_diag): retransmitted bytes over bytes sent, and the last smoothed RTT.
    """
    return run.sql("""
        WITH host_level AS (
            SELECT host, 'all' AS connection, 'segments' AS unit,
                   sum(delta) FILTER (WHERE counter = 'RetransSegs') AS retrans,
                   sum(delta) FILTER (WHERE counter = 'OutSegs') AS sent,
                   sum(delta) FILTER (WHERE counter = 'TCPTimeouts') AS timeouts
            FROM counter_deltas WHERE source IN ('snmp', 'netstat') GROUP BY host
        ),
        conn_level AS (
            SELECT host, device AS connection, 'bytes' AS unit,
                   sum(delta) FILTER (WHERE counter = 'bytes_retrans') AS retrans,
                   sum(delta) FILTER (WHERE counter = 'bytes_sent') AS sent,
                   NULL::BIGINT AS timeouts
            FROM counter_deltas WHERE source = 'tcp_conn' GROUP BY host, device
        ),
        rtt AS (
            SELECT host, device AS connection, arg_max(value, t_ns) AS rtt_us
            FROM samples WHERE source = 'tcp_conn' AND counter = 'rtt_us' GROUP BY host, device
        )
        SELECT l.host, l.connection, l.unit, CAST(l.retrans AS BIGINT) AS retransmitted,
               CAST(l.sent AS BIGINT) AS sent, CAST(l.timeouts AS BIGINT) AS timeouts,
               round(100.0 * l.retrans / nullif(l.sent, 0), 4) AS tcp_retrans_pct, r.rtt_us
        FROM (SELECT * FROM host_level UNION ALL SELECT * FROM conn_level) l
        LEFT JOIN rtt r USING (host, connection)
        WHERE l.sent > 0 OR l.retrans > 0
        ORDER BY l.host, l.connection = 'all' DESC, l.connection
    """)


@remembered
def rdma(run: Run) -> pl.DataFrame:
    """Per host, RDMA device and port: bytes moved (4-byte words scaled) and every error or congestion
    counter that moved during the run (RoCE out_of_sequence, CNPs, EFA retransmissions ...)."""
    return run.sql(f"""
        SELECT host, device, port,
               CAST(sum(bytes) FILTER (WHERE counter = 'port_xmit_data') AS BIGINT) AS tx_bytes,
               CAST(sum(bytes) FILTER (WHERE counter = 'port_rcv_data') AS BIGINT) AS rx_bytes,
               map_from_entries(list({{'k': counter, 'v': total}} ORDER BY counter)
                   FILTER (WHERE total > 0 AND NOT {RDMA_TRAFFIC_SQL}))
                   AS moved_counters
        FROM (
            SELECT host, device, port, counter, CAST(sum(delta) AS BIGINT) AS total, sum(bytes) AS bytes
            FROM counter_deltas WHERE source = 'rdma' GROUP BY ALL
        )
        GROUP BY host, device, port
        ORDER BY host, device, port
    """)
