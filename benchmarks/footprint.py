"""What a run's collective segments hold and weigh, for the benchmarks that report bytes per event."""

from __future__ import annotations

import os


def trace_footprint(directory: str) -> tuple[int, int]:
    """(events, bytes) of every ``collectives-*.parquet`` below ``directory``."""
    import pyarrow.parquet as pq

    events = size = 0
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith("collectives-") and name.endswith(".parquet"):
                path = os.path.join(root, name)
                events += pq.read_metadata(path).num_rows
                size += os.path.getsize(path)
    return events, size
