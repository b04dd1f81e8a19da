"""curate embed: tiny open_clip model with random weights, resume, torchrun, checkpoints, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate

from curate.clip_model import load_model
from curate.embed import default_tag, embed_workspace, sample_text
from curate.embedding_sets import load_embeddings, resolve_tag
from datasets_spec.errors import UserError
from datasets_spec.parts import file_sha256, list_parts, read_json, write_record
from datasets_spec.workspace import Workspace

TAG = "tiny-clip_none"


def _part_bytes(directory):
    return {p.name: p.read_bytes() for p in list_parts(directory)}


def test_embedding_set_layout_and_alignment(embedded_workspace):
    d = embedded_workspace.embeddings_dir / TAG
    info = read_json(d / "embeddings.json")
    assert info["complete"] is True and info["model"] == "tiny-clip" and info["pretrained"] == "none"
    assert info["dim"] == 64 and info["dtype"] == "float32" and info["fuse"] == "mean"
    assert info["dataset_fingerprint"] == embedded_workspace.dataset_fingerprint()
    assert info["rows"] == 190 and info["parts"] == len(list_parts(d)) == 3
    schema = pq.read_schema(d / "part-00000.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), 64)
    matrix, ids, _ = load_embeddings(embedded_workspace)
    assert matrix.shape == (190, 64) and matrix.dtype == np.float32
    assert ids == embedded_workspace.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert resolve_tag(embedded_workspace) == TAG
    assert (embedded_workspace.embeddings_dir / "DEFAULT").read_text().strip() == TAG


def test_fuse_mean_combines_image_and_text(embedded_workspace, tmp_path):
    """Recompute two samples (one with an image, one text-only) directly with the model."""
    import torch
    from PIL import Image

    net, preprocess, tokenizer = load_model("tiny-clip", "none", seed=0)
    table = embedded_workspace.read_dataset(columns=["sample_id", "image", "conversations"]).to_pylist()
    matrix, _, _ = load_embeddings(embedded_workspace)
    with_image = next(i for i, r in enumerate(table) if r["image"])
    text_only = next(i for i, r in enumerate(table) if not r["image"])
    with torch.no_grad():
        for i in (with_image, text_only):
            row = table[i]
            assert "<image>" not in sample_text(row["conversations"])
            txt = net.encode_text(tokenizer([sample_text(row["conversations"])]))[0]
            txt = txt / txt.norm()
            if row["image"]:
                pix = preprocess(Image.open(embedded_workspace.image_root() / row["image"]).convert("RGB"))
                img = net.encode_image(pix[None])[0]
                txt = img / img.norm() + txt
                txt = txt / txt.norm()
            np.testing.assert_allclose(matrix[i], txt.numpy(), atol=1e-5)


def test_killed_run_resumes_byte_identical(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    shutil.rmtree(ws.embeddings_dir)
    partial = embed_workspace(ws, model="tiny-clip", pretrained="none", num_workers=0, rows_per_part=64,
                              max_parts=2, show_progress=False)
    assert partial.name == f".{TAG}.partial" and len(list_parts(partial)) == 2
    assert not (ws.embeddings_dir / TAG).exists()  # nothing where a reader would look
    with pytest.raises(UserError, match="curate embed"):
        load_embeddings(ws)
    final = embed_workspace(ws, model="tiny-clip", pretrained="none", num_workers=2, rows_per_part=64,
                            show_progress=False)
    assert final == ws.embeddings_dir / TAG and not partial.exists()
    assert _part_bytes(final) == _part_bytes(embedded_workspace.embeddings_dir / TAG)


def test_checkpoint_file_loads(embedded_workspace, tmp_path):
    """A checkpoint saved here (safetensors) is loaded: its weights, not fresh random ones, are used."""
    import torch
    from safetensors.torch import save_file

    net, _, tokenizer = load_model("tiny-clip", "none", seed=123)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    ws = copy_workspace(embedded_workspace, tmp_path)
    out = embed_workspace(ws, model="tiny-clip", pretrained=str(path), fuse="text", num_workers=0,
                          show_progress=False)
    assert out.name == default_tag("tiny-clip", str(path)) == "tiny-clip_ckpt-tiny"
    matrix, ids, info = load_embeddings(ws, out.name)
    assert info["pretrained"] == str(path.resolve())
    first = ws.read_dataset(columns=["conversations"]).column("conversations")[0].as_py()
    with torch.no_grad():
        ref = net.encode_text(tokenizer([sample_text(first)]))[0]
    np.testing.assert_allclose(matrix[0], (ref / ref.norm()).numpy(), atol=1e-5)
    random_matrix, _, _ = load_embeddings(ws, TAG)
    assert not np.allclose(random_matrix[0], matrix[0])


def test_two_embedding_sets_need_a_default(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    shutil.copytree(ws.embeddings_dir / TAG, ws.embeddings_dir / "other")
    (ws.embeddings_dir / "DEFAULT").unlink()
    with pytest.raises(UserError, match="several embedding sets"):
        load_embeddings(ws)
    assert load_embeddings(ws, "other")[2]["tag"] == "other"


@pytest.mark.slow
def test_torchrun_two_ranks_write_one_set(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    shutil.rmtree(ws.embeddings_dir)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "curate.cli", "embed", "-w", str(ws.root),
         "--model", "tiny-clip", "--pretrained", "none", "--num-workers", "0", "--rows-per-part", "64"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    info = read_json(ws.embeddings_dir / TAG / "embeddings.json")
    assert info["world_size"] == 2 and info["rows"] == 190 and info["parts"] == 3
    matrix, ids, _ = load_embeddings(ws)
    ref, ref_ids, _ = load_embeddings(embedded_workspace)
    assert ids == ref_ids
    np.testing.assert_allclose(matrix, ref, atol=1e-5)


# --- bad input: one line, exit 2, nothing half-written ---------------------------------------------


def test_stale_embeddings_are_refused(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    info_path = ws.embeddings_dir / TAG / "embeddings.json"
    # re-sealed, as a set written for another dataset would be: only the fingerprint gives it away
    write_record(info_path, json.loads(info_path.read_text().replace(ws.dataset_fingerprint(), "0" * 64)))
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "5")
    assert_user_error(result, "stale embeddings", "curate embed")
    assert not ws.shards_dir.exists()


def test_nan_embeddings_are_refused(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    part = ws.embeddings_dir / TAG / "part-00001.parquet"
    table = pq.read_table(part)
    values = table.column("embedding").combine_chunks().values.to_numpy().copy()
    values[70] = np.inf
    values[3] = np.nan
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), 64)
    pq.write_table(table.set_column(1, "embedding", fixed), part)
    # as if the embedder itself had written the non-finite values: the recorded hash matches the part
    info_path = part.parent / "embeddings.json"
    info = json.loads(info_path.read_text())
    info["part_hashes"][part.name] = file_sha256(part)
    write_record(info_path, info)
    bad_id = table.column("sample_id")[0].as_py()
    result = run_curate("select", "-w", str(ws.root), "--strategy", "kmeans-balanced", "--k", "5")
    assert_user_error(result, "NaN or inf", bad_id)
    assert not ws.shards_dir.exists()


def test_missing_embedding_set_names_the_command(synthetic_workspace, tmp_path):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "5")
    assert_user_error(result, "no embedding set", "curate embed")


def test_weights_not_available_offline(synthetic_workspace, tmp_path):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_workspace.root, ws.root)
    result = run_curate("embed", "-w", str(ws.root), "--model", "ViT-B-32",
                        "--pretrained", "laion2b_s34b_b79k",
                        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                             "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert_user_error(result, "ViT-B-32/laion2b_s34b_b79k", "not available offline", "--pretrained PATH")
    assert not ws.embeddings_dir.exists()


def test_unknown_pretrained_tag(synthetic_workspace, tmp_path):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    with pytest.raises(UserError, match="nosuchtag.*checkpoint path"):
        embed_workspace(ws, model="tiny-clip", pretrained="nosuchtag", num_workers=0, show_progress=False)
    assert not (ws.embeddings_dir / "tiny-clip_nosuchtag").exists()
