"""open_clip models for `curate embed`: the bundled configs, the device, and loading weights offline."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from datasets_spec.errors import UserError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
# The default open_clip weights of `curate embed` and `curate score --by clip-sim`: ViT-B-32 trained on
# LAION-2B is the usual CLIP baseline of data-selection papers, and small enough to embed 665k samples.
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"


def register_model_configs() -> None:
    """Make the bundled configs (``tiny-clip``) known to open_clip; idempotent."""
    import open_clip

    if "tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def check_device(device: str) -> None:
    """Refuse a ``--device`` torch does not know, or CUDA where there is none (one line naming the option,
    before any model is loaded or any folder is made)."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu or auto")


def check_embed_options(*, device: str, num_workers: int) -> None:
    """The options of `curate embed` that can be judged before any folder is made."""
    if num_workers < 0:
        raise UserError(f"--num-workers {num_workers}: must be >= 0 (0 decodes images in the main process)")
    check_device(device)


def load_model(model: str, pretrained: str | None, *, device: str = "cpu", seed: int = 0):
    """Return ``(model, preprocess, tokenizer)``; weights problems become one-line UserErrors."""
    import open_clip
    import torch

    register_model_configs()
    if model not in open_clip.list_models():
        raise UserError(f"unknown open_clip model {model!r} (e.g. ViT-B-32, ViT-L-14, tiny-clip)")
    weights = None if not pretrained or pretrained.lower() == "none" else pretrained
    if weights is not None and not os.path.isfile(weights):
        tags = open_clip.list_pretrained_tags_by_model(model)
        if weights not in tags:
            raise UserError(
                f"--pretrained {weights!r}: not a file and not a known tag for {model} "
                f"(known: {', '.join(tags) or 'none'}); pass a checkpoint path or `none`"
            )
    # Random weights must be reproducible: a resumed `--pretrained none` run has to match the first.
    torch.manual_seed(seed)
    try:
        # open_clip logs its own messages (random init, failed download) on the root logger; the
        # outcome is reported here instead, as one line.
        with _quiet_logging():
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=weights, device=device
            )
    except Exception as exc:  # open_clip raises RuntimeError/OSError/hub errors for missing weights
        if weights is not None and not os.path.isfile(weights):
            raise UserError(
                f"weights {model}/{weights} are not available offline (not in the open_clip/Hugging Face "
                f"cache); download them once, or pass a local checkpoint file with --pretrained PATH"
            ) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--pretrained {weights}: cannot load checkpoint into {model}: {first}") from None
    net.eval()
    return net, preprocess, open_clip.get_tokenizer(model)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)
