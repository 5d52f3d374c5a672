"""The notebooks in notebooks/ run top to bottom against sample_traces/, so they can never rot."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@functools.cache
def executed(name: str):
    """(the notebook as stored, the notebook after running every cell with the notebooks' defaults)."""
    stored = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    saved = {v: os.environ.pop(v) for v in ("COMMTRACE_RUN", "COMMTRACE_BASELINE") if v in os.environ}
    try:  # raises CellExecutionError on the first cell that fails
        nbclient.NotebookClient(
            notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
    finally:
        os.environ.update(saved)
    return stored, notebook


@pytest.mark.parametrize("name", ["postmortem.ipynb", "compare_runs.ipynb"])
def test_notebook_runs_top_to_bottom(name):
    stored, notebook = executed(name)
    assert all(not cell.outputs for cell in stored.cells if cell.cell_type == "code"), "stored without outputs"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    plotted = sum("plots." in cell.source for cell in code)
    assert len(figures) == plotted > 0, "every cell that plots shows its figure"
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the findings, as tables


def test_postmortem_names_the_lossy_host():
    _, notebook = executed("postmortem.ipynb")
    verdict = next(cell for cell in notebook.cells if "report = diagnose.diagnose(run)" in cell.source)
    text = verdict.outputs[0]["text"]  # printed: the same sentences as analyze-trace diagnose
    assert "link: labs-host1 eth0: a slow and lossy link" in text and "the recording: nothing to report" in text


def test_comparison_flags_the_slow_link_run():
    _, notebook = executed("compare_runs.ipynb")
    buckets = next(cell for cell in notebook.cells if "compare.collectives(a, b" in cell.source)
    table = buckets.outputs[0]["data"]["text/html"]
    assert "true" in table.lower()  # at least one regression flagged
    printed = notebook.cells[-1].outputs[0]["text"]
    healthy, slow = printed.split("run sweep-slow-link:")
    assert healthy.startswith("run sweep:") and "the job: nothing flagged" in healthy
    assert "labs-host1 eth0: a slow link" in slow
