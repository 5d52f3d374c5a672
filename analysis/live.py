"""The ranks' live files (``rank=N/live.json``, recorder.live): where each rank of a running job is now.

Per rank: per group the last collective seq it issued and the last it saw complete, what it has in
flight and since when, the events it dropped, whether it closed; and when the file was written.
The file is replaced after every flush (each ``COMMTRACE_FLUSH_S``), also while the rank is blocked,
so it answers what the segments cannot while a job hangs: who is stuck in which collective, and
who never issued it. Every value is typed at this boundary (analysis.metadata.LIVE_FIELDS).

Time: "how long" is always one rank's own clock against itself (the file's time minus the start of
the operation it holds), so it needs no clock offset; whether a rank still writes is judged by
whether its file changes, on the watcher's own clock, so a watcher on another machine with another
clock judges it the same.
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass, field

from analysis import metadata

LIVE_NAME = "live.json"  # recorder.live.LIVE_NAME


@dataclass
class Rank:
    """One rank as its live file last said, and when this watcher saw the file change."""

    rank: int
    state: dict
    changed_at: float  # the watcher's monotonic clock when the file last changed

    @property
    def t_ns(self) -> int:
        return int(self.state.get("t_ns") or 0)

    def inflight_s(self) -> float | None:
        """How long its oldest operation in flight has been (its own clock), or None."""
        oldest = self.state.get("oldest")
        if not oldest or "t_start_ns" not in oldest or not self.t_ns:
            return None
        return max(0.0, (self.t_ns - oldest["t_start_ns"]) / 1e9)


@dataclass
class Ranks:
    """Every rank's live file in one run directory, read again at each look."""

    path: str
    ranks: dict[int, Rank] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def read(self) -> None:
        now = time.monotonic()
        for path in glob.glob(os.path.join(glob.escape(self.path), "rank=*", LIVE_NAME)):
            match = re.fullmatch(r"rank=(\d{1,9})", os.path.basename(os.path.dirname(path)))
            if match is None:
                continue
            problems: list[str] = []
            raw = metadata.read_json(path, problems, os.path.relpath(path, self.path))
            state = metadata.typed(raw, metadata.LIVE_FIELDS, os.path.relpath(path, self.path), problems) if raw else {}
            for line in problems:
                if line not in self.problems:
                    self.problems.append(line)
            rank = int(match.group(1))
            if not state or state.get("rank", rank) != rank:
                continue
            known = self.ranks.get(rank)
            if known is None or known.state.get("t_ns") != state.get("t_ns"):
                self.ranks[rank] = Rank(rank, state, now)

    def stopped(self, stale_s: float, first_look: bool) -> list[int]:
        """Ranks that did not close and whose file has not changed for ``stale_s`` (at the first look,
        whose file is ``stale_s`` older than the newest one)."""
        now = time.monotonic()
        newest = max((r.t_ns for r in self.ranks.values()), default=0)
        out = []
        for r in self.ranks.values():
            if r.state.get("closed"):
                continue
            age = (newest - r.t_ns) / 1e9 if first_look else now - r.changed_at
            if age > stale_s:
                out.append(r.rank)
        return sorted(out)

    def closed(self) -> set[int]:
        return {r.rank for r in self.ranks.values() if r.state.get("closed")}

    def dropped(self) -> dict[int, int]:
        return {r.rank: int(r.state["dropped"]) for r in self.ranks.values() if r.state.get("dropped")}

    def progress(self, members: dict[str, set[int]]) -> list[dict]:
        """Per group: each member's last issued and completed seq (from the ranks that wrote one),
        the ranks behind the furthest, by how many collectives."""
        per_group: dict[str, dict[int, dict]] = {}
        for r in self.ranks.values():
            for pg, seqs in (r.state.get("groups") or {}).items():
                per_group.setdefault(pg, {})[r.rank] = seqs
        out = []
        for pg in sorted(per_group, key=lambda g: (-len(per_group[g]), g)):
            ranks = per_group[pg]
            done = {r: s.get("completed", -1) for r, s in ranks.items()}
            furthest = max(done.values())
            behind = sorted((furthest - d, r) for r, d in done.items() if d < furthest)
            out.append(
                {
                    "pg": pg,
                    "ranks": len(ranks),
                    "members": len(members.get(pg) or ()) or None,
                    "completed": furthest,
                    "issued": max(s.get("issued", -1) for s in ranks.values()),
                    "behind": [{"rank": r, "by": lag} for lag, r in sorted(behind, key=lambda x: (-x[0], x[1]))[:8]],
                    "per_rank": {str(r): [s.get("issued", -1), done[r]] for r, s in sorted(ranks.items())},
                }
            )
        return out

    def inflight(self, limit: int = 8) -> list[dict]:
        """The ranks' oldest operations in flight, the longest first."""
        rows = []
        for r in self.ranks.values():
            age = r.inflight_s()
            if age is None or r.state.get("closed"):
                continue
            oldest = r.state["oldest"]
            rows.append(
                {
                    "rank": r.rank,
                    "pg": oldest.get("pg"),
                    "seq": oldest.get("seq"),
                    "op": oldest.get("op"),
                    "peer": oldest.get("peer"),
                    "for_s": round(age, 3),
                    "inflight": r.state.get("inflight"),
                }
            )
        rows.sort(key=lambda x: (-x["for_s"], x["rank"]))
        return rows[:limit]

    def hang(self, hang_after_s: float, members: dict[str, set[int]], stopped: list[int]) -> dict | None:
        """A suspected hang: ranks stuck in one collective for at least ``hang_after_s``; that
        collective (the one most stuck ranks are in, the earliest if tied), the members that never
        issued it, the ones stuck in it, and members that stopped writing (no file to ask)."""
        stuck: dict[tuple, list[tuple[int, float]]] = {}
        for r in self.ranks.values():
            age = r.inflight_s()
            if age is None or age < hang_after_s or r.state.get("closed"):
                continue
            oldest = r.state["oldest"]
            stuck.setdefault((oldest.get("pg"), oldest.get("seq"), oldest.get("op")), []).append((r.rank, age))
        if not stuck:
            return None
        (pg, seq, op), who = min(stuck.items(), key=lambda kv: (-len(kv[1]), kv[0][1] if kv[0][1] is not None else 0))
        group = members.get(pg) or set()
        writing = {r.rank for r in self.ranks.values()}
        issued = {
            r.rank: (r.state.get("groups") or {}).get(pg, {}).get("issued", -1)
            for r in self.ranks.values()
            if r.rank in group or pg in (r.state.get("groups") or {})
        }
        never = sorted(r for r, s in issued.items() if seq is not None and s < seq)
        return {
            "pg": pg,
            "seq": seq,
            "op": op,
            "for_s": round(max(age for _, age in who), 3),
            "stuck_ranks": sorted(r for r, _ in who),
            "never_issued": never,
            "not_writing": sorted((group - writing) | (set(stopped) & group)),
        }


def _sample_row(row) -> tuple | None:
    """A host live file's row [t_ns, source, device, port, counter, value], typed, or None."""
    if not isinstance(row, list) or len(row) != 6:
        return None
    t_ns, source, device, port, counter, value = row
    ints = (t_ns, value) + ((port,) if port is not None else ())
    if any(isinstance(x, bool) or not isinstance(x, int) for x in ints) or not 0 <= t_ns < 1 << 62:
        return None
    if not -(1 << 63) <= value < 1 << 63 or (port is not None and not 0 <= port < 1 << 31):
        return None
    if not all(isinstance(x, str) for x in (source, counter)) or not (device is None or isinstance(device, str)):
        return None
    cut = metadata.MAX_TEXT
    return (t_ns, source[:cut], None if device is None else device[:cut], port, counter[:cut], value)


def host_samples(path: str, problems: list[str]) -> dict[str, list[tuple]]:
    """Each host's latest counters from its sampler's live file (``host=H/live.json``, recorder.live.HostLive):
    rows (t_ns, source, device, port, counter, value) as the host samples hold them."""
    out: dict[str, list[tuple]] = {}
    for file in glob.glob(os.path.join(glob.escape(path), "host=*", LIVE_NAME)):
        name = os.path.relpath(file, path)
        raw = metadata.read_json(file, problems, name)
        if not isinstance(raw, dict) or not isinstance(raw.get("host"), str) or not isinstance(raw.get("rows"), list):
            if raw is not None:
                problems.append(f"{name}: ignored (not a host's live counters)")
            continue
        rows = [_sample_row(r) for r in raw["rows"][:100_000]]
        if None in rows:
            shape = "[t_ns, source, device, port, counter, value]"
            problems.append(f"{name}: {rows.count(None)} rows ignored (not {shape})")
        out[raw["host"][: metadata.MAX_TEXT]] = [r for r in rows if r is not None]
    return out
