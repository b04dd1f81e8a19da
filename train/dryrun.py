"""`train run --dry-run`: parameters, steps, tokens and a memory estimate per GPU, without training.

Parameter counts are exact: the model is built on PyTorch's meta device (no memory, no weights) from its
configuration -- the preset's published architecture for the hub presets (so the estimate works offline),
the local config for a directory, the real build for the tiny presets. LoRA adds r x (in + out) per
adapted Linear layer of the LLM.

Memory per GPU, bf16 mixed precision with Adam (the ZeRO paper's accounting), for P parameters of
which T train, N GPUs:

    weights      2 P            (--qlora: 0.516 bytes for each of the Q weights of the LLM's Linear
                                 layers, NF4 + double-quantized constants: 2 (P - Q) + 0.516 Q;
                                 ZeRO-3: 2 P / N; zero3-offload: parameters live in CPU RAM, only
                                 the layers being computed, ~2 x the largest layer, are on the GPU)
    gradients    2 T            (ZeRO-2/3: 2 T / N)
    optimiser   12 T            fp32 master weights + Adam m + v (ZeRO-2/3: 12 T / N; offload: 0 on GPU)
    activations  b s h (34 L)   without gradient checkpointing (Korthikanti et al. 2022, per layer
                                34 b s h bytes in bf16 with a fused attention kernel: no s^2 term);
                 b s h (2 L + 34) with checkpointing (each layer's bf16 input kept, one layer recomputed)
    logits       6 b s V        bf16 logits + their fp32 copy in the loss
    overhead     +10% of the above + 1 GiB (CUDA context, allocator fragmentation)

b = per-device micro-batch, s = the longest sample of the subset (text estimate + image tokens, capped
at --max-length), h = LLM hidden size, L = layers, V = vocabulary. The frozen vision tower runs without
autograd, so its activations are transient and left out. Stage 1 trains only the projector, so there
the optimiser and gradient terms are small and the weights dominate.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.compute as pc
import torch

from datasets_spec.distributed import world_size
from datasets_spec.errors import UserError
from datasets_spec.parts import read_json
from datasets_spec.workspace import Workspace
from train.config import TrainConfig, deepspeed_config_path
from train.hparams import batch_layout
from train.qlora import QLORA_BYTES_PER_PARAM, language_model_linears

GIB = 1024**3

# Published configurations of the hub presets (config.json of each repository), so that a dry run
# needs neither the weights nor the network. One row per model, the columns named by the fields tuple.
_LLM_FIELDS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "tie_word_embeddings",
)
_LLM_ROWS = {
    "mistral-7b": ("mistral", 4096, 14336, 32, 32, 8, 32000, False),
    "llama2-7b": ("llama", 4096, 11008, 32, 32, 32, 32000, False),
    "phi-2": ("phi", 2560, 10240, 32, 32, 32, 51200, False),
    "smollm2-135m": ("llama", 576, 1536, 30, 9, 3, 49152, True),
}
# Vicuna v1.5 is LLaMA-2-7B fine-tuned: the same shapes.
_LLM_ROWS["vicuna-7b"] = _LLM_ROWS["llama2-7b"]
_VISION_FIELDS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "image_size", "patch_size",
)
_VISION_ROWS = {
    "clip-vit-l-336": ("clip_vision_model", 1024, 4096, 24, 16, 336, 14),
    "siglip-so400m": ("siglip_vision_model", 1152, 4304, 27, 16, 384, 14),
}
HUB_ARCHITECTURES: dict[str, dict] = {
    name: dict(zip(_LLM_FIELDS, row, strict=True)) for name, row in _LLM_ROWS.items()
}
VISION_ARCHITECTURES: dict[str, dict] = {
    name: dict(zip(_VISION_FIELDS, row, strict=True)) for name, row in _VISION_ROWS.items()
}


def dry_run(config: TrainConfig, subset: Path, ws: Workspace) -> dict:
    """What ``config`` would do on ``subset``: per stage parameters, steps, tokens and memory per GPU.

    The subset is loaded as a real run loads it (curate.shards.load_subset: manifest, part hashes, rows,
    the workspace dataset's fingerprint), so a dry run refuses what the run would refuse.
    """
    from curate.shards import load_subset

    subset = Path(subset)
    table, _ = load_subset(ws, subset)
    model, n_image_tokens, text = _meta_model(config)
    gpus = config.gpus or world_size()
    zero = _zero_stage(config)
    offload = _offload(config)
    report = {
        "subset": str(subset),
        "samples": table.num_rows,
        "llm": config.llm,
        "vision": config.vision,
        "gpus": gpus,
        "deepspeed": config.deepspeed,
        "zero_stage": zero,
        "offload": offload,
        "image_tokens": n_image_tokens,
        "stages": {},
    }
    for stage in config.stages():
        report["stages"][stage] = _stage_estimate(
            config, stage, table, model, text, n_image_tokens, gpus, zero, offload
        )
    return report


def _stage_estimate(config, stage, table, model, text, n_image_tokens, gpus, zero, offload) -> dict:
    hp = config.stage_hparams(stage)
    per_device, accum = batch_layout(hp, gpus)
    rows = table.filter(pc.is_valid(table.column("image"))) if stage == "pretrain" else table
    lengths = _lengths(rows, n_image_tokens)
    total, trainable = _parameter_counts(model, config, stage)
    quantized = _quantized_parameters(model) if config.qlora and stage == "finetune" else 0
    steps_per_epoch = math.ceil(len(lengths) / hp.global_batch_size) if lengths else 0
    steps = config.planned_steps(stage, steps_per_epoch)
    seq = min(config.max_length, max(lengths, default=0))
    memory = memory_per_gpu(
        total,
        trainable,
        gpus=gpus,
        zero=zero,
        offload=offload,
        micro_batch=per_device,
        seq=seq,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        checkpointing=config.gradient_checkpointing,
        largest_layer=_largest_layer(model),
        quantized=quantized,
    )
    return {
        "parameters": total,
        "trainable": trainable,
        "quantized_4bit": quantized,
        "lr": hp.lr,
        "projector_lr": hp.projector_lr,
        "epochs": hp.epochs,
        "global_batch_size": hp.global_batch_size,
        "per_device_batch_size": per_device,
        "gradient_accumulation_steps": accum,
        "samples": len(lengths),
        "steps": steps,
        "tokens": int(sum(lengths) * hp.epochs),
        "longest_sample_tokens": seq,
        "memory_per_gpu_gib": {k: round(v / GIB, 2) for k, v in memory.items()},
    }


def _lengths(rows, n_image_tokens: int) -> list[int]:
    n = rows.column("n_tokens_est").to_pylist()
    img = pc.is_valid(rows.column("image")).to_pylist()
    return [int(a) + (n_image_tokens if b else 0) for a, b in zip(n, img, strict=True)]


def memory_per_gpu(
    total: int,
    trainable: int,
    *,
    gpus: int,
    zero: int,
    offload: bool,
    micro_batch: int,
    seq: int,
    hidden: int,
    layers: int,
    vocab: int,
    checkpointing: bool,
    largest_layer: int,
    quantized: int = 0,
) -> dict[str, float]:
    """Bytes per GPU by term (see the module docstring for the formula)."""
    weights = (2 * (total - quantized) + QLORA_BYTES_PER_PARAM * quantized) / (gpus if zero >= 3 else 1)
    if offload and zero >= 3:
        weights = 2 * 2 * largest_layer
    grads = 2 * trainable / (gpus if zero >= 2 else 1)
    optimizer = 0.0 if offload else 12 * trainable / (gpus if zero >= 1 else 1)
    per_token = hidden * ((2 * layers + 34) if checkpointing else 34 * layers)
    activations = micro_batch * seq * per_token
    logits = 6 * micro_batch * seq * vocab
    subtotal = weights + grads + optimizer + activations + logits
    overhead = 0.1 * subtotal + GIB
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": activations,
        "logits": logits,
        "overhead": overhead,
        "total": subtotal + overhead,
    }


def _parameter_counts(model: torch.nn.Module, config: TrainConfig, stage: str) -> tuple[int, int]:
    total = projector = llm = 0
    lora = 0
    for name, param in model.named_parameters():
        n = param.numel()
        total += n
        if "multi_modal_projector" in name:
            projector += n
        elif "vision_tower" not in name:
            llm += n
    if stage == "finetune" and config.lora:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".language_model." in f".{name}":
                lora += config.lora_r * (module.in_features + module.out_features)
        return total + lora, lora + projector
    if stage == "pretrain":
        return total, projector
    return total, llm + projector


def _quantized_parameters(model: torch.nn.Module) -> int:
    """Parameters --qlora stores in 4 bit: the weights of the LLM's Linear layers."""
    return sum(m.weight.numel() for _, m in language_model_linears(model))


def _largest_layer(model: torch.nn.Module) -> int:
    sizes = [
        sum(p.numel() for p in m.parameters())
        for m in model.modules()
        if m.__class__.__name__.endswith(("DecoderLayer", "EncoderLayer"))
    ]
    return max(sizes, default=0)


def _meta_model(config: TrainConfig):
    """(model on the meta device, image tokens, text config) for the config's LLM and vision tower."""
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    from train.presets import LLM_PRESETS, VISION_PRESETS

    llm = LLM_PRESETS.get(config.llm)
    vision = VISION_PRESETS.get(config.vision)
    if (llm is not None and llm.source == "tiny") or (vision is not None and vision.is_tiny):
        return _built_model(config)
    text = _config_for(config.llm, HUB_ARCHITECTURES, AutoConfig, "language model")
    vis = _config_for(config.vision, VISION_ARCHITECTURES, AutoConfig, "vision tower")
    strategy = vision.select_strategy if vision else ("full" if "siglip" in vis.model_type else "default")
    n_tokens = (vis.image_size // vis.patch_size) ** 2
    llava = LlavaConfig(
        vision_config=vis.to_dict(),
        text_config=text.to_dict(),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava)
    return model, n_tokens, text


def _config_for(name: str, table: dict, auto_config, what: str):
    from transformers import CONFIG_MAPPING

    if name in table:
        spec = dict(table[name])
        return CONFIG_MAPPING[spec.pop("model_type")](**spec)
    path = Path(name).expanduser()
    if path.is_dir():
        return auto_config.from_pretrained(path)
    try:
        return auto_config.from_pretrained(name)
    except OSError:
        raise UserError(
            f"{what} {name!r}: no configuration available offline; pass a local model directory"
        ) from None


def _built_model(config: TrainConfig):
    from train.model import build_llava

    bundle = build_llava(config.llm, config.vision, seed=config.seed)
    return bundle.model, bundle.num_image_tokens, bundle.model.config.text_config


def _zero_stage(config: TrainConfig) -> int:
    if not config.deepspeed:
        return 0
    return int(
        read_json(deepspeed_config_path(config.deepspeed))
        .get("zero_optimization", {})
        .get("stage", 0)
    )


def _offload(config: TrainConfig) -> bool:
    if not config.deepspeed:
        return False
    zero = read_json(deepspeed_config_path(config.deepspeed)).get("zero_optimization", {})
    return any(zero.get(k, {}).get("device") == "cpu" for k in ("offload_optimizer", "offload_param"))


def format_dry_run(report: dict) -> str:
    """Human-readable lines for the CLI."""
    lines = [
        f"subset {report['subset']}: {report['samples']} samples; {report['llm']} + {report['vision']} "
        f"({report['image_tokens']} image tokens); {report['gpus']} GPU(s), "
        f"DeepSpeed {report['deepspeed'] or 'off'} (ZeRO-{report['zero_stage']}"
        f"{', offload' if report['offload'] else ''})",
    ]
    for stage, s in report["stages"].items():
        mem = s["memory_per_gpu_gib"]
        lines += [
            f"[{stage}] trainable {s['trainable']:,} of {s['parameters']:,} parameters "
            f"({100 * s['trainable'] / max(1, s['parameters']):.2f}%)",
            f"[{stage}] {s['samples']} samples x {s['epochs']} epoch(s), "
            f"global batch {s['global_batch_size']} "
            f"= {s['per_device_batch_size']} per device x {s['gradient_accumulation_steps']} accumulation: "
            f"{s['steps']} steps, ~{s['tokens']:,} tokens, lr {s['lr']:g}",
            *([f"[{stage}] 4-bit NF4 base (QLoRA): {s['quantized_4bit']:,} weights"]
              if s.get("quantized_4bit") else []),
            f"[{stage}] memory per GPU ~{mem['total']:.1f} GiB (weights {mem['weights']:.1f}, gradients "
            f"{mem['gradients']:.1f}, optimizer {mem['optimizer']:.1f}, "
            f"activations {mem['activations']:.1f}, "
            f"logits {mem['logits']:.1f}, overhead {mem['overhead']:.1f})",
        ]
    return "\n".join(lines)
