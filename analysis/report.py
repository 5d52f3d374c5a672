"""``analyze-trace report``: one self-contained HTML file to attach to a ticket.

Everything is inside the file: figures as PNG data URIs, styles inline, no script, no link to
anything outside it, so it reads the same offline, in a mail client's viewer and for someone without
commtrace. Every text that comes from a trace (host names, group names, ops) is HTML-escaped: a trace
may come from someone else's machine.

Sections: what diagnose flagged (as tables), the run's metadata, arrival lateness (per rank, and per
rank over time), bandwidth by message size, what each host's NICs saw, the link probe, and with
``--compare BASELINE`` the run against a baseline run.
"""

from __future__ import annotations

import base64
import datetime
import html

import polars as pl

from analysis import compare, diagnose, findings, health, sentences, text, timelines
from analysis.export import write_new_file
from analysis.load import Run, TraceError, problem_kind
from analysis.vocabulary import KINDS

MAX_ROWS = 60  # per table; the rest is counted, not shown
_HEALTH_HEADERS = {
    "clock_rounds": "clock rounds",
    "clock_rounds_asked": "of",
    "clock_offset_ms": "clock offset",
    "clock_uncertainty_ms": "±",
    "clock_drift_ms": "drift",
    "longest_wait_s": "longest wait",
    "longest_wait": "for",
}

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d1d1f; }
body { background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 36px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.sub { color: #666; margin: 0 0 16px; }
.verdict { padding: 12px 16px; border-radius: 6px; margin: 16px 0; }
.ok { background: #e8f6ee; border-left: 5px solid #009E73; }
.bad { background: #fdeee6; border-left: 5px solid #D55E00; }
.warn { background: #fdf6e3; border-left: 5px solid #E69F00; }
.verdict ul { margin: 6px 0 0; padding-left: 20px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0 18px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12.5px; margin-top: 4px; }
.more { color: #666; font-size: 12px; }
footer { color: #888; font-size: 12px; margin-top: 40px; }
"""


def _table(
    rows: list[dict], columns: list[str] | None = None, headers: dict[str, str] | None = None, formatters=None
) -> str:
    """An HTML table of dicts in the words of ``analysis.text`` (the CLI's headers and units), every cell
    escaped; at most MAX_ROWS rows."""
    if not rows:
        return "<p class=more>(none)</p>"
    columns = [c for c in columns or list(dict.fromkeys(k for row in rows for k in row)) if c in rows[0]]
    formatters = formatters or {}
    heads = "".join(f"<th>{html.escape((headers or {}).get(c) or text.header(c))}</th>" for c in columns)
    body = []
    for row in rows[:MAX_ROWS]:
        cells = []
        for c in columns:
            value = row.get(c)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            shown = formatters[c](value) if c in formatters else text.cell(c, value)
            cells.append(f"<td{' class=num' if numeric else ''}>{html.escape(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class=more>… and {len(rows) - MAX_ROWS} more rows</p>" if len(rows) > MAX_ROWS else ""
    return f"<table><thead><tr>{heads}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _frame(frame: pl.DataFrame, columns: list[str] | None = None, headers=None, formatters=None) -> str:
    return _table(frame.to_dicts(), columns or frame.columns, headers, formatters)


def _figure(fig, caption: str) -> str:
    from analysis import plots

    data = base64.b64encode(plots.png(fig)).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _when(ns: int | None) -> str:
    if ns is None:
        return "?"
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _metadata(run: Run) -> list[dict]:
    span = run.sql(
        "SELECT min(t_start_ns) AS t0, max(coalesce(t_end_ns, t_start_ns)) AS t1, count(*) AS n FROM collectives"
    )
    t0, t1, n = span.row(0)
    metas = list(run.ranks.values())
    first = metas[0] if metas else {}
    groups = {str(g.get("pg")) for m in metas for g in (m.get("process_groups") or []) if isinstance(g, dict)}
    backends = run.sql("SELECT DISTINCT backend FROM collectives WHERE backend IS NOT NULL ORDER BY 1")
    rows = [
        ("run id", run.run_id),
        ("run directory", run.path),
        ("world size", run.world_size),
        ("ranks that wrote metadata", len(run.ranks)),
        ("hosts", ", ".join(run.hosts) or "?"),
        ("first operation", _when(t0)),
        ("last operation ended", _when(t1)),
        ("duration (s)", round((t1 - t0) / 1e9, 3) if t0 is not None and t1 is not None else None),
        ("operations recorded", n),
        ("process groups", len(groups)),
        ("backends", ", ".join(backends.to_series().to_list()) or "?"),
        ("torch", first.get("torch_version") or run.run_meta.get("torch_version")),
        ("recorder", first.get("recorder_version") or run.run_meta.get("recorder_version")),
        ("job id", run.run_meta.get("job_id")),
        ("restart count", run.run_meta.get("restart_count")),
        ("events dropped by the recorder", sum(int(m.get("dropped_events") or 0) for m in metas)),
    ]
    rows += [("problem", p) for p in run.problems]
    return [{"": k, "value": v} for k, v in rows if v is not None]


def _verdict(report: dict) -> str:
    """What diagnose found, a sentence a finding (the same sentences as ``analyze-trace diagnose``)."""
    items = [
        f"<li><b>{html.escape(f['kind'].replace('_', ' '))}</b>: {html.escape(f['summary'])}</li>"
        for f in report.get("findings") or []
    ]
    if not items:
        return (
            '<div class="verdict ok"><b>Nothing flagged.</b> '
            "No straggler, slow or lossy link, hang, desync or dead rank.</div>"
        )
    return f'<div class="verdict bad"><b>{len(items)} finding(s)</b><ul>{"".join(items)}</ul></div>'


def _recording_verdict(report: dict) -> str:
    """The recording's own health, apart from the job's faults."""
    entries = list(report.get("recording") or [])
    entries += [{"kind": problem_kind(p), "summary": p} for p in report.get("problems") or []]
    if not entries:
        return (
            '<div class="verdict ok"><b>The recording is complete.</b> Every rank recorded and closed its trace, '
            "nothing was dropped, and clock offsets were measured.</div>"
        )
    items = [
        f"<li><b>{html.escape(e['kind'].replace('_', ' '))}</b>: {html.escape(e['summary'])}</li>" for e in entries
    ]
    return (
        f'<div class="verdict warn"><b>The recording: {len(items)} thing(s) to know</b> before trusting every '
        f"figure below<ul>{''.join(items)}</ul></div>"
    )


def _run_sections(run: Run, report: dict) -> list[str]:
    return (
        _flagged_section(report)
        + _recording_section(run)
        + _lateness_section(run, report)
        + _bandwidth_section(run)
        + _nic_section(run)
        + _probe_section(run)
    )


def _source_verdict(report: dict) -> list[str]:
    """An imported run's source and what it cannot tell (analysis.importing), before any finding."""
    source = report.get("source")
    if not source:
        return []
    head, *limits = sentences.source_lines(source)
    items = "".join(f"<li>{html.escape(line.strip().removeprefix('- '))}</li>" for line in limits)
    return [f'<div class="verdict warn"><b>{html.escape(head[0].upper() + head[1:])}</b><ul>{items}</ul></div>']


def _flagged_section(report: dict) -> list[str]:
    out = [*_source_verdict(report), _verdict(report), _recording_verdict(report)]
    flagged_kinds = [(key, title, meaning) for key, title, meaning in KINDS if report.get(key)]
    if flagged_kinds:
        out.append("<h2>What diagnose flagged</h2>")
    for key, title, meaning in flagged_kinds:
        entries = report[key]
        out.append(f"<h3>{html.escape(title)} ({len(entries)})</h3><p class=sub>{html.escape(meaning)}</p>")
        out.append(_table([{k: v for k, v in e.items() if k not in ("evidence", "stacks")} for e in entries]))
    clean = [title.lower() for key, title, _ in KINDS if not report.get(key)]
    if clean and flagged_kinds:
        out.append(f"<p class=sub>Checked, nothing found: {html.escape(', '.join(clean))}.</p>")
    return out


def _recording_section(run: Run) -> list[str]:
    return [
        "<h2>The run</h2>",
        _table(_metadata(run), ["", "value"]),
        "<h2>The recording</h2>",
        "<p class=sub>Per rank: whether it closed its trace, what it wrote and dropped, its clock offset to "
        "rank 0 (rounds measured, ± half the round trip, drift to its last measurement), and the longest the "
        "job waited for the recorder.</p>",
        _frame(health.per_rank(run), headers=_HEALTH_HEADERS),
    ]


def _lateness_section(run: Run, report: dict) -> list[str]:
    from analysis import plots

    stragglers = diagnose.judged_stragglers(run, report)
    flagged = set(stragglers.filter(pl.col("flagged"))["rank"].to_list())
    return [
        "<h2>Who arrived late</h2>",
        _figure(plots.rank_lateness(stragglers, flagged), "Mean and p95 arrival lateness per rank."),
        _figure(
            plots.lateness_heatmap(timelines.lateness_over_time(run)),
            "Mean arrival lateness per rank and time window: a bright row is a slow rank, a bright column a "
            "moment when everyone waited.",
        ),
        _frame(
            stragglers,
            text.STRAGGLERS_COLUMNS,
            formatters={"compute_share": text.percent, "flagged": lambda v: "yes" if v else "no"},
        ),
    ]


def _bandwidth_section(run: Run) -> list[str]:
    from analysis import plots

    collectives = findings.collectives(run)
    return [
        "<h2>Bandwidth</h2>",
        _figure(plots.busbw_by_size(collectives), "Bus bandwidth (nccl-tests busbw) by message size, per op."),
        _frame(collectives, text.COLLECTIVES_COLUMNS, {"bytes": "total S"}),
        f"<p class=sub>{html.escape(text.S_NOTE)}; GB/s = 1e9 bytes/s.</p>",
    ]


def _nic_section(run: Run) -> list[str]:
    from analysis import plots

    series = timelines.host_series(run)
    origin = timelines.origin_ns(run)
    span = run.sql("SELECT max(coalesce(t_end_ns, t_start_ns)) AS t1 FROM collectives").item()
    gap = max(((span or 0) - (origin or 0)) / 1e9 / 2000, 0.0)
    intervals = findings.bad_intervals(run, worst=MAX_ROWS)
    return [
        "<h2>What the NICs saw</h2>",
        _figure(
            plots.host_timeline(series, timelines.busy_intervals(run, gap)),
            "Per host: interface throughput and the loss and error counters that moved, per sampling "
            "interval; shaded where the host's ranks were communicating.",
        ),
        "<h3>Interfaces</h3>" + _frame(findings.network(run)),
        "<h3>TCP retransmissions</h3>" + _frame(findings.tcp_loss(run)),
        f"<h3>Intervals in which loss or error counters moved (the {MAX_ROWS} worst)</h3>" + _frame(intervals),
    ]


def _probe_section(run: Run) -> list[str]:
    from analysis import plots

    links = findings.links(run)
    return [
        "<h2>Link probe</h2>",
        _figure(plots.probe_matrices(links), "Bandwidth and latency of every probed host pair."),
        _frame(links),
    ]


def _compare_sections(a: Run, b: Run, threshold: float) -> list[str]:
    """Run ``b`` against the baseline ``a``."""
    from analysis import plots

    label_a, label_b = a.run_id, b.run_id
    collectives = compare.collectives(a, b, threshold)
    out = [f"<h2>{html.escape(label_b)} against {html.escape(label_a)}</h2>"]
    out.append(
        f"<p class=sub>A regression is a change for the worse beyond {threshold:.0%}: bus bandwidth down or "
        "transfer time up for a (group, op, size) bucket, mean duration up for a rank, throughput down for "
        "an interface.</p>"
    )
    out.append(
        _figure(
            plots.comparison(collectives, label_a, label_b),
            f"Bus bandwidth of {label_b} against {label_a}, per (op, size bucket, group).",
        )
    )
    out.append(
        _figure(
            plots.busbw_by_size({label_a: findings.collectives(a), label_b: findings.collectives(b)}),
            "Bus bandwidth by message size, both runs.",
        )
    )
    out.append("<h3>Per (group, op, size bucket)</h3>" + _frame(collectives))
    out.append("<h3>Per rank</h3>" + _frame(compare.ranks(a, b, threshold)))
    out.append("<h3>Per host interface</h3>" + _frame(compare.hosts(a, b, threshold)))
    return out


def build(run: Run, baseline: Run | None = None, threshold: float = 0.10) -> str:
    """The report as one HTML document; with ``baseline``, ``run`` is compared against it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise TraceError("the report draws with matplotlib: pip install 'commtrace[plots]'") from exc
    report = diagnose.diagnose(run)
    title = f"commtrace report: {run.run_id}" + (f" against {baseline.run_id}" if baseline else "")
    sub = (
        f"world size {run.world_size}, {len(run.hosts)} host(s); generated "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} by analyze-trace report"
    )
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class=sub>{html.escape(sub)}</p>"]
    body += _run_sections(run, report)
    if baseline is not None:
        body += _compare_sections(baseline, run, threshold)
        body.append(f"<h2>The baseline, {html.escape(baseline.run_id)}: what diagnose flagged</h2>")
        body.append(_verdict(diagnose.diagnose(baseline)))
    body.append(
        "<footer>commtrace: every figure and table here was computed from the run's per-rank Parquet logs. "
        "Times are on rank 0's clock (each rank's measured offset applied).</footer>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write(run: Run, path: str, baseline: Run | None = None, threshold: float = 0.10, overwrite: bool = False) -> int:
    """Write the report to ``path`` (never over an existing file unless ``overwrite``); returns its size."""
    text = build(run, baseline, threshold)
    write_new_file(path, text, overwrite)
    return len(text.encode())
