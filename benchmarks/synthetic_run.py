"""Synthetic runs in the recorder's exact on-disk format, at any scale, for the analysis benchmarks.

A run of ``ranks`` ranks, 8 per host, each rank recording ``per_rank`` collectives: half all_reduce
on the default group (every rank), half all_gather_into_tensor / reduce_scatter_tensor on its host's
8-rank tensor-parallel group, sizes from 4 KiB to 64 MiB, simulated step by step: each rank computes
~1 ms, joins the all_reduce, then its group's collective; a collective ends once its last member has
arrived and the data has moved (size / 20 GB/s x the op's bus factor, plus 15 us). One rank
(``straggler``) computes ``delay_ms`` longer before a random half of its steps. Each host's clock is off rank 0's by
up to +-50 ms and the rank metadata holds the measured offsets, as the recorder writes them. Each
host has /proc/net/dev (eth0, lo) and /proc/net/snmp samples at 10 Hz and 2 Hz.

Files are written by the recorder's own SegmentWriter (same names, schema metadata, compression),
``segments`` segments per rank.

    python benchmarks/synthetic_run.py OUT_DIR [--ranks 64] [--per-rank 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyarrow as pa

from recorder.sampler import squeeze
from recorder.schema import COLLECTIVE_SCHEMA, SAMPLE_SCHEMA, SAMPLES_PREFIX, SCHEMA_VERSION
from recorder.sources import NET_DEV_COLUMNS
from recorder.writer import SegmentWriter

RANKS_PER_HOST = 8
T0_NS = 1_800_000_000_000_000_000
COMPUTE_NS = 1_000_000  # each rank computes ~1 ms before each step's all_reduce
BUS_GBPS = 20.0
FLUSH_NS = 10_000_000_000  # the sampler's flush period (COMMTRACE_SAMPLE_FLUSH_S)


def _dictionary(values: list[str], codes: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string()))


def _simulate(rng, steps, ranks, straggler, delay_ms):
    """Each step: compute, an all_reduce of every rank, then one TP collective per host group.

    Every rank starts its next collective when it has finished its previous one and its compute;
    a collective ends for everyone once its last member has arrived and the data has moved.
    Returns sizes and op codes per group and (ranks, steps) start and end times (true clock).
    """
    groups = ranks // RANKS_PER_HOST
    d_sizes = (2 ** rng.integers(12, 27, steps)).astype(np.int64)
    t_sizes = (2 ** rng.integers(12, 27, (groups, steps))).astype(np.int64)
    t_ops = rng.integers(0, 2, (groups, steps))
    d_transfer = (d_sizes / (BUS_GBPS * 1e9) * 2 * (ranks - 1) / ranks * 1e9).astype(np.int64) + 15_000
    per = RANKS_PER_HOST
    t_transfer = (t_sizes / (BUS_GBPS * 1e9) * (per - 1) / per * 1e9).astype(np.int64) + 15_000
    compute = rng.exponential(20_000, (steps, ranks)).astype(np.int64) + COMPUTE_NS
    if 0 <= straggler < ranks:
        late = rng.random(steps) < 0.5
        compute[late, straggler] += int(delay_ms * 1e6)
    d_start = np.empty((ranks, steps), np.int64)
    d_end = np.empty_like(d_start)
    t_start = np.empty_like(d_start)
    t_end = np.empty_like(d_start)
    previous = np.full(ranks, T0_NS, np.int64)
    for i in range(steps):
        start = previous + compute[i]
        end = start.max() + d_transfer[i] + rng.integers(0, 3_000, ranks)
        d_start[:, i], d_end[:, i] = start, end
        start = end + rng.integers(1_000, 10_000, ranks)
        last = start.reshape(groups, per).max(axis=1)
        end = np.repeat(last + t_transfer[:, i], per) + rng.integers(0, 3_000, ranks)
        t_start[:, i], t_end[:, i] = start, end
        previous = end
    return d_sizes, t_sizes, t_ops, d_start, d_end, t_start, t_end


def generate(
    out: str,
    ranks: int = 64,
    per_rank: int = 200_000,
    straggler: int = 37,
    delay_ms: float = 8.0,
    segments: int = 20,
    seed: int = 0,
    merge: bool = True,
) -> dict:
    """Write the run into ``out`` (which must not exist yet); returns what was injected."""
    if os.path.exists(out):
        raise SystemExit(f"{out} exists; choose a new directory")
    rng = np.random.default_rng(seed)
    hosts = [f"node{h:02d}" for h in range((ranks + RANKS_PER_HOST - 1) // RANKS_PER_HOST)]
    host_of = {r: hosts[r // RANKS_PER_HOST] for r in range(ranks)}
    clock_error = {h: int(rng.integers(-50_000_000, 50_000_000)) if i else 0 for i, h in enumerate(hosts)}
    run_id = os.path.basename(os.path.normpath(out))
    os.makedirs(out)
    with open(os.path.join(out, "run.json"), "w") as fh:
        json.dump({"run_id": run_id, "world_size": ranks, "schema_version": SCHEMA_VERSION}, fh)

    if ranks % RANKS_PER_HOST:
        raise SystemExit(f"--ranks must be a multiple of {RANKS_PER_HOST}")
    n_default = n_tp = per_rank // 2
    default_members = list(range(ranks))
    d_sizes, t_sizes_all, t_ops_all, d_starts, d_ends, t_starts_all, t_ends_all = _simulate(
        rng, n_default, ranks, straggler, delay_ms
    )
    tp_groups = [list(range(h * RANKS_PER_HOST, (h + 1) * RANKS_PER_HOST)) for h in range(len(hosts))]
    tp_ops = ["all_gather_into_tensor", "reduce_scatter_tensor"]
    groups = [{"pg": "0", "desc": "default_pg", "ranks": default_members, "size": ranks, "backend": "nccl"}] + [
        {"pg": str(i + 1), "desc": "tp", "ranks": members, "size": len(members), "backend": "nccl"}
        for i, members in enumerate(tp_groups)
    ]
    ops = ["all_reduce", *tp_ops]
    rows_written = 0
    for rank in range(ranks):
        host = host_of[rank]
        tp_index = rank // RANKS_PER_HOST
        members = tp_groups[tp_index]
        t_sizes, t_ops = t_sizes_all[tp_index], t_ops_all[tp_index]
        n_ranks_tp = len(members)
        # Issue order on this rank: interleave the two groups' instances by start time.
        starts = np.concatenate([d_starts[rank], t_starts_all[rank]])
        order = np.argsort(starts, kind="stable")
        n = len(starts)
        is_tp = np.concatenate([np.zeros(n_default, bool), np.ones(n_tp, bool)])
        seq = np.concatenate([np.arange(n_default), np.arange(n_tp)])
        op_code = np.concatenate([np.zeros(n_default, np.int64), 1 + t_ops])
        size = np.concatenate([d_sizes, t_sizes])
        # all_gather: each rank sends size/n and receives size; reduce_scatter: the reverse.
        shard = size // n_ranks_tp
        bytes_in = np.where(is_tp & (op_code == 1), shard, size)
        bytes_out = np.where(is_tp & (op_code == 2), shard, size)
        skew = -clock_error[host]  # this rank's clock reads true time minus its offset to rank 0
        t_start = starts + skew
        t_end = np.concatenate([d_ends[rank], t_ends_all[rank]]) + skew
        columns = {
            "rank": pa.array(np.full(n, rank, np.int32)),
            "pg": _dictionary(["0", str(tp_index + 1)], is_tp.astype(np.int32)),
            "pg_desc": _dictionary(["default_pg", "tp"], is_tp.astype(np.int32)),
            "pg_size": pa.array(np.where(is_tp, n_ranks_tp, ranks).astype(np.int32)),
            "seq": pa.array(seq.astype(np.int64)),
            "op": _dictionary(ops, op_code),
            "count": pa.array(bytes_in // 2),
            "bytes_in": pa.array(bytes_in),
            "bytes_out": pa.array(bytes_out),
            "dtype": _dictionary(["bfloat16"], np.zeros(n, np.int32)),
            "peer": pa.nulls(n, pa.int32()),
            "root": pa.nulls(n, pa.int32()),
            "t_start_ns": pa.array(t_start),
            "t_end_ns": pa.array(t_end),
            "gpu_duration_ns": pa.array(t_end - t_start),
            "status": _dictionary(["ok"], np.zeros(n, np.int32)),
            "async_op": pa.array(np.ones(n, bool)),
            "coalesced": pa.array(np.zeros(n, bool)),
            "api": _dictionary(["c10d"], np.zeros(n, np.int32)),
            "backend": _dictionary(["nccl"], np.zeros(n, np.int32)),
            "device": _dictionary(["cuda"], np.zeros(n, np.int32)),
            "step": pa.array((np.concatenate([np.arange(n_default), np.arange(n_tp)]) // 50).astype(np.int64)),
        }
        table = pa.Table.from_arrays([columns[f.name] for f in COLLECTIVE_SCHEMA], schema=COLLECTIVE_SCHEMA)
        table = table.take(pa.array(order))
        rank_dir = os.path.join(out, f"rank={rank:05d}")
        incarnation = f"{1000 + rank}-synt"
        writer = SegmentWriter(
            rank_dir, incarnation, {"commtrace.run_id": run_id, "commtrace.rank": str(rank)}, merge_small=merge
        )
        per_segment = -(-n // segments)
        for start in range(0, n, per_segment):
            writer.write(table.slice(start, per_segment))
        rows_written += n
        meta = {
            "rank": rank,
            "world_size": ranks,
            "host": host,
            "run_id": run_id,
            "incarnation": incarnation,
            "schema_version": SCHEMA_VERSION,
            "closed": True,
            "clock": {"start": {"offset_ns": clock_error[host]}, "end": {"offset_ns": clock_error[host]}},
            "process_groups": [g for g in groups if rank in g["ranks"]],
            "segments_written": writer.index,
            "rows_written": n,
        }
        with open(os.path.join(rank_dir, f"rank-{incarnation}.json"), "w") as fh:
            json.dump(meta, fh)
    duration_ns = int(max(d_ends.max(), t_ends_all.max()) - T0_NS)
    sample_rows = 0
    for host in hosts:
        sample_rows += _write_host_samples(out, host, duration_ns, clock_error[host], run_id, rng)
    return {
        "run": out,
        "ranks": ranks,
        "hosts": len(hosts),
        "collectives": rows_written,
        "samples": sample_rows,
        "straggler": straggler,
        "straggler_host": host_of[straggler],
        "delay_ms": delay_ms,
    }


def _write_host_samples(out, host, duration_ns, clock_error, run_id, rng) -> int:
    ticks = np.arange(0, duration_ns, 100_000_000, dtype=np.int64)
    t = T0_NS + ticks - clock_error
    per_tick_bytes = rng.integers(2_000_000_000, 2_200_000_000, len(ticks))  # ~20 GB/s per host
    rows = []  # (t array, source, device, counter, values array)
    for iface, scale in (("eth0", 1), ("lo", 0)):
        for counter in NET_DEV_COLUMNS:
            if counter in ("rx_bytes", "tx_bytes"):
                values = np.cumsum(per_tick_bytes * scale)
            elif counter in ("rx_packets", "tx_packets"):
                values = np.cumsum(per_tick_bytes * scale // 9000)
            else:
                values = np.zeros(len(ticks), np.int64)
            rows.append((t, "net_dev", iface, counter, values))
    slow = t[::5]
    out_segs = np.cumsum(rng.integers(1_000_000, 1_100_000, len(slow)))
    rows.append((slow, "snmp", "Tcp", "OutSegs", out_segs))
    rows.append((slow, "snmp", "Tcp", "RetransSegs", out_segs // 100_000))  # 0.001 % loss: healthy
    n = sum(len(r[0]) for r in rows)
    sources = ["net_dev", "snmp"]
    devices = ["eth0", "lo", "Tcp"]
    counters = [*NET_DEV_COLUMNS, "OutSegs", "RetransSegs"]

    def codes(values, names):
        return np.concatenate([np.full(len(r[0]), names.index(v), np.int32) for r, v in zip(rows, values, strict=True)])

    columns = {
        "t_ns": pa.array(np.concatenate([r[0] for r in rows])),
        "host": _dictionary([host], np.zeros(n, np.int32)),
        "source": _dictionary(sources, codes([r[1] for r in rows], sources)),
        "device": _dictionary(devices, codes([r[2] for r in rows], devices)),
        "port": pa.nulls(n, pa.int32()),
        "counter": _dictionary(counters, codes([r[3] for r in rows], counters)),
        "value": pa.array(np.concatenate([r[4] for r in rows]).astype(np.int64)),
        "text": pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string())),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in SAMPLE_SCHEMA], schema=SAMPLE_SCHEMA)
    # As the sampler writes them: one batch per flush, squeezed (a counter's samples kept only
    # around its changes).
    writer = SegmentWriter(os.path.join(out, f"host={host}"), "1-synt", {"commtrace.run_id": run_id})
    flush = np.asarray(table["t_ns"]) // FLUSH_NS
    written = 0
    for k in np.unique(flush):
        batch = squeeze(table.filter(pa.array(flush == k)))
        writer.write(batch, SAMPLES_PREFIX)
        written += batch.num_rows
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--per-rank", type=int, default=200_000)
    parser.add_argument("--straggler", type=int, default=37)
    parser.add_argument("--delay-ms", type=float, default=8.0)
    parser.add_argument("--segments", type=int, default=20, help="segments per rank")
    parser.add_argument(
        "--no-merge", action="store_true", help="keep every small segment, as recorders before merging wrote them"
    )
    args = parser.parse_args()
    start = time.monotonic()
    info = generate(
        args.out, args.ranks, args.per_rank, args.straggler, args.delay_ms, args.segments, merge=not args.no_merge
    )
    info["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
