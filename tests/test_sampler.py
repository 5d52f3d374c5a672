"""The sampler: raw counters from fixture trees that mirror real sysfs, and from this host's /proc."""

from __future__ import annotations

import glob
import time

import pyarrow.parquet as pq

from conftest import rank_meta
from fixtures import sysfs
from recorder.sampler import Election, Sampler
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
    last = [float("-inf")] * len(sampler.sources)
    for change in steps:
        change()
        sampler._tick(last)
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
    assert rows[("mlx5_0", "port_xmit_data")] == [WRAP - 6, 10]
    assert rows[("mlx5_0", "port_rcv_data")] == [1000, 0]
    assert rows[("mlx5_0", "symbol_error")] == [3, 3]
    assert rows[("mlx5_1", "np_cnp_sent")] == [5, 9]
    assert rows[("mlx5_1", "out_of_sequence")] == [2, 2]
    assert rows[("rdmap16s27", "tx_bytes")] == [123456789012] * 2
    assert rows[("rdmap16s27", "retrans_pkts")] == [7, 12]
    assert rows[("rdmap16s27", "impaired_remote_conn_events")] == [0, 0]
    assert ("rdmap16s27", "lifespan") not in rows  # a setting, not a counter
    assert all(r["port"] == 1 for r in tmp)
    per_device = {d: {c for (dev, c) in rows if dev == d} for d in ("mlx5_0", "mlx5_1", "rdmap16s27")}
    assert per_device["mlx5_0"] >= set(sysfs.IB_COUNTERS) | {"local_ack_timeout_err", "np_ecn_marked_roce_packets"}
    assert per_device["rdmap16s27"] == set(sysfs.EFA_HW_COUNTERS) - {"lifespan"}


def _rows_by(rows):
    """(device, counter) -> the values of the steps' samples (the sampler's closing sample left out)."""
    out: dict[tuple, list] = {}
    for r in sorted(rows, key=lambda r: r["t_ns"]):
        out.setdefault((r["device"], r["counter"]), []).append(r["value"])
    return {key: values[:-1] for key, values in out.items()}


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

    from recorder.sources import Nvml

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

    from recorder.sources import Nvml

    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert not Nvml().present
