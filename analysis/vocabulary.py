"""The words the analysis modules share, defined once: op families, what members of a collective must
agree on, size buckets, which host counters mean trouble, and the kinds of fault ``diagnose`` names.
"""

from __future__ import annotations

# -- operations ------------------------------------------------------------------------------------
FAMILY = {
    "all_reduce": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_gather": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "all_gather_coalesced": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "all_to_all": "all_to_all",
    "all_to_all_single": "all_to_all",
    "gather": "gather",
    "scatter": "scatter",
    "broadcast": "broadcast",
    "reduce": "reduce",
    "send": "p2p",
    "recv": "p2p",
    "recv_anysource": "p2p",
}
"""Each op name the recorder writes, by its family (nccl-tests' names; analysis.formulas sizes them)."""

P2P_OPS = tuple(op for op, family in FAMILY.items() if family == "p2p")
P2P_OPS_SQL = "(" + ", ".join(f"'{op}'" for op in P2P_OPS) + ")"

# What members of one collective must agree on besides op and dtype: the size each member sends
# (scatter: what each receives); all_to_all splits may legally differ.
SIGNATURE_SIZE_SQL = (
    "CASE WHEN op = 'scatter' THEN bytes_out WHEN op IN ('all_to_all', 'all_to_all_single') THEN NULL ELSE bytes_in END"
)


def family_sql(op: str = "op") -> str:
    """SQL for the family of op name ``op`` (an unknown op is its own family)."""
    cases = " ".join(f"WHEN '{name}' THEN '{family}'" for name, family in FAMILY.items())
    return f"(CASE {op} {cases} ELSE {op} END)"


def size_bucket_sql(size: str) -> str:
    """SQL for the size bucket of a message of ``size`` bytes: the power of two at or below it (1 for
    0), the key every table and comparison groups sizes by."""
    return f"CAST(pow(2, floor(log2(greatest({size}, 1)))) AS BIGINT)"


# -- host counters -----------------------------------------------------------------------------------
NIC_ERROR_COUNTERS = ("rx_errs", "tx_errs", "rx_frame", "tx_carrier")
NIC_DROP_COUNTERS = ("rx_drop", "tx_drop", "rx_fifo", "tx_fifo")
# An RDMA counter of traffic (bytes, 4-byte data words, packets, work requests), retransmitted traffic
# excepted (EFA's retrans_pkts, retrans_bytes); every other RDMA counter (errors, retries, congestion
# notifications, out-of-sequence, waits) moving is news.
RDMA_TRAFFIC_SQL = (
    "((counter LIKE '%bytes' OR counter LIKE '%_data' OR counter LIKE '%packets' OR counter LIKE '%pkts' "
    "OR counter LIKE '%_wrs') AND counter NOT LIKE '%retrans%')"
)


def _listed(names) -> str:
    return ", ".join(f"'{name}'" for name in names)


# Counters whose increase means loss, errors or congestion (the RDMA ones: anything not traffic).
BAD_COUNTERS_SQL = f"""
    (source = 'net_dev' AND counter IN ({_listed(NIC_ERROR_COUNTERS + NIC_DROP_COUNTERS)}))
    OR (source = 'snmp' AND counter IN ('RetransSegs', 'InErrs', 'InCsumErrors'))
    OR (source = 'netstat' AND counter IN ('TCPTimeouts', 'TCPLostRetransmit'))
    OR (source = 'tcp_conn' AND counter = 'total_retrans')
    OR (source = 'rdma' AND NOT {RDMA_TRAFFIC_SQL})
"""

# -- what diagnose names -----------------------------------------------------------------------------
KINDS = [
    ("dead_ranks", "Dead ranks", "ranks that stopped recording long before the others"),
    ("hangs", "Hangs", "the first collective of a group that not every member finished"),
    ("desyncs", "Desyncs", "members that disagreed on a collective's op, size or dtype"),
    ("slow_links", "Slow links", "hosts whose every probed pair is far slower than the others"),
    ("packet_loss", "Packet loss", "hosts whose TCP connections retransmit, or whose NIC counts errors or drops"),
    ("stragglers", "Stragglers", "ranks that arrive late at collectives because they are slow themselves"),
]
"""The job's kinds of fault, in the order an engineer reads them: (key in diagnose's report, title,
what it means)."""
