"""--qlora: NF4 double-quantized LLM Linear layers (bitsandbytes' CPU backend), LoRA on top, merged onto
the dequantized weights; the dry run's 4-bit memory term against a hand computation."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train_helpers import cli, private_workspace
from train.config import TrainConfig
from train.rundir import read_log
from train.runner import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(synthetic_workspace, tmp_path_factory):
    return private_workspace(synthetic_workspace, tmp_path_factory.mktemp("qlora") / "ws")


def test_nf4_layers_store_half_a_byte_and_merge_exactly():
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    from train.model import build_llava
    from train.qlora import dequantized, merge_qlora, quantize_language_model

    bundle = build_llava("tiny-llama", "tiny-clip", seed=0)
    model = bundle.model
    linears = {n: m.weight.detach().clone() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".language_model." in f".{n}"}
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    before = model(input_ids=ids).logits
    quantized = quantize_language_model(model)
    assert quantized == sum(w.numel() for w in linears.values())
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == len(linears) == 14  # 2 layers x (q k v o gate up down)
    for layer in layers:
        assert layer.weight.dtype == torch.uint8 and layer.weight.numel() * 2 == layer.in_features * \
            layer.out_features  # two 4-bit codes per byte
        assert layer.weight.quant_state.nested  # double quantization: absmax quantized again
        assert layer.weight.quant_state.quant_type == "nf4"
    # NF4's widest gap between levels is 1 - 0.6962 (its 16 values, QLoRA paper appendix): rounding to the
    # nearest level errs by at most half that, times the block's absmax (<= the tensor's).
    for (name, weight), layer in zip(linears.items(), layers, strict=True):
        error = (dequantized(layer) - weight).abs().max()
        assert 0 < error <= 0.1519 * 1.01 * weight.abs().max(), name
    assert not torch.equal(model(input_ids=ids).logits, before)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.q_proj")
    peft_model = get_peft_model(model, lora)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # a trained-looking, non-zero update
    trained = peft_model(input_ids=ids).logits
    merged = merge_qlora(peft_model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_smollm2_qlora_trains_and_saves_a_float_checkpoint(ws):
    from transformers import LlavaForConditionalGeneration

    config = TrainConfig(llm="smollm2-135m", vision="tiny-clip", stage="finetune", preset="tiny-cpu",
                         qlora=True, lr=2e-4, global_batch_size=4, per_device_batch_size=4, max_steps=3,
                         eval_limit=0, max_length=512, run_name="smol-qlora")
    assert (config.lora_r, config.resolved_lora_alpha()) == (128, 256)  # LLaVA's QLoRA recipe
    run = run_training(ws, ws.shards_dir / "k4", config)  # one batch, the same every step
    losses = [e["loss"] for e in read_log(run) if "loss" in e]
    # measured: 2.13, 1.37, 0.42 (4-bit base, fp32 compute, CPU)
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[2] < losses[0] / 2, losses
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (128, 256)
    model = LlavaForConditionalGeneration.from_pretrained(run / "model")
    q = model.model.language_model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and q.weight.dtype == torch.float32


def test_dry_run_reports_the_4bit_weights(ws, capsys):
    def weights(*extra: str) -> float:
        code, err = cli(["run", "-w", str(ws.root), "--subset", str(ws.shards_dir / "k12"), "--llm",
                         "mistral-7b", "--vision", "clip-vit-l-336", "--dry-run", *extra])
        assert code == 0, err
        out = capsys.readouterr().out
        return float(out.split("(weights ")[1].split(",")[0]), out

    full, _ = weights("--lora-r", "128")
    four, out = weights("--qlora")
    # Mistral-7B's decoder Linear weights: 32 layers x (q, o: 4096^2; k, v: 4096 x 1024; 3 MLP 4096 x 14336)
    q = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert f"4-bit NF4 base (QLoRA): {q:,} weights" in out
    saved = (2 - (4 + 8 / 64 + 32 / 16384) / 8) * q / 1024**3
    assert abs((full - four) - saved) < 0.06  # the report rounds to 0.1 GiB


def test_qlora_refusals(ws):
    code, err = cli(["run", "-w", str(ws.root), "--subset", str(ws.shards_dir / "k12"), "--stage",
                     "pretrain", "--qlora"])
    assert code == 2
    assert err.strip() == "error: --qlora applies to stage 2; stage 1 trains the projector alone"
    code, err = cli(["run", "-w", str(ws.root), "--subset", str(ws.shards_dir / "k12"), "--qlora",
                     "--deepspeed", "zero3"])
    assert code == 2 and "ZeRO-3" in err and len(err.strip().splitlines()) == 1
