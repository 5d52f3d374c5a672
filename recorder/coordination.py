"""What the recorder says between ranks: through the job's store, never on torch's own client.

torch's TCPStore client serves one request at a time. A thread of ours waiting on it would hold up
every store call torch makes meanwhile, and the job's main threads make many right after
``init_process_group``: every new group's rendezvous goes through the store. Worse, a wait of ours
on each of two ranks can block both ranks' group creation until one of the waits times out. That is
what DeepSpeed met (its ``initialize`` creates groups at once): 8-10 s stalls at start-up and c10d
"waitForInput ... timed out" warnings. So everything the recorder says through the store goes
through clients of its own: ``Store.clone()`` opens a new connection to the same store.

The clients are opened when the default group is made, on the thread that makes it: the store is
certainly up then. Later the store may be gone (where rank 0's process hosts it, it goes with
rank 0), and opening a connection to a store that is gone retries for the store's whole timeout; so
nothing of ours opens one later, and nothing of ours talks to the store while a rank closes its
trace (see ``recorder.clock``: offsets are measured during the run).

A store that cannot be cloned (a store class written in Python, say) is only ever asked quick,
non-blocking questions on torch's client, polled: the run id is still agreed; the clock offsets,
which need prompt answers both ways, are not measured (the metadata says why).
"""

from __future__ import annotations

import time
from datetime import timedelta

RUN_ID_KEY = "commtrace/run_id"
POLL_S = 0.05  # between checks of a store that cannot be cloned
OP_TIMEOUT = timedelta(seconds=5)  # any call on our clients that names no timeout of its own


class Coordination:
    """The job's store, as the recorder uses it: a client for the start-up and clock thread
    (``talk``); with clock measurements, on rank 0 one for the clock server (``serve``, which rank 0's
    ``talk`` stops), elsewhere one that cuts a measurement short when the trace closes (``cancel``);
    and one for the link probe."""

    def __init__(self, store, rank: int, clock: bool, probe: bool) -> None:
        self._store = store  # torch's client: only for clone(), or for quick calls where that fails
        self.error: str | None = None  # why no client of our own could be opened
        self.talk = self._clone()
        own = self.talk is not None
        self.serve = self._clone() if clock and rank == 0 and own else None
        self.cancel = self._clone() if clock and rank != 0 and own else None
        self.probe = self._clone() if probe and own else None

    def _clone(self):
        try:
            client = self._store.clone()
            client.set_timeout(OP_TIMEOUT)  # a store that stopped answering never holds a thread of ours long
            return client
        except Exception as exc:
            self.error = f"the job's store cannot open a second client ({type(self._store).__name__}: {exc!r})"
            return None

    def agree_run_id(self, rank: int, world_size: int, new_id, restart: str, timeout_s: float) -> str:
        """Rank 0 chooses the run id (``new_id()``) and every rank reads it. A default group made
        again in the same store (a script that runs several jobs in turn) agrees on a new one: each
        rank counts itself in, and every ``world_size`` arrivals make a generation."""
        store = self.talk if self.talk is not None else self._store
        arrivals = store.add(f"{RUN_ID_KEY}/{restart}/arrivals", 1)
        key = f"{RUN_ID_KEY}/{restart}/{(arrivals - 1) // world_size}"
        if rank == 0:
            run_id = new_id()
            store.set(key, run_id.encode())
            return run_id
        if self.talk is not None:
            self.talk.wait([key], timedelta(seconds=timeout_s))
        else:
            deadline = time.monotonic() + timeout_s
            while not self._store.check([key]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank 0 did not share a run id within {timeout_s:g} s")
                time.sleep(POLL_S)
        return store.get(key).decode()
