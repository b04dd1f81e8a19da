"""QLoRA: the LLM's Linear layers in 4-bit NF4 with double quantization (bitsandbytes), LoRA on top.

The recipe is QLoRA's (Dettmers et al. 2023) as LLaVA uses it (`--bits 4 --double_quant
--quant_type nf4`, LoRA r 128 / alpha 256): NF4 weights in blocks of 64, their absmax constants
quantized again to 8 bit (0.127 bits per parameter instead of 0.5), matmuls in the compute dtype
(bf16 on GPUs that have it, fp32 otherwise). bitsandbytes 0.50 has a CPU backend, so the same code
trains on a CPU.

The layers are quantized after the model is assembled rather than by ``from_pretrained``: GGUF
checkpoints (the SmolLM2 preset) cannot be combined with a quantization config in transformers, and
quantizing in place covers every source the same way. At the end of training the adapters are merged
onto the *dequantized* 4-bit weights, in float: those are the weights the trained forward pass used.
"""

from __future__ import annotations

import torch
from torch import nn

# NF4 (4 bits) + double-quantized absmax constants (8-bit per 64 weights + fp32 per 256 blocks).
QLORA_BITS_PER_PARAM = 4 + 8 / 64 + 32 / (64 * 256)
QLORA_BYTES_PER_PARAM = QLORA_BITS_PER_PARAM / 8


def language_model_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear inside the LLM's decoder (not lm_head, the vision tower or the projector)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".language_model." in f".{name}"]


def quantize_language_model(model: nn.Module, *, compute_dtype: torch.dtype = torch.float32) -> int:
    """Replace the LLM's Linear layers by NF4 double-quantized ``bnb.nn.Linear4bit``; return how many
    parameters are now stored in 4 bit."""
    import bitsandbytes as bnb

    quantized = 0
    for name, linear in language_model_linears(model):
        device = linear.weight.device
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                  device="cpu")
        layer.weight = bnb.nn.Params4bit(linear.weight.data.to("cpu", torch.float32), requires_grad=False,
                                         compress_statistics=True, quant_type="nf4")
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data.to("cpu"), requires_grad=False)
        layer = layer.to(device)  # Params4bit quantizes when it is moved to a device
        _replace(model, name, layer)
        quantized += linear.weight.numel()
    return quantized


def dequantized(layer) -> torch.Tensor:
    """The float weight a Linear4bit computes with."""
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()


def merge_qlora(peft_model) -> nn.Module:
    """The base model with every LoRA update added to its dequantized 4-bit weight, as plain float Linear
    layers (a checkpoint any loader reads); the trained projector copy is kept."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    for name, module in list(base.named_modules()):
        if not (isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), bnb.nn.Linear4bit)):
            continue
        layer = module.get_base_layer()
        weight = dequantized(layer)
        for adapter in module.active_adapters:
            weight = weight + module.get_delta_weight(adapter).float()
        _replace(base, name, _dense(weight, layer.bias))
    model = peft_model.unload()
    for name, module in list(model.named_modules()):  # layers without an adapter
        if isinstance(module, bnb.nn.Linear4bit):
            _replace(model, name, _dense(dequantized(module), module.bias))
    return model


def _dense(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    dense = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    dense.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        dense.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
    return dense


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
