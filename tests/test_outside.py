"""Time outside communication (analysis.outside): known answers on hand-made runs in the recorder's
exact format, where the pauses, the overlap of asynchronous buckets and the bad links are exact."""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis import Run, findings
from analysis.diagnose import diagnose
from analysis.outside import _period, outside, steps_outside
from synthetic import T0, event, write_run

MS = 1_000_000


def _ddp(
    tmp_path,
    n=4,
    steps=24,
    buckets=4,
    pause=None,
    pause_every=1,
    bucket_ms=(5.0,),
    late_end=None,
    late_end_ms=0.0,
    marked=False,
    seed=0,
):
    """A DDP-like job: each step, every rank waits for its batch and runs forward (~8 ms), then
    backward issues ``buckets`` asynchronous all_reduces 2 ms apart (sizes differing: a period of
    ``buckets``); a bucket's all_reduce ends ``bucket_ms`` after its last member issued it and the
    previous bucket ended (one group's collectives run in order), and ``late_end_ms`` later on rank
    ``late_end`` (behind a bad link: it finishes late). The optimizer step follows the last bucket.
    ``pause``: (rank, ms) computed longer before every ``pause_every``-th step. Timings jitter by up
    to 0.2 ms. Before the steps, a set-up broadcast (DDP's)."""
    rng = random.Random(seed)
    sizes = [(1 << 20) * (k + 1) for k in range(buckets)]
    rows = [event(r, 0, "broadcast", n, 4096, 4096, T0, T0 + MS, root=0) for r in range(n)]
    begin = [T0 + 2 * MS] * n
    seq = 1
    for step in range(steps):
        issue = []
        for r in range(n):
            t = begin[r] + 8 * MS + rng.randrange(200_000)
            if pause and r == pause[0] and step % pause_every == pause_every - 1:
                t += int(pause[1] * MS)
            issue.append([t + 2 * MS * k + rng.randrange(200_000) for k in range(buckets)])
        done = 0
        for k in range(buckets):
            end = max(max(issue[r][k] for r in range(n)), done) + int(bucket_ms[k % len(bucket_ms)] * MS)
            done = end
            for r in range(n):
                stop = end + (int(late_end_ms * MS) if r == late_end else 0) + rng.randrange(100_000)
                extra = {"step": step} if marked else {}
                rows.append(
                    event(r, seq, "all_reduce", n, sizes[k], sizes[k], issue[r][k], stop, async_op=True, **extra)
                )
            seq += 1
        begin = [max(row["t_end_ns"] for row in rows[-n * buckets :] if row["rank"] == r) + MS for r in range(n)]
    return Run.open(write_run(tmp_path / "run", rows, n, hosts={r: f"h{r}" for r in range(n)}))


def test_a_pause_is_measured_where_buckets_overlap_backward_and_steps_are_not_marked(tmp_path):
    run = _ddp(tmp_path, pause=(2, 6.0))
    per_step = steps_outside(run)
    assert per_step["step"].n_unique() == 24  # the period of four buckets, found without marks
    by_rank = {r["rank"]: r for r in outside(run).to_dicts()}
    assert by_rank[2]["steps_longer"] >= 22 and by_rank[2]["longer_ms"] == pytest.approx(6.0, rel=0.1)
    assert by_rank[2]["outside_z"] > 5
    assert all(abs(by_rank[r]["outside_z"]) < 5 for r in (0, 1, 3)), by_rank
    (straggler,) = diagnose(run)["stragglers"]
    assert straggler["rank"] == 2 and "in 2" in straggler["verdict"] and "of 24 steps" in straggler["verdict"]


def test_a_pause_every_few_steps_is_its_own_size_in_those_steps(tmp_path):
    run = _ddp(tmp_path, pause=(1, 10.0), pause_every=3, marked=True)
    by_rank = {r["rank"]: r for r in outside(run).to_dicts()}
    assert by_rank[1]["steps"] == 24 and by_rank[1]["steps_longer"] == 8
    assert by_rank[1]["longer_ms"] == pytest.approx(10.0, rel=0.05)
    assert by_rank[1]["excess_ms_per_step"] == pytest.approx(10.0 / 3, rel=0.1)
    assert [s["rank"] for s in diagnose(run)["stragglers"]] == [1]


def test_a_bad_link_cannot_make_a_straggler_and_cannot_hide_one(tmp_path):
    """Rank 3 finishes every collective 20 ms late (behind a lossy link) and so starts late: by arrival
    it is the late one. Its time outside communication is everyone's: not a straggler. With rank 1
    pausing 3 ms as well (hidden in the others' longer waits), rank 1 alone is named."""
    slow_collectives = (30.0,)
    run = _ddp(tmp_path / "a", late_end=3, late_end_ms=20.0, bucket_ms=slow_collectives)
    late = {r["rank"]: r for r in findings.stragglers(run).to_dicts()}
    assert late[3]["mean_lateness_ms"] > 15
    assert diagnose(run)["stragglers"] == []
    run = _ddp(tmp_path / "b", late_end=3, late_end_ms=20.0, bucket_ms=slow_collectives, pause=(1, 3.0))
    (straggler,) = diagnose(run)["stragglers"]
    assert straggler["rank"] == 1 and straggler["longer_ms"] == pytest.approx(3.0, rel=0.15)
    assert "more outside communication than the median rank" in diagnose(run)["findings"][0]["summary"]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_each_rank_is_measured_against_the_median_of_the_others(tmp_path, n):
    rng = random.Random(n)
    rows, t = [], T0
    quiet = [[rng.randrange(1, 40) * MS for _ in range(n)] for _ in range(6)]
    for seq, gaps in enumerate(quiet):
        starts = [t + g for g in gaps]
        end = max(starts) + MS
        rows += [event(r, seq, "all_reduce", n, 1024, 1024, starts[r], end, step=seq) for r in range(n)]
        t = end
    per_step = steps_outside(Run.open(write_run(tmp_path / "run", rows, n)))
    for row in per_step.iter_rows(named=True):
        if row["step"] == 0:
            continue  # the first operation of a rank has no gap before it
        gaps = quiet[row["step"]]
        others = np.delete(np.array(gaps, dtype=float), row["rank"])
        assert row["excess_ms"] == pytest.approx((gaps[row["rank"]] - np.median(others)) / MS, abs=1e-6)


def test_the_period_is_the_training_step_after_set_up_and_the_phase_follows_the_forward_pass():
    step = np.array([11, 12, 13, 12, 14], dtype=np.uint64)
    set_up = np.array([1, 2, 3], dtype=np.uint64)
    signature = np.concatenate([set_up, np.tile(step, 30)])
    gaps = np.tile(np.array([0.0, 0.0, 0.0, 9.0, 0.0]), 30)  # the forward pass before the 4th
    gaps = np.concatenate([[np.nan, 1.0, 1.0], gaps])
    assert _period(signature, gaps) == (5, (3 + 3) % 5)  # the 4th of each step, counted from the first
    assert _period(np.arange(100, dtype=np.uint64), np.ones(100)) == (1, 0)  # never repeats: each is a step
    assert _period(np.full(100, 7, dtype=np.uint64), np.ones(100)) == (1, 0)


def test_several_groups_count_and_the_step_follows_the_group_every_rank_is_in(tmp_path):
    """Each step: an all_reduce of all four ranks (group 0), then two all_gathers within each pair
    (groups "a": 0-1, "b": 2-3), more of them than the world's. Rank 3 pauses 4 ms before its pair's
    first: its partner waits inside that all_gather, ranks 0 and 1 inside the next all_reduce. Its
    extra time falls before a pair's collective, not the world's; unmarked steps follow group 0."""
    n, rows = 4, []
    pair = {0: "a", 1: "a", 2: "b", 3: "b"}
    ready = [T0] * n  # when each rank is done with its previous collective
    for step in range(20):
        starts = [ready[r] + 5 * MS + r * 10_000 for r in range(n)]
        end = max(starts) + 2 * MS
        rows += [event(r, step, "all_reduce", n, 4096, 4096, starts[r], end) for r in range(n)]
        ready = [end] * n
        for k in range(2):
            starts = [ready[r] + MS + (4 * MS if r == 3 and k == 0 else 0) for r in range(n)]
            for members in ((0, 1), (2, 3)):
                stop = max(starts[r] for r in members) + MS
                rows += [
                    event(r, 2 * step + k, "all_gather", 2, 1024, 2048, starts[r], stop, pg=pair[r]) for r in members
                ]
                for r in members:
                    ready[r] = stop
    run = Run.open(write_run(tmp_path / "run", rows, n))
    assert steps_outside(run)["step"].n_unique() == 20
    by_rank = {r["rank"]: r for r in outside(run).to_dicts()}
    assert by_rank[3]["longer_ms"] == pytest.approx(4.0, rel=0.05) and by_rank[3]["steps_longer"] >= 18
    assert [s["rank"] for s in diagnose(run)["stragglers"]] == [3]


def test_in_a_three_rank_job_a_longer_pause_stands_out_more(tmp_path):
    """With three ranks, a rank's reference (the median of the other two) holds half the
    straggler's pause, so the others' excess moves with it. Taken as noise, that capped the
    straggler's score near 6.5 in 24 steps whatever its pause (6.25, 6.48, 6.57 for 2, 6 and 20 ms);
    the noise is each rank's variation around its own median, and the score follows the pause."""
    z = {}
    for pause in (2.0, 20.0):
        run = _ddp(tmp_path / str(pause), n=3, pause=(1, pause))
        z[pause] = {r["rank"]: r["outside_z"] for r in outside(run).to_dicts()}
        assert z[pause][1] > 20 and max(z[pause][0], z[pause][2]) < 0, z
    assert z[20.0][1] > 5 * z[2.0][1], z
