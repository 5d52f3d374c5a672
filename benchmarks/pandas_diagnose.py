"""A straightforward pandas implementation of what ``analyze-trace diagnose`` computes, for comparison.

What a user without commtrace would write: read every rank's Parquet segments into one DataFrame,
move each rank's timestamps onto rank 0's clock, then groupby/merge for each finding (instances,
stragglers, hangs, desyncs, per-interface counters, TCP loss, last event per rank). The same
formulas and thresholds as analysis/findings.py, analysis/outside.py and analysis/diagnose.py
(stragglers judged on their time outside communication per step); prints the flagged
stragglers, hangs and desyncs as JSON.

    python benchmarks/pandas_diagnose.py RUN_DIR
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import pandas as pd

P2P = ["send", "recv", "recv_anysource"]


def load(run: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    metas = {}
    for path in glob.glob(os.path.join(run, "rank=*", "rank-*.json")):
        with open(path) as fh:
            meta = json.load(fh)
        metas[meta["rank"]] = meta
    frames = [pd.read_parquet(f) for f in sorted(glob.glob(os.path.join(run, "rank=*", "collectives-*.parquet")))]
    df = pd.concat(frames, ignore_index=True)
    for column in ("pg", "op", "dtype", "status"):
        df[column] = df[column].astype(str)
    offsets = {r: m["clock"]["start"]["offset_ns"] for r, m in metas.items()}
    shift = df["rank"].map(offsets).fillna(0).astype("int64")
    df["t_start_ns"] = df["t_start_ns"] + shift
    df["t_end_ns"] = df["t_end_ns"] + shift
    samples = [pd.read_parquet(f) for f in sorted(glob.glob(os.path.join(run, "host=*", "nic-*.parquet")))]
    nic = pd.concat(samples, ignore_index=True) if samples else pd.DataFrame()
    for column in ("host", "source", "device", "counter"):
        if column in nic:
            nic[column] = nic[column].astype(str)
    return df, nic, metas


def instances(coll: pd.DataFrame) -> pd.DataFrame:
    coll = coll.assign(
        size=np.where(coll["op"] == "scatter", coll["bytes_out"], coll["bytes_in"]),
        done=coll["t_end_ns"].notna() & (coll["status"] == "ok"),
    )
    g = coll.groupby(["pg", "seq"], sort=False)
    inst = g.agg(
        op=("op", "first"),
        pg_size=("pg_size", "first"),
        ranks=("rank", "size"),
        ended=("t_end_ns", "count"),
        done_ranks=("done", "sum"),
        first_start_ns=("t_start_ns", "min"),
        last_start_ns=("t_start_ns", "max"),
        last_end_ns=("t_end_ns", "max"),
        ops=("op", "nunique"),
        sizes=("size", "nunique"),
        dtypes=("dtype", "nunique"),
    )
    inst["last_rank"] = coll.loc[g["t_start_ns"].idxmax().to_numpy(), "rank"].to_numpy()
    inst["complete"] = inst["ended"] == inst["ranks"]
    inst["disagree"] = (inst["ops"] > 1) | (inst["sizes"] > 1) | (inst["dtypes"] > 1)
    return inst.reset_index()


def stragglers(coll: pd.DataFrame, inst: pd.DataFrame, min_skew_ms: float = 1.0) -> pd.DataFrame:
    full = inst[(inst["ranks"] == inst["pg_size"]) & inst["complete"] & ~inst["op"].isin(["barrier"])]
    late = coll.merge(full[["pg", "seq", "first_start_ns", "last_start_ns", "last_rank"]], on=["pg", "seq"])
    late["lateness_ms"] = (late["t_start_ns"] - late["first_start_ns"]) / 1e6
    skew = (late["last_start_ns"] - late["first_start_ns"]) / 1e6
    late["was_last"] = (late["last_rank"] == late["rank"]) & (skew >= min_skew_ms)
    per_rank = late.groupby("rank").agg(
        collectives=("lateness_ms", "size"),
        times_last=("was_last", "sum"),
        mean_lateness_ms=("lateness_ms", "mean"),
        p95_lateness_ms=("lateness_ms", lambda s: s.quantile(0.95)),
    )
    # Time outside communication between one collective and the next, per rank.
    ordered = late.sort_values(["rank", "t_start_ns"])
    gap = ordered["t_start_ns"] - ordered.groupby("rank")["t_end_ns"].shift()
    per_rank["mean_gap_ms"] = (gap / 1e6).groupby(ordered["rank"]).mean()
    center = per_rank["mean_lateness_ms"].median()
    mad = (per_rank["mean_lateness_ms"] - center).abs().median()
    per_rank["outlier_score"] = (per_rank["mean_lateness_ms"] - center) / max(1.4826 * mad, 0.05)
    share = (per_rank["mean_gap_ms"] - per_rank["mean_gap_ms"].median()) / per_rank["mean_lateness_ms"]
    per_rank["compute_share"] = share.clip(0, 1)
    return per_rank.reset_index()


def outside(df: pd.DataFrame) -> pd.DataFrame:
    """Per rank: time with nothing in flight per step against the other ranks' (analysis/outside.py),
    steps as marked (or each collective of the default group)."""
    o = df.sort_values(["rank", "t_start_ns", "seq"])
    before = o.groupby("rank")["t_end_ns"].shift()
    o["gap"] = (o["t_start_ns"] - before.groupby(o["rank"]).cummax()).clip(lower=0).fillna(0)
    if o["step"].notna().any():
        o["step_id"] = o["step"]
    else:
        o["step_id"] = (o["pg"] == "0").astype(int).groupby(o["rank"]).cumsum()
    per = o.groupby(["step_id", "rank"])["gap"].sum().reset_index()
    per = per[per.groupby("step_id")["rank"].transform("size") == per["rank"].nunique()]
    per["excess_ms"] = (per["gap"] - per.groupby("step_id")["gap"].transform("median")) / 1e6
    noise = max(1.4826 * per["excess_ms"].abs().median(), 0.05)
    out = per.groupby("rank")["excess_ms"].agg(["mean", "size"]).reset_index()
    out["outside_z"] = out["mean"] / (noise / np.sqrt(out["size"]))
    return out


def hangs(coll: pd.DataFrame, inst: pd.DataFrame, metas: dict) -> list[dict]:
    members: dict[str, set[int]] = {}
    for meta in metas.values():
        for group in meta.get("process_groups") or []:
            members.setdefault(str(group["pg"]), set()).update(group["ranks"])
    out = []
    for pg, rows in inst.groupby("pg"):
        expected = members.get(pg) or set(coll.loc[coll["pg"] == pg, "rank"].unique())
        short = rows[rows["done_ranks"] < len(expected)].sort_values("seq")
        if short.empty:
            continue
        seq = short.iloc[0]["seq"]
        these = coll[(coll["pg"] == pg) & (coll["seq"] == seq)]
        done = these["t_end_ns"].notna() & (these["status"] == "ok")
        out.append(
            {
                "pg": pg,
                "seq": int(seq),
                "missing_ranks": sorted(expected - set(these["rank"])),
                "stuck_ranks": sorted(these.loc[~done, "rank"]),
            }
        )
    return out


def desyncs(coll: pd.DataFrame, inst: pd.DataFrame) -> list[dict]:
    out = []
    for _, row in inst[inst["disagree"]].iterrows():
        these = coll[(coll["pg"] == row["pg"]) & (coll["seq"] == row["seq"])]
        counts = these.groupby(["op", "bytes_in", "dtype"]).size()
        rarest = counts.idxmin()
        culprit = these[(these["op"] == rarest[0]) & (these["bytes_in"] == rarest[1])]["rank"].iloc[0]
        out.append({"pg": row["pg"], "seq": int(row["seq"]), "culprit_rank": int(culprit)})
    return out


def counter_deltas(nic: pd.DataFrame) -> pd.DataFrame:
    nic = nic[nic["value"].notna()].sort_values(["host", "source", "device", "counter", "t_ns"])
    prev = nic.groupby(["host", "source", "device", "counter"])["value"].shift()
    delta = nic["value"] - prev
    wrapped = (delta < 0) & (prev < 2**32)
    delta = delta.where(delta >= 0, np.where(wrapped, nic["value"] + 2**32 - prev, nic["value"]))
    return nic.assign(delta=delta).dropna(subset=["delta"])


def network(deltas: pd.DataFrame) -> pd.DataFrame:
    dev = deltas[deltas["source"] == "net_dev"]
    errors = dev[dev["counter"].isin(["rx_errs", "tx_errs", "rx_frame", "tx_carrier"])]
    drops = dev[dev["counter"].isin(["rx_drop", "tx_drop", "rx_fifo", "tx_fifo"])]
    packets = dev[dev["counter"].isin(["rx_packets", "tx_packets"])]
    keys = ["host", "device"]
    table = pd.DataFrame(
        {
            "errors": errors.groupby(keys)["delta"].sum(),
            "drops": drops.groupby(keys)["delta"].sum(),
            "packets": packets.groupby(keys)["delta"].sum(),
        }
    )
    table["error_drop_pct"] = 100 * (table["errors"] + table["drops"]) / table["packets"]
    return table.reset_index()


def tcp_loss(deltas: pd.DataFrame) -> pd.DataFrame:
    snmp = deltas[deltas["source"].isin(["snmp", "netstat"])]
    per_host = snmp.pivot_table(index="host", columns="counter", values="delta", aggfunc="sum")
    per_host["tcp_retrans_pct"] = 100 * per_host["RetransSegs"] / per_host["OutSegs"]
    return per_host.reset_index()


def main() -> None:
    run = sys.argv[1]
    df, nic, metas = load(run)
    coll = df[~df["op"].isin(P2P)]
    inst = instances(coll)
    per_rank = stragglers(coll, inst).merge(outside(df), on="rank", how="left")
    flagged = per_rank[per_rank["outside_z"] > 5]
    deltas = counter_deltas(nic) if len(nic) else nic
    net = network(deltas) if len(deltas) else pd.DataFrame()
    loss = tcp_loss(deltas) if len(deltas) else pd.DataFrame()
    last = df.groupby("rank")["t_start_ns"].max()
    report = {
        "stragglers": [
            {"rank": int(r["rank"]), "times_last": int(r["times_last"]), "mean_lateness_ms": r["mean_lateness_ms"]}
            for _, r in flagged.iterrows()
        ],
        "hangs": hangs(coll, inst, metas),
        "desyncs": desyncs(coll, inst),
        "packet_loss_hosts": sorted(loss.loc[loss["tcp_retrans_pct"] >= 0.5, "host"]) if len(loss) else [],
        "interfaces": len(net),
        "ranks_with_events": len(last),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
