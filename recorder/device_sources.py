"""The host's per-device and per-connection counters: RDMA devices, GPUs (NVML), TCP connections.

The same :class:`recorder.sources.Source` contract as the kernel's network files (see that module):
``capture()`` copies on every tick, ``parse()`` turns the copies into ``(device, port, counter,
value)`` tuples at flush. Each is skipped on a host without the device or the library.
"""

from __future__ import annotations

import os

from recorder.sources import KeptOpenFile, Source, open_file


class Rdma(Source):
    """``/sys/class/infiniband/<dev>/ports/<n>/{counters,hw_counters}/*``: InfiniBand, RoCE and EFA.

    Every counter file is kept as it is: ``port_xmit_data`` and ``port_rcv_data`` in 4-byte words,
    32- or 64-bit as the device has them. ``hw_counters`` counters are named with an ``hw_`` prefix
    only where they would collide with a ``counters`` file of the same name.
    """

    name = "rdma"

    def __init__(self, sys_root: str) -> None:
        self.files: list[tuple[str, int, str, KeptOpenFile]] = []
        base = os.path.join(sys_root, "sys/class/infiniband")
        try:
            devices = sorted(os.listdir(base))
        except OSError:
            return
        for device in devices:
            ports_dir = os.path.join(base, device, "ports")
            try:
                ports = sorted(os.listdir(ports_dir), key=lambda p: int(p) if p.isdigit() else 0)
            except OSError:
                continue
            for port in ports:
                seen: set[str] = set()
                for group in ("counters", "hw_counters"):
                    folder = os.path.join(ports_dir, port, group)
                    try:
                        names = sorted(os.listdir(folder))
                    except OSError:
                        continue
                    for counter in names:
                        path = os.path.join(folder, counter)
                        if not os.path.isfile(path) or counter == "lifespan":
                            continue
                        handle = open_file(path)
                        if handle is None:
                            continue
                        label = f"hw_{counter}" if group == "hw_counters" and counter in seen else counter
                        seen.add(counter)
                        self.files.append((device, int(port) if port.isdigit() else 0, label, handle))

    @property
    def present(self) -> bool:
        return bool(self.files)

    def capture(self) -> list:
        raws = []
        for *_, handle in self.files:
            try:
                raws.append(handle.read())
            except OSError:
                raws.append(None)  # a counter that cannot be read right now (some are write-only or transient)
        return raws

    def parse(self, raw: list):
        out = []
        for (device, port, counter, _), value in zip(self.files, raw, strict=False):
            if value is not None:
                try:
                    out.append((device, port, counter, int(value)))
                except ValueError:
                    continue
        return out

    def close(self) -> None:
        for *_, handle in self.files:
            handle.close()


class TcpConnections(Source):
    """Per-connection TCP statistics of the job's own processes on this host (sock_diag netlink).

    ``device`` is ``local>remote`` (``ip:port>ip:port``); counters are tcp_info's (retransmissions,
    RTT in us, bytes, delivery rate ...). Read every 2 s: the figures are cumulative and move
    slowly, and a dump of the namespace's connections costs ten times a file read. Which
    connections are the job's (their socket inodes, found under ``/proc/<pid>/fd`` of the pids in
    the run's pid file) is decided when the dump is taken, while the sockets exist, and looked up
    again only when a connection the sampler has not seen before shows up (at most once a second).
    """

    name = "tcp_conn"
    period_s = 2.0
    INODE_REFRESH_S = 1.0

    def __init__(self, pid_file: str | None) -> None:
        from recorder import tcp_diag

        self.diag = tcp_diag
        self.pid_file = pid_file
        self.ours: frozenset[int] = frozenset()  # replaced, never changed: captures keep a snapshot
        self.known: set[int] = set()  # every inode classified so far, ours or not
        self.refreshed_at = float("-inf")
        try:
            self.sock = tcp_diag.open_diag_socket()
        except OSError:
            self.sock = None

    @property
    def present(self) -> bool:
        return self.sock is not None and self.pid_file is not None

    def _pids(self) -> set[int]:
        try:
            with open(self.pid_file) as fh:
                return {int(line) for line in fh if line.strip().isdigit()}
        except OSError:
            return set()

    def capture(self) -> tuple[list[bytes], frozenset[int]]:
        import time

        chunks = self.diag.dump_raw(self.sock)
        inodes = self.diag.chunk_inodes(chunks)
        now = time.monotonic()
        if not inodes <= self.known and now - self.refreshed_at >= self.INODE_REFRESH_S:
            self.ours = frozenset(self.diag.socket_inodes(self._pids()))
            self.known = inodes | self.ours
            self.refreshed_at = now
        return chunks, self.ours

    def parse(self, raw: tuple[list[bytes], frozenset[int]]):
        chunks, ours = raw
        out = []
        for conn in self.diag.parse_raw(chunks):
            if conn["inode"] in ours:
                device = f"{conn['local']}>{conn['remote']}"
                out.extend((device, None, counter, value) for counter, value in conn["info"].items())
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class RdmaPorts(Source):
    """Each RDMA port's ``rate``, ``state``, ``phys_state`` and ``link_layer``: written when they change."""

    name = "rdma_port"
    period_s = 10.0
    FIELDS = ("rate", "state", "phys_state", "link_layer")

    def __init__(self, sys_root: str) -> None:
        self.base = os.path.join(sys_root, "sys/class/infiniband")
        self.last: dict[tuple[str, str, str], str] = {}

    @property
    def present(self) -> bool:
        return os.path.isdir(self.base)

    def read_parsed(self):
        out = []
        for device in sorted(os.listdir(self.base)):
            ports_dir = os.path.join(self.base, device, "ports")
            try:
                ports = sorted(os.listdir(ports_dir))
            except OSError:
                continue
            for port in ports:
                for field in self.FIELDS:
                    try:
                        with open(os.path.join(ports_dir, port, field)) as fh:
                            value = fh.read().strip()
                    except OSError:
                        continue
                    if self.last.get((device, port, field)) != value:
                        self.last[(device, port, field)] = value
                        out.append((device, int(port) if port.isdigit() else 0, field, value))
        return out


class Nvml(Source):
    """NVLink and PCIe counters of every GPU on the host, through NVML (``nvidia-ml-py``), if present.

    Cumulative NVML field values: NVLink data bytes sent/received in KiB (all links), NVLink CRC, replay
    and recovery error totals, PCIe bytes sent/received, and the PCIe replay counter. A field the
    driver does not support is left out. ``device`` is ``gpu<index>``.
    """

    name = "nvml"
    ALL_LINKS = 0xFFFFFFFF
    FIELDS = (
        ("nvlink_tx_kib", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", ALL_LINKS),
        ("nvlink_rx_kib", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX", ALL_LINKS),
        ("nvlink_crc_flit_errors", "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", 0),
        ("nvlink_replay_errors", "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", 0),
        ("nvlink_recovery_errors", "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", 0),
        ("pcie_tx_bytes", "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", 0),
        ("pcie_rx_bytes", "NVML_FI_DEV_PCIE_COUNT_RX_BYTES", 0),
    )

    def __init__(self) -> None:
        self.nvml = None
        self.handles: list = []
        self.fields: list[tuple[str, int, int]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.fields = [
                (name, getattr(pynvml, const), scope) for name, const, scope in self.FIELDS if hasattr(pynvml, const)
            ]
            self.nvml = pynvml
        except Exception:  # no library, no driver, no GPU: the source is absent
            self.handles = []

    @property
    def present(self) -> bool:
        return self.nvml is not None and bool(self.handles)

    def read_parsed(self):
        nvml, out = self.nvml, []
        request = [(field, scope) for _, field, scope in self.fields]
        for index, handle in enumerate(self.handles):
            device = f"gpu{index}"
            try:
                values = nvml.nvmlDeviceGetFieldValues(handle, request)
            except Exception:
                values = []
            for (name, _, _), value in zip(self.fields, values, strict=False):
                if getattr(value, "nvmlReturn", 1) == 0:
                    out.append((device, None, name, int(value.value.ullVal)))
            try:
                out.append((device, None, "pcie_replay_count", int(nvml.nvmlDeviceGetPcieReplayCounter(handle))))
            except Exception:
                pass
        return out

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
