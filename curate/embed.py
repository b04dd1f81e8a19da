"""Embed every sample of the workspace dataset with open_clip: image and text in one space.

Output: ``embeddings/<tag>/`` holding Parquet parts (``sample_id`` + ``embedding``, a fixed-size list of
float32, or float16 with ``dtype="float16"``) and ``embeddings.json`` (model, pretrained, fuse rule, dim,
dtype, dataset fingerprint, rows, parts hash, ``complete: true``).

* Default tag: ``<model>_<pretrained>`` with unsafe characters replaced (``ViT-B-32_laion2b_s34b_b79k``,
  ``tiny-clip_none``; a checkpoint file contributes ``ckpt-<file stem>``).
* The default embedding set: the tag named in ``embeddings/DEFAULT`` (rewritten by every completed
  ``curate embed``); without that file, the only complete set present.
* Text of a sample: the human turns joined by a blank line, ``<image>`` removed, whitespace collapsed.
  CLIP's text encoder holds 77 tokens (75 after the start/end tokens); longer text is truncated at the
  end, which in ScienceQA-style prompts keeps the question and the start of the context.
* Resume and ``torchrun`` sharding: parts of ``rows_per_part`` rows, as for every embedder
  (curate/embed_parts.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pyarrow as pa

from curate.clip_model import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, load_model, resolve_device
from curate.embed_parts import (  # noqa: F401  (re-exported: score_models and the benches use them)
    DTYPES,
    EMBEDDING_ROWS_PER_PART,
    PROGRESS_NAME,
    EmbedJob,
    _progress,
    embedding_process,
    finished_set,
    run_parts,
)
from datasets_spec.errors import UserError
from datasets_spec.schema import IMAGE_TOKEN, check_image_path
from datasets_spec.workspace import Workspace

FUSE_RULES = {
    "mean": "mean of the L2-normalised image and text vectors, renormalised; text-only samples: text vector",
    "image": "L2-normalised image vector; text-only samples: text vector",
    "text": "L2-normalised text vector",
    "concat": "[image, text] of L2-normalised vectors, renormalised (2x dim); text-only: [text, text]",
}
# 64 images of 224 px decode and encode in well under a second on a GPU, and stay small in CPU memory.
CLIP_BATCH_SIZE = 64
TEXT_RULE = "human turns joined by a blank line, <image> removed, truncated to the model's context length"


def default_tag(model: str, pretrained: str | None) -> str:
    label = _pretrained_label(pretrained)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}_{label}")


def _pretrained_label(pretrained: str | None) -> str:
    if not pretrained or pretrained.lower() == "none":
        return "none"
    if os.path.sep in pretrained or os.path.isfile(pretrained):
        return f"ckpt-{Path(pretrained).stem}"
    return pretrained


def sample_text(conversations: list[dict]) -> str:
    """What the human turns say, without ``<image>``, whitespace collapsed."""
    human = [t["value"].replace(IMAGE_TOKEN, " ") for t in conversations if t["from"] == "human"]
    return "\n\n".join(" ".join(v.split()) for v in human).strip()


# --- data ------------------------------------------------------------------------------------------


class _Samples:
    """Map-style dataset: index -> (index, image tensor or zeros, has_image, tokens)."""

    def __init__(self, texts, images, preprocess, tokenizer, image_size: int) -> None:
        self.texts, self.images = texts, images
        self.preprocess, self.tokenizer, self.image_size = preprocess, tokenizer, image_size

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        tokens = self.tokenizer([self.texts[i]])[0]
        path = self.images[i]
        if path is None:
            return i, torch.zeros(3, self.image_size, self.image_size), False, tokens
        with Image.open(path) as img:
            pixels = self.preprocess(img.convert("RGB"))
        return i, pixels, True, tokens


def _image_paths(ws: Workspace, table: pa.Table) -> list[Path | None]:
    root = ws.image_root()
    out: list[Path | None] = []
    ids, paths = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
    for sid, image in zip(ids, paths, strict=True):
        if image is None:
            out.append(None)
            continue
        where = f"sample {sid!r}"
        if root is None:
            raise UserError(f"{ws.dataset_dir}: {where} has an image but the dataset has no image root")
        check_image_path(image, where=where)
        path = (root / image).resolve()
        if not path.is_relative_to(root.resolve()):
            raise UserError(f"{where}: image path {image!r} escapes the image root {root}")
        if not path.is_file():
            raise UserError(f"{where}: image file {path} is missing")
        out.append(path)
    return out


def _image_size(preprocess) -> int:
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else size[0])
    return 224


# --- embedding -------------------------------------------------------------------------------------


def _fuse(img, txt, has_image, rule: str):
    import torch
    import torch.nn.functional as F

    txt = F.normalize(txt.float(), dim=-1)
    full = txt.clone()
    if img is not None:
        img = F.normalize(img.float(), dim=-1)
        if rule == "mean":
            full[has_image] = F.normalize(img + txt[has_image], dim=-1)
        elif rule == "image":
            full[has_image] = img
    if rule == "concat":
        other = txt.clone()
        if img is not None:
            other[has_image] = img
        full = F.normalize(torch.cat([other, txt], dim=-1), dim=-1)
    return full


def _clip_vectors(net, samples: _Samples, fuse: str, device: str, num_workers: int):
    """The encoder of :func:`curate.embed_parts.run_parts`: batches of rows -> fused open_clip vectors."""
    import torch

    def encode(batches: list[list[int]]):
        loader = torch.utils.data.DataLoader(
            samples, batch_sampler=batches, num_workers=num_workers if batches else 0,
            pin_memory=device == "cuda", persistent_workers=False,
        )
        cuda = device == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for idx, pixels, has_image, tokens in loader:
                has_image = has_image.bool()
                img = net.encode_image(pixels[has_image].to(device)) if has_image.any() else None
                txt = net.encode_text(tokens.to(device))
                yield idx.tolist(), _fuse(img, txt, has_image.to(device), fuse).cpu().numpy()

    return encode


def embed_workspace(
    ws: Workspace,
    *,
    model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    fuse: str = "mean",
    batch_size: int = CLIP_BATCH_SIZE,
    device: str = "auto",
    num_workers: int = 2,
    tag: str | None = None,
    overwrite: bool = False,
    rows_per_part: int = EMBEDDING_ROWS_PER_PART,
    seed: int = 0,
    max_parts: int | None = None,
    show_progress: bool = True,
    stats: dict | None = None,
    threads: int | None = None,
    dtype: str = "float32",
) -> Path:
    """Embed every dataset sample; return ``embeddings/<tag>/``.

    (``llava:<run>`` / ``lm:<dir>`` models: :func:`curate.embed_reference.embed_any`.)
    ``max_parts`` stops after that many new parts (the run resumes later; returns the partial directory).
    ``stats`` (optional dict) receives timings: ``seconds_model_load``, ``seconds_loop``, ``rows``.
    ``threads``: torch intra-op threads on CPU (None: torch's default). One thread is much faster for
    tiny models on a busy machine, where multi-threaded kernels wait on descheduled threads.
    ``dtype``: storage of the vectors, float32 or float16 (rounded once, when written).
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if fuse not in FUSE_RULES:
        raise UserError(f"unknown --fuse {fuse!r}; valid: {', '.join(FUSE_RULES)}")
    params = {
        "model": model,
        "pretrained": clip_weights_label(pretrained),
        "fuse": fuse,
        "dataset_fingerprint": ws.dataset_fingerprint(),
        "rows_per_part": rows_per_part,
        "seed": seed,
        "dtype": dtype,
    }
    job = EmbedJob(ws, tag or default_tag(model, pretrained), params, rule=FUSE_RULES[fuse],
                   text_rule=TEXT_RULE, batch_size=batch_size, device=device, num_workers=num_workers,
                   max_parts=max_parts, show_progress=show_progress, stats=stats)
    if finished_set(job, overwrite):
        return job.final
    with embedding_process(threads) as (rank, world):
        return _embed(job, rank, world)


def rank_device(device: str, world: int) -> str:
    """``auto``: this rank's GPU under torchrun (LOCAL_RANK), the GPU, or the CPU."""
    import torch

    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if world > 1 else "cuda"


def clip_weights_label(pretrained: str | None) -> str:
    """How ``embeddings.json`` names open_clip weights: a resolved checkpoint path, a tag, or ``none``."""
    if pretrained and os.path.isfile(pretrained):
        return str(Path(pretrained).resolve())
    return pretrained or "none"


def _embed(job: EmbedJob, rank: int, world: int) -> Path:
    # Model and image paths are checked before anything is written, so a bad --pretrained or a missing
    # image leaves no trace under embeddings/.
    table = job.ws.read_dataset(columns=["sample_id", "image", "conversations"])
    images = _image_paths(job.ws, table)
    dev = resolve_device(job.device)
    t0 = time.perf_counter()
    net, preprocess, tokenizer = load_model(
        job.params["model"], job.params["pretrained"], device=dev, seed=job.params["seed"]
    )
    if job.stats is not None:
        job.stats["seconds_model_load"] = time.perf_counter() - t0
    texts = [sample_text(c) for c in table.column("conversations").to_pylist()]
    samples = _Samples(texts, images, preprocess, tokenizer, _image_size(preprocess))
    encode = _clip_vectors(net, samples, job.params["fuse"], dev, job.num_workers)
    return run_parts(job, table.column("sample_id").to_pylist(), encode, rank=rank, world=world)
