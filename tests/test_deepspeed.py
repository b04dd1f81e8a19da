"""DeepSpeed ZeRO-2 and ZeRO-3 for real: `torchrun --nproc-per-node 2` on the CPU (gloo), tiny model.

DeepSpeed on a CPU-only machine needs DS_ACCELERATOR=cpu (its CPU accelerator, gloo collectives) and no
fused/CUDA optimiser: the Trainer's torch AdamW is used (HF sets zero_allow_untested_optimizer).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.train_helpers import logged_losses, private_workspace, run_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(synthetic_workspace, tmp_path_factory):
    return private_workspace(synthetic_workspace, tmp_path_factory.mktemp("ds") / "ws")


def _torchrun(ws, zero: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        DS_ACCELERATOR="cpu",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(29500 + os.getpid() % 1000 + (7 if zero == "zero3" else 0)),
        "-m",
        "train.cli",
        *run_args(ws, "k12"),
        "--preset",
        "tiny-cpu",
        "--stage",
        "finetune",
        # 3 steps of global batch 4 = one epoch of the 12 problems: every image sample is seen whatever
        # order the modality-grouped sampler draws, so the projector must receive a gradient.
        "--max-steps",
        "3",
        "--eval-limit",
        "0",
        "--max-length",
        "512",
        "--deepspeed",
        zero,
        "--run-name",
        zero,
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=os.getcwd())


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_training_saves_a_loadable_model(ws, zero):
    from train.model import build_llava, load_bundle

    result = _torchrun(ws, zero)
    assert result.returncode == 0, result.stderr[-3000:]
    run = ws.runs_dir / zero
    assert run.is_dir() and not (ws.runs_dir / f".{zero}.partial").exists()
    record = (run / "config.json").read_text()
    assert '"world_size": 2' in record
    losses = logged_losses(run)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    trained = load_bundle(run / "model").model
    base = build_llava("tiny-llama", "tiny-clip", seed=0).model
    before = dict(base.named_parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    # ZeRO-3 shards every tensor: a loadable result has full shapes and trained (changed) LLM weights.
    assert all(p.shape == before[n].shape for n, p in trained.named_parameters())
    assert any("language_model" in n for n in changed) and any("multi_modal_projector" in n for n in changed)
    assert not any("vision_tower" in n for n in changed)
