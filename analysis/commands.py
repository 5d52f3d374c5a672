"""What each ``analyze-trace`` subcommand does with its parsed arguments (the parser is analysis.cli).

Each ``cmd_*`` opens the run, computes its finding and writes it in the format asked for: a table
for people, JSON or CSV for scripts; it returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import polars as pl

from analysis import findings, progress, text
from analysis.load import Run, TraceError, problem_kind


def _emit(
    frame: pl.DataFrame,
    fmt: str,
    title: str | None = None,
    columns: list[str] | None = None,
    headers: dict[str, str] | None = None,
    formatters: dict | None = None,
    note: str | None = None,
) -> None:
    """A finding's frame: every column, and the old names of renamed ones, for ``json`` and ``csv``;
    for people (``table``), the ``columns`` chosen, in words (``analysis.text``), and a ``note`` under it."""
    progress.stop()
    if fmt == "json":
        sys.stdout.write(findings.with_legacy_columns(frame).write_json() + "\n")
    elif fmt == "csv":
        sys.stdout.write(_csv_ready(findings.with_legacy_columns(frame)).write_csv())
    else:
        if title:
            print(title)
        if frame.is_empty():
            print("  (none)")
        else:
            print(text.table(frame, columns, headers, formatters))
        if note:
            print(textwrap.fill(note, width=110))


def _open(args: argparse.Namespace) -> Run:
    run = Run.open(args.run)
    progress.clear()
    if args.format == "table":
        hosts = ", ".join(text.clean(h) for h in run.hosts) or "?"
        print(f"run {text.clean(run.run_id)}: world size {run.world_size}, hosts {hosts}")
        for problem in run.problems:
            print(f"warning: {text.clean(problem)}")
    return run


def _json(payload: dict) -> None:
    import json

    sys.stdout.write(json.dumps(payload, default=str) + "\n")


def cmd_summary(args: argparse.Namespace) -> int:
    title = "operations per process group and op (calls summed over ranks; times: issue to completion on a rank):"
    headers = {"events": "calls", "ranks": "ranks seen", "size_bytes": "median size S"}
    _emit(findings.summary(_open(args)), args.format, title, text.SUMMARY_COLUMNS, headers, note=text.S_NOTE)
    return 0


def cmd_collectives(args: argparse.Namespace) -> int:
    title = "bandwidth per process group, op and message size (times: after the last rank arrived):"
    note = f"algbw = S / time, busbw = algbw x the nccl-tests bus factor; GB/s = 1e9 bytes/s. {text.S_NOTE}"
    frame = findings.collectives(_open(args))
    _emit(frame, args.format, title, text.COLLECTIVES_COLUMNS, {"bytes": "total S"}, note=note)
    return 0


def cmd_stragglers(args: argparse.Namespace) -> int:
    note = (
        "steps longer: the steps in which the rank spent longer outside communication (no operation in "
        "flight) than the median rank, and by how much (± its spread); excess per step: the same over every "
        "step; z: that against the run's step-to-step noise. A straggler has z above 5, in 3 steps or more, "
        "and an excess per step of 1 % of a step or more: a slow or lossy link cannot make a rank look like "
        "that. Where steps cannot be told (no group spans every rank), arrival lateness judges: lateness = "
        "this rank's start - the first rank's start; score: robust z-score of the rank's mean lateness "
        "against the others'; a straggler has a score above 3.5, a mean lateness of 1 ms or more, was last 5 "
        "times or more, spent 25 % of its lateness or more outside communication, and has no slow or lossy "
        "link on its host."
    )
    from analysis import diagnose

    frame = diagnose.judged_stragglers(_open(args), min_skew_ms=args.min_skew_ms)
    formatters = {"compute_share": text.percent, "flagged": lambda v: "yes" if v else "no"}
    title = "time outside communication and arrival, per rank:"
    _emit(frame, args.format, title, text.STRAGGLERS_COLUMNS, formatters=formatters, note=note)
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    run = _open(args)
    title = f"latency of messages up to {text.size(args.max_bytes)} (collectives: after the last arrival):"
    _emit(run.with_group(findings.latency(run, args.max_bytes)), args.format, title, note=text.S_NOTE)
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    frame = findings.steps(_open(args))
    if frame.is_empty() and args.format == "table":
        print("no steps were marked (call recorder.step() once per training step)")
        return 0
    _emit(frame, args.format, "communication per step and rank (comm: issue to completion, summed):")
    return 0


def cmd_hangs(args: argparse.Namespace) -> int:
    run = _open(args)
    hung, desynced = run.with_group(findings.hangs(run)), run.with_group(findings.desyncs(run))
    if args.format == "table":
        if hung.is_empty() and desynced.is_empty():
            print("no hang and no desync: every member finished every collective it was part of")
            return 0
        if not hung.is_empty():
            _emit(hung, "table", "the first collective of each group that not every member finished:")
        if not desynced.is_empty():
            _emit(desynced, "table", "members that disagree at the same seq:")
        return 0
    if args.format == "json":
        _json({"hangs": hung.to_dicts(), "desyncs": desynced.to_dicts()})
    else:
        _emit(hung, "csv")
    return 0


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV holds no nested values: lists become text ("0 1 3", as a spreadsheet takes rank lists), structs
    JSON text."""
    nested = []
    for name, kind in frame.schema.items():
        if isinstance(kind, pl.List | pl.Array):
            nested.append(pl.col(name).cast(pl.List(pl.String)).list.join(" "))
        elif isinstance(kind, pl.Struct):
            nested.append(pl.col(name).struct.json_encode())
    return frame.with_columns(nested) if nested else frame


def cmd_network(args: argparse.Namespace) -> int:
    run = _open(args)
    parts = {
        "interfaces": findings.network(run),
        "tcp": findings.tcp_loss(run),
        "rdma": findings.rdma(run),
        "bad_intervals": findings.bad_intervals(run),
    }
    if args.format == "json":
        _json({k: v.to_dicts() for k, v in parts.items()})
        return 0
    if args.format == "csv":
        _emit(parts["interfaces"], "csv")
        return 0
    titles = {
        "interfaces": "per host and interface (/proc/net/dev between samples):",
        "tcp": "TCP retransmissions (host: segments, /proc/net/snmp; connections: bytes, sock_diag):",
        "rdma": "RDMA ports (bytes from 4-byte words; the error and congestion counters that moved):",
        "bad_intervals": "intervals in which loss or error counters moved, and the collectives they overlapped:",
    }
    shown = False
    for key, frame in parts.items():
        if not frame.is_empty():
            _emit(frame, "table", titles[key])
            shown = True
    if not shown:
        print("no counter samples in this run (the sampler was off, or no rank held a host's sampler)")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from analysis import diagnose, sentences

    run = Run.open(args.run)
    report = diagnose.diagnose(run)
    progress.stop()
    if args.format == "json":
        _json(report)
    elif args.format == "csv":
        rows = [{"part": "job", **_flat(f)} for f in report["findings"]]
        rows += [{"part": "recording", **_flat(f)} for f in report["recording"]]
        rows += [{"part": "recording", "kind": problem_kind(p), "summary": p} for p in report["problems"]]
        columns = ["part", "kind", "rank", "host", "pg", "seq", "summary"]
        frame = pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], schema=dict.fromkeys(columns, pl.String))
        sys.stdout.write(frame.write_csv())
    else:
        for line in sentences.describe(report):
            print(line)
    fail = (args.fail_on_problem and diagnose.flagged(report)) or (
        args.fail_on_recording and diagnose.recording_flagged(report)
    )
    return 1 if fail else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from analysis import diagnose, sentences, watch, watchview

    options = watch.Options(
        interval_s=args.interval, window_s=args.window, hang_after_s=args.hang_after, stale_s=args.stale_after
    )
    terminal = args.format == "table" and sys.stdout.isatty()

    def emit(frame: dict, note: str | None, report: dict | None) -> None:
        progress.stop()
        if args.format == "json":
            sys.stdout.write(json.dumps({**frame, "note": note, "final": report}, default=str) + "\n")
        else:
            if terminal:
                sys.stdout.write("\x1b[H\x1b[2J")  # a screen that refreshes in place
            elif frame["refresh"] > 1:
                sys.stdout.write("\n")
            if note:
                sys.stdout.write(f"{note}\n")
            sys.stdout.write(watchview.render(frame, args.interval) + "\n")
            if report is not None:
                sys.stdout.write("\nthe job ended; the whole run, as diagnose says it:\n")
                sys.stdout.write("\n".join(sentences.describe(report)) + "\n")
        sys.stdout.flush()

    try:
        ending = watch.follow(args.run, options, emit, once=args.once)
    except KeyboardInterrupt:
        return 130
    if ending.report is not None:
        job, recording = diagnose.flagged(ending.report), diagnose.recording_flagged(ending.report)
    else:
        job, recording = watch.frame_flagged(ending.frame), watch.frame_recording_flagged(ending.frame)
    return 1 if (args.fail_on_problem and job) or (args.fail_on_recording and recording) else 0


def _flat(entry: dict) -> dict:
    return {k: None if v is None else str(v) for k, v in entry.items()}


def cmd_compare(args: argparse.Namespace) -> int:
    from analysis import compare

    a, b = Run.open(args.run_a), Run.open(args.run_b)
    parts = {
        "collectives": compare.collectives(a, b, args.threshold),
        "ranks": compare.ranks(a, b, args.threshold),
        "hosts": compare.hosts(a, b, args.threshold),
    }
    both = parts["collectives"].filter(pl.col("count_a").is_not_null() & pl.col("count_b").is_not_null())
    if both.is_empty():  # "no regression" would pass a gate that compared nothing
        raise TraceError(
            f"{a.run_id} and {b.run_id} have no collective (group, op, size) measured in both: nothing to compare"
        )
    regressed = any(frame["regression"].any() for frame in parts.values() if not frame.is_empty())
    if args.format == "json":
        _json({k: findings.with_legacy_columns(v).to_dicts() for k, v in parts.items()})
    elif args.format == "csv":
        _emit(parts["collectives"], "csv")
    else:
        names = f"A = {text.clean(a.run_id)}, B = {text.clean(b.run_id)}"
        print(f"{names}; regression: worse by more than {args.threshold:.0%}")
        for key, frame in parts.items():
            if not frame.is_empty():
                _emit(frame, "table", f"{key}:")
        print("regressions found" if regressed else "no regression")
    return 1 if args.fail_on_regression and regressed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from analysis import export

    run = Run.open(args.run)
    count = export.write(run, args.output, overwrite=args.force)
    print(f"wrote {count} trace events to {args.output} (open it in https://ui.perfetto.dev)")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from analysis import compact

    done = compact.compact(args.run, args.output)
    print(
        f"wrote {args.output}: {done['rows']:,} rows from {done['segments_before']:,} segments in "
        f"{done['segments_after']:,}, and {done['files_copied']:,} other files copied"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if args.source == "fr":
        from analysis.flightrec import import_dumps as read
    else:
        from analysis.inspector import import_logs as read
    done = read(args.paths, args.output)
    if args.format == "json":
        print(json.dumps(done, indent=1))
        return 0
    source = done["source"]
    skipped = f" ({done['skipped']:,} unreadable, left out)" if done["skipped"] else ""
    print(f"wrote {args.output}: {done['ranks']} ranks, {done['entries']:,} {source['name']} entries{skipped}")
    print("what the source cannot tell:")
    for line in source["limits"].values():
        print(f"  - {line}")
    print(f"next: analyze-trace diagnose {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis import report
    from analysis.export import check_new_file

    check_new_file(args.output, args.force)  # before the work, not after it
    run = Run.open(args.run)
    baseline = Run.open(args.compare) if args.compare else None
    size = report.write(run, args.output, baseline, args.threshold, overwrite=args.force)
    progress.stop()
    print(f"wrote {args.output} ({size / 1024:.0f} KiB, self-contained: open it in any browser)")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    run = _open(args)
    if not args.allow_external_access:
        run.lock_down()
    try:
        frame = run.sql(args.query)
    except Exception as exc:  # duckdb's errors are the user's query errors: one line, exit 2
        raise TraceError(f"query failed: {str(exc).splitlines()[0]}") from exc
    _emit(frame, args.format)
    return 0
