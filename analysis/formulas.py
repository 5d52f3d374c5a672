"""Message size and bus-bandwidth factors as nccl-tests defines them (doc/PERFORMANCE.md).

algbw = S / t;  busbw = algbw x factor(n), n = the process group's size (not the world's).

| family         | S (bytes)                                  | factor      |
| -------------- | ------------------------------------------ | ----------- |
| all_reduce     | count x elsize (this rank's input)         | 2(n-1)/n    |
| all_gather     | the total output (sendcount x elsize x n)  | (n-1)/n     |
| reduce_scatter | the total input (recvcount x elsize x n)   | (n-1)/n     |
| all_to_all     | the total input                            | (n-1)/n     |
| gather/scatter | the total gathered / scattered             | (n-1)/n     |
| broadcast, reduce, send/recv | count x elsize               | 1           |

Each recorded op name maps to its family; the SQL fragments below are the one place the analysis
computes S and the factor.
"""

from __future__ import annotations

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


def family_sql(op: str = "op") -> str:
    cases = " ".join(f"WHEN '{name}' THEN '{family}'" for name, family in FAMILY.items())
    return f"(CASE {op} {cases} ELSE {op} END)"


def message_bytes_sql(
    family: str = "family", bytes_in: str = "bytes_in", bytes_out: str = "bytes_out", n: str = "pg_size"
) -> str:
    """S per nccl-tests. gather and scatter: only the root holds the whole, so it is n x one rank's part."""
    return (
        f"(CASE {family} WHEN 'all_gather' THEN {bytes_out} "
        f"WHEN 'gather' THEN {bytes_in} * {n} WHEN 'scatter' THEN {bytes_out} * {n} "
        f"ELSE {bytes_in} END)"
    )


def bus_factor_sql(family: str = "family", n: str = "pg_size") -> str:
    return (
        f"(CASE WHEN {family} = 'all_reduce' THEN 2.0 * ({n} - 1) / {n} "
        f"WHEN {family} IN ('all_gather', 'reduce_scatter', 'all_to_all', 'gather', 'scatter') "
        f"THEN ({n} - 1.0) / {n} ELSE 1.0 END)"
    )


def bus_factor(family: str, n: int) -> float:
    """The same factor in Python (for reports and tests)."""
    if family == "all_reduce":
        return 2.0 * (n - 1) / n
    if family in ("all_gather", "reduce_scatter", "all_to_all", "gather", "scatter"):
        return (n - 1.0) / n
    return 1.0


def size_bucket_sql(size: str) -> str:
    """SQL for the size bucket of a message of ``size`` bytes: the power of two at or below it (1 for
    0), the key every table and comparison groups sizes by."""
    return f"CAST(pow(2, floor(log2(greatest({size}, 1)))) AS BIGINT)"
