"""``analyze-trace``: the front door to a recorded run.

    analyze-trace summary RUN_DIR [--format table|json|csv]

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

from analysis import findings
from analysis.load import Run, TraceError


def _emit(frame: pl.DataFrame, fmt: str, title: str | None = None) -> None:
    if fmt == "json":
        sys.stdout.write(frame.write_json() + "\n")
    elif fmt == "csv":
        sys.stdout.write(frame.write_csv())
    else:
        if title:
            print(title)
        with pl.Config(
            tbl_rows=200,
            tbl_cols=30,
            tbl_width_chars=200,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
            fmt_str_lengths=60,
        ):
            print(frame)


def cmd_summary(args: argparse.Namespace) -> int:
    run = Run.open(args.run)
    if args.format == "table":
        print(f"run {run.run_id}: world size {run.world_size}, hosts {', '.join(run.hosts) or '?'}")
        for problem in run.problems:
            print(f"warning: {problem}")
    _emit(findings.summary(run), args.format, "operations per process group:")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analyze-trace",
        description="Explain what the collectives and the network of a recorded distributed PyTorch run did.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "summary",
        help="operations per process group: counts, bytes, durations",
        description="Counts, bytes and durations per process group and operation.",
        epilog="example: analyze-trace summary traces/20261129-101500-ab12cd",
    )
    p.add_argument("run", help="a run directory (<COMMTRACE_DIR>/<run_id>)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TraceError as exc:
        print(f"analyze-trace: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
