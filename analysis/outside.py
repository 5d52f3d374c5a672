"""Time outside communication: per rank and training step, how long the rank had no operation in
flight, against the other ranks' same time in the same step. The straggler signal a network fault
can neither fake nor hide.

A slow or lossy link lengthens collectives, and since a collective ends at about the same moment on
every member, it lengthens every member's time *in* communication; a rank's time *outside* it (its
forward and backward passes, data loading, host work) is its own. Lateness against the first
arriver mixes the two: a rank behind a bad link finishes late and so starts late, and a slow rank
hides inside everyone's longer waits.

Quiet time. A rank's operations (every group, point-to-point and barriers included) sorted by issue
time; an operation issued after every earlier one of the rank has completed is preceded by a quiet
gap, from the latest of those completions to its issue. With asynchronous operations in flight
(DDP's gradient buckets overlapping backward) the issue falls inside busy time and adds no gap.
A rank's quiet time in a step is the sum of the gaps before its operations in that step.

Steps. Marked with ``recorder.step()`` where every rank marked them. Otherwise inferred from the
group every rank belongs to that ran the most collectives: the period of its sequence of (op,
size) -- the collectives one training step issues -- and the phase with the longest quiet gap before
it (the forward pass) opens each step. A group whose collectives never repeat makes each collective
a step.

Per step, a rank's excess is its quiet time minus the median of the other ranks' quiet time in that
step (all ranks from 256 on). A straggler's pause before a step shows as excess in that step alone.
Where asynchronous collectives overlap its compute, the others, who wait longer, overlap more of
theirs, and the excess can read up to twice the pause.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis.load import Run, remembered

MIN_LONGER_MS = 0.2  # a step counts as one where a rank spent longer outside communication from this on
_PERIODS_SEEN = 20_000  # collectives of the step group read to find its period
_MAX_PERIOD = 2_000


def _gaps_sql(run: Run, where: str = "TRUE", step_of: str = "NULL") -> str:
    """Each operation of the rank with the quiet gap before it (null for the rank's first) and
    ``step_of`` (an expression that may use the window ``so_far``: the rank's operations up to this one)."""
    return f"""
        SELECT rank, pg, seq, op, bytes_in, t_start_ns, t_end_ns, {step_of} AS step_id,
               greatest(t_start_ns - max(t_end_ns) OVER (
                   PARTITION BY rank ORDER BY t_start_ns, seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               ), 0) AS gap_ns
        FROM raw_collectives WHERE {where}
        WINDOW so_far AS (PARTITION BY rank ORDER BY t_start_ns, seq ROWS UNBOUNDED PRECEDING)
    """


def _step_group(run: Run) -> tuple[str, int] | None:
    """(group, its lowest member): the group every rank belongs to that ran the most collectives."""
    row = run.sql(
        "SELECT pg, count(*) AS n FROM instances WHERE pg_size >= ? GROUP BY pg ORDER BY n DESC, pg LIMIT 1",
        [run.world_size or 0],
    )
    if not row.height:
        return None
    pg = row["pg"][0]
    members = run.members.get(pg)
    low = (
        min(members)
        if members
        else run.sql("SELECT min(rank) AS low FROM raw_collectives WHERE pg = ?", [pg])["low"][0]
    )
    return pg, int(low)


def _period(signature: np.ndarray, gaps: np.ndarray) -> tuple[int, int]:
    """(period, phase) of a group's collectives. The period: the smallest at which the (op, size)
    signatures past the first tenth (set-up: DDP's first broadcasts and bucket order) repeat about as
    often as at the best period (within 5 points, and at least half of them); the phase: the one
    with the longest median quiet gap before it (the forward pass)."""
    n = len(signature)
    start = n // 10
    periods = range(1, min(_MAX_PERIOD, (n - start) // 3) + 1)
    matches = [float(np.mean(signature[start + p :] == signature[start:-p])) for p in periods]
    if not matches or max(matches) < 0.5:
        return 1, 0
    period = next(p for p, m in zip(periods, matches, strict=True) if m >= max(matches) - 0.05)
    if period == 1:
        return 1, 0
    medians = [np.nanmedian(gaps[k::period]) if np.any(~np.isnan(gaps[k::period])) else -1 for k in range(period)]
    return period, int(np.argmax(medians))


def _step_sql(run: Run) -> list[str]:
    """SQL of each operation's step, for a query over the rank's operations in issue order (the
    window ``so_far``): the steps as marked, where the step group's lowest member marked them, then
    the steps inferred; the first that every rank took part in is used. Empty where the run's steps
    cannot be told."""
    found = _step_group(run)
    if found is None:
        low = min(run.ranks) if run.ranks else 0
        marked = run.sql("SELECT count(step) AS n FROM raw_collectives WHERE rank = ?", [low])["n"][0]
        return ["step"] if marked else []
    pg, low = found
    rows = run.sql(
        f"""
        SELECT seq, hash(op, bytes_in) AS signature, gap_ns, step_id FROM ({_gaps_sql(run, "rank = ?", "step")})
        WHERE pg = ? ORDER BY seq LIMIT {_PERIODS_SEEN}
    """,
        [low, pg],
    )
    if rows.height < 2:
        return []
    period, phase = _period(rows["signature"].to_numpy(), rows["gap_ns"].cast(pl.Float64).fill_null(np.nan).to_numpy())
    first = int(rows["seq"][0]) + phase
    quoted = "'" + pg.replace("'", "''") + "'"
    boundary = f"pg = {quoted} AND seq >= {first} AND (seq - {first}) % {period} = 0"
    inferred = f"max(CASE WHEN {boundary} THEN (seq - {first}) // {period} END) OVER so_far"
    return (["step"] if rows["step_id"].null_count() < rows.height else []) + [inferred]


@remembered
def steps_outside(run: Run) -> pl.DataFrame:
    """Per step and rank: quiet_ms (time with no operation in flight), excess_ms (that minus the
    median of the other ranks' in the same step), step_ms (from this step's first issue to the
    next's, on this rank). Steps every rank took part in, only."""
    schema = {"step": pl.Int64, "rank": pl.Int32, "quiet_ms": pl.Float64, "excess_ms": pl.Float64}
    found = pl.DataFrame(schema={**schema, "step_ms": pl.Float64})
    for step_of in _step_sql(run):
        found = _per_step(run, step_of)
        if found["rank"].n_unique() >= (run.world_size or 0):
            break  # every rank took part in these steps (else: some ranks did not mark theirs)
    return found


def _per_step(run: Run, step_of: str) -> pl.DataFrame:
    below = 256
    return run.sql(f"""
        WITH events AS ({_gaps_sql(run, step_of=step_of)}),
        per_step AS (
            SELECT step_id AS step, rank, coalesce(sum(gap_ns), 0) AS quiet_ns, min(t_start_ns) AS first_ns
            FROM events WHERE step_id IS NOT NULL GROUP BY step_id, rank
        ),
        timed AS (
            SELECT *, lead(first_ns) OVER (PARTITION BY rank ORDER BY step) - first_ns AS step_ns FROM per_step
        ),
        sorted AS (
            -- the ranks' quiet times in each step, sorted: the median of the others is read off them
            SELECT step, list_sort(list(quiet_ns)) AS q, count(*) AS n FROM per_step GROUP BY step
        )
        SELECT t.step::BIGINT AS step, t.rank::INTEGER AS rank, t.quiet_ns / 1e6 AS quiet_ms,
               (t.quiet_ns - CASE
                   WHEN s.n = 1 THEN NULL
                   WHEN s.n >= {below} THEN (s.q[(s.n + 1) // 2] + s.q[s.n // 2 + 1]) / 2
                   -- leave-one-out: an even count leaves an odd one, whose middle depends on which
                   -- side of the middle pair this rank's value lies
                   WHEN s.n % 2 = 0 THEN CASE WHEN t.quiet_ns >= s.q[s.n // 2 + 1] THEN s.q[s.n // 2]
                                              ELSE s.q[s.n // 2 + 1] END
                   WHEN t.quiet_ns > s.q[(s.n + 1) // 2] THEN (s.q[(s.n - 1) // 2] + s.q[(s.n + 1) // 2]) / 2
                   WHEN t.quiet_ns < s.q[(s.n + 1) // 2] THEN (s.q[(s.n + 1) // 2] + s.q[(s.n + 3) // 2]) / 2
                   ELSE (s.q[(s.n - 1) // 2] + s.q[(s.n + 3) // 2]) / 2
               END) / 1e6 AS excess_ms,
               t.step_ns / 1e6 AS step_ms
        FROM timed t JOIN sorted s USING (step)
        WHERE s.n = (SELECT max(n) FROM sorted)
        ORDER BY step, rank
    """)


def _split(excess: np.ndarray, floor: float) -> np.ndarray:
    """Which of a rank's steps show its extra time: those above a threshold halfway between the mean
    of the steps above it and of those below (iterated: the two-class split of a histogram), and
    never under ``floor``. A rank that pauses every few steps shows in those steps alone, and the
    median over them is the pause."""
    threshold = floor
    for _ in range(20):
        above, below = excess[excess >= threshold], excess[excess < threshold]
        if len(above) == 0 or len(below) == 0:
            break
        moved = max((above.mean() + below.mean()) / 2, floor)
        if abs(moved - threshold) < 1e-6:
            break
        threshold = moved
    return excess >= threshold


def _spread(values: np.ndarray) -> float:
    """A standard deviation that one glitch does not inflate: 1.4826 x the median absolute deviation."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _trimmed_mean(values: np.ndarray, cut: float = 0.1) -> float:
    """The mean without the lowest and highest tenth: one long pause or one lucky step does not move it."""
    ordered = np.sort(values)
    k = int(len(ordered) * cut)
    return float(ordered[k : len(ordered) - k].mean())


@remembered
def outside(run: Run) -> pl.DataFrame:
    """Per rank: how much longer than the other ranks it spends outside communication, step by step.

    Columns: rank; steps (judged); excess_ms_per_step (mean excess over every step); noise_ms (how
    much any rank's excess varies from step to step: 1.4826 x the median absolute deviation of each
    rank's excess from that rank's own median, over every rank and step, at least 0.05 ms);
    outside_z (the rank's excess per step, its highest and lowest tenth of steps left out, against
    the noise of a mean over that many steps: / (noise_ms / sqrt(steps)); above 5, no step-to-step
    noise of this run makes it); steps_longer (the steps that
    show the rank's extra time, :func:`_split`, with an excess of at least MIN_LONGER_MS); longer_ms
    and longer_spread_ms (median and robust standard deviation of the excess over those steps: the
    extra time itself, where the rank takes it only every few steps, that one step-long glitch of the
    whole job does not move); step_ms (median step time, issue of a step's first operation to the
    next step's).
    """
    if run.untimed:  # no completion times: the time outside communication is not known
        return pl.DataFrame(schema=OUTSIDE_SCHEMA)
    per_step = steps_outside(run).filter(pl.col("excess_ms").is_not_null())
    if per_step.height == 0:
        return pl.DataFrame(schema=OUTSIDE_SCHEMA)
    step_ms = float(per_step["step_ms"].median() or 0.0)
    # Step-to-step noise: each rank's excess around its own median, pooled. A rank's steady offset
    # (the straggler's own, and, in a job of two or three ranks, the others' share of it: with two
    # others, a rank's median reference is their mean, the straggler's half) is not noise; pooled
    # with it, a 3-rank job's straggler could never score much above 5 in 26 steps, whatever its pause.
    deviation = (pl.col("excess_ms") - pl.col("excess_ms").median().over("rank")).abs()
    noise = max(1.4826 * float(per_step.select(deviation.median()).item()), 0.05)
    rows = []
    for (rank,), frame in per_step.group_by("rank"):
        excess = frame["excess_ms"].to_numpy()
        longer = excess[_split(excess, MIN_LONGER_MS)]
        mean = float(excess.mean())
        rows.append(
            {
                "rank": rank,
                "steps": len(excess),
                "excess_ms_per_step": round(mean, 3),
                "noise_ms": round(noise, 3),
                "outside_z": round(_trimmed_mean(excess) / (noise / np.sqrt(len(excess))), 2),
                "steps_longer": len(longer),
                "longer_ms": round(float(np.median(longer)), 3) if len(longer) else None,
                "longer_spread_ms": round(_spread(longer), 3) if len(longer) > 1 else None,
                "step_ms": round(step_ms, 3),
            }
        )
    return pl.DataFrame(rows, schema=OUTSIDE_SCHEMA).sort("rank")


OUTSIDE_SCHEMA = {
    "rank": pl.Int32,
    "steps": pl.Int64,
    "excess_ms_per_step": pl.Float64,
    "noise_ms": pl.Float64,
    "outside_z": pl.Float64,
    "steps_longer": pl.Int64,
    "longer_ms": pl.Float64,
    "longer_spread_ms": pl.Float64,
    "step_ms": pl.Float64,
}
