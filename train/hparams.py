"""Hyper-parameter presets for the two training stages, as data.

A preset maps each stage (``pretrain`` = stage 1, projector only; ``finetune`` = stage 2, projector +
LLM) to a :class:`StageHparams`. :func:`resolve_stage` picks the stage's values and applies the user's
overrides; LoRA runs take the preset's ``lora_lr`` as their learning rate unless ``--lr`` is given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from datasets_spec.errors import UserError

STAGES = ("pretrain", "finetune")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd")


@dataclass(frozen=True)
class StageHparams:
    """Optimisation settings of one stage."""

    lr: float
    """Learning rate of the trained LLM weights (full fine-tuning) or of the projector in stage 1."""
    lora_lr: float
    """Learning rate of the LoRA adapters (stage 2 with LoRA)."""
    projector_lr: float | None
    """Learning rate of the projector in stage 2; None = the same as the LLM's."""
    epochs: float
    """Passes over the subset."""
    global_batch_size: int
    """Samples per optimiser step over all devices (per-device batch x devices x accumulation)."""
    per_device_batch_size: int
    """Samples per forward pass on one device; lowered to fit ``global_batch_size`` when larger."""
    warmup_ratio: float
    """Fraction of the steps with a linear learning-rate warm-up."""
    scheduler: str
    """Learning-rate schedule after warm-up (a transformers scheduler name)."""
    weight_decay: float
    """Decoupled weight decay (0 makes AdamW plain Adam)."""
    optimizer: str
    """transformers optimiser name."""
    lora_r: int = 128
    """LoRA rank used when LoRA is asked for without a rank."""
    lora_alpha_ratio: float = 2.0
    """LoRA alpha = ratio x rank unless given (LLaVA-1.5: r 128, alpha 256)."""


# LLaVA-1.5's scripts: pretrain lr 1e-3, batch 32 x 8 GPUs, 1 epoch, no weight decay, cosine, warmup 3%;
# finetune lr 2e-5 (LoRA 2e-4 with r 128 / alpha 256, projector 2e-5), batch 16 x 8 GPUs.
_LLAVA_PRETRAIN = StageHparams(
    lr=1e-3,
    lora_lr=1e-3,
    projector_lr=None,
    epochs=1,
    global_batch_size=256,
    per_device_batch_size=32,
    warmup_ratio=0.03,
    scheduler="cosine",
    weight_decay=0.0,
    optimizer="adamw_torch",
)
_LLAVA_FINETUNE = dataclasses.replace(
    _LLAVA_PRETRAIN, lr=2e-5, lora_lr=2e-4, projector_lr=2e-5, global_batch_size=128, per_device_batch_size=16
)
# For tests and the CPU demo: tiny random models need a high lr and many small steps to move at all.
_TINY_PRETRAIN = dataclasses.replace(
    _LLAVA_PRETRAIN,
    lr=5e-3,
    lora_lr=5e-3,
    epochs=3,
    global_batch_size=4,
    per_device_batch_size=2,
    warmup_ratio=0.0,
    scheduler="constant",
    lora_r=8,
)

HPARAM_PRESETS: dict[str, dict[str, StageHparams]] = {
    "llava-1.5": {"pretrain": _LLAVA_PRETRAIN, "finetune": _LLAVA_FINETUNE},
    # LLaVA's ScienceQA recipe: start from a pretrained projector (stage 1 as LLaVA-1.5), then 12 epochs in
    # the paper's table, 15 here; lr 2e-5, batch 32, Adam without weight decay.
    "scienceqa": {
        "pretrain": _LLAVA_PRETRAIN,
        "finetune": dataclasses.replace(
            _LLAVA_FINETUNE, epochs=15, global_batch_size=32, per_device_batch_size=4, weight_decay=0.0
        ),
    },
    "tiny-cpu": {
        "pretrain": _TINY_PRETRAIN,
        "finetune": dataclasses.replace(_TINY_PRETRAIN, lr=2e-3, projector_lr=2e-3),
    },
}

OVERRIDABLE = (
    "lr",
    "projector_lr",
    "epochs",
    "global_batch_size",
    "per_device_batch_size",
    "warmup_ratio",
    "scheduler",
    "weight_decay",
    "optimizer",
)


def hparam_preset(name: str) -> dict[str, StageHparams]:
    """The preset called ``name``; unknown names list the valid ones."""
    try:
        return HPARAM_PRESETS[name]
    except KeyError:
        raise UserError(
            f"unknown hyper-parameter preset {name!r}; choose one of: {', '.join(sorted(HPARAM_PRESETS))}"
        ) from None


def resolve_stage(name: str, stage: str, *, lora: bool, overrides: dict | None = None) -> StageHparams:
    """Stage ``stage`` of preset ``name`` with ``overrides`` (None values ignored) applied.

    With ``lora`` the preset's ``lora_lr`` becomes the learning rate unless ``lr`` is overridden, and the
    projector keeps its own rate (falling back to the LLM's when the preset has none).
    """
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    base = hparam_preset(name)[stage]
    if lora:
        base = dataclasses.replace(base, projector_lr=base.projector_lr or base.lr, lr=base.lora_lr)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(changes) - set(OVERRIDABLE))
    if unknown:
        raise UserError(f"cannot override {unknown}; overridable: {', '.join(OVERRIDABLE)}")
    resolved = dataclasses.replace(base, **changes)
    _check(resolved, f"preset {name!r} stage {stage!r}")
    return resolved


def _check(h: StageHparams, where: str) -> None:
    if h.lr <= 0 or (h.projector_lr is not None and h.projector_lr <= 0):
        raise UserError(f"{where}: learning rates must be > 0 (lr={h.lr}, projector_lr={h.projector_lr})")
    if h.epochs <= 0:
        raise UserError(f"{where}: epochs must be > 0, got {h.epochs}")
    if h.global_batch_size < 1 or h.per_device_batch_size < 1:
        raise UserError(f"{where}: batch sizes must be >= 1")
    if not 0 <= h.warmup_ratio < 1:
        raise UserError(f"{where}: warmup ratio must be in [0, 1), got {h.warmup_ratio}")
    if h.scheduler not in SCHEDULERS:
        raise UserError(f"{where}: unknown scheduler {h.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    if h.optimizer not in OPTIMIZERS:
        raise UserError(f"{where}: unknown optimizer {h.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if h.weight_decay < 0:
        raise UserError(f"{where}: weight decay must be >= 0, got {h.weight_decay}")


def batch_layout(h: StageHparams, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) giving exactly ``h.global_batch_size``.

    The per-device batch shrinks when the global batch is smaller than one pass over all devices; a
    global batch that no layout reaches exactly is an error rather than a silently different recipe.
    """
    per_device = max(1, min(h.per_device_batch_size, h.global_batch_size // max(1, world_size)))
    per_step = per_device * world_size
    if h.global_batch_size % per_step:
        raise UserError(
            f"global batch {h.global_batch_size} is not a multiple of per-device batch {per_device} x "
            f"{world_size} device(s); change --batch-size"
        )
    return per_device, h.global_batch_size // per_step
