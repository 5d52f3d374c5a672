"""The process's hooks: at exit, SIGTERM, SIGUSR1, the signal wakeup fd, fork.

They know one thing about the recorder: the object :func:`install` was given a way to find (the
active session, or None), which they may ask to ``close()`` (at exit, on SIGTERM) or to
``dump(reason)`` its operations in flight (SIGUSR1, a SIGTERM the main thread cannot act on).
Everything here is process-wide because signals and exit handlers are.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading

CLOSE_WAIT_S = 10.0  # at exit, how long to wait for another thread that is closing the trace
SIGTERM_GRACE_S = 2.0  # how long the signal thread leaves the main thread to act on a SIGTERM


def _nobody():
    return None


_current = _nobody  # returns what to close or dump (the active session), or None
_installed = False
_previous_sigterm = None
_closer: tuple[int, threading.Event] | None = None  # the thread closing the trace last, and its end
_deferred_sigterm: tuple | None = None  # a SIGTERM received inside that thread's own close
_signal_pipe: tuple[int, int] | None = None
_sigterm_seen = threading.Event()


def install(current) -> None:
    """Install the hooks once per process; ``current()`` returns what they close or dump, or None."""
    global _installed, _previous_sigterm, _current
    _current = current
    if _installed:
        return
    _installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)
    try:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            if previous in (signal.SIG_DFL, None) or callable(previous):
                _previous_sigterm = previous
                signal.signal(signal.SIGTERM, _on_sigterm)
            _install_signal_watch()
    except Exception:
        pass


@contextlib.contextmanager
def closing():
    """Around a close: a SIGTERM that interrupts it in this thread is acted on once it is over, and
    an exit in another thread waits (bounded) for it to finish."""
    global _closer, _deferred_sigterm
    done = threading.Event()
    _closer = (threading.get_ident(), done)
    try:
        yield
    finally:
        done.set()
        if _deferred_sigterm is not None:
            deferred, _deferred_sigterm = _deferred_sigterm, None
            _deliver_sigterm(*deferred)  # a SIGTERM that arrived during the close: acted on now


def _at_exit() -> None:
    _sigterm_seen.set()  # shutting down already: the signal thread must not end us mid-close
    target = _current()
    if target is not None:
        target.close()
        return
    closer = _closer
    if closer is not None and closer[0] != threading.get_ident():
        closer[1].wait(CLOSE_WAIT_S)  # another thread is closing the trace: let it finish


def _on_sigterm(signum, frame) -> None:
    global _deferred_sigterm
    _sigterm_seen.set()
    closer = _closer
    if closer is not None and closer[0] == threading.get_ident() and not closer[1].is_set():
        # The handler interrupted this thread's own close (at exit, or in destroy_process_group):
        # dying here would lose the metadata that says the trace is whole. closing() acts on it last.
        _deferred_sigterm = (signum, frame)
        return
    try:
        _at_exit()
    finally:
        _deliver_sigterm(signum, frame)


def _deliver_sigterm(signum, frame) -> None:
    """What SIGTERM would have done without us: the previous handler, or the default death."""
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    # A forked child (a DataLoader worker) never signals into its parent's signal pipe.
    if _signal_pipe is not None:
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass


def _on_sigusr1(signum, frame) -> None:
    # Where the signal pipe is watched, the watcher has written the snapshot already (and could,
    # even while this thread was blocked inside a collective).
    target = _current()
    if _signal_pipe is None and target is not None:
        target.dump("SIGUSR1")


def _watch_signals(read_fd: int) -> None:
    """Python runs signal handlers in the main thread only, and only between bytecodes: a rank
    blocked inside a collective would run none until the collective returns, which in a hang is
    never. The interpreter's C handler still writes each signal's number to the wakeup fd at once;
    this thread reads it and writes the in-flight snapshot itself."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            target = _current()
            if signum == signal.SIGUSR1 and target is not None:
                target.dump("SIGUSR1")
            # On SIGTERM the main thread's handler writes everything and ends the process if it
            # gets to run. Blocked inside a collective it cannot: after a moment, do it from here
            # (the snapshot, the final flush, the metadata marked closed, the default death).
            elif signum == signal.SIGTERM and not _sigterm_seen.wait(SIGTERM_GRACE_S):
                if target is not None:
                    target.dump("SIGTERM")
                if _previous_sigterm in (signal.SIG_DFL, None):
                    _at_exit()
                    _die_by_sigterm()


def _die_by_sigterm() -> None:
    """End the process as an unhandled SIGTERM would, from a thread that is not the main one (which
    Python's signal.signal refuses): the C library's signal() puts the default action back."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signal.SIGTERM, None)  # SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
    except Exception:
        pass
    os._exit(128 + signal.SIGTERM)  # where that failed: the exit status a shell gives a SIGTERM


def _install_signal_watch() -> None:
    """SIGUSR1 (if nobody handles it) writes the in-flight snapshot; the wakeup fd lets a thread of
    ours see SIGUSR1 and SIGTERM while the main thread is blocked. Left alone where the process
    already uses a wakeup fd (asyncio, another tool)."""
    global _signal_pipe
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGUSR1, _on_sigusr1)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _signal_pipe = (read_fd, write_fd)
    threading.Thread(target=_watch_signals, args=(read_fd,), name="commtrace-signals", daemon=True).start()
