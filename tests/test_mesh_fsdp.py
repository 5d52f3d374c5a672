"""DeviceMesh groups, DTensor and FSDP2 (CPU, gloo): their collectives land in the mesh's groups."""

from __future__ import annotations

from collections import Counter

from conftest import JOBS, clean_env, free_port, load_events, rank_meta, run_job

STEPS, LAYERS = 2, 2  # as in jobs/mesh_fsdp.py


def test_mesh_dtensor_and_fsdp2(tmp_trace):
    run_job([str(JOBS / "mesh_fsdp.py"), free_port()], clean_env(COMMTRACE_DIR=str(tmp_trace)))
    rows = load_events(tmp_trace).to_pylist()
    meta = rank_meta(tmp_trace)
    for rank in range(4):
        mine = [r for r in rows if r["rank"] == rank]
        by_desc = Counter((r["pg_desc"], r["op"]) for r in mine)
        # FSDP2 on the "dp" dimension: per step, each layer all-gathers its parameters for forward and
        # again for backward (resharded after forward) and reduce-scatters its gradients once.
        assert by_desc[("mesh_dp", "all_gather_into_tensor")] == STEPS * LAYERS * 2
        assert by_desc[("mesh_dp", "reduce_scatter_tensor")] == STEPS * LAYERS
        # DTensor on "tp": distribute_tensor scatters from the mesh's first rank, redistribute gathers.
        assert by_desc[("mesh_tp", "scatter")] == 1
        assert by_desc[("mesh_tp", "all_gather_into_tensor_coalesced")] == 1
        groups = {g["desc"]: g for g in meta[rank]["process_groups"]}
        assert rank in groups["mesh_dp"]["ranks"] and rank in groups["mesh_tp"]["ranks"]
        assert len(groups["mesh_dp"]["ranks"]) == 2 and len(groups["mesh_tp"]["ranks"]) == 2
    by_op: dict[tuple, set] = {}
    for r in rows:
        by_op.setdefault((r["pg"], r["seq"]), set()).add((r["op"], r["rank"]))
    for (pg, seq), members in by_op.items():
        assert len({op for op, _ in members}) == 1 and len(members) == 2, (pg, seq, members)
