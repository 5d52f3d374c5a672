"""The lab scenarios' knobs for a job, read from its environment (the job's settings, not the recorder's).

  LAB_SLEEP_RANK, LAB_SLEEP_MS  that rank computes this much longer before every other step
  LAB_SLEEP_EVERY               ... before every Nth step instead (1: every step; default 2)
  LAB_CLOCK_SHIFT_MS            this process's wall clock reads that much ahead (a host whose clock is off)
  LAB_PAUSES_FILE               the straggler appends each pause as it really took, in ms, one per line
                                (a sleep overshoots on a loaded machine: what an estimate is judged against)

Call ``shift_clock()`` before importing torch: every wall-clock read in Python, the recorder's
included, must see the shifted clock.
"""

from __future__ import annotations

import os
import time


def shift_clock() -> None:
    shift_ns = int(float(os.environ.get("LAB_CLOCK_SHIFT_MS", "0")) * 1e6)
    if shift_ns:
        time_ns, wall = time.time_ns, time.time
        time.time_ns = lambda: time_ns() + shift_ns
        time.time = lambda: wall() + shift_ns / 1e9


def straggle(rank: int, step: int) -> None:
    """The straggler's pause, before every other step (odd ones; every LAB_SLEEP_EVERY-th) of the rank
    LAB_SLEEP_RANK names."""
    every = max(int(os.environ.get("LAB_SLEEP_EVERY", "2")), 1)
    if step % every == every - 1 and int(os.environ.get("LAB_SLEEP_RANK", "-1")) == rank:
        start = time.monotonic()
        time.sleep(float(os.environ.get("LAB_SLEEP_MS", "0")) / 1e3)
        pauses = os.environ.get("LAB_PAUSES_FILE")
        if pauses:
            with open(pauses, "a") as out:
                out.write(f"{(time.monotonic() - start) * 1e3:.4f}\n")
