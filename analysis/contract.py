"""The ``diagnose`` report as typed records: what each flagged item holds, in the JSON's order.

``analysis.diagnose`` builds these; :meth:`Report.as_dict` is the JSON contract its docstring
describes (other tools parse it: fields are only ever added, never renamed or reordered). A
record's optional field that is None is left out of the JSON, as it always was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _plain(value):
    if isinstance(value, Record):
        return value.as_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Record:
    OPTIONAL: tuple[str, ...] = ()  # fields left out of the JSON when None

    def as_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = _plain(value)
        return out


@dataclass
class Straggler(Record):
    rank: int
    times_last: int
    mean_lateness_ms: float
    p95_lateness_ms: float
    outlier_score: float | None
    compute_share: float | None
    host: str | None
    verdict: str
    excess_gap_ms: float | None = None  # more time outside communication per collective than the others' median
    gap_score: float | None = None
    # What the verdict rests on (analysis.outside): steps judged; the steps in which the rank spent
    # longer outside communication than the median rank, by how much (median, robust standard deviation);
    # the mean over every step, the run's step-to-step noise and the z-score; the median step time.
    steps: int | None = None
    steps_longer: int | None = None
    longer_ms: float | None = None
    longer_spread_ms: float | None = None
    excess_ms_per_step: float | None = None
    noise_ms: float | None = None
    outside_z: float | None = None
    step_ms: float | None = None


@dataclass
class ProbeEvidence(Record):
    pairs: int
    best_gbps: float | None
    median_gbps: float | None
    others_median_gbps: float | None
    source: str = "probe"

    def as_dict(self) -> dict:  # the JSON names its source first
        return {"source": self.source, **{k: v for k, v in super().as_dict().items() if k != "source"}}


@dataclass
class SlowLink(Record):
    host: str
    interface: str | None
    evidence: ProbeEvidence


@dataclass
class ConnectionEvidence(Record):
    connections: int
    min_loss_pct: float | None
    others_median_loss_pct: float | None


@dataclass
class PacketLoss(Record):
    """``source``: "tcp_conn" (the job's own connections, with ``evidence``), "snmp" (the host's TCP
    totals) or "net_dev" (an interface's errors and drops)."""

    host: str
    interface: str | None
    connection: str | None
    source: str
    loss_pct: float | None
    evidence: ConnectionEvidence | None = None
    OPTIONAL = ("evidence",)


@dataclass
class Hang(Record):
    """``stacks``: where a source recorded them (Flight Recorder's frames), the call stack of each
    stuck rank's call, innermost frame first: ``[{"rank", "frames": ["name (file:line)", ...]}]``."""

    pg: str
    seq: int
    op: str | None
    missing_ranks: list[int]
    stuck_ranks: list[int]
    stacks: list[dict] | None = None
    OPTIONAL = ("stacks",)


@dataclass
class Desync(Record):
    pg: str
    seq: int
    culprit_rank: int
    kind: str
    expected_op: str | None
    culprit_op: str | None


@dataclass
class DeadRank(Record):
    rank: int
    last_op: str | None
    last_pg: str | None
    last_seq: int | None
    last_status: str | None
    last_event_ns: int | None
    host: str | None


@dataclass
class Report(Record):
    run_id: str
    world_size: int | None
    hosts: list[str]
    stragglers: list[Straggler] = field(default_factory=list)
    slow_links: list[SlowLink] = field(default_factory=list)
    packet_loss: list[PacketLoss] = field(default_factory=list)
    hangs: list[Hang] = field(default_factory=list)
    desyncs: list[Desync] = field(default_factory=list)
    dead_ranks: list[DeadRank] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recording: list[dict] = field(default_factory=list)  # analysis.health.findings
    # An imported run's source (analysis.importing): its kind, version, and what it cannot tell.
    source: dict | None = None
    OPTIONAL = ("source",)
