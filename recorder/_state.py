"""Process-wide recorder state shared by the capture hot path and the session.

Kept in its own tiny module so the hot path reads one module attribute (``session``) and nothing
else when recording is off.
"""

from __future__ import annotations

import threading

session = None
"""The active :class:`recorder._session.Session`, or None when nothing is recorded."""

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
