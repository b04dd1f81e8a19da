"""The trainer of one stage: HF Trainer with freezing/LoRA, parameter groups, sampler, callbacks, saving.

Stage 1 (``pretrain``): only the projector trains; vision tower and LLM are frozen; the `plain` template
(image, then the answer) on image samples only, since text-only samples give the projector no gradient.
Stage 2 (``finetune``): projector + LLM (full) or LoRA adapters on every linear layer of the LLM (peft),
the projector in its own optimiser group with its own learning rate; the vision tower stays frozen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import pyarrow as pa
import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

from datasets_spec.checkpoints import check_trainer_checkpoint
from datasets_spec.distributed import barrier, world_size
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace
from train.callbacks import JsonlLog, OptimizerNames, ScienceQAAccuracy
from train.config import TrainConfig, deepspeed_config_path
from train.hparams import StageHparams, batch_layout
from train.rundir import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    MODEL_DIR,
    PROJECTOR_FILE,
    latest_checkpoint,
    split_rows,
)

PROJECTOR_KEY = "multi_modal_projector"
VISION_KEY = "vision_tower"
LANGUAGE_KEY = "language_model"


# --- parameters -------------------------------------------------------------------------------------


def freeze_for_stage(model: torch.nn.Module, stage: str) -> None:
    """Stage 1: projector only. Stage 2 (full): everything but the vision tower."""
    for name, param in model.named_parameters():
        if stage == "pretrain":
            param.requires_grad = PROJECTOR_KEY in name
        else:
            param.requires_grad = VISION_KEY not in name


def lora_target_regex(model: torch.nn.Module) -> str:
    """A peft target regex for every Linear layer of the language model (LLaVA's LoRA targets all of them)."""
    suffixes = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and f".{LANGUAGE_KEY}." in f".{name}"
        }
    )
    if not suffixes:
        raise UserError("the language model has no Linear layers for LoRA to adapt")
    return rf".*{LANGUAGE_KEY}\..*\.({'|'.join(suffixes)})"


def apply_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """Wrap ``model`` with LoRA on the LLM; the projector trains as a full copy saved with the adapter."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.resolved_lora_alpha(),
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(model),
        # modules_to_save puts the trained projector into the adapter checkpoint, so resuming from a
        # Trainer checkpoint restores it too.
        modules_to_save=[PROJECTOR_KEY],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = trainable = 0
    for param in model.parameters():
        n = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
        total += n
        trainable += n if param.requires_grad else 0
    return {"total": total, "trainable": trainable}


# --- trainer ----------------------------------------------------------------------------------------


# Set to 0 by callers that print their own progress (the demo, `train ablate` without --verbose): the
# trainer's per-step dictionaries then go only to the run's log file, not to the console. An environment
# variable rather than a config field, so that it reaches spawned cell workers without changing a run's key.
CONSOLE_LOGS_ENV = "LLAVA_CURATE_TRAINER_CONSOLE"


def console_logs() -> bool:
    """Whether the HF Trainer prints its log dictionaries (default yes)."""
    return os.environ.get(CONSOLE_LOGS_ENV, "1") != "0"


class LlavaTrainer(Trainer):
    """HF Trainer with a projector learning rate, a modality/length-grouped sampler, and slim stage-1
    checkpoints (only the trainable weights)."""

    def __init__(self, *args, projector_lr: float | None = None, sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr
        self.custom_sampler = sampler
        self.optimizer_param_names: list[list[str]] = []
        self.add_callback(OptimizerNames(self))

    def _get_train_sampler(self, train_dataset=None):
        if self.custom_sampler is not None:
            return self.custom_sampler
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups.setdefault((PROJECTOR_KEY in name, name in decay), []).append(param)
        param_groups = []
        names = {id(p): n for n, p in model.named_parameters()}
        for (is_projector, decays), params in sorted(groups.items()):
            self.optimizer_param_names.append([names[id(p)] for p in params])
            group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if is_projector and self.projector_lr is not None:
                group["lr"] = self.projector_lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict=None):
        # Checkpoints hold the trainable weights under their in-memory names. (LlavaForConditionalGeneration's
        # save_pretrained writes legacy key names that Trainer's resume does not map back, and the frozen
        # towers are rebuilt from the presets anyway.) peft and DeepSpeed save their own way.
        if self.is_deepspeed_enabled or hasattr(self.model, "peft_config"):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        tensors = {
            n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad
        }
        save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))


# --- one stage --------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageData:
    """A stage's tokenized samples: the training set, its counts, the held-out set for eval loss."""

    template: str
    train: object
    counts: dict
    eval_table: pa.Table | None
    eval: object | None


def train_stage(
    ws: Workspace,
    table: pa.Table,
    config: TrainConfig,
    stage: str,
    stage_dir: Path,
    run_dir: Path,
    *,
    projector_path: Path | None,
    rank: int,
) -> dict:
    """Train one stage into ``stage_dir``; return its summary. Every rank calls this."""
    from train.model import build_llava

    hp = config.stage_hparams(stage)
    world = world_size()
    per_device, accum = batch_layout(hp, world)
    rows = image_rows(table) if stage == "pretrain" else table
    if rows.num_rows == 0:  # before the model is built
        raise UserError("stage 1 trains the projector on image samples, but the subset has none")
    bundle = build_llava(config.llm, config.vision, projector_path=projector_path, seed=config.seed)
    bundle = dataclasses.replace(bundle, image_placement=config.image_placement)
    if config.qlora and stage == "finetune":
        from train.qlora import quantize_language_model

        quantize_language_model(bundle.model, compute_dtype=_compute_dtype(config))
    data = _stage_data(ws, rows, config, stage, bundle)
    bundle = dataclasses.replace(bundle, model=_stage_model(bundle.model, config, stage))
    params = count_parameters(bundle.model)
    trainer = _stage_trainer(ws, config, hp, stage, stage_dir, run_dir, bundle, data, per_device, accum,
                             world)
    checkpoint = latest_checkpoint(stage_dir / CHECKPOINTS_DIR) if config.resume else None
    if checkpoint is not None:
        check_trainer_checkpoint(checkpoint)  # a damaged file is named here, not deep inside the Trainer
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    elapsed = time.perf_counter() - started
    last_stage = stage == config.stages()[-1]
    _save_stage(trainer, bundle, config, stage, stage_dir, rank, save_model=last_stage)
    summary = {
        "stage": stage,
        "template": data.template,
        "hparams": dataclasses.asdict(hp),
        "per_device_batch_size": per_device,
        "gradient_accumulation_steps": accum,
        "world_size": world,
        "parameters": params,
        "data": dict(data.counts),
        "samples": len(data.train),
        "tokens_per_epoch": int(sum(data.train.lengths)),
        **_outcome(trainer, output, checkpoint, elapsed),
    }
    del trainer
    return summary


def _stage_data(ws: Workspace, rows: pa.Table, config: TrainConfig, stage: str, bundle) -> StageData:
    """Tokenize the stage's ``rows`` (stage 1 uses the ``plain`` template) and the held-out rows of its
    eval loss (None when there are none or none is usable)."""
    from train.data import prepare_dataset

    template = "plain" if stage == "pretrain" else (config.template or bundle.template)
    data_kwargs = dict(
        template=template,
        image_root=ws.image_root(),
        max_length=config.max_length,
        image_aspect=config.image_aspect,
    )
    train_ds, counts = prepare_dataset(
        rows, bundle, max_mismatch=config.max_mismatch, drop_overlong=config.drop_overlong, **data_kwargs
    )
    if len(train_ds) == 0:
        raise UserError(f"no training samples left after dropping overlong ones ({counts})")
    eval_table = _eval_table(ws, config, stage)
    eval_ds = None
    if eval_table is not None:
        try:
            eval_ds, _ = prepare_dataset(
                eval_table, bundle, max_mismatch=eval_table.num_rows, drop_overlong=True, **data_kwargs
            )
        except UserError:
            eval_ds = None  # every held-out sample unusable with this template/length: no eval loss
    return StageData(template, train_ds, counts, eval_table, eval_ds)


def _stage_model(model, config: TrainConfig, stage: str):
    """The model with this stage's trainable parameters: stage 1 the projector; stage 2 the projector and
    the LLM, or the projector and LoRA adapters on the frozen LLM."""
    if stage == "finetune" and config.lora:
        freeze_for_stage(model, "pretrain")
        return apply_lora(model, config)
    freeze_for_stage(model, stage)
    return model


def _stage_trainer(ws: Workspace, config: TrainConfig, hp: StageHparams, stage: str, stage_dir: Path,
                   run_dir: Path, bundle, data: StageData, per_device: int, accum: int,
                   world: int) -> LlavaTrainer:
    """The Trainer of one stage, with its sampler, JSONL log and (stage 2) held-out accuracy callback."""
    from train.data import LlavaCollator

    max_steps = _max_steps(config, stage, len(data.train), per_device * world, accum)
    args = _training_args(
        config, hp, stage_dir, per_device, accum, world, max_steps=max_steps, has_eval=data.eval is not None
    )
    trainer = LlavaTrainer(
        model=bundle.model,
        args=args,
        data_collator=LlavaCollator(bundle.tokenizer.pad_token_id),
        train_dataset=data.train,
        eval_dataset=data.eval,
        projector_lr=hp.projector_lr if stage == "finetune" else None,
        sampler=_sampler(data.train, per_device, accum, world, config.seed),
        callbacks=[JsonlLog(run_dir, stage)],
    )
    if not console_logs():
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the same entries still reach the run's JSONL log
    if data.eval is not None and stage == "finetune" and not _zero3(config):
        accuracy = ScienceQAAccuracy(bundle, data.eval_table, ws.image_root(), data.template, config)
        accuracy.trainer = trainer
        trainer.add_callback(accuracy)
    return trainer


def _outcome(trainer: LlavaTrainer, output, checkpoint: Path | None, elapsed: float) -> dict:
    """What the stage's training did: steps, epochs, losses, speed, eval entries, where it resumed."""
    history = [dict(e) for e in trainer.state.log_history]
    losses = [e["loss"] for e in history if "loss" in e]
    return {
        "steps": output.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": whole_run_loss(output.training_loss, output.global_step, history, checkpoint),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "runtime_s": round(elapsed, 3),
        "steps_per_s": round(output.global_step / elapsed, 4) if elapsed > 0 else None,
        "eval": [e for e in history if any(k.startswith("eval_") for k in e)],
        "resumed_from": str(checkpoint) if checkpoint else None,
    }


def whole_run_loss(
    session_loss: float, global_step: int, history: list[dict], checkpoint: Path | None
) -> float:
    """Mean training loss over every step of the stage, also after a resume.

    The Trainer's ``training_loss`` is the loss summed over this session's steps divided by *all* steps;
    after a resume from ``checkpoint-<s>`` the steps up to ``s`` come from the logged interval means in
    ``history`` (each ``loss`` entry is the mean since the previous one). Steps between the last log and
    the checkpoint were never logged and are left out of the mean.
    """
    if checkpoint is None:
        return session_loss
    resumed_at = int(Path(checkpoint).name.split("-")[-1])
    earlier_sum, logged_to = 0.0, 0
    for entry in history:
        if "loss" in entry and "step" in entry and logged_to < entry["step"] <= resumed_at:
            earlier_sum += entry["loss"] * (entry["step"] - logged_to)
            logged_to = entry["step"]
    steps = logged_to + (global_step - resumed_at)
    return (earlier_sum + session_loss * global_step) / steps if steps > 0 else session_loss


def image_rows(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_valid(table.column("image")))


def _eval_table(ws: Workspace, config: TrainConfig, stage: str) -> pa.Table | None:
    if not config.eval_split or config.eval_limit == 0:
        return None
    table = split_rows(ws.read_dataset(), config.eval_split)
    if stage == "pretrain":
        table = image_rows(table)
    if table.num_rows == 0:
        return None
    order = sorted(range(table.num_rows), key=table.column("sample_id").to_pylist().__getitem__)
    return table.take(order[: config.eval_limit])


def _max_steps(config: TrainConfig, stage: str, n_samples: int, per_step: int, accum: int) -> int:
    """The Trainer's max_steps: -1 lets the epochs decide; otherwise min/max_steps applied to them."""
    if not (config.min_steps or config.max_steps):
        return -1
    # As the Trainer counts: batches per device per epoch, then optimiser steps after accumulation.
    steps_per_epoch = max(1, math.ceil(n_samples / per_step) // accum)
    return config.planned_steps(stage, steps_per_epoch)


def _training_args(
    config: TrainConfig,
    hp,
    stage_dir: Path,
    per_device: int,
    accum: int,
    world: int,
    *,
    max_steps: int,
    has_eval: bool,
) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if config.bf16 == "auto" else bool(config.bf16)
    if bf16 and not cuda:
        raise UserError("bf16 training needs a GPU that supports it; this machine has none (use --bf16 auto)")
    return TrainingArguments(
        output_dir=str(stage_dir / CHECKPOINTS_DIR),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=accum,
        learning_rate=hp.lr,
        num_train_epochs=hp.epochs,
        max_steps=max_steps,
        lr_scheduler_type=hp.scheduler,
        warmup_ratio=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        optim=hp.optimizer,
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        # Two checkpoints: the newest may be half-written when a job is killed while saving. A warm-up
        # for gradient features keeps all of them (one per epoch, each weighted by its learning rate).
        save_total_limit=None if config.keep_checkpoints else 2,
        eval_strategy="epoch" if has_eval else "no",
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        deepspeed=str(deepspeed_config_path(config.deepspeed)) if config.deepspeed else None,
        ddp_backend=None if cuda or world == 1 else "gloo",
        # Without a GPU, accelerate only counts the torchrun/deepspeed processes when told it runs on CPU.
        use_cpu=not cuda,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_safetensors=True,
        # Frozen towers never get gradients; DDP must not wait for them.
        ddp_find_unused_parameters=False,
    )


def _sampler(dataset, per_device: int, accum: int, world: int, seed: int):
    from train.data import ModalityLengthGroupedSampler

    return ModalityLengthGroupedSampler(
        dataset.lengths, dataset.has_image, batch_size=per_device, world_size=world, seed=seed
    )


def _zero3(config: TrainConfig) -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(config.deepspeed) and is_deepspeed_zero3_enabled()


@contextlib.contextmanager
def gathered(model: torch.nn.Module, enabled: bool):
    """Full parameters on every rank for the block (ZeRO-3 shards them); a no-op otherwise."""
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def _save_stage(
    trainer: Trainer, bundle, config: TrainConfig, stage: str, stage_dir: Path, rank: int, *, save_model: bool
) -> None:
    """Projector (always), LoRA adapter and the merged standalone model (last stage); rank 0 writes."""
    from train.model import save_bundle, save_projector

    model = trainer.model
    with gathered(model, _zero3(config)):
        if rank == 0:
            if stage == "finetune" and config.lora:
                model.save_pretrained(str(stage_dir / ADAPTER_DIR))
                if config.qlora:
                    from train.qlora import merge_qlora

                    model = merge_qlora(model)  # onto the dequantized 4-bit weights, in float
                else:
                    model = model.merge_and_unload()
            save_projector(model, stage_dir / PROJECTOR_FILE)
            if save_model:
                save_bundle(dataclasses.replace(bundle, model=model), stage_dir / MODEL_DIR)
    barrier()


def _compute_dtype(config: TrainConfig) -> torch.dtype:
    """QLoRA's matmul dtype: bf16 where training runs in bf16, fp32 otherwise (CPU)."""
    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if config.bf16 == "auto" else bool(config.bf16)
    return torch.bfloat16 if bf16 else torch.float32
