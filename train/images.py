"""Image loading and preprocessing: LLaVA's `pad` (square, processor mean colour), `resize`, `crop`."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from datasets_spec.errors import UserError
from datasets_spec.schema import check_image_path

IMAGE_ASPECTS = ("pad", "resize", "crop")


def check_aspect(image_aspect: str) -> None:
    if image_aspect not in IMAGE_ASPECTS:
        raise UserError(f"unknown image aspect {image_aspect!r} (choices: {', '.join(IMAGE_ASPECTS)})")


def resolve_image(image_root: Path, relative: str, *, where: str) -> Path:
    """The image file inside ``image_root``; refuses absolute or escaping paths and missing files."""
    check_image_path(relative, where=where)
    root = Path(image_root).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise UserError(f"{where}: image path {relative!r} escapes the image root {root}")
    if not path.is_file():
        raise UserError(f"{where}: image file {path} does not exist")
    return path


def load_image(path: Path, *, where: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: cannot read image {path}: {exc}") from None


def processor_image_size(image_processor) -> tuple[int, int]:
    """(height, width) the processor produces: crop_size for CLIP, size for SigLIP."""
    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if isinstance(size, dict) and "height" in size and "width" in size:
            if attr == "crop_size" and not getattr(image_processor, "do_center_crop", True):
                continue
            return int(size["height"]), int(size["width"])
    size = getattr(image_processor, "size", {}) or {}
    edge = int(size.get("shortest_edge", 224))
    return edge, edge


def pad_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


def center_crop_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def preprocess_image(image: Image.Image, image_processor, image_aspect: str = "pad") -> torch.Tensor:
    """pixel_values (3, H, W) for one image.

    `pad` pads to a square with the processor's mean colour before resizing (LLaVA-1.5's default, keeps
    the whole image undistorted); `crop` keeps the central square; `resize` stretches to the square.
    """
    check_aspect(image_aspect)
    image = image.convert("RGB")
    if image_aspect == "pad":
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        image = pad_to_square(image, tuple(int(round(m * 255)) for m in mean))
    elif image_aspect == "crop":
        image = center_crop_square(image)
    else:
        height, width = processor_image_size(image_processor)
        image = image.resize((width, height), Image.BICUBIC)
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]
