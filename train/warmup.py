"""A LoRA warm-up run as the source of gradient features: its checkpoints, their learning rates, the
model at each checkpoint, its Adam moments, and training examples built the way the run trained.

A warm-up is an ordinary stage-2 LoRA run trained with ``--keep-checkpoints`` (train/rundir.py lists what a
checkpoint holds). :mod:`curate.grad_features` reads it through :class:`WarmupRun` only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import torch

from datasets_spec.errors import UserError
from datasets_spec.parts import read_json
from datasets_spec.workspace import Workspace
from train.rundir import CHECKPOINTS_DIR, OPTIMIZER_NAMES_FILE, STAGE_DIRS, latest_checkpoint

ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
LORA_MARK = ".lora_"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One saved state of the warm-up."""

    path: Path
    """``runs/<run>/stage2/checkpoints/checkpoint-<step>``."""
    step: int
    """Optimiser steps done when it was saved."""
    mean_lr: float
    """Mean logged learning rate over the steps since the previous checkpoint (LESS weights by it)."""


def run_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The run's kept stage-2 checkpoints in step order, each with its mean learning rate."""
    folder = run_dir / STAGE_DIRS["finetune"] / CHECKPOINTS_DIR
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    if not found:
        raise UserError(f"{run_dir}: no kept checkpoints under {folder.relative_to(run_dir)}; train the "
                        f"warm-up with `train run --lora-r R --keep-checkpoints`")
    state_path = latest_checkpoint(folder) / TRAINER_STATE
    try:
        history = json.loads(state_path.read_text()).get("log_history", [])
    except (OSError, ValueError):
        raise UserError(f"{state_path}: missing or not JSON; the checkpoint is incomplete") from None
    rates = {int(e["step"]): float(e["learning_rate"]) for e in history if "learning_rate" in e}
    out, previous = [], 0
    for path in found:
        step = int(path.name.split("-")[-1])
        window = [lr for s, lr in rates.items() if previous < s <= step]
        if not window:
            raise UserError(f"{state_path}: no learning rate logged for steps {previous + 1}..{step}")
        out.append(Checkpoint(path, step, sum(window) / len(window)))
        previous = step
    return out


class WarmupRun:
    """The warm-up's LoRA model, rebuilt as training built it, with weights loaded per checkpoint."""

    def __init__(self, ws: Workspace, run_dir: Path) -> None:
        from train.evaluate import check_run_dataset, run_config

        self.run_dir = Path(run_dir)
        record = run_config(self.run_dir)
        if not record:
            raise UserError(f"{self.run_dir}: not a finished training run (no config.json)")
        check_run_dataset(ws, self.run_dir)
        self.config = _config(self.run_dir, record.get("config", {}))
        self.checkpoints = run_checkpoints(self.run_dir)
        self.ws = ws
        self.bundle, self.model = self._build()
        self.names = [n for n, p in self.model.named_parameters() if LORA_MARK in n]
        for name, param in self.model.named_parameters():
            param.requires_grad = name in set(self.names)  # the projector copy: no gradient needed
        self.model.eval()  # no LoRA dropout: a sample's feature must not depend on a random mask

    def _build(self):
        from train.model import build_llava
        from train.trainer import apply_lora, freeze_for_stage

        c = self.config
        bundle = build_llava(c.llm, c.vision, seed=c.seed)
        bundle = dataclasses.replace(bundle, image_placement=c.image_placement)
        freeze_for_stage(bundle.model, "pretrain")
        model = apply_lora(bundle.model, c)
        return dataclasses.replace(bundle, model=model), model

    @property
    def grad_dim(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if n in set(self.names))

    def load(self, checkpoint: Checkpoint) -> None:
        """Put the checkpoint's adapter (and projector copy) weights into the model."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = checkpoint.path / ADAPTER_WEIGHTS
        if not path.is_file():
            raise UserError(f"{checkpoint.path}: no {ADAPTER_WEIGHTS}; not a LoRA checkpoint")
        result = set_peft_model_state_dict(self.model, load_file(str(path)))
        missing = [k for k in getattr(result, "unexpected_keys", []) if LORA_MARK in k]
        if missing:
            raise UserError(f"{path}: weights {missing[0]!r} do not fit the run's LoRA model")

    def adam_moments(self, checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
        """``(exp_avg, exp_avg_sq)`` of the LoRA parameters, flattened in :attr:`names` order."""
        state_path, names_path = checkpoint.path / OPTIMIZER_FILE, checkpoint.path / OPTIMIZER_NAMES_FILE
        for path in (state_path, names_path):
            if not path.is_file():
                raise UserError(f"{checkpoint.path}: no {path.name}; Adam features need the warm-up's "
                                f"optimiser state (use --grad sgd, or retrain with --keep-checkpoints)")
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        groups = read_json(names_path)["groups"]
        index = {}
        for group, names in zip(saved["param_groups"], groups, strict=True):
            index.update(zip(names, group["params"], strict=True))
        try:
            entries = [saved["state"][index[n]] for n in self.names]
            m = torch.cat([e["exp_avg"].reshape(-1).float() for e in entries])
            v = torch.cat([e["exp_avg_sq"].reshape(-1).float() for e in entries])
        except KeyError:
            raise UserError(f"{state_path}: holds no Adam moments for every LoRA parameter") from None
        return m, v

    def examples(self, table: pa.Table):
        """Training examples of ``table``'s rows (template, image tokens, labels as the run trained)."""
        from train.data import prepare_dataset

        c = self.config
        dataset, _ = prepare_dataset(
            table, self.bundle, template=c.template or self.bundle.template, image_root=self.ws.image_root(),
            max_length=c.max_length, image_aspect=c.image_aspect,
        )
        return dataset

    def collate(self, items: list[dict]) -> dict:
        from train.data import LlavaCollator

        return LlavaCollator(self.bundle.tokenizer.pad_token_id)(items)


def _config(run_dir: Path, payload: dict):
    from train.config import TrainConfig

    if payload.get("lora_r") is None or payload.get("stage") == "pretrain":
        raise UserError(f"{run_dir}: not a LoRA stage-2 run; gradient features need LoRA adapters "
                        f"(train run --lora-r R --keep-checkpoints)")
    if payload.get("qlora"):
        raise UserError(f"{run_dir}: a QLoRA run; gradient features need a LoRA run on a float base")
    # The projector comes from the checkpoint's copy, and nothing is resumed: neither path must exist now.
    return TrainConfig.from_dict(dict(payload, projector_path=None, resume=None, stage="finetune"))
