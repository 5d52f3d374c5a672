"""A quiet progress line for work that takes more than a moment, on a terminal only.

Nothing is written when stderr is not a terminal (pipes, CI, ``--format json`` into a file), nor for
work that finishes within half a second. ``stop()`` clears the line before results are printed.
"""

from __future__ import annotations

import sys
import threading
import time

DELAY_S = 0.5
EVERY_S = 0.25


class Progress:
    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._stop = threading.Event()
        self._shown = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            self._thread = threading.Thread(target=self._run, daemon=True, name="analyze-trace-progress")
            self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        if self._stop.wait(DELAY_S):
            return
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self.stream.write(f"\r{self.label} ... {time.monotonic() - start:.1f} s")
                self.stream.flush()
                self._shown = True
            if self._stop.wait(EVERY_S):
                return

    def clear(self) -> None:
        """Blank the line (it may show again while work goes on)."""
        with self._lock:
            if self._shown:
                self.stream.write("\r" + " " * (len(self.label) + 16) + "\r")
                self.stream.flush()
                self._shown = False

    def stop(self) -> None:
        """No more progress: results are about to be printed."""
        self._stop.set()
        self.clear()

    def __exit__(self, *exc) -> None:
        self.stop()


current: Progress | None = None


def stop() -> None:
    """End the progress line before printing results."""
    if current is not None:
        current.stop()


def clear() -> None:
    """Blank the progress line before printing a line of context; work and progress go on."""
    if current is not None:
        current.clear()
