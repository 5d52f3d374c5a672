"""The sampler: raw counters from fixture trees that mirror real sysfs, and from this host's /proc."""

from __future__ import annotations

import glob
import os
import subprocess
import time

import pyarrow.parquet as pq

from conftest import rank_meta
from fixtures import sysfs
from recorder.sampler import STALE_ELECTION_S, Election, Sampler
from recorder.sources import NET_DEV_COLUMNS, host_sources

WRAP = 2**32


def _rows(run_dir):
    files = sorted(glob.glob(str(run_dir / "host=*" / "nic-*.parquet")))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _sample(tmp_path, sys_root, steps):
    """Run a sampler by hand: one tick per step, applying each step's changes before its tick."""
    run = tmp_path / "run"
    sampler = Sampler(
        str(run), "fixture-run", "test", hz=10, flush_s=60, proc_root=str(tmp_path / "noproc"), sys_root=str(sys_root)
    )
    assert sampler.election.try_acquire()
    sampler.sources = host_sources(sampler.proc_root, sampler.sys_root)
    for change in steps:
        change()
        sampler._tick(None)
    sampler.close()  # takes one last sample and writes everything
    return _rows(run)


def test_rdma_fixtures_land_unchanged_with_wrap_and_reset(tmp_path):
    sys_root = tmp_path / "sysroot"
    ib = sysfs.make_ib_hca(sys_root, port_xmit_data=WRAP - 6, port_rcv_data=1000, symbol_error=3)
    roce = sysfs.make_roce(sys_root, np_cnp_sent=5, out_of_sequence=2)
    efa = sysfs.make_efa(sys_root, tx_bytes=123456789012, retrans_pkts=7, rx_drops=1)
    steps = [
        lambda: None,
        lambda: (
            sysfs.set_counter(ib, "counters", "port_xmit_data", 10),  # 32-bit counter wraps
            sysfs.set_counter(ib, "counters", "port_rcv_data", 0),  # a reset (driver reload)
            sysfs.set_counter(roce, "hw_counters", "np_cnp_sent", 9),
            sysfs.set_counter(efa, "hw_counters", "retrans_pkts", 12),
        ),
        lambda: None,  # nothing moves: this sample is left out of the segment wherever it repeats one
    ]
    tmp = _sample(tmp_path, sys_root, steps)
    rows = _rows_by(tmp)
    assert {r["source"] for r in tmp} == {"rdma", "rdma_port"}
    attributes = {(r["device"], r["counter"]): r["text"] for r in tmp if r["source"] == "rdma_port"}
    assert (
        attributes[("mlx5_0", "rate")] == "200 Gb/sec (4X HDR)" and attributes[("mlx5_1", "link_layer")] == "Ethernet"
    )
    assert attributes[("rdmap16s27", "state")] == "4: ACTIVE"
    tmp = [r for r in tmp if r["source"] == "rdma"]
    rows = _rows_by(tmp)
    # Four samples were taken (three steps and the closing one); a segment keeps each counter's first
    # and last and both sides of every change: [a, b, b, b] -> [a, b, b]; [a, a, a, a] -> [a, a].
    assert rows[("mlx5_0", "port_xmit_data")] == [WRAP - 6, 10, 10]
    assert rows[("mlx5_0", "port_rcv_data")] == [1000, 0, 0]
    assert rows[("mlx5_0", "symbol_error")] == [3, 3]
    assert rows[("mlx5_1", "np_cnp_sent")] == [5, 9, 9]
    assert rows[("mlx5_1", "out_of_sequence")] == [2, 2]
    assert rows[("rdmap16s27", "tx_bytes")] == [123456789012] * 2
    assert rows[("rdmap16s27", "retrans_pkts")] == [7, 12, 12]
    assert rows[("rdmap16s27", "impaired_remote_conn_events")] == [0, 0]
    assert ("rdmap16s27", "lifespan") not in rows  # a setting, not a counter
    assert all(r["port"] == 1 for r in tmp)
    per_device = {d: {c for (dev, c) in rows if dev == d} for d in ("mlx5_0", "mlx5_1", "rdmap16s27")}
    assert per_device["mlx5_0"] >= set(sysfs.IB_COUNTERS) | {"local_ack_timeout_err", "np_ecn_marked_roce_packets"}
    assert per_device["rdmap16s27"] == set(sysfs.EFA_HW_COUNTERS) - {"lifespan"}


def _rows_by(rows):
    """(device, counter) -> the values the segment kept, in time order."""
    out: dict[tuple, list] = {}
    for r in sorted(rows, key=lambda r: r["t_ns"]):
        out.setdefault((r["device"], r["counter"]), []).append(r["value"])
    return out


def test_squeeze_keeps_exactly_the_sampled_step_function():
    import random

    from recorder.sampler import squeeze
    from recorder.sources import PART_SCHEMA, part_from_rows

    rng = random.Random(7)
    rows = []
    for t in range(200):
        for device in ("eth0", "ib0"):
            for counter in ("rx_bytes", "rx_errs"):
                rows.append((t, device, None, counter, t // rng.choice((1, 5, 50)) if counter == "rx_bytes" else 3))
    rows.append((5, "eth0", None, "operstate", "up"))
    rows.append((6, "eth0", None, "operstate", "up"))  # text values are never dropped
    table = part_from_rows("net_dev", rows)
    assert table.schema == PART_SCHEMA
    kept = squeeze(table).to_pylist()
    assert sum(r["counter"] == "operstate" for r in kept) == 2
    assert len(kept) < len(rows) / 2
    for device in ("eth0", "ib0"):
        for counter in ("rx_bytes", "rx_errs"):
            original = {t: v for t, d, _, c, v in rows if (d, c) == (device, counter)}
            points = sorted((r["t_ns"], r["value"]) for r in kept if (r["device"], r["counter"]) == (device, counter))
            assert points[0][0] == 0 and points[-1][0] == 199  # first and last always kept
            step = {}
            for (t0, v0), (t1, _) in zip(points, points[1:] + [(200, None)], strict=True):
                step.update({t: v0 for t in range(t0, t1)})
            assert step == original


def test_missing_sources_are_skipped(tmp_path):
    assert host_sources(str(tmp_path / "nothing"), str(tmp_path / "nothing")) == []


def test_host_proc_counters(tmp_path):
    sources = {s.name: s for s in host_sources("/", "/")}
    assert {"net_dev", "snmp", "netstat"} <= set(sources)
    dev = sources["net_dev"].read()
    lo = {c: v for d, _, c, v in dev if d == "lo"}
    assert set(lo) == set(NET_DEV_COLUMNS) and lo["rx_bytes"] >= 0
    snmp = {(d, c) for d, _, c, _ in sources["snmp"].read()}
    assert {("Tcp", "OutSegs"), ("Tcp", "RetransSegs"), ("Tcp", "InErrs"), ("Udp", "InErrors")} <= snmp
    netstat = {(d, c) for d, _, c, _ in sources["netstat"].read()}
    assert {("TcpExt", "TCPTimeouts"), ("TcpExt", "TCPLostRetransmit"), ("TcpExt", "TCPOrigDataSent")} <= netstat


def test_net_dev_batch_parse_matches_line_by_line():
    from recorder.sources import NetDev

    source = NetDev("/")
    captures = [(t, source.capture()) for t in (10, 20, 30)]
    odd = b"Inter-|   Receive\n face |bytes\n  weird: 1 2 3\n"  # a line it does not understand
    batch = source.parse_batch(captures).to_pylist()
    slow = [(t,) + v for t, raw in captures for v in source.parse(raw)]
    assert [(r["t_ns"], r["device"], r["port"], r["counter"], r["value"]) for r in batch] == slow
    assert all(r["source"] == "net_dev" and r["text"] is None for r in batch)
    fallback = source.parse_batch(captures + [(40, odd)]).to_pylist()
    assert len(fallback) == len(batch) + 3  # the slow path keeps what it can read
    source.close()


def test_one_sampler_per_host_and_namespace(tmp_path):
    first, second = Election("run-x", "hostA"), Election("run-x", "hostA")
    other_host = Election("run-x", "hostB")
    try:
        assert first.try_acquire() and not second.try_acquire() and other_host.try_acquire()
        first.release()
        assert second.try_acquire()  # the sampler's process went away: another rank takes over
    finally:
        for e in (first, second, other_host):
            e.release()


def test_an_elected_sampler_sweeps_what_killed_runs_left(tmp_path):
    """A run whose processes were all killed leaves its election files in the temporary directory;
    the next elected sampler on the host removes them, and nothing of a run that may still be live."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 2 * STALE_ELECTION_S

    def leave(run: str, pid: int, mtime: float) -> Election:
        election = Election(run, "hostA", str(tmp_path))
        election.register(pid)
        os.close(os.open(election.path, os.O_RDWR | os.O_CREAT))
        for path in (election.path, election.pid_file):
            os.utime(path, (mtime, mtime))
        return election

    killed = leave("killed", dead.pid, old)
    live = leave("live", os.getpid(), old)  # a long run: old files, a live process
    recent = leave("recent", dead.pid, time.time())  # killed a moment ago: its ranks may be restarting
    held = leave("held", dead.pid, old)
    holder = Election("held", "hostA", str(tmp_path))
    assert holder.try_acquire()
    other_namespace = tmp_path / "commtrace-killed-hostA-1.lock"
    other_namespace.write_text("")
    os.utime(other_namespace, (old, old))
    me = Election("new", "hostA", str(tmp_path))
    try:
        assert me.try_acquire()
        assert me.sweep_stale() == 1
        assert not os.path.exists(killed.path) and not os.path.exists(killed.pid_file)
        for kept in (live, recent, held):
            assert os.path.exists(kept.path) and os.path.exists(kept.pid_file)
        assert other_namespace.exists() and os.path.exists(me.path)
    finally:
        me.release()
        holder.release()


def test_real_run_samples_once_per_host(spawned):
    metas = rank_meta(spawned["traces"]).values()
    elected = [m for m in metas if m["sampler"] and m["sampler"]["elected"]]
    assert len(elected) == 1
    rows = _rows(spawned["run"])
    lo_tx = sorted((r["t_ns"], r["value"]) for r in rows if r["device"] == "lo" and r["counter"] == "tx_bytes")
    assert len(lo_tx) >= 2 and lo_tx[-1][1] > lo_tx[0][1]  # the job's traffic went through loopback
    assert {r["source"] for r in rows} >= {"net_dev", "snmp", "netstat"}


def test_sampling_cost_is_small(tmp_path):
    """Not a benchmark: a sanity bound on one tick of this host's sources (the budget is 200 us)."""
    sources = host_sources("/", "/")
    start = time.thread_time()
    for _ in range(50):
        for s in sources:
            if not s.period_s:
                s.read()
    per_tick_us = (time.thread_time() - start) / 50 * 1e6
    assert per_tick_us < 2000


class _FakeNvml:
    """Stands in for NVML's Python binding: the boundary we cannot have without a GPU here."""

    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = 138
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 139
    NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL = 38
    NVML_FI_DEV_PCIE_COUNT_TX_BYTES = 197
    NVML_FI_DEV_PCIE_COUNT_RX_BYTES = 198

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus
        self.requests = []
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle{i}"

    def nvmlDeviceGetFieldValues(self, handle, request):
        from types import SimpleNamespace

        self.requests.append(request)
        index = int(handle[-1])
        out = []
        for field, _scope in request:
            supported = field != 197  # this "driver" does not count PCIe TX bytes
            out.append(
                SimpleNamespace(nvmlReturn=0 if supported else 3, value=SimpleNamespace(ullVal=field * 1000 + index))
            )
        return out

    def nvmlDeviceGetPcieReplayCounter(self, handle):
        return 4


def test_nvml_fields_per_gpu(monkeypatch):
    import sys

    from recorder.device_sources import Nvml

    fake = _FakeNvml(gpus=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    source = Nvml()
    assert source.present
    rows = {(d, c): v for d, _, c, v in source.read()}
    assert rows[("gpu0", "nvlink_tx_kib")] == 138000 and rows[("gpu1", "nvlink_rx_kib")] == 139001
    assert rows[("gpu1", "nvlink_crc_flit_errors")] == 38001 and rows[("gpu0", "pcie_rx_bytes")] == 198000
    assert ("gpu0", "pcie_tx_bytes") not in rows  # unsupported by the driver: left out
    assert rows[("gpu0", "pcie_replay_count")] == 4
    assert (138, Nvml.ALL_LINKS) in fake.requests[0]  # NVLink throughput summed over all links
    assert not any(name.startswith("nvlink_replay") for _, name in rows)  # not in this binding: skipped
    source.close()
    assert fake.shut


def test_nvml_absent_without_library(monkeypatch):
    import sys

    from recorder.device_sources import Nvml

    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert not Nvml().present


def test_tcp_dump_inodes_without_parsing():
    import socket

    from recorder import tcp_diag

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        sock = tcp_diag.open_diag_socket()
        chunks = tcp_diag.dump_raw(sock)
        sock.close()
        parsed = {c["inode"] for c in tcp_diag.parse_raw(chunks)}
        assert tcp_diag.chunk_inodes(chunks) == parsed
        assert os.fstat(client.fileno()).st_ino in parsed and os.fstat(accepted.fileno()).st_ino in parsed
    finally:
        for s in (client, accepted, server):
            s.close()
