"""How an operation's completion is seen, off the caller's way, for the works capture does not wait on.

* an asynchronous CPU collective: a future callback (:func:`_on_future`) on the backend's thread;
* a CUDA operation, or a backend without futures: the flusher polls ``Work.is_completed()``
  (:meth:`recorder.records.EventBuffer.poll`); with CUDA timing on, its GPU duration comes from the
  backend's CUDA events;
* a gloo send/recv: its work has no future and may be waited on once only, by its owner, so it
  completes when the owner's ``Work.wait()`` returns (:func:`make_wait_hook`).

Each writes its completion record through :meth:`recorder.records.EventBuffer.complete`.
"""

from __future__ import annotations

import functools
import threading

import torch

from recorder._log import warn_once
from recorder.groups import enable_cuda_timing
from recorder.records import ERROR, OK, OPS

_Work = torch._C._distributed_c10d.Work


def follow(events, rid: int, work, pg, info, op: int, is_cuda: bool, p2p: bool) -> None:
    """Arrange for the completion record of operation ``rid`` (code ``op``) on group ``pg``, whose
    work capture did not wait on itself. Never raises: the work is the user's, only its end may go
    unseen (one line)."""
    try:
        if work is None:
            events.complete(rid, OK)
        elif is_cuda:  # completes on the device: polled, timed by CUDA events
            if not info.timing_enabled:
                enable_cuda_timing(pg, info)
            events.poll(rid, work, True)
        elif p2p:  # a gloo send/recv: complete when its owner's Work.wait() returns
            if len(waiting) < WAITING_MAX:
                with _waiting_lock:
                    waiting[work] = (events, rid)
                    if wait_hook is not None and _Work.wait is not wait_hook:
                        _Work.wait = wait_hook
        else:
            try:
                fut = work.get_future()
            except RuntimeError:  # a backend without futures: poll instead
                events.poll(rid, work, False)
            else:
                fut.add_done_callback(functools.partial(_on_future, events, rid))
    except Exception as exc:
        warn_once("capture:complete", "could not follow completion of %s: %r", OPS.names[op], exc)


def _on_future(events, rid: int, fut) -> None:
    """Future callback of an asynchronous CPU collective: runs on the backend's thread (gloo's worker)."""
    if _get_ident() not in _kept_thread_states:
        _keep_thread_state()
    try:
        fut.value()
    except Exception:
        events.complete(rid, ERROR)
    else:
        events.complete(rid, OK)


# A future callback runs on the thread that completes the work, a C++ thread that Python does not know.
# pybind11 gives such a thread a fresh PyThreadState for each callback and deletes it afterwards; with
# it goes the thread state's frame stack, one mmap and one munmap per callback, and munmap in a
# process with busy threads interrupts the other cores. That was most of the recorder's cost in a gloo
# DDP loop (benchmarks/ddp_overhead.py: +3 % of the step on 2 cores, +6 % under strace, with 4,000
# extra munmap calls per 1,000 steps). One extra reference to the thread state, taken inside the first
# callback on each thread, keeps it alive, and pybind11 then only swaps it in and out: what torch's
# autograd engine does for its own worker threads. The thread states stay until the interpreter ends;
# the set bounds how many threads get one.
_kept_thread_states: set[int] = set()
_KEEP_THREAD_STATES_MAX = 128
_get_ident = threading.get_ident


def _keep_thread_state() -> None:
    kept = _kept_thread_states
    if len(kept) >= _KEEP_THREAD_STATES_MAX:
        return
    kept.add(_get_ident())
    try:
        import ctypes

        # The GIL is held here, so this only counts one more user of the current thread state.
        ctypes.pythonapi.PyGILState_Ensure()
    except Exception:  # not CPython: nothing to keep
        pass


waiting: dict = {}
"""Point-to-point works not yet waited on, mapped to (event buffer, record id); the work is kept alive here."""
WAITING_MAX = 4096  # bounds the works (and tensors) kept alive for un-waited sends
_waiting_lock = threading.Lock()
wait_hook = None
"""The ``Work.wait`` replacement (make_wait_hook), set by install.py. It is in place only while
``waiting`` holds a work: every other wait in the job, collectives' included, stays torch's own."""


def make_wait_hook(original_wait):
    """A replacement for ``Work.wait`` that completes the record of a point-to-point work."""

    def wait(self, *args, **kwargs):
        with _waiting_lock:
            entry = waiting.pop(self, None)
            if not waiting and _Work.wait is wait:
                _Work.wait = original_wait  # nothing left to follow: torch's own wait again
        if entry is None:
            return original_wait(self, *args, **kwargs)
        events, rid = entry
        try:
            result = original_wait(self, *args, **kwargs)
        except BaseException:
            events.complete(rid, ERROR)
            raise
        events.complete(rid, OK)
        return result

    wait.__wrapped__ = original_wait
    return wait

