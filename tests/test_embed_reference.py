"""`curate embed --model llava:<run>` / `lm:<preset>`: pooled hidden states against per-sample references."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from curate.embed_reference import embed_reference, parse_layers, sample_dialogue
from curate.embedding_sets import load_embeddings
from datasets_spec.errors import UserError
from datasets_spec.parts import read_json, write_json
from datasets_spec.workspace import Workspace
from tests.curate_helpers import assert_user_error, run_curate

N_ROWS = 24


@pytest.fixture(scope="module")
def small_ws(tmp_path_factory) -> Workspace:
    from curate.ingest import ingest_synthetic

    ws = Workspace(tmp_path_factory.mktemp("ref-embed") / "ws")
    ingest_synthetic(ws, seed=1, n_train=16, n_val=4, n_test=4, prompt_format="QCM-A")
    return ws


@pytest.fixture(scope="module")
def run_dir(small_ws) -> os.PathLike:
    from train.model import build_llava, save_bundle

    run = small_ws.runs_dir / "stage1__tiny-llama"
    save_bundle(build_llava("tiny-llama", "tiny-clip", seed=0), run / "model")
    write_json(
        run / "config.json",
        {"dataset_fingerprint": small_ws.dataset_fingerprint(), "config": {"image_aspect": "pad"}},
    )
    return run


def _mean_pool_reference(hidden: tuple, layers: tuple[int, ...]) -> np.ndarray:
    parts = []
    for layer in layers:
        v = hidden[layer][0].double().mean(0)
        parts.append(v / v.norm())
    v = torch.cat(parts)
    return (v / v.norm()).numpy()


def test_lm_features_equal_one_sample_forward(small_ws, tmp_path) -> None:
    from train.model import load_language_model
    from train.presets import resolve_llm

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small_ws.root, ws.root)
    out = embed_reference(
        ws,
        model="lm:tiny-llama",
        layers="1,-1",
        batch_size=5,
        num_workers=0,
        rows_per_part=10,
        show_progress=False,
    )
    matrix, ids, info = load_embeddings(ws)
    assert out.name == "lm-tiny-llama_L1_-1" and info["layers"] == [1, -1] and info["rows"] == N_ROWS
    torch.manual_seed(0)
    tokenizer, model = load_language_model(resolve_llm("tiny-llama"))
    assert matrix.shape == (N_ROWS, 2 * model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    rows = ws.read_dataset(columns=["conversations"]).column("conversations").to_pylist()
    model.eval()
    for i in (0, 7, 23):
        ids_i = torch.tensor([tokenizer(sample_dialogue(rows[i]))["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids_i, output_hidden_states=True).hidden_states
        np.testing.assert_allclose(matrix[i], _mean_pool_reference(hidden, (1, -1)), atol=2e-5)


def test_llava_features_equal_one_sample_forward_and_resume_is_identical(small_ws, run_dir, tmp_path) -> None:
    from train.data import LlavaCollator, prepare_dataset
    from train.evaluate import load_run_bundle

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small_ws.root, ws.root)
    model = f"llava:{ws.runs_dir / run_dir.name}"
    partial = embed_reference(
        ws,
        model=model,
        layers="0,-1",
        batch_size=4,
        num_workers=0,
        rows_per_part=8,
        max_parts=1,
        show_progress=False,
    )
    assert partial.name.endswith(".partial")
    final = embed_reference(
        ws, model=model, layers="0,-1", batch_size=4, num_workers=0, rows_per_part=8, show_progress=False
    )
    matrix, _, info = load_embeddings(ws)
    # an uninterrupted run in another workspace gives the same bytes
    other = Workspace(tmp_path / "other")
    shutil.copytree(small_ws.root, other.root)
    embed_reference(
        other,
        model=f"llava:{other.runs_dir / run_dir.name}",
        layers="0,-1",
        batch_size=4,
        num_workers=2,
        rows_per_part=8,
        show_progress=False,
    )
    assert read_json(final / "embeddings.json")["parts_hash"] == load_embeddings(other)[2]["parts_hash"]
    bundle = load_run_bundle(run_dir)
    table = ws.read_dataset()
    dataset, _ = prepare_dataset(table, bundle, image_root=ws.image_root(), max_length=4096)
    has_image = [r is not None for r in table.column("image").to_pylist()]
    checked = 0
    for i in range(N_ROWS):
        if checked >= 2 and not has_image[i]:
            continue
        batch = LlavaCollator(bundle.tokenizer.pad_token_id)([dataset[i]])
        with torch.no_grad():
            hidden = bundle.model.eval()(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"],
                output_hidden_states=True,
            ).hidden_states
        np.testing.assert_allclose(matrix[i], _mean_pool_reference(hidden, (0, -1)), atol=2e-5)
        checked += 1
        if checked == 4:
            break
    assert any(has_image[:N_ROWS]) and info["model"].startswith("llava:")


def _listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".lock" not in p.name)


def test_bad_layers_and_foreign_run(small_ws, run_dir, tmp_path) -> None:
    for spec in ("a,b", "", "1,1"):
        with pytest.raises(UserError, match="--layers"):
            parse_layers(spec)
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small_ws.root, ws.root)
    before = _listing(ws.root)
    result = run_curate(
        "embed", "-w", str(ws.root), "--model", "lm:tiny-llama", "--layers", "40", "--num-workers", "0"
    )
    assert_user_error(result, "--layers 40: the model has hidden states 0..")
    assert _listing(ws.root) == before  # refused before any part or .partial directory was written
    run = ws.runs_dir / run_dir.name
    write_json(run / "config.json", {"dataset_fingerprint": "9" * 64, "config": {}})
    assert_user_error(
        run_curate("embed", "-w", str(ws.root), "--model", f"llava:{run}"),
        "trained on a subset of dataset 999999999999",
    )
    assert_user_error(run_curate("embed", "-w", str(ws.root), "--model", "llava:runs/nope"), "does not exist")
    assert not any(
        p.name.startswith("lm-") or p.name.startswith("llava-")
        for p in ws.embeddings_dir.glob("*")
        if (p / "embeddings.json").exists()
    )


@pytest.mark.slow
def test_torchrun_two_ranks_write_one_reference_set(small_ws, tmp_path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small_ws.root, ws.root)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "curate.cli",
            "embed",
            "-w",
            str(ws.root),
            "--model",
            "lm:tiny-llama",
            "--num-workers",
            "0",
            "--rows-per-part",
            "8",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    matrix, _, info = load_embeddings(ws)
    assert info["world_size"] == 2 and info["parts"] == 3
    single = Workspace(tmp_path / "single")
    shutil.copytree(small_ws.root, single.root)
    embed_reference(single, model="lm:tiny-llama", num_workers=0, rows_per_part=8, show_progress=False)
    np.testing.assert_allclose(matrix, load_embeddings(single)[0], atol=1e-5)
