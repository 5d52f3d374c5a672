"""The base of the recorder's own background threads (the flusher, the host's sampler).

Each is a daemon thread that works in rounds until it is told to stop. What the base gives them in
common: the thread itself, the ``stopping`` event every wait checks, one line and a quiet end when
an error of ours escapes a round (training never sees it), a join that is safe from the thread
itself, and the CPU time the thread has used, also after it ended.
"""

from __future__ import annotations

import threading
import time


class PeriodicThread:
    """Subclasses implement :meth:`rounds` (the loop, which returns once ``stopping`` is set) and
    :meth:`on_error` (what an escaped error of ours means for them)."""

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._cpu_final = 0.0

    def rounds(self) -> None:
        raise NotImplementedError

    def on_error(self, exc: Exception) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            self.rounds()
        except Exception as exc:
            self.on_error(exc)
        finally:
            self._cpu_final = time.thread_time()

    def in_own_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the thread to end (at once if it never ran, or from itself)."""
        if self._thread.is_alive() and not self.in_own_thread():
            self._thread.join(timeout_s)

    @property
    def cpu_s(self) -> float:
        """CPU seconds the thread has used so far (all of it: set-up, wake-ups, work)."""
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            try:
                return time.clock_gettime(time.pthread_getcpuclockid(ident))
            except (OSError, AttributeError):  # the thread just ended, or a platform without it
                pass
        return self._cpu_final
