"""Our own bugs, injected: an exception inside the recorder's capture path or its sampler must leave
training untouched (same results, no exception) and say so in one line; and nothing the recorder
does listens on a socket. Each runs in a fresh process, so that its warnings are its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import clean_env

PRELUDE = """
    import json, sys
    import torch, torch.distributed as dist
    import recorder
    from recorder import capture, sources

    def train():
        t = torch.arange(8.0)
        for _ in range(20):
            dist.all_reduce(t)
            dist.broadcast(t, src=0)
        return t.tolist()
"""


def _run(body: str, tmp_path, *argv: str) -> tuple[dict, list[str]]:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env=clean_env(TRACES=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("[commtrace] WARNING")]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ours


CAPTURE_FAILURE = """
    import os
    from recorder import _state, groups
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    plain = train()
    dist.destroy_process_group()

    class Broken:
        def __next__(self):
            raise RuntimeError("injected capture failure")

    def broken(*args, **kwargs):
        raise RuntimeError("injected capture failure")

    if sys.argv[-1] == "group":
        groups.info_of = broken  # what setting up every new group calls
    with recorder.recording(os.environ["TRACES"], clock_sync=False, sample_hz=0):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        if sys.argv[-1] == "call" and _state.events is not None:
            _state.events.ids = Broken()  # inside the hot path's bookkeeping, on every call
        recorded = train()
        dist.destroy_process_group()
    print(json.dumps({"same": plain == recorded}))
"""


@pytest.mark.parametrize("where", ["group", "call"])
def test_capture_path_failure(tmp_path, where):
    """A bug of ours when a group is set up, or inside every recorded call: one line, then out of the way."""
    result, ours = _run(CAPTURE_FAILURE, tmp_path, where)
    assert result["same"]
    assert len(ours) == 1, ours
    assert "injected capture failure" in ours[0] and "training continues unaffected" in ours[0], ours


def test_sampler_failure(tmp_path):
    result, ours = _run(
        """
        import os, time

        def broken(self):
            raise RuntimeError("injected sampler failure")

        sources.FileSource.capture = broken
        with recorder.recording(os.environ["TRACES"], clock_sync=False, sample_hz=50):
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            first = train()
            time.sleep(0.3)  # several sampler ticks
            second = train()
            dist.destroy_process_group()
        print(json.dumps({"same": first == second == [x * 1.0 for x in range(8)]}))
        """,
        tmp_path,
    )
    assert result["same"]
    assert len(ours) == 1 and "injected sampler failure" in ours[0] and "not recorded" in ours[0], ours


def test_nothing_listens(tmp_path):
    """With the fake backend nothing else in the process opens a socket: every listening TCP or unix
    socket the process holds would be the recorder's (the sampler, the probe, the clock sync)."""
    result, _ = _run(
        """
        import os
        from torch.testing._internal.distributed.fake_pg import FakeStore

        def listening() -> list[str]:
            inodes = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
            found = []
            for table in ("tcp", "tcp6"):
                with open(f"/proc/self/net/{table}") as fh:
                    for line in list(fh)[1:]:
                        fields = line.split()
                        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                            found.append(f"{table} {fields[1]}")
            with open("/proc/self/net/unix") as fh:
                for line in list(fh)[1:]:
                    fields = line.split()
                    if int(fields[3], 16) & 0x10000 and fields[6] in inodes:  # __SO_ACCEPTCON
                        found.append("unix " + (fields[7] if len(fields) > 7 else "?"))
            return found

        with recorder.recording(os.environ["TRACES"], sample_hz=50):
            dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
            train()
            during = listening()
            recorder.flush()
            dist.destroy_process_group()
        print(json.dumps({"listening": during, "after": listening()}))
        """,
        tmp_path,
    )
    assert result == {"listening": [], "after": []}
