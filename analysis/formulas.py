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

Each recorded op name maps to its family (analysis.vocabulary.FAMILY); the SQL fragments below are
the one place the analysis computes S and the factor.
"""

from __future__ import annotations

from analysis.vocabulary import FAMILY, family_sql, size_bucket_sql  # noqa: F401  (formulas' API too)


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
