"""Hosts as network namespaces on a private bridge.

Everything the lab makes lives in its own namespaces: a "switch" namespace holds the bridge, each
host namespace holds one end of a veth pair (``eth0``) whose other end is a bridge port. Nothing is
added to the machine's own network namespace, and deleting the namespaces (always done on exit,
also when a test fails) removes every link with them. Addresses come from 10.213.<n>.0/24, with
<n> chosen per lab so that labs of concurrent test runs do not meet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def lab_available() -> str | None:
    """None if a lab can be built here, else why not."""
    if os.geteuid() != 0:
        return "the network lab needs root"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"the network lab needs '{tool}'"
    return None


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


class Lab:
    """``with Lab(3) as lab: lab.spawn(0, [...])`` — hosts 0..n-1, torn down on exit."""

    def __init__(self, hosts: int, tag: str | None = None) -> None:
        self.tag = tag or f"{os.getpid() % 100000}"
        self.subnet = 10 + os.getpid() % 240
        self.hosts = hosts
        self.switch = f"ct{self.tag}-sw"
        self.namespaces = [f"ct{self.tag}-h{i}" for i in range(hosts)]
        self.hostnames = [f"lab{self.tag}-host{i}" for i in range(hosts)]
        self._ports = [f"ct{self.tag}p{i}" for i in range(hosts)]
        self._made: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        _run("ip", "netns", "add", self.switch)
        self._made.append(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.namespaces):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
            _run(
                "ip",
                "link",
                "add",
                self._ports[i],
                "netns",
                self.switch,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _run("ip", "-n", self.switch, "link", "set", self._ports[i], "master", "br0")
            _run("ip", "-n", self.switch, "link", "set", self._ports[i], "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    # -- use ---------------------------------------------------------------------------------------
    def ip(self, host: int) -> str:
        return f"10.213.{self.subnet}.{host + 1}"

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        """argv run inside host's network namespace, with the host's own hostname (UTS namespace)."""
        return [
            "ip",
            "netns",
            "exec",
            self.namespaces[host],
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.hostnames[host],
            *argv,
        ]

    def spawn(self, host: int, argv: Sequence[str], env: dict[str, str], **popen) -> subprocess.Popen:
        return subprocess.Popen(self.command(host, argv), env=env, **popen)

    def shape(
        self, host: int, rate_mbit: float, burst_kbit: int = 64, latency_ms: int = 100, limit_bytes: int | None = None
    ) -> None:
        """Slow host's link in both directions with tbf; a small ``limit_bytes`` makes it drop packets."""
        queue = ["limit", str(limit_bytes)] if limit_bytes else ["latency", f"{latency_ms}ms"]
        spec = ["tbf", "rate", f"{rate_mbit}mbit", "burst", f"{burst_kbit}kbit", *queue]
        _run("ip", "netns", "exec", self.namespaces[host], "tc", "qdisc", "replace", "dev", "eth0", "root", *spec)
        _run("ip", "netns", "exec", self.switch, "tc", "qdisc", "replace", "dev", self._ports[host], "root", *spec)

    def unshape(self, host: int) -> None:
        for ns, dev in ((self.namespaces[host], "eth0"), (self.switch, self._ports[host])):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
