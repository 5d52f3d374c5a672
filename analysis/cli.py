"""``analyze-trace``: the front door to a recorded run.

    analyze-trace summary RUN_DIR          operations per group: counts, bytes, durations
    analyze-trace collectives RUN_DIR      bandwidth per group, op and size (nccl-tests busbw)
    analyze-trace stragglers RUN_DIR       who arrives late, per rank
    analyze-trace hangs RUN_DIR            where a group stopped, who is missing, who disagrees
    analyze-trace latency RUN_DIR          small-message latency (collectives and matched send/recv)
    analyze-trace steps RUN_DIR            communication per training step and rank (recorder.step())
    analyze-trace network RUN_DIR          what the wire did: interfaces, TCP loss, RDMA counters
    analyze-trace sql RUN_DIR "SELECT ..." an ad-hoc query over the run's views
    analyze-trace export RUN_DIR -o trace.json   Chrome/Perfetto trace of every rank
    analyze-trace report RUN_DIR [--compare BASELINE] -o report.html   one HTML file: plots and findings
    analyze-trace diagnose RUN_DIR [--fail-on-problem] [--fail-on-recording]   what went wrong, in words
    analyze-trace compare RUN_A RUN_B [--threshold 0.1] [--fail-on-regression]
    analyze-trace watch DIR [--interval 2] [--once]   a running job, refreshed as its files land

Every subcommand takes ``--format table|json|csv`` (``watch``: table or json): tables are for people
(units in the headers, sizes and durations in the units that read best, ``analysis.text``), JSON and
CSV for scripts (their column names only ever gain new ones). Exit codes: 0 success; 1 when
``diagnose --fail-on-problem`` (the job's faults), ``diagnose --fail-on-recording`` (the recording's
own health), ``compare --fail-on-regression`` or ``watch``'s same flags find something; 2 bad input
(one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

import duckdb

from analysis import commands as C
from analysis import progress
from analysis.load import TraceError

_RUN = ("run", {"help": "a run directory (<COMMTRACE_DIR>/<run_id>)"})
_FORMAT = ("--format", {"choices": ("table", "json", "csv"), "default": "table"})
_FORCE = ("--force", {"action": "store_true", "help": "replace the output file if it exists"})
_THRESHOLD = ("--threshold", {"type": float, "default": 0.10, "help": "relative change that counts (default 0.10)"})


class Command(NamedTuple):
    """One subcommand: its name, what runs it, its one-line help, an example, and its arguments
    (``(flag, ..., argparse keywords)``). ``description``: a longer text for ``--help``, where the
    help line is not enough; ``standard``: it takes a run and ``--format`` first."""

    name: str
    func: Callable
    help: str
    example: str
    arguments: tuple = ()
    description: str | None = None
    standard: bool = True


COMMANDS = (
    Command(
        "summary",
        C.cmd_summary,
        "operations per process group: counts, bytes, durations",
        "analyze-trace summary traces/20261129-101500-ab12cd",
    ),
    Command(
        "collectives",
        C.cmd_collectives,
        "bandwidth (algbw, busbw as nccl-tests) and transfer time per group, op and size bucket",
        "analyze-trace collectives traces/20261129-101500-ab12cd --format csv > bw.csv",
    ),
    Command(
        "stragglers",
        C.cmd_stragglers,
        "per rank: times last to arrive, mean and p95 lateness, robust outlier score",
        "analyze-trace stragglers traces/20261129-101500-ab12cd --min-skew-ms 2",
        (
            (
                "--min-skew-ms",
                {
                    "type": float,
                    "default": 1.0,
                    "help": "count a rank as last only when the arrival skew is at least this (default 1)",
                },
            ),
        ),
    ),
    Command(
        "network",
        C.cmd_network,
        "per host: interface throughput, errors and drops, TCP retransmission rate, RDMA counters",
        "analyze-trace network traces/20261129-101500-ab12cd",
    ),
    Command(
        "sql",
        C.cmd_sql,
        "run a query over the views collectives, raw_collectives, samples, counter_deltas, group_members",
        'analyze-trace sql RUN "SELECT op, count(*) FROM collectives WHERE rank = 3 GROUP BY op"',
        (
            ("query", {"help": "a DuckDB SQL query"}),
            (
                "--allow-external-access",
                {
                    "action": "store_true",
                    "help": "let the query read and write files outside the run, attach databases and load "
                    "extensions (off: it reads the run's own files only)",
                },
            ),
        ),
    ),
    Command(
        "latency",
        C.cmd_latency,
        "small-message latency per group, op and size: collectives and matched send/recv pairs",
        "analyze-trace latency traces/20261129-101500-ab12cd --max-bytes 8192",
        (("--max-bytes", {"type": int, "default": 65536, "help": "largest message counted (default 65536)"}),),
    ),
    Command(
        "steps",
        C.cmd_steps,
        "communication time per training step and rank (steps marked with recorder.step())",
        "analyze-trace steps traces/20261129-101500-ab12cd --format csv",
    ),
    Command(
        "diagnose",
        C.cmd_diagnose,
        "every finding, reduced to what was flagged (the JSON contract is in analysis/diagnose.py)",
        "analyze-trace diagnose traces/20261129-101500-ab12cd --format json --fail-on-problem",
        (
            ("--fail-on-problem", {"action": "store_true", "help": "exit 1 when the job had a fault"}),
            (
                "--fail-on-recording",
                {
                    "action": "store_true",
                    "help": "exit 1 when the recording itself is incomplete or imprecise (ranks missing, "
                    "events dropped, clocks)",
                },
            ),
        ),
    ),
    Command(
        "watch",
        C.cmd_watch,
        "a running job, refreshed as its segments land: progress, hangs, bandwidth, stragglers, hosts",
        "analyze-trace watch $COMMTRACE_DIR --interval 5",
        (
            ("run", {"help": "a run directory, or a COMMTRACE_DIR (its newest run, then the next one)"}),
            ("--format", {"choices": ("table", "json"), "default": "table", "help": "json: one object a refresh"}),
            ("--interval", {"type": float, "default": 2.0, "help": "seconds between refreshes (default 2)"}),
            (
                "--window",
                {"type": float, "default": 10.0, "help": "seconds of the latest events the verdicts are over (10)"},
            ),
            (
                "--hang-after",
                {"type": float, "default": 30.0, "help": "suspect a hang past this long in flight (30)"},
            ),
            (
                "--stale-after",
                {"type": float, "help": "a rank whose live file has not changed this long stopped writing "
                 "(default: 5 flushes or 3 refreshes)"},
            ),
            ("--once", {"action": "store_true", "help": "print one frame and exit (diagnose's exit codes)"}),
            ("--fail-on-problem", {"action": "store_true", "help": "exit 1 when the job has a fault"}),
            ("--fail-on-recording", {"action": "store_true", "help": "exit 1 when the recording is unhealthy"}),
        ),
        "Follow a running job: every --interval seconds, what each process group completed and issued, what "
        "is in flight and for how long (a suspected hang: who never issued the collective, who is stuck in "
        "it), bus bandwidth this interval beside the run so far, the latest arrivals, the straggler and "
        "packet-loss verdicts over the last --window seconds, each host's NIC throughput and TCP "
        "retransmissions, and the recording's health. Each refresh reads only the files that landed since "
        "the last one. When the job ends it says so, prints diagnose's verdict on the whole run and exits.",
        standard=False,
    ),
    Command(
        "compare",
        C.cmd_compare,
        "two runs side by side per group/op/size, per rank and per host, regressions flagged",
        "analyze-trace compare traces/last-week traces/today --threshold 0.05 --fail-on-regression",
        (
            ("run_a", {"help": "the baseline run directory"}),
            ("run_b", {"help": "the run to compare against it"}),
            _THRESHOLD,
            ("--fail-on-regression", {"action": "store_true", "help": "exit 1 when anything regressed"}),
            _FORMAT,
        ),
        "Compare run B against run A: bus bandwidth and transfer time per group, op and size bucket, mean "
        "collective duration per rank, transmit throughput per host interface.",
        standard=False,
    ),
    Command(
        "export",
        C.cmd_export,
        "Chrome/Perfetto trace-event JSON: a track per rank, collectives as slices, NIC throughput",
        "analyze-trace export traces/20261129-101500-ab12cd -o run.json",
        (_RUN, ("-o", "--output", {"required": True, "help": "the JSON file to write"}), _FORCE),
        "Write a Chrome/Perfetto trace of the run: a track per rank and process group, collectives as slices, "
        "each host's interface throughput as counter tracks.",
        standard=False,
    ),
    Command(
        "compact",
        C.cmd_compact,
        "a copy of a run with each rank's segments merged (runs recorded before the recorder merged them)",
        "analyze-trace compact traces/20261129-101500-ab12cd -o traces/20261129-101500-ab12cd-compact",
        (_RUN, ("-o", "--output", {"required": True, "help": "the run directory to write (must not exist)"})),
        "Write a copy of the run in which each rank's collective segments are merged into one file per "
        "writing process; everything else is copied as it is. For runs recorded before the recorder merged "
        "its small segments itself, whose every query reopens each of tens of thousands of files. The run is "
        "only read; the output must not exist.",
        standard=False,
    ),
    Command(
        "import",
        C.cmd_import,
        "a run directory from PyTorch Flight Recorder dumps or NCCL Inspector logs, for every command here",
        "analyze-trace import fr /tmp/fr_dumps -o traces/job-1234-fr",
        (
            ("source", {"choices": ["fr", "inspector"], "help": "fr: Flight Recorder dumps (pickle or JSON); "
             "inspector: NCCL Inspector JSON lines or Prometheus files"}),
            ("paths", {"nargs": "+", "metavar": "PATH", "help": "files, or folders of them"}),
            ("-o", "--output", {"required": True, "help": "the run directory to write (must not exist)"}),
            ("--format", {"choices": ("table", "json"), "default": "table"}),
        ),
        "Write a commtrace run directory from the record a job already left: PyTorch Flight Recorder dumps "
        "(one file per rank, named with its rank at the end, as torch writes them; a pickled dump is read as "
        "plain values, never run) or NCCL Inspector logs. Every other command then reads it, and says what "
        "the source cannot tell (the run's metadata lists it). The inputs are only read; the output must not "
        "exist.",
        standard=False,
    ),
    Command(
        "report",
        C.cmd_report,
        "one self-contained HTML file: what was flagged, plots, tables (optionally against another run)",
        "analyze-trace report traces/today --compare traces/last-week -o today.html",
        (
            _RUN,
            ("--compare", {"metavar": "BASELINE", "help": "a baseline run to compare this one against"}),
            _THRESHOLD,
            ("-o", "--output", {"required": True, "help": "the HTML file to write"}),
            _FORCE,
        ),
        "Write a post-mortem report of the run as one HTML file (figures embedded, no script, nothing "
        "fetched): what diagnose flagged, the run's metadata, arrival lateness, bandwidth by size, what the "
        "NICs saw, the link probe; with --compare, the run against a baseline run.",
        standard=False,
    ),
    Command(
        "hangs",
        C.cmd_hangs,
        "hangs (who never issued or never finished a group's collective) and desyncs (op, size, dtype)",
        "analyze-trace hangs traces/20261129-101500-ab12cd --format json",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analyze-trace",
        description="Explain what the collectives and the network of a recorded distributed PyTorch run did.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        description = command.description or command.help[0].upper() + command.help[1:] + "."
        p = sub.add_parser(
            command.name, help=command.help, description=description, epilog=f"example: {command.example}"
        )
        arguments = ((_RUN, _FORMAT) if command.standard else ()) + command.arguments
        for *flags, options in arguments:
            p.add_argument(*flags, **options)
        p.set_defaults(func=command.func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with progress.Progress(f"analyze-trace {args.command}") as line:
            progress.current = line
            return args.func(args)
    except TraceError as exc:
        print(f"analyze-trace: {exc}", file=sys.stderr)
        return 2
    except duckdb.OutOfMemoryException as exc:
        first = str(exc).splitlines()[0]
        print(f"analyze-trace: {first}; give DuckDB more room (COMMTRACE_ANALYSIS_MEMORY=...)", file=sys.stderr)
        return 2
    except duckdb.DataError as exc:  # a value the trace holds is beyond what the query can compute with
        first = str(exc).splitlines()[0]
        print(f"analyze-trace: the trace holds values out of range ({first})", file=sys.stderr)
        return 2
    except duckdb.IOException as exc:  # e.g. no space left where DuckDB spills
        print(f"analyze-trace: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
