"""A real gloo job across two network namespaces with their own hostnames: each host's sampler sees
on its own eth0 the bytes that the recorder logged for that host's rank."""

from __future__ import annotations

import glob
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, clean_env, free_port, load_events, rank_meta

sys.path.insert(0, str(ROOT))
from lab import Lab, lab_available  # noqa: E402

pytestmark = pytest.mark.skipif(lab_available() is not None, reason=str(lab_available()))

ITERATIONS, MEGABYTES = 12, 4.0


def test_each_host_sees_its_ranks_bytes_on_its_interface(tmp_trace):
    with Lab(2) as lab:
        port = free_port()
        procs = []
        for rank in range(2):
            env = clean_env(
                COMMTRACE_DIR=str(tmp_trace),
                RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR=lab.ip(0),
                MASTER_PORT=port,
                GLOO_SOCKET_IFNAME="eth0",
                LOCAL_RANK="0",
            )
            procs.append(
                lab.spawn(
                    rank,
                    [sys.executable, str(ROOT / "lab" / "jobs" / "allreduce.py"), str(ITERATIONS), str(MEGABYTES)],
                    env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for proc in procs:
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, out[-3000:]
    hosts = {m["rank"]: m["host"] for m in rank_meta(tmp_trace).values()}
    assert hosts == {0: lab.hostnames[0], 1: lab.hostnames[1]}
    events = load_events(tmp_trace).to_pylist()
    run = next(p for p in tmp_trace.iterdir() if p.is_dir())
    for rank, host in hosts.items():
        logged = sum(e["bytes_in"] for e in events if e["rank"] == rank and e["op"] == "all_reduce")
        assert logged == ITERATIONS * int(MEGABYTES * 1e6 / 4) * 4
        # ring all_reduce on n ranks: each rank sends and receives 2(n-1)/n of the message; n = 2.
        expected = logged * 2 * (2 - 1) / 2
        files = glob.glob(str(run / f"host={host}" / "nic-*.parquet"))
        assert files, f"no samples for {host}"
        rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        assert {r["host"] for r in rows} == {host}
        for counter in ("tx_bytes", "rx_bytes"):
            series = sorted((r["t_ns"], r["value"]) for r in rows if r["device"] == "eth0" and r["counter"] == counter)
            moved = series[-1][1] - series[0][1]
            # TCP/IP headers and the store's and gloo's own messages add a few percent.
            assert 0.98 * expected <= moved <= 1.15 * expected, (host, counter, moved, expected)
        # Per connection (sock_diag): the job's connections to the other host carry the payload.
        peer_ip = lab.ip(1 - rank)
        last: dict[str, dict[str, int]] = {}
        for r in sorted((r for r in rows if r["source"] == "tcp_conn"), key=lambda r: r["t_ns"]):
            last.setdefault(r["device"], {})[r["counter"]] = r["value"]
        to_peer = {d: c for d, c in last.items() if d.split(">")[1].rsplit(":", 1)[0] == peer_ip}
        assert to_peer, f"no per-connection figures from {host} to {peer_ip}: {sorted(last)}"
        sent = sum(c["bytes_sent"] for c in to_peer.values())
        assert 0.98 * expected <= sent <= 1.1 * expected, (host, sent, expected)
        assert all({"rtt_us", "total_retrans", "bytes_retrans", "delivery_rate"} <= set(c) for c in to_peer.values())
    # The analysis reads the same story from the samples.
    from analysis import Run, findings

    interfaces = {(r["host"], r["interface"]): r for r in findings.network(Run.open(run)).to_dicts()}
    for host in hosts.values():
        eth0 = interfaces[(host, "eth0")]
        assert 0.98 * expected <= eth0["tx_bytes"] <= 1.15 * expected
        assert eth0["errors"] == 0 and eth0["drops"] == 0
