"""Readers of the host's network counters: raw cumulative values, exactly as the kernel shows them.

Each source yields ``(device, port, counter, value)`` tuples per read; ``value`` is an int, or a str
for the few descriptive values (an interface's operstate). A source whose files do not exist is
skipped, never an error. Files are opened once and re-read with ``pread`` at offset 0, which makes
procfs and sysfs produce fresh contents without another open. The roots are configurable
(``COMMTRACE_PROC_ROOT``, ``COMMTRACE_SYS_ROOT``) so that tests can point them at fixture trees that
mirror real sysfs layouts. Deltas, wraps, resets and units are the analysis's job.
"""

from __future__ import annotations

import os

_READ_SIZE = 1 << 16

NET_DEV_COLUMNS = (
    "rx_bytes",
    "rx_packets",
    "rx_errs",
    "rx_drop",
    "rx_fifo",
    "rx_frame",
    "rx_compressed",
    "rx_multicast",
    "tx_bytes",
    "tx_packets",
    "tx_errs",
    "tx_drop",
    "tx_fifo",
    "tx_colls",
    "tx_carrier",
    "tx_compressed",
)

# The TCP/UDP counters that tell loss and errors (the rest of /proc/net/snmp and netstat is not kept).
SNMP_COUNTERS = {
    "Tcp": (
        "ActiveOpens",
        "PassiveOpens",
        "AttemptFails",
        "EstabResets",
        "CurrEstab",
        "InSegs",
        "OutSegs",
        "RetransSegs",
        "InErrs",
        "OutRsts",
        "InCsumErrors",
    ),
    "Udp": ("InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors", "SndbufErrors", "InCsumErrors"),
}
NETSTAT_COUNTERS = {
    "TcpExt": (
        "TCPTimeouts",
        "TCPLostRetransmit",
        "TCPOrigDataSent",
        "TCPFastRetrans",
        "TCPSlowStartRetrans",
        "TCPRetransFail",
        "TCPSynRetrans",
        "TCPLossProbes",
        "TCPLossProbeRecovery",
        "TCPSackRecovery",
        "TCPRenoRecovery",
        "TCPTimeoutRehash",
        "TCPBacklogDrop",
        "TCPRcvQDrop",
        "TCPZeroWindowDrop",
        "TCPOFOQueue",
        "TCPOFODrop",
        "ListenOverflows",
        "ListenDrops",
        "TCPAbortOnTimeout",
    ),
    "IpExt": ("InOctets", "OutOctets", "InNoRoutes", "InTruncatedPkts", "InCsumErrors"),
}


class _File:
    """A file kept open and re-read from the start each time."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read(self) -> str:
        return os.pread(self.fd, _READ_SIZE, 0).decode("ascii", "replace")

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _open(path: str) -> _File | None:
    try:
        return _File(path)
    except OSError:
        return None


class Source:
    name = "source"
    period_s = 0.0  # read at most this often (0: every tick)

    def read(self):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class NetDev(Source):
    """``/proc/net/dev``: every interface, all 16 columns."""

    name = "net_dev"

    def __init__(self, proc_root: str) -> None:
        self.file = _open(os.path.join(proc_root, "proc/net/dev"))

    @property
    def present(self) -> bool:
        return self.file is not None

    def read(self):
        out = []
        for line in self.file.read().splitlines()[2:]:
            iface, sep, rest = line.partition(":")
            if not sep:
                continue
            values = rest.split()
            device = iface.strip()
            for counter, value in zip(NET_DEV_COLUMNS, values, strict=False):
                out.append((device, None, counter, int(value)))
        return out

    def close(self) -> None:
        if self.file:
            self.file.close()


class _HeaderValueTable(Source):
    """``/proc/net/snmp`` style: a header line then a value line per protocol."""

    wanted: dict[str, tuple[str, ...]] = {}

    def __init__(self, path: str) -> None:
        self.file = _open(path)
        self.columns: dict[str, list[tuple[int, str]]] | None = None  # protocol -> kept (position, name)

    @property
    def present(self) -> bool:
        return self.file is not None

    def read(self):
        out = []
        lines = self.file.read().splitlines()
        if self.columns is None:  # the header lines do not change while the kernel runs
            self.columns = {}
            for header in lines[0::2]:
                proto, _, names = header.partition(":")
                keep = self.wanted.get(proto, ())
                self.columns[proto] = [(i, n) for i, n in enumerate(names.split()) if n in keep]
        for values in lines[1::2]:
            proto, _, numbers = values.partition(":")
            wanted = self.columns.get(proto)
            if wanted:
                fields = numbers.split()
                out.extend((proto, None, name, int(fields[i])) for i, name in wanted if i < len(fields))
        return out

    def close(self) -> None:
        if self.file:
            self.file.close()


class Snmp(_HeaderValueTable):
    name = "snmp"
    period_s = 0.5  # the kernel spends ~30 us generating the file: loss totals at 2 Hz are plenty
    wanted = SNMP_COUNTERS

    def __init__(self, proc_root: str) -> None:
        super().__init__(os.path.join(proc_root, "proc/net/snmp"))


class Netstat(_HeaderValueTable):
    name = "netstat"
    period_s = 0.5
    wanted = NETSTAT_COUNTERS

    def __init__(self, proc_root: str) -> None:
        super().__init__(os.path.join(proc_root, "proc/net/netstat"))


class NetClass(Source):
    """``/sys/class/net/<if>/{speed,mtu,operstate}``: written at the first read and when they change."""

    name = "net_class"
    period_s = 10.0  # descriptive values: checked every few seconds, written when they change
    FIELDS = ("speed", "mtu", "operstate")

    def __init__(self, sys_root: str) -> None:
        self.base = os.path.join(sys_root, "sys/class/net")
        self.last: dict[tuple[str, str], object] = {}

    @property
    def present(self) -> bool:
        return os.path.isdir(self.base)

    def read(self):
        out = []
        try:
            ifaces = sorted(os.listdir(self.base))
        except OSError:
            return out
        for iface in ifaces:
            for field in self.FIELDS:
                try:
                    with open(os.path.join(self.base, iface, field)) as fh:
                        raw = fh.read().strip()
                except OSError:
                    continue  # e.g. speed of a virtual interface: EINVAL
                value: object = int(raw) if raw.lstrip("-").isdigit() else raw
                if self.last.get((iface, field)) != value:
                    self.last[(iface, field)] = value
                    out.append((iface, None, field, value))
        return out


class Rdma(Source):
    """``/sys/class/infiniband/<dev>/ports/<n>/{counters,hw_counters}/*``: InfiniBand, RoCE and EFA.

    Every counter file is kept as it is: ``port_xmit_data`` and ``port_rcv_data`` in 4-byte words,
    32- or 64-bit as the device has them. ``hw_counters`` counters are named with an ``hw_`` prefix
    only where they would collide with a ``counters`` file of the same name.
    """

    name = "rdma"

    def __init__(self, sys_root: str) -> None:
        self.files: list[tuple[str, int, str, _File]] = []
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
                        handle = _open(path)
                        if handle is None:
                            continue
                        label = f"hw_{counter}" if group == "hw_counters" and counter in seen else counter
                        seen.add(counter)
                        self.files.append((device, int(port) if port.isdigit() else 0, label, handle))

    @property
    def present(self) -> bool:
        return bool(self.files)

    def read(self):
        out = []
        for device, port, counter, handle in self.files:
            try:
                raw = handle.read().strip()
                out.append((device, port, counter, int(raw)))
            except (OSError, ValueError):
                continue  # a counter that cannot be read right now (some are write-only or transient)
        return out

    def close(self) -> None:
        for *_, handle in self.files:
            handle.close()


class TcpConnections(Source):
    """Per-connection TCP statistics of the job's own processes on this host (sock_diag netlink).

    ``device`` is ``local>remote`` (``ip:port>ip:port``); counters are tcp_info's (retransmissions,
    RTT in us, bytes, delivery rate ...). Read once a second: the figures move slowly, a dump costs
    more than a file read.
    """

    name = "tcp_conn"
    period_s = 1.0
    INODE_REFRESH_S = 5.0

    def __init__(self, pid_file: str | None) -> None:
        from recorder import tcp_diag

        self.diag = tcp_diag
        self.pid_file = pid_file
        self.inodes: set[int] = set()
        self.inodes_at = float("-inf")
        self.pids: set[int] = set()
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

    def read(self):
        import time

        now = time.monotonic()
        pids = self._pids()
        if pids != self.pids or now - self.inodes_at >= self.INODE_REFRESH_S:
            self.pids = pids
            self.inodes = self.diag.socket_inodes(pids)
            self.inodes_at = now
        out = []
        for conn in self.diag.dump_tcp(self.sock):
            if conn["inode"] in self.inodes:
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

    def read(self):
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

    def read(self):
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


def host_sources(proc_root: str = "/", sys_root: str = "/", pid_file: str | None = None) -> list[Source]:
    """Every source that exists on this host."""
    candidates = [
        NetDev(proc_root),
        Snmp(proc_root),
        Netstat(proc_root),
        NetClass(sys_root),
        Rdma(sys_root),
        RdmaPorts(sys_root),
        TcpConnections(pid_file),
        Nvml(),
    ]
    present = []
    for source in candidates:
        if source.present:
            present.append(source)
        else:
            source.close()
    return present
