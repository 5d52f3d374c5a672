"""The link probe (COMMTRACE_PROBE): point-to-point bandwidth and latency between hosts.

Collective timings tell that the network is slow but not where: in a ring every rank waits for the
slowest link equally. The probe measures links directly, when the default group is created and
again before it is destroyed, in the caller's thread (nothing else runs on the group then):

- one rank per host takes part (the host's lowest rank); hosts learn each other's names through
  the job's store;
- in shift round k, probing rank i receives from rank i-k and sends to rank i+k at the same time,
  so each host's link carries one flow each way; round 1 alone covers every host's link in both
  directions, later rounds add pairs (``COMMTRACE_PROBE_ROUNDS``), never all pairs;
- latency: the median time of 10 exchanges of 8 bytes; bandwidth: ``COMMTRACE_PROBE_BYTES``
  received 3 times, the fastest of them, measured where the data arrives (interference, a busy
  CPU or a late sender, only ever slows a transfer down: the fastest is the link's capacity).

The probe uses the group's own backend with a tag of its own (the job's sends never see its
messages), waits on the store and on every transfer with a timeout, and gives up (one warning) on
the first timeout or error. The rows it returns are written as ``probe-*.parquet``.
"""

from __future__ import annotations

import socket
import statistics
import time
from datetime import timedelta

KEY = "commtrace/probe"
TAG = 0x5C70
LATENCY_REPS = 10
BANDWIDTH_REPS = 3


class ProbeError(Exception):
    pass


def _barrier(store, key: str, members: int, timeout: timedelta) -> None:
    if store.add(f"{key}/n", 1) == members:
        store.set(f"{key}/go", b"1")
    store.wait([f"{key}/go"], timeout)


def _hosts(store, base: str, rank: int, world_size: int, timeout: timedelta) -> list[str]:
    store.set(f"{base}/host/{rank}", socket.gethostname().encode())
    keys = [f"{base}/host/{r}" for r in range(world_size)]
    store.wait(keys, timeout)
    try:
        values = store.multi_get(keys)
    except (AttributeError, RuntimeError):
        values = [store.get(k) for k in keys]
    return [v.decode() for v in values]


def leaders_of(hosts: list[str]) -> list[int]:
    """The lowest rank of each host, in rank order."""
    first: dict[str, int] = {}
    for rank, host in enumerate(hosts):
        first.setdefault(host, rank)
    return sorted(first.values())


def _exchange(pg, send, recv, dst: int, src: int, tag: int, timeout: timedelta) -> float:
    """Receive from src while sending to dst; seconds until the receive completed."""
    start = time.perf_counter()
    incoming = pg.recv([recv], src, tag)
    outgoing = pg.send([send], dst, tag)
    incoming.wait(timeout)
    elapsed = time.perf_counter() - start
    outgoing.wait(timeout)
    return elapsed


def run(
    pg,
    store,
    rank: int,
    world_size: int,
    phase: str,
    nbytes: int,
    rounds: int,
    device=None,
    timeout_s: float = 60.0,
    gather_timeout_s: float | None = None,
) -> list[dict]:
    """Probe this rank's host's links (if it is its host's probing rank); returns the rows measured
    here, one per round: the link from ``src`` into this rank. Every wait is bounded by
    ``timeout_s``; waiting for the other ranks to arrive, by ``gather_timeout_s`` if given."""
    import torch

    timeout = timedelta(seconds=timeout_s)
    generation = (store.add(f"{KEY}/{phase}/arrivals", 1) - 1) // world_size  # a re-created group probes anew
    base = f"{KEY}/{phase}/{generation}"
    # At shutdown a rank that died or never calls destroy_process_group must not hold the others
    # for long: they give up on the probe after ``gather_timeout_s``.
    gather = timedelta(seconds=gather_timeout_s) if gather_timeout_s else timeout
    hosts = _hosts(store, base, rank, world_size, gather)
    leaders = leaders_of(hosts)
    if rank not in leaders or len(leaders) < 2:
        return []
    m, i = len(leaders), leaders.index(rank)
    small_out = torch.ones(2, dtype=torch.float32, device=device)
    small_in = torch.empty(2, dtype=torch.float32, device=device)
    big_out = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    big_in = torch.empty_like(big_out)
    rows = []
    for k in range(1, min(rounds, m - 1) + 1):
        dst, src = leaders[(i + k) % m], leaders[(i - k) % m]
        t_ns = time.time_ns()
        _barrier(store, f"{base}/round{k}/latency", m, timeout)
        latency = [_exchange(pg, small_out, small_in, dst, src, TAG, timeout) for _ in range(LATENCY_REPS)]
        _barrier(store, f"{base}/round{k}/bandwidth", m, timeout)
        transfer = [_exchange(pg, big_out, big_in, dst, src, TAG + 1, timeout) for _ in range(BANDWIDTH_REPS)]
        seconds = min(transfer)
        size = big_in.numel() * big_in.element_size()
        rows.append(
            {
                "phase": phase,
                "round": k,
                "src_rank": src,
                "src_host": hosts[src],
                "dst_rank": rank,
                "dst_host": hosts[rank],
                "bytes": size,
                "repetitions": BANDWIDTH_REPS,
                "transfer_s": seconds,
                "bandwidth_gbps": size / seconds / 1e9,
                "latency_us": statistics.median(latency) * 1e6,
                "t_ns": t_ns,
            }
        )
    return rows
