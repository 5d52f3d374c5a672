"""One benchmark, run on an earlier commit and on the working tree in turn: is a change no worse?

A figure from one run is mostly the machine's mood (our VMs swing by 2x from one minute to the
next); the same benchmark run on both trees, alternating, meets the same moods. Each round runs the
benchmark once in a worktree of BASE (its own scripts, its own recorder) and once here, in an order
that swaps every round; the report gives, per benchmark line (an op, a mode) and numeric field, the
median and the lowest of the rounds for each tree.

    python benchmarks/side_by_side.py BASE [--rounds 6] -- benchmarks/recorder_overhead.py --repeats 7
    python benchmarks/side_by_side.py HEAD~3 -- benchmarks/ddp_overhead.py --in-process 8 --ranks 1 --time-calls

Prints one JSON line per (line, field): base and here, median and lowest, and here / base.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LABELS = ("op", "regime", "mode")  # what names a benchmark's line, where it has one


def _lines(tree: str, command: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": tree}  # the tree's own recorder and analysis, not the installed one
    proc = subprocess.run([sys.executable, *command], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {tree}:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _label(line: dict, index: int) -> str:
    return next((str(line[k]) for k in LABELS if k in line), str(index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare against (any git revision)")
    parser.add_argument("--rounds", type=int, default=6)
    argv = sys.argv[1:]
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("give the benchmark to run after --: side_by_side.py BASE -- benchmarks/x.py ...")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    scratch = tempfile.mkdtemp(prefix="commtrace-base-")
    base_tree = os.path.join(scratch, "tree")
    subprocess.run(["git", "worktree", "add", "--detach", base_tree, args.base], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    figures: dict[tuple[str, str], dict[str, list[float]]] = {}
    try:
        for round_ in range(args.rounds):
            trees = [("base", base_tree), ("here", ROOT)]
            for which, tree in trees if round_ % 2 == 0 else trees[::-1]:
                for index, line in enumerate(_lines(tree, command)):
                    for field, value in line.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            key = (_label(line, index), field)
                            figures.setdefault(key, {"base": [], "here": []})[which].append(float(value))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    for (label, field), runs in figures.items():
        if not runs["base"] or not runs["here"]:
            continue
        base, here = statistics.median(runs["base"]), statistics.median(runs["here"])
        row = {
            "line": label,
            "field": field,
            "base_median": round(base, 4),
            "here_median": round(here, 4),
            "base_lowest": round(min(runs["base"]), 4),
            "here_lowest": round(min(runs["here"]), 4),
            "here_over_base": round(here / base, 3) if base else None,
            "rounds": args.rounds,
            "base": args.base,
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
