"""LLaVA assembly on transformers' LlavaForConditionalGeneration: vision tower + projector + causal LM.

Module paths (transformers 4.57): ``model.model.vision_tower``, ``model.model.multi_modal_projector``
(linear_1, act, linear_2), ``model.model.language_model`` (the LM's base model) and ``model.lm_head``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipVisionModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from datasets_spec.checkpoints import check_safetensors, guarded_load, load_errors
from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_directory, atomic_file, read_json, write_json
from datasets_spec.schema import IMAGE_TOKEN
from train.presets import (
    LLMPreset,
    VisionPreset,
    gguf_package_dir,
    llm_preset_from_dict,
    preset_to_dict,
    resolve_llm,
    resolve_vision,
    vision_preset_from_dict,
)
from train.templates import check_tokenizer, get_template, stop_token_ids
from train.tokenizers import char_tokenizer
from train.vocabs import repair_gguf_special_tokens

BUNDLE_FILE = "llava_bundle.json"


@dataclass
class LlavaBundle:
    """Everything needed to train or run one assembled model."""

    model: LlavaForConditionalGeneration
    tokenizer: Any
    image_processor: Any
    template: str
    num_image_tokens: int
    llm_preset: LLMPreset
    vision_preset: VisionPreset
    image_placement: str = "front"
    """Where `<image>` goes in a prompt (train.templates.IMAGE_PLACEMENTS); saved with the checkpoint."""

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_index)


# ----------------------------------------------------------------------------------------------------
# language model


def _load_failure(what: str, path: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot load {what} from {path!r}: {first}")


def load_language_model(preset: LLMPreset, *, dtype: torch.dtype = torch.float32):
    """(tokenizer, causal LM) for a preset; tiny models are random (seed the global RNG first)."""
    if preset.source == "tiny":
        tokenizer = tiny_tokenizer(preset.vocab)
        config_cls = getattr(__import__("transformers", fromlist=[preset.repo_or_path]), preset.repo_or_path)
        config = config_cls(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            **preset.tiny_config)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return tokenizer, model
    if preset.source == "gguf":
        directory = Path(preset.repo_or_path)
        if not directory.is_dir():
            directory = gguf_package_dir(preset.repo_or_path)
        if not (directory / preset.gguf_file).is_file():
            raise UserError(f"GGUF file {directory / preset.gguf_file} does not exist")
        kwargs: dict[str, Any] = {"gguf_file": preset.gguf_file}
    else:
        directory, kwargs = Path(preset.repo_or_path), {}
    where = str(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        if preset.source == "gguf":
            repair_gguf_special_tokens(tokenizer, directory / preset.gguf_file)
        # GGUF weights are dequantized to float on load.
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except load_errors() as exc:
        raise _load_failure("language model", where, exc) from None
    return tokenizer, model


def tiny_tokenizer(vocab: str):
    """The tokenizer of a `tiny` preset: the character tokenizer or a real vocabulary (train.vocabs)."""
    from train.vocabs import llama2_tokenizer, mistral_tokenizer

    return {"char": char_tokenizer, "llama2": llama2_tokenizer, "mistral": mistral_tokenizer}[vocab]()


def prepare_tokenizer(tokenizer) -> int:
    """Add `<image>` (special) and a pad token if missing; return the image token id."""
    if tokenizer.pad_token is None:
        # LLaVA pads LLaMA-family models with unk; a model without unk gets a new pad token.
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]},
                                     replace_additional_special_tokens=False)
    tokenizer.padding_side = "right"
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


# ----------------------------------------------------------------------------------------------------
# vision tower


def load_vision_tower(preset: VisionPreset, *, dtype: torch.dtype = torch.float32):
    """(vision model, image processor, preset with the real image/patch size)."""
    if preset.is_tiny:
        config = CLIPVisionConfig(image_size=preset.image_size, patch_size=preset.patch_size,
                                  **preset.tiny_config)
        model = CLIPVisionModel(config).to(dtype)
        size = preset.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size},
                                       crop_size={"height": size, "width": size},
                                       image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
        return model, processor, preset
    where = preset.repo_or_config
    try:
        model_type = AutoConfig.from_pretrained(where).model_type
        cls = SiglipVisionModel if model_type.startswith("siglip") else CLIPVisionModel
        model = cls.from_pretrained(where, dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(where, use_fast=False)
    except load_errors() as exc:
        raise _load_failure("vision tower", where, exc) from None
    # A tower without a CLS token (SigLIP) must keep every token: "default" would drop a real patch.
    strategy = preset.select_strategy if has_cls_token(model.config) else "full"
    preset = dataclasses.replace(preset, image_size=model.config.image_size,
                                 patch_size=model.config.patch_size, select_strategy=strategy)
    return model, processor, preset


def has_cls_token(vision_config) -> bool:
    # CLIP prepends a class embedding; SigLIP has none.
    return vision_config.model_type.startswith("clip")


def count_image_tokens(vision_config, select_strategy: str) -> int:
    """Tokens one `<image>` expands to: the patch features the projector receives."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    tokens = patches + int(has_cls_token(vision_config))
    return tokens - 1 if select_strategy == "default" else tokens


# ----------------------------------------------------------------------------------------------------
# assembly


def new_projector(config: LlavaConfig, seed: int) -> LlavaMultiModalProjector:
    """Linear-GELU-Linear with PyTorch's default init, seeded on its own (independent of load order)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlavaMultiModalProjector(config)


def build_llava(
    llm: str | LLMPreset,
    vision: str | VisionPreset,
    *,
    projector_path: Path | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    llm_overrides: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
) -> LlavaBundle:
    """Assemble vision tower + projector (new, or loaded from ``projector_path``) + LM.

    The tokenizer gains `<image>` and a pad token; each `<image>` expands to ``num_image_tokens``.
    ``seed`` fixes the projector init (and the random weights of tiny presets).
    """
    llm_p = llm if isinstance(llm, LLMPreset) else resolve_llm(llm, **(llm_overrides or {}))
    vis_p = vision if isinstance(vision, VisionPreset) else resolve_vision(vision, **(vision_overrides or {}))
    template = get_template(llm_p.template)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer, lm = load_language_model(llm_p, dtype=dtype)
        torch.manual_seed(seed + 1)
        vision_model, image_processor, vis_p = load_vision_tower(vis_p, dtype=dtype)
    image_id = prepare_tokenizer(tokenizer)
    check_tokenizer(tokenizer, template)
    if template.name == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"language model {llm_p.name!r} has no chat template; choose a template "
                        f"(mistral_instruct, llama_2, vicuna_v1, plain)")
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        # New rows (pad, <image>) are never trained on: pad is masked, <image> is replaced by features.
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    n_tokens = count_image_tokens(vision_model.config, vis_p.select_strategy)
    config = llava_config(lm.config, vision_model.config, vis_p, image_id, n_tokens, tokenizer.pad_token_id)
    model = _assemble(config, lm, vision_model, new_projector(config, seed), dtype)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, template)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    bundle = LlavaBundle(model, tokenizer, image_processor, template.name, n_tokens, llm_p, vis_p)
    if projector_path is not None:
        load_projector(model, projector_path)
    return bundle


def llava_config(text_config, vision_config, vis_p: VisionPreset, image_id: int, n_tokens: int,
                 pad_id: int | None) -> LlavaConfig:
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=vis_p.select_strategy,
        vision_feature_layer=vis_p.feature_layer,
        image_seq_length=n_tokens,
        pad_token_id=pad_id,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def _assemble(config: LlavaConfig, lm, vision_model, projector, dtype) -> LlavaForConditionalGeneration:
    # Built on the meta device, then filled with the loaded modules: no second copy of a 7B model.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision_model
    model.model.language_model = getattr(lm, lm.base_model_prefix)
    model.lm_head = lm.get_output_embeddings()
    model.model.multi_modal_projector = projector
    if config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    model.to(dtype)
    meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if meta:
        raise RuntimeError(f"parameters left unset after assembly: {meta[:5]}")
    model.config.text_config.vocab_size = model.get_input_embeddings().num_embeddings
    return model


# ----------------------------------------------------------------------------------------------------
# projector checkpoints


def projector_state_dict(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """Projector weights (linear_1.*, linear_2.*), contiguous CPU copies ready for safetensors."""
    return {k: v.detach().to("cpu").contiguous().clone()
            for k, v in _projector(model).state_dict().items()}


def save_projector(model: LlavaForConditionalGeneration, path: Path) -> None:
    """Write the projector weights to ``path`` atomically (safetensors)."""
    with atomic_file(Path(path)) as tmp:
        save_file(projector_state_dict(model), str(tmp), metadata={"format": "pt", "kind": "llava-projector"})


def load_projector(model: LlavaForConditionalGeneration, path: Path) -> None:
    """Load projector weights; shapes that do not match this model's vision/LM sizes are a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"projector file {path} does not exist")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"projector file {path} is not a readable safetensors file: {exc}") from None
    own = _projector(model).state_dict()
    if set(state) != set(own):
        raise UserError(f"projector file {path} has tensors {sorted(state)}, expected {sorted(own)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise UserError(f"projector file {path}: {key} has shape {tuple(tensor.shape)}, this model needs "
                            f"{tuple(own[key].shape)} (a projector from a different vision tower or LLM)")
    _projector(model).load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _projector(model) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.multi_modal_projector


# ----------------------------------------------------------------------------------------------------
# standalone checkpoints


def harness_template(bundle: LlavaBundle) -> str:
    """The chat template that renders the prompt this bundle trains and evaluates with (train.chat_format)."""
    from train.chat_format import harness_chat_template

    return harness_chat_template(bundle.template, bundle.tokenizer, system=bundle.llm_preset.system_prompt,
                                 image_placement=bundle.image_placement)


def make_processor(bundle: LlavaBundle, *, chat_template: str | None = None) -> LlavaProcessor:
    """A LlavaProcessor whose image-token expansion agrees with ``bundle.num_image_tokens``."""
    vision_config = bundle.model.config.vision_config
    return LlavaProcessor(
        chat_template=chat_template,
        image_processor=bundle.image_processor,
        tokenizer=bundle.tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=bundle.model.config.vision_feature_select_strategy,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=int(has_cls_token(vision_config)),
    )


def save_bundle(bundle: LlavaBundle, out_dir: Path, *, overwrite: bool = False,
                extra: dict[str, Any] | None = None) -> Path:
    """Write a standalone checkpoint: LlavaForConditionalGeneration.from_pretrained and AutoProcessor load it.

    Written to a temporary directory and renamed into place, so a failure leaves nothing half-written.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model = bundle.model.get_base_model() if hasattr(bundle.model, "get_base_model") else bundle.model
        model.save_pretrained(tmp, safe_serialization=True)
        # Harnesses (lmms-eval's llava_hf, VLMEvalKit) prompt through apply_chat_template: give both the
        # processor and the tokenizer the template that renders the trained prompt.
        chat = harness_template(bundle)
        own = getattr(bundle.tokenizer, "chat_template", None)
        bundle.tokenizer.chat_template = chat
        try:
            make_processor(bundle, chat_template=chat).save_pretrained(tmp)
            bundle.tokenizer.save_pretrained(tmp)
        finally:
            bundle.tokenizer.chat_template = own
        write_json(tmp / BUNDLE_FILE, {
            "template": bundle.template,
            "num_image_tokens": bundle.num_image_tokens,
            "image_placement": bundle.image_placement,
            "llm_preset": preset_to_dict(bundle.llm_preset),
            "vision_preset": preset_to_dict(bundle.vision_preset),
            **(extra or {}),
        })
    return out_dir


def read_bundle_info(directory: Path) -> dict[str, Any]:
    path = Path(directory) / BUNDLE_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a saved model: {BUNDLE_FILE} is missing")
    return read_json(path)


def load_bundle(directory: Path, *, dtype: torch.dtype = torch.float32) -> LlavaBundle:
    """Load a checkpoint written by :func:`save_bundle`."""
    directory = Path(directory)
    info = read_bundle_info(directory)
    remedy = "rerun the command that wrote this model (train run, or train merge)"
    for weights in sorted(directory.glob("*.safetensors")):
        check_safetensors(weights, what="model weights", remedy=remedy)
    with guarded_load(directory, what="saved model", remedy=remedy):
        model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        image_processor = AutoImageProcessor.from_pretrained(directory, use_fast=False)
    tokenizer.padding_side = "right"
    return LlavaBundle(model, tokenizer, image_processor, info["template"], int(info["num_image_tokens"]),
                       llm_preset_from_dict(info["llm_preset"]),
                       vision_preset_from_dict(info["vision_preset"]),
                       # checkpoints written before the field existed were trained with `keep`
                       image_placement=info.get("image_placement", "keep"))
