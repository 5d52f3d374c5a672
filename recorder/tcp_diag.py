"""Per-connection TCP statistics through the kernel's sock_diag netlink interface (what ``ss -ti`` shows).

A host's total retransmission counter cannot say which link loses packets; per-connection figures
can. The sampler dumps the TCP sockets of its network namespace with ``INET_DIAG_INFO`` and keeps
those owned by the job's processes on this host (their socket inodes, from ``/proc/<pid>/fd``).
No subprocess, no ``ss``: one netlink request per dump.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
INET_DIAG_INFO = 2
TCP_ESTABLISHED_ONLY = 1 << 1  # states bitmask: TCP_ESTABLISHED = 1

_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (sport, dport: big
# endian; src, dst: 4 x u32; if; cookie 2 x u32).
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=I8s")
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid, inode
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_RTATTR = struct.Struct("=HH")

# struct tcp_info (linux/tcp.h): (name, offset, format) of the fields we keep; each is present only
# if the kernel's struct is long enough.
TCP_INFO_FIELDS = (
    ("retransmits", 2, "B"),
    ("rto_us", 8, "I"),
    ("snd_mss", 16, "I"),
    ("unacked", 24, "I"),
    ("lost", 32, "I"),
    ("retrans", 36, "I"),
    ("pmtu", 60, "I"),
    ("rtt_us", 68, "I"),
    ("rttvar_us", 72, "I"),
    ("snd_cwnd", 80, "I"),
    ("total_retrans", 100, "I"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("segs_in", 140, "I"),
    ("min_rtt_us", 148, "I"),
    ("delivery_rate", 160, "Q"),
    ("bytes_sent", 200, "Q"),
    ("bytes_retrans", 208, "Q"),
)


def _request(family: int) -> bytes:
    body = _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, TCP_ESTABLISHED_ONLY)
    body += _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16) + _SOCKID_TAIL.pack(0, b"\0" * 8)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    return header + body


_REQUESTS = {family: _request(family) for family in (socket.AF_INET, socket.AF_INET6)}


def parse_tcp_info(blob: bytes) -> dict[str, int]:
    out = {}
    for name, offset, fmt in TCP_INFO_FIELDS:
        size = struct.calcsize(fmt)
        if offset + size <= len(blob):
            out[name] = struct.unpack_from("=" + fmt, blob, offset)[0]
    return out


@functools.lru_cache(maxsize=4096)
def _address(family: int, raw: bytes) -> str:
    """An address as text (cached: a job talks to the same few peers on every dump)."""
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)  # an IPv4 peer on a dual-stack socket: its IPv4 address


def parse_messages(data: bytes) -> tuple[list[dict], bool]:
    """Parse one netlink read: (connections, done)."""
    conns, offset, done = [], 0, False
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3
        if kind == NLMSG_DONE:
            done = True
            break
        if kind == NLMSG_ERROR:
            raise OSError("sock_diag request refused")
        if kind != SOCK_DIAG_BY_FAMILY:
            continue
        family, _state, _timer, _retrans = _MSG_HEAD.unpack_from(body, 0)
        sport, dport, src, dst = _SOCKID.unpack_from(body, 4)
        pos = 4 + _SOCKID.size + _SOCKID_TAIL.size
        _expires, _rq, _wq, _uid, inode = _MSG_TAIL.unpack_from(body, pos)
        pos += _MSG_TAIL.size
        info = {}
        while pos + _RTATTR.size <= len(body):
            rta_len, rta_type = _RTATTR.unpack_from(body, pos)
            if rta_len < _RTATTR.size:
                break
            if rta_type == INET_DIAG_INFO:
                info = parse_tcp_info(body[pos + _RTATTR.size : pos + rta_len])
            pos += (rta_len + 3) & ~3
        conns.append(
            {
                "local": f"{_address(family, src)}:{sport}",
                "remote": f"{_address(family, dst)}:{dport}",
                "inode": inode,
                "info": info,
            }
        )
    return conns, done


def open_diag_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    sock.settimeout(1.0)
    return sock


def _chunk_done(data: bytes) -> bool:
    """True if this netlink read ends the dump (it holds NLMSG_DONE or an error)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if kind in (NLMSG_DONE, NLMSG_ERROR) or length < _NLMSGHDR.size:
            return True
        offset += (length + 3) & ~3
    return False


def dump_raw(sock: socket.socket) -> list[bytes]:
    """The kernel's answer to a dump of IPv4 and IPv6 established connections, unparsed (cheap)."""
    chunks = []
    for family in (socket.AF_INET, socket.AF_INET6):
        sock.send(_REQUESTS[family])
        while True:
            data = sock.recv(1 << 16)
            chunks.append(data)
            if not data or _chunk_done(data):
                break
    return chunks


_INODE_AT = _NLMSGHDR.size + 4 + _SOCKID.size + _SOCKID_TAIL.size + 16  # inet_diag_msg.idiag_inode


def chunk_inodes(chunks: list[bytes]) -> set[int]:
    """The socket inodes in a raw dump, without parsing the rest (cheap enough for every capture)."""
    inodes = set()
    for data in chunks:
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                break
            if kind == SOCK_DIAG_BY_FAMILY and offset + _INODE_AT + 4 <= len(data):
                inodes.add(struct.unpack_from("=I", data, offset + _INODE_AT)[0])
            offset += (length + 3) & ~3
    return inodes


def parse_raw(chunks: list[bytes]) -> list[dict]:
    conns = []
    for data in chunks:
        conns.extend(parse_messages(data)[0])
    return conns


def socket_inodes(pids) -> set[int]:
    """The socket inodes held open by these processes (those we may read)."""
    inodes = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(os.path.join(fd_dir, name))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes
