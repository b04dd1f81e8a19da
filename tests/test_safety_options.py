"""Inputs that used to end in a traceback or leave something behind: each is one line, exit 2, and
nothing is written."""

from __future__ import annotations

import json

import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate

from datasets_spec.errors import UserError


def test_an_image_path_with_a_nul_byte_is_refused(tmp_path):
    path = tmp_path / "nul.json"
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]
    path.write_text(json.dumps([{"id": "a", "image": "img\u0000.png", "conversations": turns}]))
    (tmp_path / "images").mkdir()
    result = run_curate("ingest", "llava", str(path), "--image-root", str(tmp_path / "images"),
                        "-w", str(tmp_path / "ws"))
    assert_user_error(result, "contains a NUL byte")
    assert not (tmp_path / "ws" / "dataset").exists()


def test_predictions_given_as_a_directory_is_named(tmp_path):
    from train.scoring import load_predictions

    with pytest.raises(UserError, match=rf"^{tmp_path}: is a directory; give the predictions file"):
        load_predictions(tmp_path)


def test_a_run_config_that_is_not_an_object_is_named(tmp_path):
    from train.evaluate import run_config

    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(UserError, match=r"config.json: expected a JSON object, found list"):
        run_config(tmp_path)


@pytest.mark.parametrize(("args", "needle"), [
    (["--device", "bogus"], "--device 'bogus': not a device"),
    (["--device", "cuda:0"], "--device cuda:0: CUDA is not available"),
    (["--num-workers", "-1"], "--num-workers -1: must be >= 0"),
])
def test_bad_embed_options_are_refused_before_any_folder(synthetic_workspace, tmp_path, args, needle):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available() and "cuda:0" in args:
        pytest.skip("this machine has CUDA")
    ws = copy_workspace(synthetic_workspace, tmp_path)
    result = run_curate("embed", "--model", "tiny-clip", "--pretrained", "none", *args, "-w", str(ws.root))
    assert_user_error(result, needle)
    leftovers = list(ws.embeddings_dir.iterdir()) if ws.embeddings_dir.exists() else []
    assert leftovers == []


def test_bad_score_device_is_blamed_on_the_device(synthetic_workspace, tmp_path):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    result = run_curate("score", "--by", "clip-sim", "--model", "tiny-clip", "--pretrained", "none",
                        "--device", "bogus", "-w", str(ws.root))
    assert_user_error(result, "--device 'bogus'")


def test_refused_synthetic_overwrite_of_a_foreign_dataset_folder_writes_nothing(tmp_path):
    ws = tmp_path / "ws"
    (ws / "dataset").mkdir(parents=True)
    (ws / "dataset" / "notes.txt").write_text("mine")
    result = run_curate("ingest", "synthetic", "--overwrite", "--n-train", "20", "-w", str(ws))
    assert_user_error(result, "is not a dataset")
    assert sorted(p.name for p in ws.iterdir()) == ["dataset"]
    assert (ws / "dataset" / "notes.txt").read_text() == "mine"
