"""Text-model features: WordLlama or a local sentence-transformers model, optionally with open_clip images.

``curate embed --model wordllama`` embeds each sample's text (:func:`curate.embed.sample_text`: the human
turns, i.e. question, context and options of a ScienceQA prompt, ``<image>`` removed) with WordLlama's
``l2_supercat`` static token embeddings (256-d, mean over the tokens; the weights and tokenizer ship in
the ``wordllama`` wheel and are read from its folder, never downloaded). ``--model st:<dir>`` does the same
with any local sentence-transformers model directory (its own modules: transformer, pooling, normalise;
texts longer than its ``max_seq_length`` are truncated at the end).

Fusion (``--fuse``): ``text`` (the default) needs no image model. ``concat`` adds the open_clip image
vector of ``--image-model`` / ``--pretrained``: the text model and CLIP do not share a space, so a mean of
the two means nothing and ``mean`` / ``image`` are refused. The set is written like every embedding set
(curate/embed_parts.py: resumable parts, ``torchrun`` ranks); ``embeddings.json`` records the model, its
weights file and that file's sha256, so a changed model directory is never mistaken for the same set.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.clip_model import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    _quiet_logging,
    load_model,
    resolve_device,
)
from curate.embed import _image_paths, _image_size, clip_weights_label, default_tag, sample_text
from curate.embed_parts import EMBEDDING_ROWS_PER_PART, EmbedJob, embedding_process, finished_set, run_parts
from datasets_spec.errors import UserError
from datasets_spec.parts import file_sha256
from datasets_spec.workspace import Workspace

WORDLLAMA = "wordllama"
ST_PREFIX = "st:"
# The one WordLlama model the wheel ships (l2_supercat at 256 dimensions).
WORDLLAMA_CONFIG, WORDLLAMA_DIM = "l2_supercat", 256
WORDLLAMA_FILES = (f"weights/{WORDLLAMA_CONFIG}_{WORDLLAMA_DIM}.safetensors",
                   f"tokenizers/{WORDLLAMA_CONFIG}_tokenizer_config.json")
# Per-model batch sizes: WordLlama is a table lookup (a batch of 256 ScienceQA prompts pads to ~150 MB);
# a MiniLM-sized transformer is most efficient on CPU around sentence-transformers' own default of 32.
TEXT_BATCH_SIZE = {WORDLLAMA: 256, ST_PREFIX: 32}
FUSES = {
    "text": "L2-normalised text vector of the text model",
    "concat": "[open_clip image, text model's text] each L2-normalised, renormalised (image dim + text dim); "
    "text-only samples: [0, text]",
}
TEXT_RULE = ("human turns joined by a blank line, <image> removed; st: truncated to the model's "
             "max_seq_length; wordllama: an empty text gives a zero text vector")
ST_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_text_model(model: str) -> bool:
    return model == WORDLLAMA or model.startswith(ST_PREFIX)


def default_batch_size(model: str) -> int:
    return TEXT_BATCH_SIZE[WORDLLAMA if model == WORDLLAMA else ST_PREFIX]


def wordllama_dir() -> Path:
    """The installed ``wordllama`` package folder (it holds ``weights/`` and ``tokenizers/``)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or spec.origin is None:
        raise UserError("--model wordllama: the wordllama package is not installed (pip install wordllama)")
    return Path(spec.origin).parent


@dataclass(frozen=True)
class TextModelSource:
    """A checked text model on disk: what ``embeddings.json`` records and where the loader reads."""

    model: str
    """``wordllama`` or ``st:<resolved directory>``."""
    directory: Path
    """The wordllama package folder or the sentence-transformers directory."""
    weights: Path
    """The weights file (hashed into the set's identity)."""

    @property
    def label(self) -> str:
        return WORDLLAMA if self.model == WORDLLAMA else f"st-{self.directory.name}"


def text_model_source(model: str) -> TextModelSource:
    """Check the model's files are all there and readable; one-line errors name the path."""
    if model == WORDLLAMA:
        folder = wordllama_dir()
        for rel in WORDLLAMA_FILES:
            if not (folder / rel).is_file():
                raise UserError(f"--model wordllama: {folder / rel} is missing; reinstall wordllama")
        weights = folder / WORDLLAMA_FILES[0]
        _check_safetensors(weights)
        return TextModelSource(WORDLLAMA, folder, weights)
    directory = Path(model[len(ST_PREFIX):]).expanduser()
    if not model[len(ST_PREFIX):]:
        raise UserError(f"--model {model!r}: give st:<sentence-transformers model directory>")
    if not directory.is_dir():
        raise UserError(f"--model {model}: {directory} does not exist or is not a directory")
    weights = _st_weights(directory.resolve())
    return TextModelSource(f"{ST_PREFIX}{directory.resolve()}", directory.resolve(), weights)


def _st_weights(directory: Path) -> Path:
    modules = directory / "modules.json"
    if not modules.is_file():
        raise UserError(f"{directory}: not a sentence-transformers model directory (no modules.json)")
    try:
        entries = json.loads(modules.read_text())
        body = next(e for e in entries if str(e.get("type", "")).endswith(".Transformer"))
    except (ValueError, StopIteration, AttributeError, TypeError):
        raise UserError(f"{modules}: not a sentence-transformers module list with a Transformer") from None
    folder = directory / str(body.get("path", ""))
    for name in ST_WEIGHTS:
        if (folder / name).is_file():
            if name.endswith(".safetensors"):
                _check_safetensors(folder / name)
            return folder / name
    raise UserError(f"{folder}: no weights file ({' or '.join(ST_WEIGHTS)})")


def _check_safetensors(path: Path) -> None:
    """A truncated download fails here, before anything is written, rather than inside the loader."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            f.keys()
    except Exception as exc:  # SafetensorError on a short or corrupt file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: truncated or corrupt weights file ({first})") from None


def _load(source: TextModelSource, device: str):
    if source.model == WORDLLAMA:
        from wordllama import WordLlama

        # cache_dir = the package folder: the wheel ships tokenizers/ where WordLlama's cache layout
        # expects them, so nothing is downloaded.
        return WordLlama.load(config=WORDLLAMA_CONFIG, dim=WORDLLAMA_DIM, cache_dir=source.directory,
                              disable_download=True)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source.directory), device=device, local_files_only=True)


class TextEncoder:
    """A loaded text model: texts -> float32 [n, dim] vectors (not yet normalised)."""

    def __init__(self, source: TextModelSource, device: str) -> None:
        self.source = source
        try:
            with _quiet_logging():  # the loaders log INFO lines of their own; the outcome is reported here
                self.model = _load(source, device)
        except Exception as exc:  # the loaders raise OSError/ValueError/hub errors on a broken directory
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{source.directory}: cannot load {source.model}: {first}") from None

    def encode(self, texts: list[str]) -> np.ndarray:
        """One call per batch: a batch is computed the same way on every run (resume stays identical)."""
        if self.source.model != WORDLLAMA:
            return self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                     show_progress_bar=False).astype(np.float32)
        keep = [i for i, t in enumerate(texts) if t]  # WordLlama's mean over zero tokens is undefined
        out = np.zeros((len(texts), self.model.embedding.shape[1]), dtype=np.float32)
        if keep:
            out[keep] = self.model.embed([texts[i] for i in keep], batch_size=len(keep))
        return out


# --- the embedding run ---------------------------------------------------------------------------------


def text_params(ws: Workspace, source: TextModelSource, fuse: str, image: tuple[str, str | None] | None,
                rows_per_part: int, seed: int, dtype: str) -> dict:
    """The set's identity: model, weights hash, fusion (and image model), dataset, part size, seed, dtype."""
    params = {
        "model": source.model,
        "pretrained": str(source.weights),
        "weights_sha256": file_sha256(source.weights),
        "fuse": fuse,
        "dataset_fingerprint": ws.dataset_fingerprint(),
        "rows_per_part": rows_per_part,
        "seed": seed,
        "dtype": dtype,
    }
    if image is not None:
        params.update(image_model=image[0], image_pretrained=clip_weights_label(image[1]))
    return params


def default_text_tag(source: TextModelSource, fuse: str, image: tuple[str, str | None] | None) -> str:
    name = source.label if image is None else f"{source.label}+{default_tag(*image)}_{fuse}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def embed_text(
    ws: Workspace,
    *,
    model: str,
    fuse: str = "text",
    image_model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    tag: str | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    **run,
) -> Path:
    """Embed every dataset sample with a text model (module doc); return ``embeddings/<tag>/``.

    ``run``: ``rows_per_part``, ``seed``, ``dtype`` (the set's identity) and the :class:`EmbedJob` fields
    ``batch_size``, ``device``, ``num_workers``, ``max_parts``, ``show_progress``, ``stats``.
    """
    if fuse not in FUSES:
        raise UserError(
            f"--fuse {fuse!r} with --model {model}: the text model and open_clip images are different "
            f"spaces; valid: {', '.join(FUSES)}"
        )
    source = text_model_source(model)
    image = (image_model, pretrained) if fuse != "text" else None
    params = text_params(ws, source, fuse, image, run.pop("rows_per_part", EMBEDDING_ROWS_PER_PART),
                         run.pop("seed", 0), run.pop("dtype", "float32"))
    run.setdefault("batch_size", default_batch_size(model))
    job = EmbedJob(ws, tag or default_text_tag(source, fuse, image), params, rule=FUSES[fuse],
                   text_rule=TEXT_RULE, **run)
    if finished_set(job, overwrite):
        return job.final
    with embedding_process(threads) as (rank, world):
        return _run(job, source, rank, world)


def _run(job: EmbedJob, source: TextModelSource, rank: int, world: int) -> Path:
    # The model (and for concat the image model and every image) is loaded and checked before
    # run_parts creates the partial directory: a broken input leaves nothing under embeddings/.
    table = job.ws.read_dataset(columns=["sample_id", "image", "conversations"])
    dev = resolve_device(job.device)
    t0 = time.perf_counter()
    text_model = TextEncoder(source, dev)
    texts = [sample_text(c) for c in table.column("conversations").to_pylist()]
    if job.params["fuse"] == "text":
        encode = _text_vectors(text_model, texts)
    else:
        images = _image_paths(job.ws, table)
        net, preprocess, _ = load_model(job.params["image_model"], job.params["image_pretrained"],
                                        device=dev, seed=job.params["seed"])
        pixels = _Pixels(images, preprocess, _image_size(preprocess))
        encode = _concat_vectors(text_model, texts, _ImageModel(net, pixels, dev), job.num_workers)
    if job.stats is not None:
        job.stats["seconds_model_load"] = time.perf_counter() - t0
    return run_parts(job, table.column("sample_id").to_pylist(), encode, rank=rank, world=world)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _text_vectors(text_model: TextEncoder, texts: list[str]):
    def encode(batches: list[list[int]]):
        for rows in batches:
            yield rows, _normalise(text_model.encode([texts[r] for r in rows]))

    return encode


class _Pixels:
    """Map-style dataset: index -> (index, image tensor or zeros, has_image), decoded in the workers."""

    def __init__(self, images: list[Path | None], preprocess, image_size: int) -> None:
        self.images, self.preprocess, self.image_size = images, preprocess, image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        if self.images[i] is None:
            return i, torch.zeros(3, self.image_size, self.image_size), False
        with Image.open(self.images[i]) as img:
            return i, self.preprocess(img.convert("RGB")), True


@dataclass
class _ImageModel:
    net: object
    pixels: _Pixels
    device: str

    def dim(self) -> int:
        """The image vector's size, from one forward pass (open_clip towers name it differently)."""
        import torch

        size = self.pixels.image_size
        with torch.inference_mode():
            return int(self.net.encode_image(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])

    def vectors(self, images, has_image, dim: int) -> np.ndarray:
        """L2-normalised image vectors; zero rows for text-only samples."""
        out = np.zeros((len(has_image), dim), dtype=np.float32)
        if has_image.any():
            got = self.net.encode_image(images[has_image].to(self.device)).float().cpu().numpy()
            out[has_image.numpy()] = _normalise(got)
        return out


def _concat_vectors(text_model: TextEncoder, texts: list[str], image_model: _ImageModel, num_workers: int):
    import torch

    dim = image_model.dim()

    def encode(batches: list[list[int]]):
        loader = torch.utils.data.DataLoader(image_model.pixels, batch_sampler=batches,
                                             num_workers=num_workers if batches else 0)
        with torch.inference_mode():
            for idx, images, has_image in loader:
                rows = idx.tolist()
                img = image_model.vectors(images, has_image.bool(), dim)
                txt = _normalise(text_model.encode([texts[r] for r in rows]))
                yield rows, _normalise(np.concatenate([img, txt], axis=1))

    return encode
