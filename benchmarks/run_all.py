"""Run every benchmark and write BENCHMARKS.md: the performance budget, measured on this machine.

Each benchmark is its own command (listed in the table it writes, to rerun one alone); this runs
them one after the other, never two at once, and records the machine, the date, the versions and
each figure against its target (../shared/DESIGN.md, Numbers).

    python benchmarks/run_all.py [--only overhead,ddp,...] [--out BENCHMARKS.md]

Takes about 25 minutes on 2 cores, most of it generating and analysing the 2e8-event run (once:
it is kept in --scratch and reused) and the 20 DeepSpeed jobs; as root, 15 minutes more of network lab runs
(a straggler and a bad link at once). With ``--only``, the benchmarks not
chosen keep the figures the existing file holds (its raw results), each row saying when and at which
commit it was measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from footprint import trace_footprint  # noqa: E402

sys.path.insert(0, ROOT)
from lab.network import lab_available  # noqa: E402


def _run(command: list[str], timeout: float = 3600) -> list[dict]:
    """Run a benchmark; its JSON lines on stdout."""
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    print(f"  {' '.join(command[1:])}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return rows


def _machine() -> list[tuple[str, str]]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = "?"
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(line.split()[1] for line in fh if line.startswith("MemTotal")))
        memory = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    versions = []
    for name in ("torch", "duckdb", "polars", "pyarrow", "numpy", "pandas", "matplotlib"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", commit.stdout.strip() or "?"),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", memory),
        ("system", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("libraries", ", ".join(versions)),
    ]


# Each benchmark (what --only names) and the keys of its raw results.
GROUPS = {
    "overhead": ["overhead"],
    "profile": ["profile", "native"],
    "ddp": ["ddp", "ddp_in_process", "ddp_one_rank"],
    "frameworks": ["frameworks"],
    "sampler": ["sampler", "sampler_fresh"],
    "memory": ["memory"],
    "scale": ["scale"],
    "out_of_core": ["out_of_core"],
    "segments": ["segments"],
    "lab": ["lab_combined"],
    "watch": ["watch"],
    "metrics": ["metrics"],
}
STAMPS = "_measured"  # raw results' key for when and at which commit each was measured


def _previous(path: str) -> tuple[dict, str]:
    """The raw results of an earlier BENCHMARKS.md (its JSON block), and when and at which commit that
    file was written (for results it does not stamp one by one)."""
    try:
        with open(path) as fh:
            text = fh.read()
        raw = json.loads(text.split("```json", 1)[1].split("```", 1)[0])
    except (OSError, IndexError, ValueError):
        return {}, "?"
    header = dict(re.findall(r"^\| (date|commit) \| ([^|]+) \|$", text, re.M))
    return raw, f"{header.get('date', '?').strip()}, {header.get('commit', '?').strip()}"


def _previous_figure(path: str, what: str) -> float | None:
    """The number a row of an earlier BENCHMARKS.md shows, found by words of its first column (for a
    figure older files did not keep among their raw results)."""
    try:
        with open(path) as fh:
            for line in fh:
                cells = [c.strip() for c in line.split("|")]
                if len(cells) > 4 and what in cells[1]:
                    return float(re.match(r"[\d.]+", cells[3]).group())
    except (OSError, AttributeError, ValueError):
        pass
    return None


def _spread(low, mid, high, unit: str) -> str:
    return f"{mid}{unit} (min {low}, max {high})"


def _lab_rows(measure, add, raw: dict, py: str) -> None:
    """Diagnosis in the network lab with a straggler and a bad link at once (benchmarks/lab_accuracy.py)."""
    command = [py, "benchmarks/lab_accuracy.py", "--combined", "40", "--seed", "2"]
    measured = raw["lab_combined"] = measure("lab_combined", command, timeout=7200)
    *buckets, summary = measured
    for b in buckets:
        figure = f"named in {b['named']} of {b['runs']} runs ({b['with_link']} with a slow or lossy link too); "
        figure += f"runs with anything else flagged: {b['runs_with_false_positives']}"
        if b["estimate_error_pct_max"] is not None:
            figure += f"; extra time estimated within {b['estimate_error_pct_max']} % of the pauses as they took"
            figure += f" (median {b['estimate_error_pct_median']} %), {b['estimate_vs_asked_pct_max']} % of those asked"
        # the goal is stated against the pause injected (asked); the pause as it took is shown beside it
        met = b["named"] == b["runs"] and not b["runs_with_false_positives"]
        met = met and (b["estimate_vs_asked_pct_max"] or 0) <= 25
        what = f"lab, combined faults: a straggler pausing {b['bucket']} of the step time"
        add(what, command, figure, "all named, nothing else, within 25 % of the pause injected", met)
    s = summary
    figure = f"{s['runs']} runs on {', '.join(map(str, s['hosts']))} hosts (a healthy step: "
    figure += ", ".join(f"{v} ms with {k} hosts" for k, v in s["healthy_step_ms"].items())
    figure += f"): stragglers named {s['stragglers_named']}/{s['stragglers']}, smallest named in every run "
    figure += f"{s['smallest_named_in_every_run_pct']} % of a step; links named {s['links_named']}/{s['links']}; "
    figure += f"{s['healthy_runs']} healthy runs, {s['clock_shifted_runs']} with a shifted clock; runs with a false "
    figure += f"positive: {s['runs_with_false_positives']}"
    met = s["stragglers_named"] == s["stragglers"] and s["links_named"] == s["links"]
    met = met and not s["runs_with_false_positives"]
    add("lab, combined faults: every run", command, figure, "every fault named, nothing else", met)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        help="comma-separated: overhead, profile, ddp, frameworks, sampler, memory, scale, out_of_core, segments, "
        "lab, watch, metrics",
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    parser.add_argument("--scratch", default="/tmp", help="where the synthetic runs are generated and kept")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    unknown = (chosen or set()) - set(GROUPS)
    if unknown:
        raise SystemExit(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    previous, written = _previous(args.out) if chosen else ({}, "?")
    machine = dict(_machine())
    stamp = f"{machine['date']}, {machine['commit']}"
    py = sys.executable
    scale_run = os.path.join(args.scratch, "commtrace-scale-64x200k")
    big_run = os.path.join(args.scratch, "commtrace-ooc-2e8")
    rows: list[tuple[str, str, str, str, bool | None, str]] = []  # what, command, figure, target, met, when
    raw: dict[str, list[dict]] = {}
    stamps: dict[str, str] = {}
    group_of = {key: group for group, keys in GROUPS.items() for key in keys}
    current = [""]  # the raw key the rows being added come from

    def want(name: str) -> bool:
        """Measure ``name`` now, or show what the existing file measured (when it has it)."""
        if chosen is None or name in chosen:
            return True
        return all(key in previous for key in GROUPS[name])

    def measure(key: str, command: list[str], timeout: float = 3600) -> list[dict]:
        current[0] = key
        if chosen is None or group_of[key] in chosen:
            stamps[key] = stamp
            return _run(command, timeout)
        stamps[key] = previous.get(STAMPS, {}).get(key, written)
        kept = previous[key]
        return kept if isinstance(kept, list) else [kept]  # a benchmark of one result keeps it bare

    def add(what: str, command, figure: str, target: str, met: bool | None) -> None:
        command_text = " ".join(command[1:]) if command else "-"
        rows.append((what, command_text, figure, target, met, stamps.get(current[0], stamp)))

    if want("overhead"):
        command = [py, "benchmarks/recorder_overhead.py", "--repeats", "21"]
        for r in measure("overhead", command):
            raw.setdefault("overhead", []).append(r)
            per_op = 2 if r["op"] == "isend_irecv_pair" else 1
            low, mid, high = (round(r[f"added_us_{k}"] / per_op, 2) for k in ("min", "median", "max"))
            name = "an isend/irecv pair (per op)" if per_op == 2 else r["op"]
            add(f"recorder cost per call: {name}", command, _spread(low, mid, high, " us"), "<= 1 us", mid <= 1.0)
    if want("profile"):
        command = [py, "benchmarks/recorder_profile.py", "--repeats", "9"]
        raw["profile"] = measure("profile", command)
        for r in raw["profile"]:
            if r["regime"] == "warm":
                parts = ", ".join(f"{name} {us}" for name, us in r["parts_us"].items())
                figure = f"plain call {r['plain_us']} us; the override alone +{r['override_alone_us']} us; "
                figure += f"recording +{r['recording_added_us']} us = {parts}, rest {r['rest_us']} (us); "
                figure += f"then the writer, {r['writer_us_per_op']} us per operation"
                add("where the cost of a blocking all_reduce goes, caches warm", command, figure, "-", None)
            else:
                figure = f"plain call {r['plain_us']} us; the override alone +{r['override_alone_us']} us; "
                figure += f"recording +{r['recording_added_us']} us"
                what = f"the same, {r['call']}, caches cold (64 MB swept between calls, as by a training step)"
                add(what, command, figure, "-", None)
        command = [py, "benchmarks/native_hot_path.py", "--repeats", "9"]
        raw["native"] = measure("native", command)
        figure = "; ".join(
            f"{r['regime']}: +{r['python_added_us']} us in Python, +{r['native_added_us']} us in C"
            for r in raw["native"]
        )
        what = "the blocking path written in C (an experiment, not shipped), against the Python one, writer aside"
        add(what, command, figure, "-", None)
    if want("ddp"):
        variants = [
            ("ddp", "gloo DDP training loop, 2 ranks, recording on vs off", ["--pairs", "8"]),
            (
                "ddp_in_process",
                "the same loop in one recorded job, recording on and off in alternate steps (16 chunks of 1000)",
                ["--in-process", "16", "--steps", "1000", "--time-calls"],
            ),
            (
                "ddp_one_rank",
                "the same, one rank: the second core left to gloo's and the recorder's threads",
                ["--in-process", "8", "--steps", "1000", "--ranks", "1", "--time-calls"],
            ),
        ]
        for key, what, options in variants:
            command = [py, "benchmarks/ddp_overhead.py", *options]
            (raw[key],) = measure(key, command)
            p = raw[key]
            figure = _spread(p["slowdown_pct_min"], p["slowdown_pct_median"], p["slowdown_pct_max"], " %")
            figure += f"; step {p['step_ms_off_median']} ms off, {p['step_ms_on_median']} ms on"
            if "allreduce_us_on" in p:
                figure += f"; each bucket all_reduce call {p['allreduce_us_off']} us off, {p['allreduce_us_on']} us on"
            met = p["slowdown_pct_median"] < 0.5
            if p["slowdown_pct_max"] - p["slowdown_pct_min"] > 20 * 0.5:
                # A spread twenty times the target: the median says which way the machine drifted.
                figure += "; too noisy to judge against 0.5 %"
                met = None
            add(what, command, figure, "< 0.5 %", met)
        current[0] = "ddp"
        r, separate = raw["ddp"], [py, "benchmarks/ddp_overhead.py", *variants[0][2]]
        per_event = r["bytes_per_event"]
        figure = f"{per_event} B ({r['steps']} steps, {r['events_per_step_per_rank']} events per step and rank)"
        add("bytes on disk per event: those DDP runs", separate, figure, "<= 16 B", per_event <= 16)
    if want("frameworks"):
        command = [py, "benchmarks/framework_startup.py", "--pairs", "10"]
        (r,) = raw["frameworks"] = measure("frameworks", command)
        raw["frameworks"] = [{k: v for k, v in r.items() if k != "jobs"}]  # the jobs one by one: its stderr
        for phase, name in (("init_s", "start-up"), ("exit_s", "exit")):
            plain, recorded = r["plain"][phase], r["recorded"][phase]
            worst = r[f"worst_{phase.split('_')[0]}_over_plain_max_s"]
            figure = f"recorded {_spread(recorded['min'], recorded['median'], recorded['max'], ' s')}, "
            figure += f"unrecorded {_spread(plain['min'], plain['median'], plain['max'], ' s')}; "
            figure += f"slowest recorded - slowest unrecorded: {worst:+.2f} s"
            if phase == "init_s":
                timeouts = r["store_timeouts"]
                figure += f"; store timeouts: {timeouts['recorded']} recorded, {timeouts['plain']} unrecorded"
                figure += f"; clocks measured in full in {r['clock_complete']} of {r['pairs']} recorded jobs"
            met = worst <= 1.0 and r["store_timeouts"]["recorded"] == 0
            what = f"DeepSpeed {name} (ZeRO {r['stage']}, 2 ranks, torchrun), {r['pairs']} jobs recorded and not"
            add(what, command, figure, "no recorded job > the slowest unrecorded + 1 s; no store timeout", met)
    if want("sampler"):
        command = [py, "benchmarks/sampler_cost.py", "--seconds", "40"]
        (r,) = raw["sampler"] = measure("sampler", command)
        share = r["steady_share_of_one_core_pct"]
        figure = f"{share} % of one core (a bare thread waking as often: {r['bare_wakeups_share_of_one_core_pct']} %)"
        figure += f"; sources {', '.join(r['sources'])}"
        what = f"sampler at 10 Hz, every source, latest counters every {r.get('live_s', 0):g} s (watch, metrics)"
        add(what, command, figure, "< 0.2 %", share < 0.2)
        command = [py, "benchmarks/sampler_cost.py", "--seconds", "40", "--live-s", "1"]
        command += ["--against", "10:2,10:0,2:0,1:0"]
        (r,) = raw["sampler_fresh"] = measure("sampler_fresh", command)
        parts = [
            f"flush {c['flush_s']:g} s" + (f" + latest every {c['live_s']:g} s" if c["live_s"] else "")
            + f": {c['steady_share_of_one_core_pct']} %, {c['segments_per_hour']} files/h"
            for c in r["configs"]
        ]  # fmt: skip
        share = {(c["flush_s"], c["live_s"]): c["steady_share_of_one_core_pct"] for c in r["configs"]}
        # As fresh either way: the latest counters every X s against flushing every X s.
        met = share[(10.0, 1.0)] < share[(1.0, 0.0)] and share[(10.0, 2.0)] < share[(2.0, 0.0)]
        figure = "; ".join(parts) + " (five samplers at once, each its own thread's CPU)"
        if r["configs"][0].get("latest_counters_us_each") is not None:
            figure += f"; one update of the latest counters: {r['configs'][0]['latest_counters_us_each']} us of CPU"
        what = "host figures seconds old for watch: the ways to get them, side by side"
        add(what, command, figure, "the latest counters every X s cheaper than flushing every X s", met)
    if want("memory"):
        command = [py, "benchmarks/recorder_memory.py", "--calls", "1000000"]
        (r,) = raw["memory"] = measure("memory", command)
        peak = r["recorder_private_peak_mib"]
        figure = f"{peak} MiB private at peak, growth after 100k calls {r['private_growth_after_100k_calls_mib']} MiB"
        figure += f" (+{r['recorder_shared_file_mib']} MiB of shared library pages)"
        figure += f"; {r['events_written']:,} events, {r['events_dropped']} dropped"
        add("recorder memory, 1M collectives as fast as the fake backend goes", command, figure, "<= 32 MB", peak <= 32)
        per_event = r["bytes_per_event"]
        add(
            "bytes on disk per event: that run (identical calls)", command, f"{per_event} B", "<= 16 B", per_event <= 16
        )
    if want("scale"):
        command = [py, "benchmarks/analysis_scale.py", "--run", scale_run, "--repeats", "5", "--pandas-repeats", "5"]
        (r,) = raw["scale"] = measure("scale", command)
        d, p = r["duckdb"], r["pandas"]
        walls = [d["wall_s"][k] for k in ("min", "median", "max")]
        figure = f"{_spread(*walls, ' s')}, {d['peak_rss_mib']} MiB; straggler found: {d['exactly_the_injected_one']}"
        add("analyze-trace diagnose, 64 ranks x 200k collectives", command, figure, "<= 5 s on 2 cores", walls[1] <= 5)
        walls = [p["wall_s"][k] for k in ("min", "median", "max")]
        figure = f"{r['speedup_median']}x (pandas {_spread(*walls, ' s')}, {p['peak_rss_mib']} MiB)"
        met = r["speedup_median"] >= 10
        add("the same findings in straightforward pandas, side by side", command, figure, ">= 10x", met)
        if "bytes_per_event_on_disk" not in r:  # measured now (kept results carry it, or the old table did)
            count, size = trace_footprint(scale_run) if os.path.isdir(scale_run) else (0, 0)
            per_event = round(size / count, 1) if count else _previous_figure(args.out, "that synthetic run")
            if per_event is not None:
                r["bytes_per_event_on_disk"] = per_event
        per_event = r.get("bytes_per_event_on_disk")
        if per_event is not None:
            what = "bytes on disk per event: that synthetic run (varied sizes, simulated timings)"
            add(what, None, f"{per_event} B", "<= 16 B", per_event <= 16)
    if want("watch"):
        command = [py, "benchmarks/watch_cost.py", "--run", scale_run, "--repeats", "3", "--tail", "30"]
        (r,) = raw["watch"] = measure("watch", command)
        d, f, rs = r["diagnose_s"], r["first_frame_s"], r["refresh_s"]
        figure = f"first frame {_spread(f['min'], f['median'], f['max'], ' s')}; diagnose on the same run, alternated: "
        figure += f"{_spread(d['min'], d['median'], d['max'], ' s')}"
        add("analyze-trace watch, 64 ranks x 200k collectives: the first frame", command, figure, "<= diagnose",
            f["median"] <= d["median"])  # fmt: skip
        mem = r["rss_mib"]["after_refreshes"]
        figure = f"{_spread(rs['min'], rs['median'], rs['max'], ' s')} ({r['new_rows_per_refresh']:,} new rows, "
        figure += f"{r['window_rows']:,} in the window); memory {r['rss_mib']['after_first']} MiB after the "
        figure += f"first frame, over {len(mem)} refreshes {min(mem)}-{max(mem)} MiB"
        add("each later refresh with 1 s of new segments (64 files)", command, figure, "< 0.5 s, memory flat",
            rs["median"] < 0.5)  # fmt: skip
    if want("metrics"):
        command = [py, "benchmarks/metrics_cost.py", "--calls", "20000", "--repeats", "9"]
        (r,) = raw["metrics"] = measure("metrics", command)
        m, fold = r["metrics_call_us"], r["fold_us_per_segment"]
        figure = f"{_spread(m['min'], m['median'], m['max'], ' us')} a call ({r['figures']} figures); the flusher "
        figure += f"folds a segment into the totals in {fold['100']} us (100 rows), {fold['10000']} us (10,000 rows)"
        if "live_file_us_per_flush" in r:
            figure += f"; the rank's live file (for watch) costs {r['live_file_us_per_flush']} us a flush"
        add("recorder.metrics(), per call", command, figure, "cheap enough to call every step", None)
    if want("segments"):
        command = [py, "benchmarks/segment_count.py", "--repeats", "3"]
        measured = raw["segments"] = measure("segments", command)
        by = {r["layout"]: r for r in measured}
        base = by["160 segments"]
        for layout, what in (
            ("20,000 segments written merged", "as this recorder writes them (small segments merged)"),
            ("20,000 segments, unmerged", "unmerged, as recorders before merging left them"),
        ):
            r = by[layout]
            figure = (
                f"{r['files']:,} files: {_spread(r['min_s'], r['diagnose_s'], r['max_s'], ' s')}, {r['peak_mib']} MiB"
            )
            figure += f"; {base['files']} files: {base['diagnose_s']} s, {base['peak_mib']} MiB; {r['vs_160']}x"
            figure += f"; same verdict: {r['same_verdict']}"
            what = f"diagnose, 8 ranks x 25k collectives in 2,500 one-second segments per rank, {what}"
            add(what, command, figure, "<= 2x the same events in 160 files", r["vs_160"] <= 2 and r["same_verdict"])
        r = by["20,000 segments, unmerged, compacted"]
        figure = (
            f"compact: {r['compact_s']} s, once; then diagnose {r['diagnose_s']} s ({r['vs_160']}x), {r['files']} files"
        )
        add(
            "the same 20,000 unmerged segments after analyze-trace compact",
            command,
            figure,
            "<= 2x the same events in 160 files",
            r["vs_160"] <= 2,
        )
        r = by["20,000 segments, unmerged, one page damaged"]
        figure = f"{r['diagnose_s']} s; the damaged file named and skipped: {r['skipped_named']}"
        add(
            "diagnose, one damaged page among those 20,000 unmerged segments",
            command,
            figure,
            "< 60 s, named",
            r["diagnose_s"] < 60 and r["skipped_named"],
        )
    if want("lab") and (chosen is not None or lab_available() is None):
        _lab_rows(measure, add, raw, py)
    if want("out_of_core"):
        command = [py, "benchmarks/analysis_out_of_core.py", "--run", big_run, "--memory-limit", "2GB"]
        (r,) = raw["out_of_core"] = measure("out_of_core", command, timeout=7200)
        figure = f"{r['events']:,} events ({r['bytes_on_disk'] / 2**30:.1f} GiB on disk): {r['wall_s']} s"
        figure += f", peak RSS {r['peak_rss_mib']} MiB with DuckDB's limit at {r['memory_limit']}"
        figure += f"; straggler found: {r['exactly_the_injected_one']}"
        met = r["completed"] and r["peak_rss_mib"] <= 4096
        add("analysis out of core: diagnose", command, figure, "completes, <= 4 GB RSS", met)

    lines = [
        "# Benchmarks",
        "",
        f"Written by `python benchmarks/run_all.py{' --only ' + args.only if args.only else ''}`: "
        + ("every benchmark measured now." if not chosen else f"{args.only} measured now, the rest kept from before."),
        "Each row's command reruns that benchmark alone; its last column says when and at which commit it ran.",
        "Figures are medians over paired, alternating runs (min and max beside them); a machine this small is noisy,",
        "so read a ratio measured side by side, not an absolute time.",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        "",
        "| what | command | figure | target | met | measured |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {what} | `{cmd}` | {fig} | {target} | {'-' if met is None else 'yes' if met else 'no'} | {when} |"
            for what, cmd, fig, target, met, when in rows
        ],
        "",
        "## Raw results",
        "",
        "```json",
        json.dumps({**raw, STAMPS: stamps}, indent=1),
        "```",
        "",
    ]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
