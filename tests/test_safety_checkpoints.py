"""Every model or checkpoint read goes through one guard: a truncated, corrupt or foreign file is one line
naming it and what to delete or rerun, never a loader's traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from datasets_spec.checkpoints import check_trainer_checkpoint, guarded_load
from datasets_spec.errors import UserError


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_header(path):
    data = bytearray(path.read_bytes())
    data[12] ^= 0xFF  # inside the JSON header that follows the 8-byte length
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from train.model import build_llava, save_bundle

    return save_bundle(build_llava("tiny-llama", "tiny-clip", seed=0), tmp_path_factory.mktemp("m") / "model")


@pytest.mark.parametrize("damage", [_truncate, _flip_header], ids=["truncated", "flipped-header"])
def test_a_damaged_saved_model_is_one_line(saved_model, tmp_path, damage):
    import shutil

    from train.model import load_bundle

    copy = tmp_path / "model"
    shutil.copytree(saved_model, copy)
    weights = copy / "model.safetensors"
    damage(weights)
    with pytest.raises(UserError, match=rf"^{weights}: model weights cannot be read .*rerun the command"):
        load_bundle(copy)


def _checkpoint(directory):
    directory.mkdir()
    save_file({"w": torch.zeros(4, 4)}, str(directory / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []}, directory / "optimizer.pt")
    torch.save({"python": 1, "cpu": torch.ones(2)}, directory / "rng_state.pth")
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": []}))
    return directory


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"])
def test_a_damaged_trainer_checkpoint_file_is_named_before_resuming(tmp_path, name):
    checkpoint = _checkpoint(tmp_path / "checkpoint-4")
    check_trainer_checkpoint(checkpoint)  # intact: passes
    _truncate(checkpoint / name)
    with pytest.raises(UserError) as caught:
        check_trainer_checkpoint(checkpoint)
    message = str(caught.value)
    assert message.startswith(str(checkpoint / name)), message
    assert f"delete {checkpoint}" in message and "\n" not in message


def test_a_pickle_in_a_checkpoint_is_refused_not_run(tmp_path):
    checkpoint = _checkpoint(tmp_path / "checkpoint-4")

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Payload()}, checkpoint / "rng_state.pth")
    with pytest.raises(UserError, match="rng_state.pth: checkpoint state cannot be read"):
        check_trainer_checkpoint(checkpoint)


def test_a_truncated_npz_names_the_file_and_the_remedy(tmp_path):
    path = tmp_path / "rank-00000-000001000.npz"
    np.savez(path, picks=np.arange(10), bound=np.float64(1.0))
    _truncate(path)
    with pytest.raises(UserError, match=r"rank-00000-000001000.npz: k-center checkpoint cannot be read "
                                        r"\(BadZipFile.*delete .* and rerun"):
        with guarded_load(path, what="k-center checkpoint", remedy=f"delete {tmp_path} and rerun"), \
                np.load(path) as z:
            z["picks"]


def test_train_loss_after_a_resume_covers_every_step():
    from train.trainer import whole_run_loss

    # Steps 1-4 logged every 2 steps (means 4.0 then 2.0), resumed from checkpoint-4, steps 5-6 lost 1.0
    # each: the Trainer's session loss is 2.0 / 6 steps. Mean over all six steps: (8 + 4 + 2) / 6.
    history = [{"loss": 4.0, "step": 2}, {"loss": 2.0, "step": 4}, {"loss": 1.0, "step": 6}]
    from pathlib import Path

    assert whole_run_loss(2.0 / 6, 6, history, Path("checkpoint-4")) == pytest.approx(14 / 6)
    assert whole_run_loss(1.5, 6, history, None) == 1.5
