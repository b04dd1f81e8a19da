"""The training run's configuration: one dataclass, validated on construction."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

from datasets_spec.errors import UserError
from datasets_spec.parts import read_json
from train.hparams import OVERRIDABLE, StageHparams, hparam_preset, resolve_stage
from train.rundir import projector_file
from train.templates import IMAGE_PLACEMENTS

RUN_STAGES = ("pretrain", "finetune", "both")
QLORA_RANK = 128  # LLaVA's QLoRA recipe (alpha = 2 x rank = 256 from the preset's ratio)
DEEPSPEED_DIR = Path(__file__).parent / "deepspeed_configs"
DEEPSPEED_NAMES = ("zero2", "zero3", "zero3-offload")
IMAGE_ASPECTS = ("pad", "resize", "crop")


@dataclass
class TrainConfig:
    """Everything that decides what a training run does; recorded in the run's config.json."""

    # The tiny presets by default: built from configs, they need no download and train on a CPU.
    llm: str = "tiny-llama"
    """LLM preset (tiny-llama, smollm2-135m, mistral-7b, ...), hub id, or local directory."""
    vision: str = "tiny-clip"
    """Vision tower preset (tiny-clip, clip-vit-l-336, siglip-so400m), hub id, or local directory."""
    stage: str = "finetune"
    """pretrain (stage 1: projector only), finetune (stage 2: projector + LLM), or both in sequence."""
    preset: str = "llava-1.5"
    """Hyper-parameter preset (train.hparams.HPARAM_PRESETS); the fields below override it when set."""
    lr: float | None = None
    """Learning rate override (LLM weights, LoRA adapters, or the projector in stage 1)."""
    projector_lr: float | None = None
    """Stage-2 projector learning rate override (its own optimiser parameter group)."""
    epochs: float | None = None
    """Epochs override."""
    global_batch_size: int | None = None
    """Samples per optimiser step over all devices; accumulation steps are derived from it."""
    per_device_batch_size: int | None = None
    """Samples per forward pass per device override."""
    warmup_ratio: float | None = None
    """Warm-up fraction override."""
    scheduler: str | None = None
    """Learning-rate schedule override (cosine, linear, constant, constant_with_warmup)."""
    weight_decay: float | None = None
    """Weight-decay override."""
    optimizer: str | None = None
    """Optimiser override (adamw_torch, adamw_torch_fused, sgd)."""
    lora_r: int | None = None
    """LoRA rank for stage 2; None = full fine-tuning of the LLM."""
    lora_alpha: int | None = None
    """LoRA alpha; None = the preset's ratio (2) x rank, as LLaVA-1.5 (r 128, alpha 256)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch (LLaVA-1.5's value)."""
    qlora: bool = False
    """Stage 2 on a 4-bit base: the LLM's Linear layers in NF4 with double quantization (bitsandbytes,
    CPU or GPU), LoRA on top; without --lora-r, LLaVA's QLoRA recipe r 128 / alpha 256."""
    template: str | None = None
    """Stage-2 conversation template; None = the LLM preset's (stage 1 always uses `plain`)."""
    image_placement: str = "front"
    """Where `<image>` goes in each prompt, for training and evaluation: `front` (`<image>\\n` + text, as
    LLaVA's preprocess_multimodal and its ScienceQA evaluation do) or `keep` (where the data put it)."""
    max_length: int = 2048
    """Token limit per sample (LLaVA-1.5: 2048); image tokens are never truncated."""
    max_mismatch: int = 0
    """Samples whose label masking does not line up that are tolerated (and dropped) before failing."""
    drop_overlong: bool = False
    """Drop (and count) samples longer than max_length instead of failing."""
    image_aspect: str = "pad"
    """How images become square: pad with the processor's mean colour (LLaVA), resize, or crop."""
    seed: int = 0
    """Seed of model initialisation, data order and dropout."""
    deepspeed: str | None = None
    """DeepSpeed config: zero2, zero3, zero3-offload (shipped) or a path to a JSON file."""
    bf16: str | bool = "auto"
    """bfloat16 mixed precision: auto = on where the GPU supports it, never on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    eval_split: str | None = "val"
    """Workspace split evaluated between epochs (loss + ScienceQA accuracy); None = no evaluation."""
    eval_limit: int = 64
    """Problems of eval_split used for the between-epoch loss and accuracy (0 = no evaluation)."""
    eval_max_new_tokens: int = 16
    """Generation length for the between-epoch ScienceQA accuracy (answers are one letter)."""
    resume: str | None = None
    """A partial run directory (runs/.<run>.partial) or a checkpoint inside it to continue from."""
    projector_path: str | None = None
    """Stage-1 projector.safetensors (or a run directory holding one) that stage 2 starts from."""
    run_name: str | None = None
    """Run directory name; None = <subset>-<llm>-<stage>."""
    gpus: int | None = None
    """GPU count for --dry-run estimates; None = the launcher's world size (1 without one)."""
    save_steps: int | None = None
    """Checkpoint every N optimiser steps; None = once per epoch."""
    keep_checkpoints: bool = False
    """Keep every Trainer checkpoint (adapter or weights, optimizer.pt with the Adam moments, the learning
    rates in trainer_state.json) in runs/<run>/stage<N>/checkpoints/ instead of the newest two, deleted at
    the end; a warm-up run for gradient features (curate embed --model grad:runs/<run>) needs them."""
    logging_steps: int = 1
    """Log the training loss every N optimiser steps."""
    max_steps: int | None = None
    """Stop each stage after N optimiser steps (for smoke runs); None = the epochs decide."""
    min_steps: int | None = None
    """Train each stage for at least N optimiser steps, adding epochs to small subsets, so that subsets of
    different sizes are compared at a minimum compute rather than at equal epochs (where a 100-sample subset
    gets a twelfth of the steps of a 1,200-sample pool); None = the epochs decide."""

    def __post_init__(self) -> None:
        if self.stage not in RUN_STAGES:
            raise UserError(f"unknown stage {self.stage!r}; choose one of: {', '.join(RUN_STAGES)}")
        hparam_preset(self.preset)
        if self.qlora and self.lora_r is None and self.stage != "pretrain":
            self.lora_r = QLORA_RANK
        if self.lora_r is not None:
            if self.stage == "pretrain":
                raise UserError("LoRA (--lora-r) applies to stage 2 only; stage 1 trains the projector alone")
            if self.lora_r < 1:
                raise UserError(f"--lora-r must be >= 1, got {self.lora_r}")
        if self.lora_alpha is not None and self.lora_r is None:
            raise UserError("--lora-alpha needs --lora-r (LoRA is off without a rank)")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.qlora:
            _check_qlora(self)
        if self.max_length < 8:
            raise UserError(f"--max-length must be >= 8, got {self.max_length}")
        if self.max_mismatch < 0:
            raise UserError(f"--max-mismatch must be >= 0, got {self.max_mismatch}")
        if self.image_placement not in IMAGE_PLACEMENTS:
            raise UserError(f"unknown --image-placement {self.image_placement!r}; "
                            f"choose one of: {', '.join(IMAGE_PLACEMENTS)}")
        if self.image_aspect not in IMAGE_ASPECTS:
            raise UserError(
                f"unknown --image-aspect {self.image_aspect!r}; choose one of: {', '.join(IMAGE_ASPECTS)}"
            )
        if self.deepspeed is not None:
            deepspeed_config_path(self.deepspeed)
        if self.bf16 not in ("auto", True, False):
            raise UserError(f"bf16 must be auto, true or false, got {self.bf16!r}")
        if self.eval_limit < 0:
            raise UserError(f"--eval-limit must be >= 0, got {self.eval_limit}")
        if self.projector_path is not None:
            if self.stage == "both":
                raise UserError(
                    "--projector starts stage 2 from a stage-1 projector; with --stage both stage 1 makes it"
                )
            projector_file(self.projector_path)
        if self.min_steps is not None and self.min_steps < 1:
            raise UserError(f"--min-steps must be >= 1, got {self.min_steps}")
        if self.min_steps and self.max_steps and self.min_steps > self.max_steps:
            raise UserError(f"--min-steps {self.min_steps} is larger than --max-steps {self.max_steps}")
        if self.gpus is not None and self.gpus < 1:
            raise UserError(f"--gpus must be >= 1, got {self.gpus}")
        if self.run_name is not None and (
            not self.run_name or "/" in self.run_name or self.run_name.startswith(".")
        ):
            raise UserError(f"--run-name must be a plain directory name, got {self.run_name!r}")
        for stage in self.stages():
            self.stage_hparams(stage)

    @property
    def lora(self) -> bool:
        return self.lora_r is not None

    def stages(self) -> list[str]:
        """The stages this run trains, in order."""
        return ["pretrain", "finetune"] if self.stage == "both" else [self.stage]

    def stage_hparams(self, stage: str) -> StageHparams:
        """Resolved hyper-parameters of ``stage`` (the preset with this config's overrides)."""
        overrides = {k: getattr(self, k) for k in OVERRIDABLE}
        return resolve_stage(self.preset, stage, lora=self.lora and stage == "finetune", overrides=overrides)

    def planned_steps(self, stage: str, steps_per_epoch: int) -> int:
        """Optimiser steps of ``stage``: its epochs' steps, raised to min_steps and capped by max_steps."""
        steps = math.ceil(steps_per_epoch * self.stage_hparams(stage).epochs)
        if self.min_steps:
            steps = max(steps, self.min_steps)
        if self.max_steps:
            steps = min(steps, self.max_steps)
        return steps

    def resolved_lora_alpha(self) -> int | None:
        if self.lora_r is None:
            return None
        if self.lora_alpha is not None:
            return self.lora_alpha
        return int(round(self.stage_hparams("finetune").lora_alpha_ratio * self.lora_r))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal under it in the class body), by field name."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def deepspeed_config_path(name_or_path: str) -> Path:
    """The JSON file of a shipped DeepSpeed config name, or the given path if it is a file."""
    if name_or_path in DEEPSPEED_NAMES:
        return DEEPSPEED_DIR / f"{name_or_path}.json"
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    raise UserError(
        f"--deepspeed {name_or_path!r}: neither a shipped config ({', '.join(DEEPSPEED_NAMES)}) "
        "nor a JSON file"
    )


def _check_qlora(config: TrainConfig) -> None:
    if config.stage == "pretrain":
        raise UserError("--qlora applies to stage 2; stage 1 trains the projector alone")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--qlora needs the bitsandbytes package (pip install 'bitsandbytes>=0.50.2')")
    if config.deepspeed is not None and _zero_stage(deepspeed_config_path(config.deepspeed)) >= 3:
        raise UserError("--qlora cannot shard 4-bit weights with ZeRO-3; use --deepspeed zero2")


def _zero_stage(path: Path) -> int:
    try:
        return int(read_json(Path(path)).get("zero_optimization", {}).get("stage", 0))
    except (UserError, ValueError, AttributeError, TypeError):
        raise UserError(f"--deepspeed {path}: not a readable DeepSpeed JSON config") from None
