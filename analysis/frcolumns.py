"""One rank's Flight Recorder entries as events, column by column: the fast way to what
:func:`analysis.frentries.rank_rows` does entry by entry.

A dump of a million entries took ~23 µs an entry through the entry-by-entry conversion (~25 s a
rank); here each field the import uses becomes one typed Arrow column (a list comprehension and
``pa.array``: ~3 µs an entry) and DuckDB derives the events from them in one statement. Arrow
refuses a value of another type than the field's (a string where a number belongs, a number past
64 bits), and DuckDB a product of dimensions past 64 bits: :func:`rank_table` then raises
:class:`Unusual`, and the caller converts that dump entry by entry, which checks every value on its
own. Both give the same events (a test compares them on real and synthetic dumps).
"""

from __future__ import annotations

import operator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from analysis import frentries, importing

FIELDS = {
    "process_group": pa.list_(pa.string()),
    "collective_seq_id": pa.int64(),
    "profiling_name": pa.string(),
    "time_created_ns": pa.int64(),
    "input_sizes": pa.list_(pa.list_(pa.int64())),
    "input_dtypes": pa.list_(pa.string()),
    "output_sizes": pa.list_(pa.list_(pa.int64())),
    "output_dtypes": pa.list_(pa.string()),
    "state": pa.string(),
    "retired": pa.bool_(),
    "time_discovered_completed_ns": pa.int64(),
    "duration_ms": pa.float64(),
}
MAX_DIM = 1 << 40
NAMES = {k: name for k, (name, _) in frentries.DTYPES.items()}  # c10 dtype -> the recorder's name


class Unusual(Exception):
    """A dump this conversion does not take (a value of an unexpected type or size)."""


def _sql_map(mapping: dict[str, str], column: str, otherwise: str) -> str:
    cases = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in mapping.items())
    return f"(CASE {column} {cases} ELSE {otherwise} END)"


def _bytes_sql(sizes: str, dtypes: str) -> str:
    """Bytes of one side of an entry: each tensor's elements (0 where a dimension is out of range)
    times the element size of its dtype (the first dtype where it has none of its own)."""
    itemsize = " ".join(f"WHEN '{k}' THEN {size}" for k, (_, size) in frentries.DTYPES.items())
    elements = (
        f"CASE WHEN list_bool_or(list_transform(s, lambda d: d IS NULL OR d < 0 OR d >= {MAX_DIM})) THEN 0 "
        "WHEN len(s) = 0 THEN 1 ELSE list_reduce(s, lambda a, b: a * b) END"
    )
    per = f"({elements}) * (CASE coalesce({dtypes}[i], {dtypes}[1]) {itemsize} ELSE 0 END)"
    return f"coalesce(list_sum(list_transform({sizes}, lambda s, i: {per})), 0)"


def _elements_sql(sizes: str) -> str:
    elements = (
        f"CASE WHEN list_bool_or(list_transform(s, lambda d: d IS NULL OR d < 0 OR d >= {MAX_DIM})) THEN 0 "
        "WHEN len(s) = 0 THEN 1 ELSE list_reduce(s, lambda a, b: a * b) END"
    )
    return f"coalesce(list_sum(list_transform({sizes}, lambda s: {elements})), 0)"


def _columns(entries: list) -> pa.Table:
    try:
        try:  # every field in every entry (as torch writes them): read at C speed
            values = zip(*map(operator.itemgetter(*FIELDS), entries), strict=True) if entries else [[]] * len(FIELDS)
        except KeyError:  # an older dump without some of them
            values = ([e.get(name) for e in entries] for name in FIELDS)
        columns = {name: pa.array(list(v), kind) for (name, kind), v in zip(FIELDS.items(), values, strict=True)}
    except (AttributeError, TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
        raise Unusual(exc.__class__.__name__) from None
    columns["idx"] = pa.array(range(len(entries)), pa.int64())
    # A dump names few distinct operations: each is parsed once, as the entry-by-entry conversion does.
    names = columns["profiling_name"].dictionary_encode()
    parsed = [frentries.op_of(name) for name in names.dictionary.to_pylist()]
    for i, column in enumerate(("backend", "op", "argument")):
        columns[column] = pa.array([p[i] for p in parsed], pa.string()).take(names.indices)
    return pa.table(columns)


EVENTS_SQL = """
WITH valid AS (
    SELECT idx, process_group AS grp, process_group[1][:256] AS pg, backend, op, argument,
           collective_seq_id, time_created_ns, time_discovered_completed_ns, duration_ms,
           coalesce(retired, false) OR coalesce(state = 'completed', false) AS done,
           input_sizes, input_dtypes, output_sizes, output_dtypes
    FROM entries
    WHERE len(process_group) = 2 AND process_group[1] IS NOT NULL AND op IS NOT NULL AND op <> ''
),
events AS (
    SELECT idx, pg, grp[2][:256] AS pg_desc, op, backend[:32] AS backend, done,
           op IN ('send', 'recv') AS p2p,
           CASE WHEN op NOT IN ('send', 'recv') THEN collective_seq_id - 1 END AS cseq,
           TRY_CAST(CASE op WHEN 'send' THEN split_part(argument, '->', 2)
                            WHEN 'recv' THEN split_part(argument, '<-', 2) END AS BIGINT) AS other,
           {count} AS count, {bytes_in} AS bytes_in, {bytes_out} AS bytes_out,
           coalesce({dtype_in}, {dtype_out}) AS dtype,
           time_created_ns AS t_start_ns, nullif(time_discovered_completed_ns, 0) AS t_disc,
           CASE WHEN duration_ms >= 0 AND duration_ms < 1e9 THEN CAST(trunc(duration_ms * 1e6) AS BIGINT) END
               AS gpu_duration_ns
    FROM valid
    WHERE op NOT IN ('coalesced', 'split', 'new_window')
),
usable AS (SELECT * FROM events WHERE p2p OR cseq IS NOT NULL),
sized AS (
    SELECT u.*, len(g.ranks) AS pg_size,
           CASE WHEN p2p AND other >= 0 AND other < len(g.ranks) THEN g.ranks[other + 1] END AS peer
    FROM usable u LEFT JOIN groups g USING (pg)
),
p2p AS (
    SELECT *, row_number() OVER (PARTITION BY pg, op, peer ORDER BY idx) - 1 AS seq, 1 AS n, op AS first_op
    FROM sized WHERE p2p
),
collectives AS (SELECT *, cseq AS seq FROM sized WHERE NOT p2p),
-- entries of one collective's seq in a group are one event (a coalesced collective); most are alone
shared AS (SELECT pg, seq FROM collectives GROUP BY pg, seq HAVING count(*) > 1),
alone AS (SELECT c.*, 1 AS n, op AS first_op FROM collectives c ANTI JOIN shared USING (pg, seq)),
merged AS (
    SELECT arg_min(idx, idx) AS idx, any_value(pg) AS pg, arg_min(pg_desc, idx) AS pg_desc,
           arg_min(pg_size, idx) AS pg_size, any_value(seq) AS seq, arg_min(op, idx) AS first_op,
           count(*) AS n, sum(count)::BIGINT AS count, sum(bytes_in)::BIGINT AS bytes_in,
           sum(bytes_out)::BIGINT AS bytes_out, arg_min(dtype, idx) AS dtype, arg_min(peer, idx) AS peer,
           arg_min(t_start_ns, idx) AS t_start_ns, arg_min(t_disc, idx) AS t_disc, bool_and(done) AS done,
           arg_min(gpu_duration_ns, idx) AS gpu_duration_ns, arg_min(backend, idx) AS backend
    FROM collectives c SEMI JOIN shared USING (pg, seq)
    GROUP BY pg, seq
),
every AS (
    SELECT idx, pg, pg_desc, pg_size, seq, first_op, n, count, bytes_in, bytes_out, dtype, peer, t_start_ns,
           t_disc, done, gpu_duration_ns, backend FROM p2p
    UNION ALL BY NAME
    SELECT idx, pg, pg_desc, pg_size, seq, first_op, n, count, bytes_in, bytes_out, dtype, peer, t_start_ns,
           t_disc, done, gpu_duration_ns, backend FROM alone
    UNION ALL BY NAME
    SELECT * FROM merged
)
SELECT {rank}::INTEGER AS rank, pg, pg_desc, pg_size::INTEGER AS pg_size, seq,
       CASE WHEN n > 1 THEN {coalesced} ELSE first_op END AS op,
       count, bytes_in, bytes_out, dtype, peer::INTEGER AS peer, NULL::INTEGER AS root, t_start_ns,
       CASE WHEN done THEN t_disc END AS t_end_ns, gpu_duration_ns,
       CASE WHEN done THEN 'ok' ELSE 'in_flight' END AS status, NULL::BOOLEAN AS async_op, n > 1 AS coalesced,
       NULL::VARCHAR AS api, backend, CASE WHEN backend = 'nccl' THEN 'cuda' END AS device, NULL::BIGINT AS step,
       idx
FROM every
"""


def rank_table(rank: int, dump: dict, groups: dict[str, list[int]], stats: frentries.Stats) -> tuple[pa.Table, list]:
    """One rank's events (importing.COLUMNS) and the stacks of its calls in flight, as
    :func:`analysis.frentries.rank_rows` makes them; :class:`Unusual` for a dump it does not take."""
    entries = dump["entries"]
    table = _columns(entries)
    con = duckdb.connect()
    try:
        # Copied in once: read in place, DuckDB scanned the Arrow columns ~20x slower within this query.
        con.register("arrow_entries", table)
        con.execute("CREATE TABLE entries AS SELECT * FROM arrow_entries")
        con.unregister("arrow_entries")
        listed = sorted(groups.items())
        con.execute(
            "CREATE TABLE groups AS SELECT unnest(?::VARCHAR[]) AS pg, unnest(?::BIGINT[][]) AS ranks",
            [[pg for pg, _ in listed], [r for _, r in listed]],
        )
        sql = EVENTS_SQL.format(
            rank=int(rank),
            coalesced=_sql_map(frentries.COALESCED, "first_op", "first_op"),
            count=_elements_sql("input_sizes"),
            bytes_in=_bytes_sql("input_sizes", "input_dtypes"),
            bytes_out=_bytes_sql("output_sizes", "output_dtypes"),
            dtype_in=_sql_map(NAMES, "input_dtypes[1]", "input_dtypes[1]"),
            dtype_out=_sql_map(NAMES, "output_dtypes[1]", "output_dtypes[1]"),
        )
        con.execute(f"CREATE TABLE events AS {sql}")
        events = con.sql("SELECT * FROM events ORDER BY idx").to_arrow_table()
        _count(con, stats, dump)
        _groups(con, stats)
    except duckdb.Error as exc:
        raise Unusual(str(exc).splitlines()[0][:200]) from None
    finally:
        con.close()
    return _finish(events, entries)


def _count(con, stats: frentries.Stats, dump: dict) -> None:
    (entries, valid, timed, untimed, p2p, backends) = con.execute("""
        WITH v AS (
            SELECT *, coalesce(retired, false) OR coalesce(state = 'completed', false) AS done,
                   nullif(time_discovered_completed_ns, 0) AS t_disc
            FROM entries
            WHERE len(process_group) = 2 AND process_group[1] IS NOT NULL AND op IS NOT NULL AND op <> ''
        ),
        ops AS (SELECT * FROM v WHERE op NOT IN ('coalesced', 'split', 'new_window'))
        SELECT (SELECT count(*) FROM entries),
               (SELECT count(*) FROM ops WHERE op IN ('send', 'recv') OR collective_seq_id IS NOT NULL)
               + (SELECT count(*) FROM v WHERE op IN ('coalesced', 'split', 'new_window')),
               count(*) FILTER (WHERE t_disc IS NOT NULL),
               count(*) FILTER (WHERE done AND t_disc IS NULL),
               count(*) FILTER (WHERE op IN ('send', 'recv')),
               list(DISTINCT backend[:32])
        FROM ops
    """).fetchone()
    stats.entries += entries
    stats.skipped += entries - valid
    stats.timed += timed
    stats.untimed += untimed
    stats.p2p += p2p
    stats.backends.update(b for b in backends or [] if b is not None)
    stats.versions.add(str(dump.get("version"))[:32])


def _groups(con, stats: frentries.Stats) -> None:
    """Each group's description and its oldest collective's seq in this dump."""
    rows = con.execute("""
        SELECT pg, arg_min(pg_desc, idx), min(seq) FILTER (WHERE op NOT IN ('send', 'recv'))
        FROM events GROUP BY pg
    """).fetchall()
    for pg, desc, seq in rows:
        stats.descs.setdefault(pg, desc)
        if seq is not None:
            stats.oldest[pg] = min(seq, stats.oldest.get(pg, seq))


def _finish(events: pa.Table, entries: list) -> tuple[pa.Table, list]:
    stacks = []
    for event in events.filter(pc.not_equal(events["status"], "ok")).slice(0, 16).to_pylist():
        entry = entries[event["idx"]]
        stacks.append({"pg": event["pg"], "seq": event["seq"], "op": event["op"],
                       "frames": frentries.frames(entry.get("frames"))})  # fmt: skip
    table = events.drop_columns(["idx"])
    arrays = [
        table[name].cast(kind).dictionary_encode() if name in importing.DICTIONARY else table[name].cast(kind)
        for name, kind in importing.COLUMNS.items()
    ]
    return pa.Table.from_arrays(arrays, names=list(importing.COLUMNS)), stacks
