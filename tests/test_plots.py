"""Every plot on real lab runs (sample_traces/), and on runs where there is nothing to draw."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import Run, compare, findings, plots, timelines  # noqa: E402
from synthetic import T0, event, write_run  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {name: Run.open(SAMPLES / name) for name in ("healthy", "slow-link", "lossy", "straggler")}


def _pixels(fig: Figure) -> np.ndarray:
    data = plots.png(fig)
    assert data.startswith(b"\x89PNG") and fig._repr_png_().startswith(b"\x89PNG")
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def _drawn(fig: Figure) -> int:
    """How many data artists the figure's axes hold (lines, images, bars, filled areas)."""
    return sum(len(ax.lines) + len(ax.images) + len(ax.patches) + len(ax.collections) for ax in fig.axes)


def test_busbw_by_size_one_line_per_run(runs):
    fig = plots.busbw_by_size({name: findings.collectives(run) for name, run in runs.items()})
    ops = {row["op"] for run in runs.values() for row in findings.collectives(run).to_dicts()}
    panels = [ax for ax in fig.axes if ax.lines]
    assert {ax.get_title() for ax in panels} == ops
    # every panel: one line per run that measured the op, log-scaled on both axes
    for ax in panels:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert {line.get_label().split(" · ")[0] for line in ax.lines} <= set(runs)
    all_reduce = next(ax for ax in panels if ax.get_title() == "all_reduce")
    assert len(all_reduce.lines) == len(runs)
    assert _pixels(fig).std() > 0.05


def test_lateness_heatmap_shows_the_straggler_as_the_bright_row(runs):
    lateness = timelines.lateness_over_time(runs["straggler"], windows=30)
    fig = plots.lateness_heatmap(lateness)
    (image,) = fig.axes[0].images
    grid = np.ma.filled(image.get_array().astype(float), np.nan)
    assert grid.shape[0] == 3 and grid.shape[1] <= 30
    # rank 0 computes 100 ms longer before every other step: its row is the latest, window after window
    latest = np.nanargmax(np.nan_to_num(grid, nan=-1.0), axis=0)
    counted = ~np.all(np.isnan(grid), axis=0)
    assert (latest[counted] == 0).mean() > 0.6
    _pixels(fig)


def test_host_timeline_draws_every_host_with_loss_and_busy_time(runs):
    run = runs["lossy"]
    series, busy = timelines.host_series(run), timelines.busy_intervals(run, min_gap_s=0.005)
    assert {"tx_gbitps", "rx_gbitps", "tcp_retrans"} <= set(series["series"].to_list())
    assert not busy.is_empty() and (busy["t1_s"] >= busy["t0_s"]).all()
    fig = plots.host_timeline(series, busy)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert sum(t.startswith("labs-host") for t in titles) == 3
    assert all(ax.patches for ax in fig.axes)  # the busy intervals, shaded on every panel
    assert _drawn(fig) > 20
    _pixels(fig)


def test_probe_matrices_of_the_slow_link_run(runs):
    links = findings.links(runs["slow-link"])
    fig = plots.probe_matrices(links)
    bandwidth, latency = (ax for ax in fig.axes if ax.images)
    grid = np.ma.filled(bandwidth.images[0].get_array().astype(float), np.nan)
    hosts = [t.get_text() for t in bandwidth.get_yticklabels()]
    slow = hosts.index("labs-host1")
    # every pair that involves the shaped host is the slow one, in both directions
    others = [v for i, row in enumerate(grid) for j, v in enumerate(row) if slow not in (i, j) and not np.isnan(v)]
    involved = [v for i, row in enumerate(grid) for j, v in enumerate(row) if slow in (i, j) and not np.isnan(v)]
    assert max(involved) * 10 < min(others)
    assert len(latency.texts) == len(links)  # each measured pair is labelled
    _pixels(fig)


def test_comparison_marks_the_slower_run(runs):
    compared = compare.collectives(runs["healthy"], runs["slow-link"])
    fig = plots.comparison(compared, "healthy", "slow-link")
    (ax,) = fig.axes
    regressions = compared.filter(compared["regression"] & compared["busbw_ratio"].is_not_null())
    red = [bar for bar in ax.patches if bar.get_facecolor()[:3] == matplotlib.colors.to_rgb(plots.SLOWER)]
    assert len(red) == regressions.height > 0
    _pixels(fig)


def test_rank_lateness_marks_flagged_ranks(runs):
    fig = plots.rank_lateness(findings.stragglers(runs["straggler"]), {0})
    (ax,) = fig.axes
    colours = {tuple(bar.get_facecolor()[:3]) for bar in ax.patches[:1]}
    assert colours == {matplotlib.colors.to_rgb(plots.SLOWER)}
    _pixels(fig)


def test_empty_findings_give_a_figure_that_says_so(tmp_path):
    run = Run.open(write_run(tmp_path / "run", [event(0, 0, "all_reduce", 1, 4, 4, T0, None)], 1))
    made = [
        plots.busbw_by_size(findings.collectives(run)),
        plots.lateness_heatmap(timelines.lateness_over_time(run)),
        plots.host_timeline(timelines.host_series(run), timelines.busy_intervals(run)),
        plots.probe_matrices(findings.links(run)),
        plots.comparison(compare.collectives(run, run)),
        plots.rank_lateness(findings.stragglers(run)),
    ]
    for fig in made:
        assert isinstance(fig, Figure) and fig.axes[0].texts, fig
        _pixels(fig)
