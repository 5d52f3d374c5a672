"""Known answers for the analysis' formulas and findings, on hand-made runs in the recorder's schema."""

from __future__ import annotations

import pytest

from analysis import Run, findings, formulas
from synthetic import T0, event, write_run


def test_nccl_inspector_reduce_scatter_row(tmp_path):
    """NCCL Inspector's exporter: reduce_scatter, 65536 B per rank, 32 ranks, 110 us."""
    n, per_rank = 32, 65536
    rows = [event(r, 0, "reduce_scatter_tensor", n, per_rank * n, per_rank, T0, T0 + 110_000) for r in range(n)]
    result = findings.collectives(Run.open(write_run(tmp_path / "run", rows, n))).to_dicts()
    assert len(result) == 1
    row = result[0]
    assert row["op"] == "reduce_scatter_tensor" and row["family"] == "reduce_scatter" and row["bytes"] == per_rank * n
    assert row["algbw_GBps"] == pytest.approx(19.065, abs=0.001)
    assert row["busbw_GBps"] == pytest.approx(18.469, abs=0.001)


@pytest.mark.parametrize(
    ("op", "n", "bytes_in", "bytes_out", "size", "factor"),
    [
        ("all_reduce", 8, 1 << 20, 1 << 20, 1 << 20, 2 * 7 / 8),
        ("all_gather_into_tensor", 4, 1 << 18, 1 << 20, 1 << 20, 3 / 4),
        ("all_to_all_single", 4, 1 << 20, 1 << 20, 1 << 20, 3 / 4),
        ("broadcast", 16, 1 << 22, 1 << 22, 1 << 22, 1.0),
    ],
)
def test_bus_bandwidth_factors(tmp_path, op, n, bytes_in, bytes_out, size, factor):
    t_ns = 1_000_000
    rows = [event(r, 0, op, n, bytes_in, bytes_out, T0, T0 + t_ns) for r in range(n)]
    row = findings.collectives(Run.open(write_run(tmp_path / "run", rows, n))).to_dicts()[0]
    assert row["bytes"] == size and row["size_bucket"] == size
    assert row["algbw_GBps"] == pytest.approx(size / t_ns, abs=0.001)
    assert row["busbw_GBps"] == pytest.approx(size / t_ns * factor, abs=0.001)
    assert formulas.bus_factor(formulas.FAMILY[op], n) == pytest.approx(factor)


def test_transfer_time_starts_at_the_last_arrival(tmp_path):
    """A late rank makes the others' durations long; bandwidth uses the time after it arrived."""
    n, size = 4, 1 << 20
    rows = []
    for r in range(n):
        start = T0 + (50_000_000 if r == 3 else 0)  # rank 3 is 50 ms late
        rows.append(event(r, 0, "all_reduce", n, size, size, start, T0 + 50_000_000 + 2_000_000))
    row = findings.collectives(Run.open(write_run(tmp_path / "run", rows, n))).to_dicts()[0]
    assert row["p50_ms"] == pytest.approx(2.0)
    assert row["algbw_GBps"] == pytest.approx(size / 2_000_000, abs=1e-3)


def test_slow_rank_stands_out(tmp_path):
    n, late_rank, delay_ns = 4, 2, 5_000_000
    rows = []
    for seq in range(50):
        base = T0 + seq * 100_000_000
        for r in range(n):
            start = base + (delay_ns if r == late_rank else r * 10_000)  # others within 30 us
            rows.append(event(r, seq, "all_reduce", n, 4096, 4096, start, base + delay_ns + 200_000))
    result = {r["rank"]: r for r in findings.stragglers(Run.open(write_run(tmp_path / "run", rows, n))).to_dicts()}
    assert result[late_rank]["times_last"] == 50
    assert result[late_rank]["mean_lateness_ms"] == pytest.approx(5.0, abs=0.01)
    assert result[late_rank]["outlier_score"] > 3.5
    assert all(result[r]["times_last"] == 0 and result[r]["outlier_score"] < 3.5 for r in range(n) if r != late_rank)


def test_clock_offsets_put_ranks_on_one_timeline(tmp_path):
    """Rank 1's clock runs 7 ms behind rank 0's: with its measured offset it is not a straggler."""
    n, offset = 2, 7_000_000
    rows = []
    for seq in range(20):
        base = T0 + seq * 10_000_000
        rows.append(event(0, seq, "all_reduce", n, 64, 64, base, base + 100_000))
        rows.append(event(1, seq, "all_reduce", n, 64, 64, base - offset, base - offset + 100_000))
    run = Run.open(write_run(tmp_path / "run", rows, n, offsets_ns={1: offset}))
    result = {r["rank"]: r for r in findings.stragglers(run).to_dicts()}
    assert result[0]["times_last"] == 0 and result[1]["times_last"] == 0
    assert result[1]["mean_lateness_ms"] == pytest.approx(0.0, abs=1e-6)


def test_incomplete_instances_are_left_out_of_bandwidth(tmp_path):
    n = 2
    rows = [event(0, 0, "all_reduce", n, 64, 64, T0, T0 + 1000), event(1, 0, "all_reduce", n, 64, 64, T0, None)]
    assert findings.collectives(Run.open(write_run(tmp_path / "run", rows, n))).is_empty()


def test_a_tiny_slow_collective_keeps_its_bandwidth(tmp_path):
    """8 B moved in 50 ms is 1.2e-7 GB/s of bus bandwidth: small, not zero (plots and comparisons divide by it)."""
    n = 4
    rows = [event(r, 0, "all_gather", n, 8, 8 * n, T0, T0 + 50_000_000) for r in range(n)]
    (row,) = findings.collectives(Run.open(write_run(tmp_path / "run", rows, n))).to_dicts()
    assert row["busbw_GBps"] == pytest.approx(8 * n / 50e6 * (n - 1) / n, rel=1e-9)
    assert row["p50_ms"] == 50.0


def test_real_trace_collectives(spawned):
    run = Run.open(spawned["run"])
    table = findings.collectives(run).to_dicts()
    ops = {(r["pg"], r["family"]) for r in table}
    assert ("0", "all_reduce") in ops and ("0", "all_gather") in ops and ("0", "reduce_scatter") in ops
    assert all(r["busbw_GBps"] > 0 and r["p50_ms"] > 0 for r in table)
    strag = findings.stragglers(run).to_dicts()
    assert sorted(r["rank"] for r in strag) == [0, 1, 2, 3]
    assert findings.hangs(run).is_empty(), findings.hangs(run)  # every rank finished everything
    assert findings.desyncs(run).is_empty(), findings.desyncs(run)


def _healthy(n: int, seqs: range, op: str = "all_reduce", size: int = 4096) -> list[dict]:
    return [
        event(r, s, op, n, size, size, T0 + s * 1_000_000, T0 + s * 1_000_000 + 100_000) for s in seqs for r in range(n)
    ]


def _members(run_dir, n):
    """Write the group's membership into each rank's metadata, as the recorder does."""
    import json

    for r in range(n):
        path = run_dir / f"rank={r:05d}" / "rank-1-0000.json"
        meta = json.loads(path.read_text())
        meta["process_groups"] = [{"pg": "0", "ranks": list(range(n))}]
        path.write_text(json.dumps(meta))


@pytest.mark.parametrize("summaries", [True, False], ids=["footers", "events-only"])
def test_hang_names_the_missing_rank_and_the_stuck_ones(tmp_path, summaries):
    n = 4
    rows = _healthy(n, range(10))
    rows += [event(r, 10, "all_reduce", n, 4096, 4096, T0 + 10_000_000, None) for r in (0, 1, 3)]
    run_dir = write_run(tmp_path / "run", rows, n, summaries=summaries)
    _members(run_dir, n)
    run = Run.open(run_dir)
    assert not run.settled()
    result = findings.hangs(run).to_dicts()
    assert result == [{"pg": "0", "seq": 10, "op": "all_reduce", "missing_ranks": [2], "stuck_ranks": [0, 1, 3]}]


@pytest.mark.parametrize("summaries", [True, False], ids=["footers", "events-only"])
def test_a_rank_that_never_started_the_group_is_missing(tmp_path, summaries):
    n = 3
    rows = [e for e in _healthy(n, range(3)) if e["rank"] != 1 or e["seq"] < 2]
    rows = [dict(e, t_end_ns=None, status="in_flight") if e["seq"] == 2 else e for e in rows]
    run_dir = write_run(tmp_path / "run", rows, n, summaries=summaries)
    _members(run_dir, n)
    run = Run.open(run_dir)
    assert not run.settled()
    (hang,) = findings.hangs(run).to_dicts()
    assert (hang["seq"], hang["missing_ranks"], hang["stuck_ranks"]) == (2, [1], [0, 2])


def test_a_rank_whose_tail_is_missing_is_not_settled(tmp_path):
    """Every recorded instance finished, but one rank holds fewer of them: its last segment is lost."""
    rows = [e for e in _healthy(3, range(6)) if e["rank"] != 2 or e["seq"] < 4]
    run_dir = write_run(tmp_path / "run", rows, 3)
    _members(run_dir, 3)
    run = Run.open(run_dir)
    assert not run.settled()
    (hang,) = findings.hangs(run).to_dicts()
    assert (hang["seq"], hang["missing_ranks"], hang["stuck_ranks"]) == (4, [2], [])


def test_healthy_run_has_no_hang_or_desync(tmp_path):
    """The footers settle a healthy run; the answers and their columns are those of the event-by-event path."""
    frames = {}
    for summaries in (True, False):
        run_dir = write_run(tmp_path / f"run{summaries}", _healthy(4, range(20)), 4, summaries=summaries)
        _members(run_dir, 4)
        run = Run.open(run_dir)
        assert run.settled() is summaries
        frames[summaries] = [findings.hangs(run), findings.desyncs(run), findings.stragglers(run)]
    for settled, compared in zip(frames[True], frames[False], strict=True):
        assert settled.schema == compared.schema
        assert settled.equals(compared)
    assert frames[True][0].is_empty() and frames[True][1].is_empty()


@pytest.mark.parametrize("summaries", [True, False], ids=["footers", "events-only"])
def test_desync_names_the_culprit(tmp_path, summaries):
    n = 4
    rows = _healthy(n, range(8))
    rows = [dict(e, op="broadcast") if (e["seq"], e["rank"]) == (3, 2) else e for e in rows]
    rows = [dict(e, bytes_in=8192) if (e["seq"], e["rank"]) == (5, 0) else e for e in rows]
    rows = [dict(e, dtype="bfloat16") if (e["seq"], e["rank"]) == (6, 1) else e for e in rows]
    run_dir = write_run(tmp_path / "run", rows, n, summaries=summaries)
    _members(run_dir, n)
    run = Run.open(run_dir)
    assert not run.settled()
    result = findings.desyncs(run).to_dicts()
    assert [(r["seq"], r["culprit_rank"], r["kind"]) for r in result] == [(3, 2, "op"), (5, 0, "size"), (6, 1, "dtype")]
    assert result[0]["expected_op"] == "all_reduce" and result[0]["culprit_op"] == "broadcast"


def test_swapped_collectives_change_the_checksum(tmp_path):
    """Two members that issue the same collectives in a different order disagree at both seqs."""
    n = 2
    rows = _healthy(n, range(4))
    swap = {1: ("all_reduce", 4096), 2: ("all_gather_into_tensor", 1024)}
    rows = [dict(e, op=swap[e["seq"]][0], bytes_in=swap[e["seq"]][1]) if e["seq"] in swap else e for e in rows]
    rows = [
        dict(e, op=swap[3 - e["seq"]][0], bytes_in=swap[3 - e["seq"]][1]) if e["seq"] in swap and e["rank"] == 1 else e
        for e in rows
    ]
    run_dir = write_run(tmp_path / "run", rows, n)
    _members(run_dir, n)
    run = Run.open(run_dir)
    assert not run.settled()
    assert [r["seq"] for r in findings.desyncs(run).to_dicts()] == [1, 2]


def test_network_counters_wrap_reset_and_units(tmp_path):
    from synthetic import write_samples

    run_dir = write_run(tmp_path / "run", _healthy(2, range(3)), 2)
    s = 1_000_000_000
    write_samples(
        run_dir,
        "h0",
        [
            # eth0: 1.25 GB out in the first second, 2.5 GB in the next (10 and 20 Gbit/s); 3 drops
            (T0, "net_dev", "eth0", None, "tx_bytes", 1000),
            (T0 + s, "net_dev", "eth0", None, "tx_bytes", 1_250_001_000),
            (T0 + 2 * s, "net_dev", "eth0", None, "tx_bytes", 3_750_001_000),
            (T0, "net_dev", "eth0", None, "rx_drop", 5),
            (T0 + s, "net_dev", "eth0", None, "rx_drop", 8),
            (T0 + 2 * s, "net_dev", "eth0", None, "rx_drop", 8),
            # a 32-bit PMA counter that wraps (in 4-byte words) and a 64-bit one that resets
            (T0, "rdma", "mlx5_0", 1, "port_xmit_data", 2**32 - 10),
            (T0 + s, "rdma", "mlx5_0", 1, "port_xmit_data", 30),
            (T0, "rdma", "mlx5_0", 1, "port_rcv_data", 2**40),
            (T0 + s, "rdma", "mlx5_0", 1, "port_rcv_data", 100),
            (T0, "rdma", "mlx5_0", 1, "out_of_sequence", 2),
            (T0 + s, "rdma", "mlx5_0", 1, "out_of_sequence", 7),
            # TCP: 1000 segments sent, 20 retransmitted
            (T0, "snmp", "Tcp", None, "OutSegs", 5000),
            (T0 + s, "snmp", "Tcp", None, "OutSegs", 6000),
            (T0, "snmp", "Tcp", None, "RetransSegs", 100),
            (T0 + s, "snmp", "Tcp", None, "RetransSegs", 120),
        ],
    )
    run = Run.open(run_dir)
    (eth0,) = findings.network(run).to_dicts()
    assert eth0["tx_bytes"] == 3_750_000_000 and eth0["drops"] == 3
    assert eth0["mean_tx_gbitps"] == pytest.approx(15.0) and eth0["peak_tx_gbitps"] == pytest.approx(20.0)
    (port,) = findings.rdma(run).to_dicts()
    assert port["tx_bytes"] == 40 * 4  # wrapped: 10 + 30 words of 4 bytes
    assert port["rx_bytes"] == 100 * 4  # reset: counted from zero again
    assert dict(port["moved_counters"]) == {"out_of_sequence": 5}
    (tcp,) = findings.tcp_loss(run).to_dicts()
    assert (tcp["connection"], tcp["unit"], tcp["tcp_retrans_pct"]) == ("all", "segments", pytest.approx(2.0))
    # The drops, the retransmissions and the RoCE sequence errors all fell in the first second, while
    # seqs 0-2 ran on both ranks of host h0.
    bad = {(r["source"], r["counter"]): r for r in findings.bad_intervals(run).to_dicts()}
    assert set(bad) == {("net_dev", "rx_drop"), ("snmp", "RetransSegs"), ("rdma", "out_of_sequence")}
    assert bad[("net_dev", "rx_drop")]["delta"] == 3 and bad[("net_dev", "rx_drop")]["t0_ns"] == T0
    assert all(r["overlapping_collectives"] == 6 and r["ops"] == ["0:all_reduce"] for r in bad.values())


def _set_meta(run_dir, rank, **fields):
    import json

    path = run_dir / f"rank={rank:05d}" / "rank-1-0000.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


def test_diagnose_contract_healthy_and_broken(tmp_path):
    from analysis import diagnose

    n = 4
    healthy = write_run(tmp_path / "ok", _healthy(n, range(20)), n)
    _members(healthy, n)
    for r in range(n):
        _set_meta(healthy, r, closed=True)
    report = diagnose.diagnose(Run.open(healthy))
    assert set(report) >= {
        "run_id",
        "world_size",
        "hosts",
        "stragglers",
        "slow_links",
        "packet_loss",
        "hangs",
        "desyncs",
        "dead_ranks",
    }
    assert report["world_size"] == n and report["hosts"] == ["h0"]
    assert not diagnose.flagged(report)

    rows = []
    for seq in range(30):
        base = T0 + seq * 100_000_000
        for r in range(n):
            start = base + (8_000_000 if r == 1 else 0)
            rows.append(event(r, seq, "all_reduce", n, 64, 64, start, base + 8_500_000))
    rows += [event(r, 30, "all_reduce", n, 64, 64, T0 + 3_100_000_000, None) for r in (0, 1, 2)]
    broken = write_run(tmp_path / "broken", rows, n)
    _members(broken, n)
    for r in (0, 1, 2):
        _set_meta(broken, r, closed=True)  # rank 3 never closed: killed
    report = diagnose.diagnose(Run.open(broken))
    assert [s["rank"] for s in report["stragglers"]] == [1]
    assert report["stragglers"][0]["mean_lateness_ms"] == pytest.approx(8.0, abs=0.01)
    assert report["hangs"] == [
        {"pg": "0", "seq": 30, "op": "all_reduce", "missing_ranks": [3], "stuck_ranks": [0, 1, 2]}
    ]
    assert [(d["rank"], d["last_seq"]) for d in report["dead_ranks"]] == [(3, 29)]
    assert diagnose.flagged(report)


def _timed(n: int, seqs: range, op: str, size: int, transfer_ns: int, first_seq: int = 0) -> list[dict]:
    return [
        event(r, first_seq + s, op, n, size, size, T0 + s * 10_000_000, T0 + s * 10_000_000 + transfer_ns)
        for s in seqs
        for r in range(n)
    ]


def test_compare_flags_the_op_that_got_slower(tmp_path):
    from analysis import compare

    n = 4
    a = write_run(
        tmp_path / "a",
        _timed(n, range(10), "all_reduce", 1 << 20, 1_000_000)
        + _timed(n, range(10), "broadcast", 1 << 16, 200_000, first_seq=10),
        n,
    )
    b = write_run(
        tmp_path / "b",
        _timed(n, range(10), "all_reduce", 1 << 20, 2_000_000)
        + _timed(n, range(10), "broadcast", 1 << 16, 205_000, first_seq=10),
        n,
    )
    rows = {r["op"]: r for r in compare.collectives(Run.open(a), Run.open(b)).to_dicts()}
    assert rows["all_reduce"]["regression"] and rows["all_reduce"]["busbw_ratio"] == pytest.approx(0.5)
    assert not rows["broadcast"]["regression"]  # 2.5 % slower: within the 10 % threshold
    ranks = compare.ranks(Run.open(a), Run.open(b)).to_dicts()
    assert len(ranks) == n and all(r["regression"] for r in ranks)


def test_latency_of_small_messages_and_p2p(tmp_path):
    n = 2
    rows = _timed(n, range(5), "all_reduce", 1024, 50_000) + _timed(n, range(5), "all_reduce", 1 << 20, 900_000, 5)
    for k in range(3):  # rank 0 sends to 1: the receive completes 30 us after the later issue
        t = T0 + 1_000_000_000 + k * 1_000_000
        rows.append(event(0, k, "send", n, 256, 256, t, t + 5_000, peer=1))
        rows.append(event(1, k, "recv", n, 256, 256, t + 10_000, t + 40_000, peer=0))
    result = {
        (r["op"], r["size_bucket"]): r
        for r in findings.latency(Run.open(write_run(tmp_path / "r", rows, n))).to_dicts()
    }
    assert result[("all_reduce", 1024)]["p50_us"] == pytest.approx(50.0)
    assert ("all_reduce", 1 << 20) not in result  # above 64 KiB: a bandwidth question
    assert result[("send/recv", 256)]["count"] == 3 and result[("send/recv", 256)]["p50_us"] == pytest.approx(30.0)


def test_per_step_communication(tmp_path):
    n = 2
    rows = [dict(e, step=e["seq"] // 2) for e in _timed(n, range(6), "all_reduce", 4096, 1_000_000)]
    result = findings.steps(Run.open(write_run(tmp_path / "r", rows, n))).to_dicts()
    assert [(r["step"], r["rank"], r["ops"]) for r in result] == [(s, r, 2) for s in range(3) for r in range(n)]
    assert all(r["comm_ms"] == pytest.approx(2.0) and r["span_ms"] == pytest.approx(11.0) for r in result)


def test_footers_settle_a_real_run(spawned):
    """A real 4-rank run: its footers settle it, and every finding they shortcut is unchanged."""
    run = Run.open(spawned["run"])
    assert run.settled()
    events_only = Run.open(spawned["run"])
    events_only._settled = False
    for finding in (findings.hangs, findings.desyncs, findings.stragglers):
        settled, compared = finding(run), finding(events_only)
        assert settled.schema == compared.schema and settled.equals(compared), finding.__name__


def test_rdma_retransmissions_are_news_and_traffic_is_not(tmp_path):
    """One definition of RDMA traffic for the error filter and for rdma()'s moved counters: EFA's
    retrans_pkts and retrans_bytes are retransmissions (rdma() left retrans_pkts out as a packet
    count), tx_pkts, *_wrs and *_bytes are traffic."""
    from synthetic import write_samples

    run_dir = write_run(tmp_path / "run", _healthy(2, range(3)), 2)
    s = 1_000_000_000
    rows = []
    for counter, first, then in (
        ("tx_pkts", 100, 900),
        ("send_wrs", 10, 90),
        ("tx_bytes", 1000, 9000),
        ("retrans_pkts", 0, 4),
        ("retrans_bytes", 0, 4096),
        ("rx_drops", 1, 3),
    ):
        rows += [(T0, "rdma", "efa_0", 1, counter, first), (T0 + s, "rdma", "efa_0", 1, counter, then)]
    write_samples(run_dir, "h0", rows)
    run = Run.open(run_dir)
    (port,) = findings.rdma(run).to_dicts()
    assert dict(port["moved_counters"]) == {"retrans_pkts": 4, "retrans_bytes": 4096, "rx_drops": 2}
    bad = {r["counter"] for r in findings.bad_intervals(run).to_dicts() if r["source"] == "rdma"}
    assert bad == {"retrans_pkts", "retrans_bytes", "rx_drops"}


def test_time_outside_communication_tells_a_slow_rank_from_one_behind_a_bad_link(tmp_path):
    """Rank 2 computes 10 ms longer every step; rank 1's collectives end 20 ms late every step (behind
    a lossy link it finishes late, so it starts late). By lateness, rank 1 is the late one and rank 2
    hides inside its wait (last once in 20); by the time each spends between its collectives, only
    rank 2 stands out, by the 10 ms it was given."""
    n, slow, late_ending = 4, 2, 1
    rows, ends = [], [T0] * n
    for seq in range(20):
        starts = [ends[r] + 3_000_000 + (10_000_000 if r == slow else 0) for r in range(n)]
        last = max(starts)
        ends = [last + 2_000_000 + (20_000_000 if r == late_ending else 0) for r in range(n)]
        rows += [event(r, seq, "all_reduce", n, 1 << 20, 1 << 20, starts[r], ends[r]) for r in range(n)]
    by_rank = {r["rank"]: r for r in findings.stragglers(Run.open(write_run(tmp_path / "run", rows, n))).to_dicts()}
    assert by_rank[late_ending]["mean_lateness_ms"] > 15 and by_rank[slow]["times_last"] <= 1
    assert by_rank[slow]["excess_gap_ms"] == pytest.approx(10.0, abs=0.01)
    assert by_rank[slow]["gap_score"] > 3.5
    for rank in (0, 1, 3):
        assert abs(by_rank[rank]["excess_gap_ms"]) < 0.01 and abs(by_rank[rank]["gap_score"]) < 1, by_rank[rank]


def test_a_finding_is_computed_once_per_run_and_arguments(tmp_path):
    """diagnose, the report and the CLI ask for the same findings (stragglers, network, loss); each
    used to run its query again. The frame asked for again is the one already made."""
    run = Run.open(write_run(tmp_path / "run", _healthy(2, range(4)), 2))
    assert findings.stragglers(run) is findings.stragglers(run)
    assert findings.stragglers(run, 2.0) is not findings.stragglers(run)
    assert findings.network(run) is findings.network(run)
