"""Process-wide recorder state shared by the capture hot path and the session.

Kept in its own tiny module so the hot path reads one module attribute (``session``) and nothing
else when recording is off.
"""

from __future__ import annotations

import threading

session = None
"""The active :class:`recorder._session.Session`, or None when nothing is recorded."""

events = None
"""The active session's :class:`recorder.records.EventBuffer`, or None: what capture records into,
and the one thing the hot path checks to know whether recording is on."""

cuda_timing = True
"""COMMTRACE_CUDA_TIMING of the active session: whether NCCL groups time operations with CUDA events."""

step: int | None = None
"""The training step set by :func:`recorder.step`, written into every event."""

step_code = -(2**63)
"""``step`` as the hot path records it: an int64, the null value while no step is set."""

api_depth = 0
"""Number of Python-API annotations in progress in any thread (a cheap pre-check for ``tls``)."""

tls = threading.local()
"""Per-thread annotation: ``tls.api`` is the code (capture.APIS) of the torch.distributed API call
in progress."""

rearm = None
"""Set while recording is switched on: starts a new session for a new default process group."""
