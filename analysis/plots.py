"""Plots for a post-mortem: each a function from findings (polars frames) to a matplotlib Figure.

Figures are made with matplotlib's object API (no pyplot state): they render the same in a script, a
notebook (``display(fig)``, or as a cell's last value) and the HTML report (``png``). A plot whose
findings are empty still returns a Figure, one that says there was nothing to draw and why.

    from analysis import Run, findings, timelines, plots
    run = Run.open("sample_traces/straggler")
    plots.lateness_heatmap(timelines.lateness_over_time(run)).savefig("lateness.png")

Needs matplotlib (``pip install 'commtrace[plots]'``); the rest of the analysis does not.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import polars as pl
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator

from analysis import text


class Plot(Figure):
    """A matplotlib Figure that shows itself in Jupyter as a PNG (no pyplot needed).

    Every text in it is drawn literally: host, group and run names come from the trace, and a "$"
    in one would otherwise be read as math (``$\\frac{$`` fails to draw at all); control characters
    in them are drawn as their escapes (``\\x1b``), not as missing glyphs."""

    def _repr_png_(self) -> bytes:
        return png(self)

    def draw(self, renderer) -> None:
        for label in self.findobj(Text):
            label.set_parse_math(False)
            shown = label.get_text()
            visible = "\n".join(text.clean(line) for line in shown.split("\n"))  # our own labels break lines
            if visible != shown:
                label.set_text(visible)
        super().draw(renderer)


# Colour-blind-safe (Okabe-Ito), in the order lines are drawn.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
FASTER, SLOWER, SAME = "#009E73", "#D55E00", "#999999"


def _empty(title: str, why: str, size: tuple[float, float] = (7, 2.5)) -> Figure:
    fig = Plot(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", color="#555555", transform=ax.transAxes, wrap=True)
    return fig


def _bytes_label(value: float, _pos=None) -> str:
    return text.size(value)


def png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for the report, or to write anywhere)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def busbw_by_size(collectives: pl.DataFrame | Mapping[str, pl.DataFrame]) -> Figure:
    """Bus bandwidth against message size, one panel per op, log-scaled; one line per run (and group).

    ``collectives``: ``findings.collectives(run)``, or ``{"label": frame, ...}`` to compare runs.
    """
    runs = dict(collectives) if isinstance(collectives, Mapping) else {"": collectives}
    rows = [
        frame.with_columns(pl.lit(label).alias("_run"))
        for label, frame in runs.items()
        if frame is not None and not frame.is_empty()
    ]
    data = pl.concat(rows, how="diagonal_relaxed") if rows else pl.DataFrame()
    if data.is_empty() or data["busbw_GBps"].drop_nulls().is_empty():
        return _empty("Bus bandwidth by message size", "no completed collective with a measurable transfer time")
    data = data.filter(pl.col("busbw_GBps") > 0)
    ops = sorted(data["op"].unique().to_list())
    cols = min(3, len(ops))
    rows_n = math.ceil(len(ops) / cols)
    fig = Plot(figsize=(4.2 * cols, 3.2 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False)
    labels = list(runs)
    for ax, op in zip(axes.flat, ops, strict=False):
        part = data.filter(pl.col("op") == op)
        lines = part.select("_run", "pg").unique().sort(["_run", "pg"]).rows()
        groups = sorted({pg for _, pg in lines})
        for label, pg in lines:
            line = part.filter((pl.col("_run") == label) & (pl.col("pg") == pg)).sort("size_bucket")
            size = line["pg_size"][0]
            group = line["group"][0] if "group" in line.columns else None
            name = " · ".join(x for x in (label, f"pg {pg} ({group or f'{size} ranks'})") if x)
            # one run: a colour per group; several: a colour per run, a line style per group
            if len(labels) == 1:
                colour, style = PALETTE[groups.index(pg) % len(PALETTE)], "-"
            else:
                colour = PALETTE[labels.index(label) % len(PALETTE)]
                style = ("-", "--", ":", "-.")[groups.index(pg) % 4]
            ax.plot(
                line["size_bucket"].to_list(),
                line["busbw_GBps"].to_list(),
                style,
                marker="o",
                markersize=3.5,
                color=colour,
                label=name,
                alpha=0.9,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=4))
        ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
        ax.set_title(op)
        ax.set_xlabel("message size S (nccl-tests), power-of-two bucket")
        ax.set_ylabel("busbw (GB/s)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(ops) :]:
        ax.set_axis_off()
    fig.suptitle("Bus bandwidth by message size (median per size bucket, nccl-tests busbw)")
    return fig


def lateness_heatmap(lateness: pl.DataFrame) -> Figure:
    """Per rank (rows) and time window (columns): mean arrival lateness, as a heatmap.

    ``lateness``: ``timelines.lateness_over_time(run)``. A straggler is a bright row; a slow moment
    for everyone (a network stall) a bright column.
    """
    if lateness.is_empty():
        return _empty("Arrival lateness", "no collective that every member recorded and completed")
    ranks = sorted(lateness["rank"].unique().to_list())
    windows = int(lateness["window"].max()) + 1
    grid = [[math.nan] * windows for _ in ranks]
    row_of = {r: i for i, r in enumerate(ranks)}
    for rank, window, value in lateness.select("rank", "window", "mean_lateness_ms").iter_rows():
        grid[row_of[rank]][window] = value
    first = lateness.row(0, named=True)
    origin, width = first["t_s"] - first["window"] * first["width_s"], first["width_s"]
    fig = Plot(figsize=(9, max(2.6, 0.22 * len(ranks) + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    peak = max((v for row in grid for v in row if not math.isnan(v)), default=0.0)
    positive = [v for row in grid for v in row if not math.isnan(v) and v > 0]
    floor = max(min(positive, default=0.01), peak / 1e4, 0.001)
    norm = LogNorm(vmin=floor, vmax=max(peak, floor * 10))
    image = ax.imshow(
        [[max(v, floor) if not math.isnan(v) else math.nan for v in row] for row in grid],
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        norm=norm,
    )
    fig.colorbar(image, ax=ax, label="mean lateness (ms)")
    step = max(1, len(ranks) // 16)
    ax.set_yticks(range(0, len(ranks), step), [str(r) for r in ranks[::step]])
    ticks = list(range(0, windows, max(1, windows // 8)))
    ax.set_xticks(ticks, [f"{origin + w * width:.3g}" for w in ticks])
    ax.set_xlabel(f"time since the run's first operation (s); windows of {width:.3g} s (white: no collective)")
    ax.set_ylabel("rank")
    ax.set_title("Arrival lateness per rank (this rank's start - the collective's first start)")
    return fig


def host_timeline(series: pl.DataFrame, busy: pl.DataFrame | None = None, max_hosts: int = 8) -> Figure:
    """Per host: NIC throughput over time (top) and the loss and error counters that moved (bottom),
    with the intervals in which the host's ranks were communicating shaded.

    ``series``: ``timelines.host_series(run)``; ``busy``: ``timelines.busy_intervals(run)``. The
    ``max_hosts`` hosts with the most loss events (then the busiest) are drawn.
    """
    if series.is_empty():
        return _empty("Host timeline", "no host counter samples in this run (the sampler was off)")
    bad = series.filter(~pl.col("series").str.ends_with("_gbitps"))
    rank_by = (
        series.group_by("host")
        .agg(
            pl.col("value").filter(~pl.col("series").str.ends_with("_gbitps")).sum().alias("bad"),
            pl.col("value").filter(pl.col("series").str.ends_with("_gbitps")).sum().alias("rate"),
        )
        .sort(["bad", "rate", "host"], descending=[True, True, False])
    )
    hosts = sorted(rank_by["host"].head(max_hosts).to_list())
    fig = Plot(figsize=(10, 2.9 * len(hosts) + 0.6), layout="constrained")
    axes = fig.subplots(2 * len(hosts), 1, sharex=True, height_ratios=[2.2, 1] * len(hosts), squeeze=False)[:, 0]
    for k, host in enumerate(hosts):
        rate_ax, bad_ax = axes[2 * k], axes[2 * k + 1]
        _draw_rates(rate_ax, series.filter((pl.col("host") == host) & pl.col("series").str.ends_with("_gbitps")))
        if busy is not None and not busy.is_empty():
            for t0, t1 in busy.filter(pl.col("host") == host).select("t0_s", "t1_s").iter_rows():
                for ax in (rate_ax, bad_ax):
                    ax.axvspan(t0, t1, color="#56B4E9", alpha=0.15, linewidth=0)
        rate_ax.set_title(f"{host}: throughput (shaded: its ranks communicating)", loc="left", fontsize="medium")
        _draw_bad_counters(bad_ax, bad.filter(pl.col("host") == host))
    axes[-1].set_xlabel("time since the run's first operation (s), rank 0's clock")
    more = len(rank_by) - len(hosts)
    fig.suptitle("What the NICs saw" + (f" ({len(hosts)} of {len(rank_by)} hosts: the worst first)" if more else ""))
    return fig


_BAD_COLOURS = {
    "errors": "#D55E00",
    "drops": "#CC79A7",
    "tcp_retrans": "#E69F00",
    "conn_retrans": "#0072B2",
    "other_bad": "#555555",
}
_BAD_NAMES = {
    "tcp_retrans": "host TCP retransmits",
    "conn_retrans": "job connections' retransmits",
    "other_bad": "other (timeouts, RDMA)",
}


def _draw_rates(ax, mine: pl.DataFrame) -> None:
    """One host's interface throughputs (``*_gbitps`` series), a step per sampling interval."""
    for i, ((interface, name), part) in enumerate(sorted(mine.group_by(["interface", "series"]), key=str)):
        if part["value"].max() <= 0:
            continue
        part = part.sort("t0_s")
        xs, ys = [], []
        for t0, t1, v in part.select("t0_s", "t1_s", "value").iter_rows():
            xs += [t0, t1]
            ys += [v, v]
        style = "-" if name.startswith("tx") else ":"
        ax.plot(xs, ys, style, color=PALETTE[i // 2 % len(PALETTE)], label=f"{interface} {name[:2]}")
    ax.set_ylabel("Gbit/s")
    if ax.lines:
        ax.legend(fontsize="x-small", loc="upper right", ncols=2)
    ax.grid(True, alpha=0.3)


def _draw_bad_counters(ax, events: pl.DataFrame) -> None:
    """One host's loss and error counters that moved, per second, a filled step per sampling interval
    (the sources are sampled at different periods)."""
    for (name,), part in sorted(events.group_by("series"), key=lambda item: str(item[0])):
        totals = part.group_by("t0_s", "t1_s").agg(pl.col("value").sum()).sort("t0_s")
        xs, ys = [], []
        for t0, t1, v in totals.select("t0_s", "t1_s", "value").iter_rows():
            xs += [t0, t0, t1, t1]
            ys += [0, v, v, 0]
        colour = _BAD_COLOURS.get(name, "#555555")
        ax.fill_between(xs, ys, color=colour, alpha=0.35, linewidth=0)
        ax.plot(xs, ys, color=colour, linewidth=1, label=_BAD_NAMES.get(name, name))
    ax.set_ylabel("per second")
    if events.is_empty():
        ax.text(0.5, 0.5, "no loss or error counter moved", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize="x-small", loc="upper right", ncols=4)
    ax.grid(True, alpha=0.3)


def probe_matrices(links: pl.DataFrame) -> Figure:
    """The link probe's host-pair matrices: bandwidth (Mbit/s) and 8-byte latency (µs), source x destination.

    ``links``: ``findings.links(run)`` (empty unless the run was recorded with COMMTRACE_PROBE=1).
    """
    if links.is_empty():
        return _empty("Link probe", "no probe in this run (record with COMMTRACE_PROBE=1 to measure host pairs)")
    hosts = sorted(set(links["src_host"].to_list()) | set(links["dst_host"].to_list()))
    index = {h: i for i, h in enumerate(hosts)}
    size = max(3.6, 0.55 * len(hosts) + 2.4)
    fig = Plot(figsize=(2 * size + 0.8, size), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, column, label, cmap in (
        (axes[0], "bandwidth_Gbitps", "bandwidth (Gbit/s), higher is better", "viridis"),
        (axes[1], "latency_us", "latency (µs), lower is better", "viridis_r"),
    ):
        grid = [[math.nan] * len(hosts) for _ in hosts]
        for src, dst, value in links.select("src_host", "dst_host", column).iter_rows():
            if value is not None:
                grid[index[src]][index[dst]] = value
        values = [v for row in grid for v in row if not math.isnan(v)]
        # a log scale when values span decades (one slow link among fast ones)
        spread = values and min(values) > 0 and max(values) / min(values) > 20
        norm = LogNorm(min(values), max(values)) if spread else None
        image = ax.imshow(grid, cmap=cmap, norm=norm, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if len(hosts) <= 16:
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        red, green, blue, _ = image.cmap(image.norm(v))
                        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                        figure = f"{v:.0f}" if v >= 100 else f"{v:.3g}"
                        ax.text(
                            j, i, figure, ha="center", va="center", fontsize="small", color="white" if dark else "black"
                        )
        names = [h if len(h) <= 14 else h[:13] + "…" for h in hosts]
        ax.set_xticks(range(len(hosts)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(hosts)), names)
        ax.set_xlabel("destination host")
        ax.set_ylabel("source host")
        ax.set_title(label, fontsize="medium")
    fig.suptitle("Link probe: every host pair, median over both probe phases")
    return fig


def comparison(compared: pl.DataFrame, label_a: str = "A", label_b: str = "B", limit: int = 30) -> Figure:
    """Which collectives got faster or slower from run A to run B, per (group, op, size bucket).

    ``compared``: ``compare.collectives(a, b)``. Bars show B's bus bandwidth against A's (log scale,
    1 = unchanged); regressions (flagged by compare's threshold) are red. The ``limit`` buckets that
    changed most are drawn.
    """
    data = compared.filter(pl.col("busbw_ratio").is_not_null() & (pl.col("busbw_ratio") > 0))
    if data.is_empty():
        return _empty(f"{label_b} against {label_a}", "no (group, op, size) bucket measured in both runs")
    data = (
        data.with_columns(pl.col("busbw_ratio").log().abs().alias("_change"))
        .sort("_change", descending=True)
        .head(limit)
        .sort(["op", "size_bucket", "pg"])
    )
    groups = data["group"].to_list() if "group" in data.columns else [None] * data.height
    names = [
        f"{op} {_bytes_label(size)} · pg {pg}" + (f" ({group})" if group else "")
        for (op, size, pg), group in zip(data.select("op", "size_bucket", "pg").iter_rows(), groups, strict=True)
    ]
    ratios = data["busbw_ratio"].to_list()
    colours = [
        SLOWER if regressed else (FASTER if r > 1 else SAME)
        for r, regressed in zip(ratios, data["regression"].to_list(), strict=True)
    ]
    fig = Plot(figsize=(9, 0.32 * len(names) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [r - 1 for r in ratios], left=1, color=colours)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xscale("log")
    low, high = min(ratios + [0.5]), max(ratios + [2.0])
    ax.set_xlim(low / 1.3, high * 1.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}×"))
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel(f"busbw of {label_b} / busbw of {label_a} (right: {label_b} faster)")
    for i, r in enumerate(ratios):
        right = r >= 1
        ax.text(r * (1.04 if right else 0.96), i, f"{r:.2f}×", va="center", ha="left" if right else "right", fontsize=8)
    ax.set_title(f"{label_b} against {label_a}: red = regression, green = faster")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def rank_lateness(stragglers: pl.DataFrame, flagged: set[int] | None = None) -> Figure:
    """Per rank: mean and p95 arrival lateness (bars), flagged stragglers in red.

    ``stragglers``: ``findings.stragglers(run)``; ``flagged``: the ranks diagnose named.
    """
    if stragglers.is_empty():
        return _empty("Arrival lateness per rank", "no collective that every member recorded and completed")
    flagged = flagged or set()
    data = stragglers.sort("rank")
    ranks = data["rank"].to_list()
    fig = Plot(figsize=(max(6, 0.25 * len(ranks) + 2), 3.2), layout="constrained")
    ax = fig.add_subplot()
    colours = [SLOWER if r in flagged else PALETTE[0] for r in ranks]
    ax.bar(range(len(ranks)), data["p95_lateness_ms"].to_list(), color=colours, alpha=0.35, label="p95")
    ax.bar(range(len(ranks)), data["mean_lateness_ms"].to_list(), color=colours, label="mean")
    step = max(1, len(ranks) // 32)
    ax.set_xticks(range(0, len(ranks), step), [str(r) for r in ranks[::step]])
    ax.set_xlabel("rank")
    ax.set_ylabel("lateness (ms)")
    ax.legend(fontsize="small")
    ax.set_title("Arrival lateness per rank: mean (solid), p95 (pale); red: flagged", fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


__all__ = [
    "busbw_by_size",
    "comparison",
    "host_timeline",
    "lateness_heatmap",
    "png",
    "probe_matrices",
    "rank_lateness",
]
