"""commtrace's analysis: load a run's per-rank logs with DuckDB and explain what happened.

Runs anywhere (no torch). Entry points: :class:`analysis.load.Run` and the ``analyze-trace`` CLI.
"""

from analysis.load import Run, TraceError

__all__ = ["Run", "TraceError"]
