"""Model assembly: presets, tiny LLaVA forward/backward, projector and standalone checkpoints, SmolLM2."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, LlavaForConditionalGeneration

from datasets_spec.errors import UserError
from train.images import preprocess_image
from train.model import (
    build_llava,
    load_bundle,
    load_projector,
    projector_state_dict,
    save_bundle,
    save_projector,
)
from train.presets import LLM_PRESETS, VISION_PRESETS, resolve_llm, resolve_vision
from train.templates import IGNORE_INDEX, tokenize_conversation
from train.tokenizers import char_tokenizer

CONV = [{"from": "human", "value": "What colour?\n<image>"}, {"from": "gpt", "value": "Red."}]


@pytest.fixture(scope="module")
def bundle():
    return build_llava("tiny-llama", "tiny-clip", seed=0)


def _image(size=(40, 24), colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _inputs(b, n_images: int = 1):
    sample = tokenize_conversation(CONV, b.tokenizer, b.template, num_image_tokens=b.num_image_tokens,
                                   max_length=512)
    ids = torch.tensor([sample.input_ids] * n_images)
    labels = torch.tensor([sample.labels] * n_images)
    pixels = torch.stack([preprocess_image(_image(colour=(40 * k, 90, 200)), b.image_processor)
                          for k in range(n_images)])
    return ids, labels, pixels


def test_tiny_llava_is_transformers_llava_with_expected_modules(bundle):
    m = bundle.model
    assert isinstance(m, LlavaForConditionalGeneration)
    assert bundle.num_image_tokens == 16  # 32 / 8 = 4 x 4 patches, CLS dropped
    assert m.config.image_token_index == bundle.tokenizer.convert_tokens_to_ids("<image>")
    assert m.config.vision_feature_layer == -2 and m.config.vision_feature_select_strategy == "default"
    proj = m.model.multi_modal_projector
    # vision hidden 64 -> LLM hidden 128, then 128 -> 128 (LLaVA's Linear-GELU-Linear)
    assert (proj.linear_1.in_features, proj.linear_1.out_features) == (64, 128)
    assert proj.linear_2.in_features == proj.linear_2.out_features == 128
    assert bundle.tokenizer.pad_token_id is not None


def test_forward_backward_reaches_every_part(bundle):
    ids, labels, pixels = _inputs(bundle, n_images=2)
    bundle.model.zero_grad()
    out = bundle.model(input_ids=ids, pixel_values=pixels, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    m = bundle.model
    for module in (m.model.multi_modal_projector, m.model.language_model, m.model.vision_tower):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    bundle.model.zero_grad()


def test_image_tokens_must_match_images(bundle):
    ids, _, pixels = _inputs(bundle, n_images=2)
    with pytest.raises(ValueError, match="do not match"):
        bundle.model(input_ids=ids, pixel_values=pixels[:1])


def test_same_seed_same_weights_other_seed_other_projector():
    a = build_llava("tiny-mistral", "tiny-clip", seed=3).model.state_dict()
    b = build_llava("tiny-mistral", "tiny-clip", seed=3).model.state_dict()
    c = build_llava("tiny-mistral", "tiny-clip", seed=4).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.multi_modal_projector.linear_1.weight"],
                           c["model.multi_modal_projector.linear_1.weight"])


def _logits(model, ids, pixels):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


def test_projector_round_trip_gives_same_logits(tmp_path, bundle):
    trained = build_llava("tiny-llama", "tiny-clip", seed=0)
    with torch.no_grad():
        for p in trained.model.model.multi_modal_projector.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    path = tmp_path / "projector.safetensors"
    save_projector(trained.model, path)
    assert set(projector_state_dict(trained.model)) == {"linear_1.weight", "linear_1.bias", "linear_2.weight",
                                                       "linear_2.bias"}
    fresh = build_llava("tiny-llama", "tiny-clip", seed=0)
    ids, _, pixels = _inputs(fresh)
    assert not torch.equal(_logits(fresh.model, ids, pixels), _logits(trained.model, ids, pixels))
    loaded = build_llava("tiny-llama", "tiny-clip", seed=0, projector_path=path)
    assert torch.equal(_logits(loaded.model, ids, pixels), _logits(trained.model, ids, pixels))


def test_projector_from_another_model_is_refused(tmp_path, bundle):
    path = tmp_path / "projector.safetensors"
    narrow_tower = dict(VISION_PRESETS["tiny-clip"].tiny_config, hidden_size=32, intermediate_size=64)
    other = build_llava("tiny-llama", "tiny-clip", vision_overrides={"tiny_config": narrow_tower})
    save_projector(other.model, path)  # its projector takes 32-wide vision features, not 64
    with pytest.raises(UserError, match="shape"):
        load_projector(bundle.model, path)
    with pytest.raises(UserError, match="does not exist"):
        load_projector(bundle.model, tmp_path / "missing.safetensors")


def test_saved_bundle_loads_with_transformers_alone(tmp_path, bundle):
    out = save_bundle(bundle, tmp_path / "model")
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    square = _image(size=(32, 32))
    ours = tokenize_conversation(CONV[:1] + [{"from": "gpt", "value": "x"}], bundle.tokenizer, "plain",
                                 num_image_tokens=bundle.num_image_tokens, max_length=100)
    enc = processor(images=square, text="<image>", return_tensors="pt")
    # the processor expands <image> exactly as we do and preprocesses a square image identically
    n_img = int((enc["input_ids"] == bundle.image_token_id).sum())
    assert n_img == bundle.num_image_tokens
    assert enc["input_ids"][0].tolist() == [i for i, lab in zip(ours.input_ids, ours.labels, strict=True)
                                            if lab == IGNORE_INDEX][1:]  # plain: <s> + image tokens
    pixels = preprocess_image(square, bundle.image_processor).unsqueeze(0)
    assert torch.allclose(enc["pixel_values"], pixels)
    ids, _, pixels = _inputs(bundle)
    assert torch.equal(_logits(model, ids, pixels), _logits(bundle.model, ids, pixels))
    again = load_bundle(out)
    assert again.template == bundle.template and again.num_image_tokens == bundle.num_image_tokens
    assert again.llm_preset == bundle.llm_preset and again.vision_preset == bundle.vision_preset
    assert torch.equal(_logits(again.model, ids, pixels), _logits(bundle.model, ids, pixels))


def test_save_bundle_refuses_to_overwrite(tmp_path, bundle):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError):
        save_bundle(bundle, out)
    assert (out / "keep.txt").exists()


def test_local_directory_llm(tmp_path):
    tok = char_tokenizer()
    lm = build_llava("tiny-llama", "tiny-clip").model  # reuse a tiny config through a plain causal LM
    causal = AutoModelForCausalLM.from_config(lm.config.text_config)
    causal.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    preset = resolve_llm(str(tmp_path / "lm"))
    assert preset.source == "local" and preset.template == "chat_template"
    b = build_llava(str(tmp_path / "lm"), "tiny-clip")
    ids, labels, pixels = _inputs(b)
    assert torch.isfinite(b.model(input_ids=ids, pixel_values=pixels, labels=labels).loss)


def test_preset_overrides():
    p = resolve_llm("tiny-llama", template="llama_2")
    assert p.template == "llama_2" and LLM_PRESETS["tiny-llama"].template == "vicuna_v1"
    v = resolve_vision("tiny-clip", image_size=64, patch_size=16)
    b = build_llava("tiny-llama", v)
    assert b.num_image_tokens == 16 and b.image_processor.crop_size["height"] == 64


def test_unknown_presets_list_the_valid_ones():
    with pytest.raises(UserError) as exc:
        resolve_llm("gpt-5")
    assert all(name in str(exc.value) for name in LLM_PRESETS)
    with pytest.raises(UserError) as exc:
        resolve_vision("dinov2")
    assert all(name in str(exc.value) for name in VISION_PRESETS)


def test_hub_id_missing_offline_says_how_to_pass_a_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*local directory"):
        resolve_llm("someorg/some-model-7b")
    with pytest.raises(UserError, match="--llm /path/to/Mistral-7B-Instruct-v0.2"):
        resolve_llm("mistral-7b")
    with pytest.raises(UserError, match="--vision"):
        resolve_vision("clip-vit-l-336")


def test_image_padding_uses_the_mean_colour(bundle):
    proc = bundle.image_processor
    wide = preprocess_image(_image(size=(64, 16), colour=(255, 0, 0)), proc, "pad")
    assert wide.shape == (3, 32, 32)
    # top rows are padding: (mean*255 rounded) normalised is ~0 in every channel
    assert wide[:, 0, :].abs().max() < 0.02
    assert wide[0, 16, 16] > 1.5  # the red strip in the middle
    cropped = preprocess_image(_image(size=(64, 16), colour=(255, 0, 0)), proc, "crop")
    resized = preprocess_image(_image(size=(64, 16), colour=(255, 0, 0)), proc, "resize")
    assert cropped[0].min() > 1.5 and resized[0].min() > 1.5  # no padding left
    with pytest.raises(UserError, match="pad, resize, crop"):
        preprocess_image(_image(), proc, "stretch")


@pytest.mark.slow
def test_smollm2_gguf_builds_and_chat_template_masks():
    b = build_llava("smollm2-135m", "tiny-clip", seed=0)
    assert b.template == "chat_template"
    # transformers' GGUF loader gives EOS = <|im_start|>; the file's metadata says <|im_end|> (id 2)
    assert (b.tokenizer.eos_token, b.tokenizer.eos_token_id, b.tokenizer.bos_token) == (
        "<|im_end|>", 2, "<|im_start|>")
    assert b.model.generation_config.eos_token_id == [2]
    conv = CONV + [{"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]
    sample = tokenize_conversation(conv, b.tokenizer, b.template, num_image_tokens=b.num_image_tokens,
                                   max_length=1024)
    assert not sample.mismatch
    spans, run = [], []
    for lab in sample.labels + [IGNORE_INDEX]:
        if lab == IGNORE_INDEX and run:
            spans.append(b.tokenizer.decode(run))
            run = []
        elif lab != IGNORE_INDEX:
            run.append(lab)
    assert spans == ["Red.<|im_end|>", "Yes.<|im_end|>"]
    ids = torch.tensor([sample.input_ids])
    pixels = preprocess_image(_image(), b.image_processor).unsqueeze(0)
    out = b.model(input_ids=ids, pixel_values=pixels, labels=torch.tensor([sample.labels]))
    assert torch.isfinite(out.loss) and out.loss < 20
    assert b.tokenizer.convert_tokens_to_ids("<|im_end|>") in b.model.generation_config.eos_token_id


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_local_vision_tower_directory(tmp_path, kind):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "clip":
        tower = CLIPVisionModel(CLIPVisionConfig(image_size=48, patch_size=16, **small))
        proc = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    else:
        tower = SiglipVisionModel(SiglipVisionConfig(image_size=48, patch_size=16, **small))
        proc = SiglipImageProcessor(size={"height": 48, "width": 48})
    path = tmp_path / "tower"  # a neutral name: the strategy comes from the checkpoint, not the name
    tower.save_pretrained(path)
    proc.save_pretrained(path)
    b = build_llava("tiny-llama", str(path))
    assert b.vision_preset.select_strategy == ("full" if kind == "siglip" else "default")
    assert b.num_image_tokens == 9  # 3 x 3 patches: CLIP drops its CLS token, SigLIP has none
    assert b.vision_preset.image_size == 48 and b.vision_preset.patch_size == 16
    ids, labels, pixels = _inputs(b)
    assert pixels.shape[-1] == 48
    assert torch.isfinite(b.model(input_ids=ids, pixel_values=pixels, labels=labels).loss)
