"""The DuckDB views over a run's files, and the tables computed from them on first use.

``Run.open`` calls :func:`create`: ``raw_segments`` (the readable collective segments, rows that
cannot be placed left out), ``raw_collectives`` (plus what in-flight snapshots hold that no
segment does), ``collectives`` (every rank's times moved onto rank 0's clock), ``samples`` and
``counter_deltas`` (the hosts' counters), ``probe``, ``clock_offsets`` and ``group_members``.
``instances`` and the materialised samples are built by :func:`prepare` when a query first names
them, so that no finding has to remember to ask for them.
"""

from __future__ import annotations

import os
import re

from analysis.segments import (
    OPTIONAL_COLUMNS,
    PROBE_COLUMNS,
    REQUIRED_COLUMNS,
    SAMPLE_COLUMNS,
    SAMPLE_OPTIONAL_COLUMNS,
    contradiction,
    inspect_segments,
    regular_files,
    sql_files,
    sql_name,
    text_columns,
)
from analysis.vocabulary import P2P_OPS_SQL, SIGNATURE_SIZE_SQL

# The samples view of a run without (readable) host samples.
NO_SAMPLES = (
    "SELECT NULL::BIGINT AS t_ns, NULL::VARCHAR AS host, NULL::VARCHAR AS source, NULL::VARCHAR AS device, "
    "NULL::INTEGER AS port, NULL::VARCHAR AS counter, NULL::BIGINT AS value, NULL::VARCHAR AS text WHERE false"
)
# No name the recorder writes (group, op, host, device, counter...) is longer than this. Every row of
# a column can point at one long dictionary value, which the queries' joins and windows then copy per
# row (a 1 MB host name in a 116 kB run cost 7.5 GB and 30 s). The names the queries group and join
# collectives by (KEY_NAMES) are checked as the rows are (Run._check_rows): a row with a longer one
# is left out and said; cutting them as they are read would undo DuckDB's dictionary vectors in every
# query (a third slower). Every other name, and the host samples' (few rows), is cut to MAX_NAME as it
# is read, as the metadata's are (analysis.metadata.MAX_TEXT): 0.04 s and 86 MB for that run.
MAX_NAME = 1024
KEY_NAMES = ("pg", "op", "status")
# A row the recorder wrote names its rank, group, op, seq and start; one that does not (a file from
# elsewhere) cannot be placed and is left out of every view.
WHOLE_ROW_SQL = "rank IS NOT NULL AND pg IS NOT NULL AND op IS NOT NULL AND seq IS NOT NULL AND t_start_ns IS NOT NULL"


def create(run, rows: str | None = None, samples: str | None = None) -> None:
    """The views of ``run``: over its files, or (``rows``, ``samples``: tables or views already in
    its connection, checked as they were read) over rows read before (Run.of_rows)."""
    offsets = [
        (r, int(((m.get("clock") or {}).get("start") or {}).get("offset_ns") or 0)) for r, m in run.ranks.items()
    ]
    # Filled from lists in one statement each: a prepared insert per row costs ~0.1 ms, and a
    # 64-rank run's memberships are thousands of rows (re-made at every refresh of a watch).
    run.con.execute(
        "CREATE TABLE clock_offsets AS SELECT unnest(?::INTEGER[]) AS rank, unnest(?::BIGINT[]) AS offset_ns",
        [[r for r, _ in offsets], [o for _, o in offsets]],
    )
    # Group membership as each rank wrote it: who should take part in a group's collectives.
    members = set()
    for meta in run.ranks.values():
        for group in meta.get("process_groups") or []:
            if isinstance(group, dict) and isinstance(group.get("ranks"), list):
                members.update(
                    (str(group.get("pg")), int(r))
                    for r in group["ranks"]
                    if isinstance(r, int) and r not in run.unreadable_ranks
                )
    listed = sorted(members)
    run.con.execute(
        "CREATE TABLE group_members AS SELECT unnest(?::VARCHAR[]) AS pg, unnest(?::INTEGER[]) AS rank",
        [[pg for pg, _ in listed], [r for _, r in listed]],
    )
    for pg, rank in members:
        run.members.setdefault(pg, set()).add(rank)
    if rows is None:
        parquet_view(run, "raw_segments", run.segments, run.one_layout)
        run.guarded(lambda: check_rows(run))
        collectives_view(run)
        sample_views(run)
        probe_view(run)
    else:
        run.con.execute(f"CREATE VIEW raw_segments AS SELECT * FROM {rows}")
        run.con.execute("CREATE VIEW raw_collectives AS SELECT * FROM raw_segments")
        sample_views(run, samples)
        probe_view(run, given=True)
    # One timeline: a rank's timestamps plus its measured offset to rank 0's clock. The offsets
    # are a constant list indexed by rank (a join per event costs a fifth of a scan).
    # (Metadata names ranks as JSON integers; anything else it might hold is not an offset.)
    # Ranks spread thinly (a rank 999999 in a small run) get a map of the offsets there are instead
    # of a list as long as the largest rank.
    by_rank = {r: o for r, o in offsets if o}
    if by_rank and max(by_rank) < 4 * len(by_rank) + 1024:
        listed = ", ".join(str(by_rank.get(r, 0)) for r in range(max(by_rank) + 1))
        run.shift_sql = f"coalesce(list_extract([{listed}]::BIGINT[], rank + 1), 0)"
    elif by_rank:
        entries = ", ".join(f"{r}: {o}::BIGINT" for r, o in sorted(by_rank.items()))
        run.shift_sql = f"coalesce(MAP {{{entries}}}[rank], 0)"
    run.con.execute(f"""
        CREATE VIEW collectives AS
        SELECT * REPLACE (t_start_ns + {run.shift_sql} AS t_start_ns, t_end_ns + {run.shift_sql} AS t_end_ns),
               (t_end_ns - t_start_ns) / 1e6 AS duration_ms
        FROM raw_collectives
    """)


def usable(
    run, pattern: str, required: dict[str, str], optional: dict[str, str] | None = None
) -> tuple[list[str], set[tuple]]:
    """The files under the run matching ``pattern`` that can be read (the rest listed in
    ``problems``), and their distinct column layouts."""
    found = regular_files(run.path, pattern, run.problems)
    files, layouts = [], set()
    for path, (reason, layout, _) in zip(found, inspect_segments(found, required, run.con, optional), strict=True):
        if reason is None:
            files.append(path)
            layouts.add(layout)
        else:
            run.problems.append(f"{os.path.relpath(path, run.path)}: skipped ({reason})")
    return files, layouts


def check_rows(run) -> None:
    """Each segment's rows against its footer and the run, in one pass over a few narrow columns
    (rank, op, and the lengths of the names in KEY_NAMES).

    Rows naming a rank outside the run (below 0, or at or past the world size its metadata
    gives) are left out of every view and said. A segment whose rows contradict its footer's
    summary (another rank than its footer's, another count of collectives: rows added, removed
    or relabelled, or the file replaced) is said, and its footer no longer vouches for its
    groups (``settled``): the events are compared one by one. (An edit that keeps a segment's
    rank and count, a seq changed in place, passes this check: the footers' checksums would see
    it, but checking them means reading every event's op, size and dtype, which ``settled`` is
    there to avoid.)"""
    world = run.world_size
    outside = f"rank < 0 OR rank >= {int(world)}" if world else "false"
    long = " OR ".join(f"coalesce(strlen({c}), 0) > {MAX_NAME}" for c in KEY_NAMES)
    rows = run.con.execute(f"""
        SELECT filename, count(*) FILTER (WHERE op NOT IN {P2P_OPS_SQL}) AS collectives,
               min(rank) AS lo_rank, max(rank) AS hi_rank,
               count(*) FILTER (WHERE {outside}) AS outside, min(rank) FILTER (WHERE {outside}) AS example,
               count(*) FILTER (WHERE {long}) AS long
        FROM read_parquet([{sql_files(run.segments)}], filename = true, hive_partitioning = false,
                          union_by_name = {"false" if run.one_layout else "true"})
        GROUP BY filename
    """).fetchall()
    left_out = long_rows = 0
    for name, collectives, lo_rank, hi_rank, n_outside, example, n_long in rows:
        relative = os.path.relpath(name, run.path)
        if n_long:
            long_rows += n_long
            run.problems.append(
                f"{relative}: {n_long} rows carry a group, op or status longer than {MAX_NAME} characters; left out"
            )
        if n_outside:
            left_out += n_outside
            run.problems.append(
                f"{relative}: {n_outside} rows name rank {example}, outside the run's {world} ranks; left out"
            )
        kv = run.footers.get(name)
        if kv is None:
            continue
        why = contradiction(kv, collectives, lo_rank, hi_rank)
        if why:
            run.problems.append(f"{relative}: its rows contradict its footer ({why}); the rows are used")
            run.footers.pop(name)
    if left_out:
        run.row_filter += f" AND NOT ({outside})"
    if long_rows:
        run.row_filter += f" AND NOT ({long})"


def collectives_view(run) -> None:
    """``raw_collectives``: every segment's rows, and from the in-flight snapshots (a hang dump,
    SIGUSR1, SIGTERM) each operation no segment holds: one still in flight when the rank died
    or was killed. An operation that completed after a snapshot is in a segment, completed."""
    snapshots, layouts = usable(run, "rank=*/inflight-*.parquet", REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    run.text_columns["raw_snapshots"] = [c for c in text_columns(layouts) if c not in KEY_NAMES]
    run.snapshots = snapshots
    if not snapshots:
        run.con.execute(
            f"CREATE OR REPLACE VIEW raw_collectives AS SELECT * FROM raw_segments WHERE {run.row_filter}"
        )
        return
    parquet_view(run, "raw_snapshots", snapshots, False)
    run.con.execute(f"""
        CREATE OR REPLACE VIEW raw_collectives AS
        SELECT * FROM raw_segments WHERE {run.row_filter}
        UNION ALL BY NAME
        SELECT * FROM (
            SELECT DISTINCT ON (rank, pg, op, seq, peer) * FROM raw_snapshots WHERE {run.row_filter}
            ORDER BY rank, pg, op, seq, peer, t_start_ns
        ) s
        WHERE NOT EXISTS (
            SELECT 1 FROM raw_segments g
            WHERE g.rank = s.rank AND g.pg = s.pg AND g.op = s.op AND g.seq = s.seq
              AND g.peer IS NOT DISTINCT FROM s.peer
        )
    """)


def sample_views(run, given: str | None = None) -> None:
    """``samples``: the hosts' raw counters; ``counter_deltas``: per interval, wraps and resets handled.

    A decrease of a counter whose previous value fits in 32 bits is a wrap (delta mod 2^32), any
    other decrease a reset (the delta is the new value). ``port_xmit_data``/``port_rcv_data``
    count 4-byte words; ``bytes`` holds the delta in bytes where the counter counts bytes.
    """
    pattern = "host=*/nic-*.parquet"
    files, layouts = ([], set()) if given else usable(run, pattern, SAMPLE_COLUMNS, SAMPLE_OPTIONAL_COLUMNS)
    if files:
        run.sample_files = files
        run.samples_one_layout = len(layouts) == 1
        run.text_columns["samples"] = text_columns(layouts)
        parquet_view(run, "samples", files, run.samples_one_layout)
    else:
        run.con.execute(f"CREATE VIEW samples AS {f'SELECT * FROM {given}' if given else NO_SAMPLES}")
    run.con.execute("""
        CREATE VIEW counter_deltas AS
        WITH ordered AS (
            SELECT host, source, device, port, counter, t_ns, value,
                   lag(value) OVER w AS prev_value, lag(t_ns) OVER w AS prev_t_ns
            FROM samples WHERE value IS NOT NULL
            WINDOW w AS (PARTITION BY host, source, device, port, counter ORDER BY t_ns)
        ),
        deltas AS (
            SELECT *, CASE
                WHEN value >= prev_value THEN value - prev_value
                WHEN prev_value < 4294967296 THEN value + 4294967296 - prev_value  -- 32-bit wrap
                ELSE value                                                            -- reset
            END AS delta
            FROM ordered WHERE prev_value IS NOT NULL
        )
        SELECT host, source, device, port, counter, prev_t_ns AS t0_ns, t_ns AS t1_ns, delta,
               CASE WHEN counter IN ('port_xmit_data', 'port_rcv_data') THEN delta * 4
                    WHEN counter IN ('rx_bytes', 'tx_bytes', 'bytes_sent', 'bytes_received',
                                     'bytes_retrans', 'bytes_acked', 'pcie_tx_bytes', 'pcie_rx_bytes')
                         THEN delta
                    WHEN counter IN ('nvlink_tx_kib', 'nvlink_rx_kib') THEN delta * 1024
               END AS bytes
        FROM deltas
    """)


def probe_view(run, given: bool = False) -> None:
    """``probe``: the link probe's rows (COMMTRACE_PROBE), one per (phase, round, probing rank);
    empty for a run of rows read before (``given``: the probe runs at a job's start and end)."""
    files = [] if given else usable(run, "rank=*/probe-*.parquet", PROBE_COLUMNS)[0]
    if files:
        listed = sql_files(files)
        run.con.execute(
            f"CREATE VIEW probe AS SELECT * FROM read_parquet([{listed}], union_by_name = true, "
            "hive_partitioning = false)"
        )
    else:
        run.con.execute(
            "CREATE TABLE probe (phase VARCHAR, round INTEGER, src_rank INTEGER, src_host VARCHAR, "
            "dst_rank INTEGER, dst_host VARCHAR, bytes BIGINT, repetitions INTEGER, transfer_s DOUBLE, "
            "bandwidth_gbps DOUBLE, latency_us DOUBLE, t_ns BIGINT)"
        )


def build_instances(run) -> None:
    """The ``instances`` table: one row per collective instance (pg, seq), p2p left out.

    Columns: key (hash(pg, seq): a one-column join key back to the events), op, pg_size, ranks
    (members that recorded it), done_ranks (completed it, ok: an imported source may know that
    an operation completed but not when), complete (every recorded one has an end), ok (every
    status ok), disagree (members' op, size or dtype differ), bytes_in/bytes_out (max),
    first_start_ns, last_start_ns, last_end_ns, last_rank (the last arriver); min_gpu_ns (the shortest
    device time, only in an imported run without completion times: its transfer time). The findings
    share it: one pass over the collectives instead of one per finding, and a table ~pg_size
    times smaller than the events it summarises.
    """
    run.guarded(lambda: _instances(run))


def _instances(run) -> None:
    run.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE instances AS
        SELECT pg, seq, hash(pg, seq) AS key, any_value(op) AS op, any_value(pg_size) AS pg_size, count(*) AS ranks,
               count(*) FILTER (WHERE ok_end) AS done_ranks,
               count(t_end_ns) = count(*) AS complete, count(*) FILTER (WHERE status = 'ok') = count(*) AS ok,
               min(signature) <> max(signature) AS disagree,
               max(bytes_in) AS bytes_in, max(bytes_out) AS bytes_out,
               min(t_start_ns) AS first_start_ns, max(t_start_ns) AS last_start_ns,
               max(t_end_ns) AS last_end_ns, arg_max(rank, t_start_ns) AS last_rank{
                   ", min(gpu_duration_ns) AS min_gpu_ns" if run.untimed else ""}
        FROM (
            SELECT pg, seq, op, pg_size, rank, status, bytes_in, bytes_out, t_start_ns, t_end_ns,
                   status = 'ok' AS ok_end{", gpu_duration_ns" if run.untimed else ""},
                   hash(op, {SIGNATURE_SIZE_SQL}, dtype) AS signature
            FROM collectives WHERE op NOT IN {P2P_OPS_SQL}
        )
        GROUP BY pg, seq
    """)


def build_deltas(run) -> None:
    """Read the host samples once: ``samples`` and ``counter_deltas`` become views over temporary
    tables of their rows.

    Several findings (network, TCP loss, lossy hosts, bad intervals, the busiest interface) read
    them; each would otherwise open every sample segment and sort every counter's samples again.
    The sampler keeps a counter's samples only around its changes, so these tables are small
    next to the events (and DuckDB spills them if not).
    """
    if run.sample_files:
        run.guarded(
            lambda: run.con.execute("CREATE OR REPLACE TEMP TABLE samples_rows AS SELECT * FROM samples")
        )
        run.con.execute("CREATE OR REPLACE VIEW samples AS SELECT * FROM samples_rows")
    run.con.execute("CREATE TEMP TABLE counter_deltas_rows AS SELECT * FROM counter_deltas")
    run.con.execute("CREATE OR REPLACE VIEW counter_deltas AS SELECT * FROM counter_deltas_rows")


def parquet_view(run, name: str, files: list[str], one_layout: bool) -> None:
    """(Re)point view ``name`` at ``files``.

    hive_partitioning off: the rank=NNNNN folders must not replace the files' own (integer)
    rank. union_by_name (files written by different recorder versions) makes DuckDB read every
    footer again each time a query is planned: only when the files' columns differ.
    """
    listed = sql_files(files)
    cut = ", ".join(f"left({sql_name(c)}, {MAX_NAME}) AS {sql_name(c)}" for c in run.text_columns.get(name, []))
    columns = f"* REPLACE ({cut})" if cut else "*"
    run.con.execute(
        f"CREATE OR REPLACE VIEW {name} AS SELECT {columns} FROM read_parquet([{listed}], "
        f"union_by_name = {'false' if one_layout else 'true'}, hive_partitioning = false)"
    )


# Tables built on the first query that names them (Run.sql): what several findings read, computed
# once. Each entry: the names a query may use, and the builder.
LAZY = (
    ("instances", ("instances",), build_instances),
    ("deltas", ("samples", "counter_deltas"), build_deltas),
)


def prepare(run, query: str) -> None:
    """Build the lazy tables ``query`` names and the run has not built yet."""
    for key, names, build in LAZY:
        if key not in run.built and any(re.search(rf"\b{name}\b", query) for name in names):
            build(run)
            run.built.add(key)  # after: until then a damaged sample file can still be dropped (repair)
