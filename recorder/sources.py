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


class KeptOpenFile:
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


def open_file(path: str) -> KeptOpenFile | None:
    try:
        return KeptOpenFile(path)
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


class FileSource(Source):
    """A source that reads one procfs file: kept open, its bytes copied on each capture."""

    def __init__(self, path: str) -> None:
        self.file = open_file(path)

    @property
    def present(self) -> bool:
        return self.file is not None

    def capture(self) -> bytes:
        return self.file.read()

    def close(self) -> None:
        if self.file:
            self.file.close()


class NetDev(FileSource):
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


class _HeaderValueTable(FileSource):
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


def host_sources(proc_root: str = "/", sys_root: str = "/", pid_file: str | None = None) -> list[Source]:
    """Every source that exists on this host."""
    from recorder.device_sources import Nvml, Rdma, RdmaPorts, TcpConnections

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
