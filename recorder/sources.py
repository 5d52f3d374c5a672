"""Readers of the host's network counters: raw cumulative values, exactly as the kernel shows them.

Each source yields ``(device, port, counter, value)`` tuples per read; ``value`` is an int, or a str
for the few descriptive values (an interface's operstate). A source whose files do not exist is
skipped, never an error. Files are opened once and re-read with ``pread`` at offset 0, which makes
procfs and sysfs produce fresh contents without another open.

Reading is split in two: ``capture()`` runs on every tick and only copies the kernel's bytes (a
``pread``, a netlink ``recv``); ``parse()`` turns them into tuples when the sampler writes a segment.
A sampler thread that wakes 10 times a second finds cold caches each time (on our VMs every line of
Python costs several times what it costs in a loop), so the work per wake-up is kept to the copy and
the parsing is done in one warm batch. The roots are configurable
(``COMMTRACE_PROC_ROOT``, ``COMMTRACE_SYS_ROOT``) so that tests can point them at fixture trees that
mirror real sysfs layouts. Deltas, wraps, resets and units are the analysis's job.
"""

from __future__ import annotations

import os
import struct
from operator import itemgetter

import numpy as np
import pyarrow as pa

from recorder import _arrow
from recorder.schema import SAMPLE_SCHEMA

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


PART_SCHEMA = SAMPLE_SCHEMA.remove(SAMPLE_SCHEMA.get_field_index("host"))
"""One source's parsed samples before the sampler adds the host and turns monotonic into wall time."""

PARSE_ERRORS = (OSError, ValueError, IndexError, struct.error)


def _no_text(n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), _arrow.strings([]))


def _constant(value: str, n: int) -> pa.DictionaryArray:
    return _arrow.dictionary(np.zeros(n, dtype=np.int32), [value])


def part_from_rows(source: str, rows: list) -> pa.Table:
    """Rows of ``(t_mono_ns, device, port, counter, value)`` as a PART_SCHEMA table; a str value goes
    to ``text``. Column by column in Arrow: the sampler shares the GIL with training."""
    column = [list(map(itemgetter(i), rows)) for i in range(5)]
    values = column[4]
    if any(isinstance(v, str) for v in values):
        numbers = _arrow.numeric([None if isinstance(v, str) else v for v in values], pa.int64())
        texts = _arrow.encode([v if isinstance(v, str) else None for v in values])
    else:
        numbers = _arrow.numeric(values, pa.int64())
        texts = _no_text(len(values))
    arrays = [
        _arrow.numeric(column[0], pa.int64()),
        _constant(source, len(values)),
        _arrow.encode(column[1]),
        _arrow.numeric(column[2], pa.int32()),
        _arrow.encode(column[3]),
        numbers,
        texts,
    ]
    return pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, PART_SCHEMA, strict=True)], schema=PART_SCHEMA)


class _File:
    """A file kept open and re-read from the start each time."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read(self) -> bytes:
        return os.pread(self.fd, _READ_SIZE, 0)

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

    def capture(self):
        """What the kernel shows now, as cheaply as possible (called on every tick)."""
        return self.read_parsed()

    def parse(self, raw) -> list:
        """``capture()``'s result as ``(device, port, counter, value)`` tuples (called at flush)."""
        return raw

    def read(self) -> list:
        return self.parse(self.capture())

    def parse_batch(self, captures: list) -> pa.Table:
        """Every ``(t_mono_ns, raw)`` capture of a flush interval as one PART_SCHEMA table; a capture
        that does not parse is left out."""
        rows: list = []
        for t, raw in captures:
            try:
                values = self.parse(raw)
            except PARSE_ERRORS:
                continue
            rows.extend((t,) + v for v in values)
        return part_from_rows(self.name, rows)

    def read_parsed(self) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FileSource(Source):
    """A source that reads one procfs file: kept open, its bytes copied on each capture."""

    def __init__(self, path: str) -> None:
        self.file = _open(path)

    @property
    def present(self) -> bool:
        return self.file is not None

    def capture(self) -> bytes:
        return self.file.read()

    def close(self) -> None:
        if self.file:
            self.file.close()


class NetDev(_FileSource):
    """``/proc/net/dev``: every interface, all 16 columns."""

    name = "net_dev"

    def __init__(self, proc_root: str) -> None:
        super().__init__(os.path.join(proc_root, "proc/net/dev"))

    def parse(self, raw: bytes):
        out = []
        for line in raw.decode("ascii", "replace").splitlines()[2:]:
            iface, sep, rest = line.partition(":")
            if not sep:
                continue
            values = rest.split()
            device = iface.strip()
            for counter, value in zip(NET_DEV_COLUMNS, values, strict=False):
                out.append((device, None, counter, int(value)))
        return out

    def parse_batch(self, captures: list) -> pa.Table:
        """All captures at once: one ``split`` of every number in C instead of a tuple per counter."""
        times, devices, numbers = [], [], []
        for t, raw in captures:
            for line in raw.decode("ascii", "replace").splitlines()[2:]:
                iface, sep, rest = line.partition(":")
                if not sep:
                    continue
                if len(rest.split(None, len(NET_DEV_COLUMNS))) != len(NET_DEV_COLUMNS):
                    return super().parse_batch(captures)  # a line this parser does not understand
                times.append(t)
                devices.append(iface.strip())
                numbers.append(rest)
        width = len(NET_DEV_COLUMNS)
        values = np.fromstring(" ".join(numbers), dtype=np.int64, sep=" ") if numbers else np.zeros(0, np.int64)
        if values.size != width * len(devices):  # a value that is not an integer: the slow way
            return super().parse_batch(captures)
        n = values.size
        names, codes = np.unique(np.array(devices, dtype=object), return_inverse=True)
        arrays = [
            _arrow.from_numpy(np.repeat(np.array(times, dtype=np.int64), width), pa.int64()),
            _constant(self.name, n),
            _arrow.dictionary(np.repeat(codes, width), names.tolist()),
            pa.nulls(n, pa.int32()),
            _arrow.dictionary(np.tile(np.arange(width), len(devices)), list(NET_DEV_COLUMNS)),
            _arrow.from_numpy(values, pa.int64()),
            _no_text(n),
        ]
        return pa.Table.from_arrays(arrays, schema=PART_SCHEMA)


class _HeaderValueTable(_FileSource):
    """``/proc/net/snmp`` style: a header line then a value line per protocol."""

    wanted: dict[str, tuple[str, ...]] = {}

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.columns: dict[str, list[tuple[int, str]]] | None = None  # protocol -> kept (position, name)

    def parse(self, raw: bytes):
        out = []
        lines = raw.decode("ascii", "replace").splitlines()
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

    def read_parsed(self):
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
