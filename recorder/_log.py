"""The recorder's own log: every message at most once per process.

A recorder that floods the training log is a recorder people switch off, so each distinct
message is emitted once (keyed by the caller's choice of key) on the ``commtrace`` logger,
which prints to stderr by default with a ``[commtrace]`` prefix. Rank 0 says where its run is
recorded when it starts and how to explain it when it closes; every other line is a warning.
"""

from __future__ import annotations

import logging
import sys
import threading

logger = logging.getLogger("commtrace")
_seen: set[str] = set()
_lock = threading.Lock()


class _Formatter(logging.Formatter):
    """``[commtrace] message`` for what the recorder tells (where the run goes), with the level
    named for anything worse: ``[commtrace] WARNING: message``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno > logging.INFO:
            text = f"{record.levelname}: {text}"
        return f"[commtrace] {text}"


def _ensure_handler() -> None:
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def warn_once(key: str, message: str, *args: object) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    try:
        _ensure_handler()
        logger.warning(message, *args)
    except Exception:  # logging must never be what breaks training
        pass


def info(message: str, *args: object) -> None:
    try:
        _ensure_handler()
        logger.info(message, *args)
    except Exception:
        pass


def debug(message: str, *args: object) -> None:
    try:
        logger.debug(message, *args)
    except Exception:
        pass
