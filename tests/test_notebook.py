"""notebooks/ablation.ipynb runs top to bottom against a small ablation workspace built here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from train.ablation import load_grid, run_ablation

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ablation.ipynb"

# The smallest grid that exercises every notebook cell: two strategies, a budget and the full pool, real
# tiny training for a few steps.
GRID = """
name = "notebook test"
llms = ["tiny-llama"]
vision = "tiny-clip"
budgets = [12, "full"]

[strategies.random]
[strategies.rules]
min_per_subject = 1

[stage1]
hparams = "tiny-cpu"
overrides = { max_steps = 2 }

[train]
hparams = "tiny-cpu"
overrides = { max_steps = 3 }

[eval]
split = "test"
limit = 8
batch_size = 8
max_new_tokens = 20
"""


@pytest.fixture(scope="module")
def ablation_workspace(tmp_path_factory):
    from curate.ingest import ingest_synthetic
    from datasets_spec.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("nb") / "ws")
    ingest_synthetic(ws, seed=1, n_train=40, n_val=4, n_test=12, prompt_format="QCM-A")
    grid_file = ws.root / "grid.toml"
    grid_file.write_text(GRID)
    run_ablation(ws, load_grid(grid_file), log=lambda message: None)
    return ws


def test_notebook_runs_top_to_bottom(ablation_workspace, monkeypatch):
    monkeypatch.setenv("ABLATION_WORKSPACE", str(ablation_workspace.root))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "notebook test" in outputs
    assert "A = full__tiny-llama__s0" in outputs and "B = random-k12__tiny-llama__s0" in outputs
    assert "8 questions answered by both" in outputs
    assert "A = full tiny-llama (1 seed(s)), B = random k12 tiny-llama (1 seed(s))" in outputs
    assert "full tiny-llama vs random k12 tiny-llama: " in outputs and "95% CI [" in outputs
    # the two report PNGs and the notebook's own accuracy-vs-budget plot with CI bands
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3
