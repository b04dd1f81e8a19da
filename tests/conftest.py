"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

# --- torch threads --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for the tests of a module that asks for it
    (``pytestmark = pytest.mark.usefixtures("one_thread")``): their matrices are tiny, and on a busy 2-core
    machine a second thread only adds contention (steps ran up to 50x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- synthetic dataset fixture ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synthetic_workspace(tmp_path_factory):
    """A Workspace holding a small ingested synthetic ScienceQA dataset (QCM-A, seed 0, 120/30/40 rows).

    Session-scoped and shared: tests must not modify its dataset/ (copy it or make their own workspace).
    """
    from curate.ingest import ingest_synthetic
    from datasets_spec.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("synthetic-ws"))
    ingest_synthetic(ws, seed=0, n_train=120, n_val=30, n_test=40, prompt_format="QCM-A")
    return ws


# --- embeddings fixture (curation) -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_workspace(synthetic_workspace, tmp_path_factory):
    """A copy of ``synthetic_workspace`` with a tiny-clip (random weights) embedding set, 64 rows per part.

    Session-scoped and shared: tests that write into it must copy it first (``copy_workspace``).
    """
    import shutil

    from curate.embed import embed_workspace
    from datasets_spec.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("embedded-ws") / "ws")
    shutil.copytree(synthetic_workspace.root, ws.root)
    embed_workspace(ws, model="tiny-clip", pretrained="none", num_workers=0, rows_per_part=64,
                    show_progress=False, threads=1)
    return ws
