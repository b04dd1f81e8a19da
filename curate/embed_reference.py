"""Reference-model features: mean-pooled hidden states of a LLaVA run or a causal LM, as an embedding set.

``curate embed --model llava:runs/<run>`` (any run of this project, e.g. the stage-1 projector run, or a
``train merge`` / saved-bundle directory) feeds each sample the way training does (the run's template and
system prompt, the image expanded to its patch tokens, the image preprocessed with the run's aspect rule)
and takes ``hidden_states[l]`` of the language model for every ``l`` in ``--layers`` (Hugging Face
indexing: 0 = the input embeddings, -1 = the last layer). ``--model lm:<dir or preset>`` does the same
with a causal LM on the text of the conversation (turns joined by a blank line, ``<image>`` removed),
for text-only pools; an image sample contributes its text.

Each layer is mean-pooled over the sample's tokens (image tokens included), L2-normalised, the layers
concatenated in the given order and the result L2-normalised again, so every layer weighs the same (COINCIDE
concatenates several layers). The set is written exactly like an open_clip set (curate/embed.py): parts of
``rows_per_part`` rows in dataset order, resumable from ``embeddings/.<tag>.partial/``, parts split over
``torchrun`` ranks, a progress bar, ``embeddings.json`` with the dataset fingerprint. A sample longer than
``max_length`` tokens is an error naming it (cutting it could split the image tokens).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from curate import embed as clip_embed
from curate.embed_parts import EMBEDDING_ROWS_PER_PART, EmbedJob, embedding_process, finished_set, run_parts
from datasets_spec.errors import UserError
from datasets_spec.schema import IMAGE_TOKEN
from datasets_spec.workspace import Workspace

KINDS = ("llava", "lm")
# Reference models are LLMs over long prompts (a LLaVA sample is ~600-2,000 tokens): 8 keeps the padded
# batch's activations within a few GB.
REFERENCE_BATCH_SIZE = 8
POOLING_RULE = (
    "mean over the sample's tokens (image tokens included) of hidden_states[l] for each layer, "
    "each L2-normalised, concatenated in --layers order, L2-normalised"
)


def is_reference(model: str) -> bool:
    return model.partition(":")[0] in KINDS and ":" in model


def parse_layers(spec: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(spec, (list, tuple)):
        values = list(spec)
    else:
        try:
            values = [int(v) for v in str(spec).split(",") if v.strip()]
        except ValueError:
            raise UserError(
                f"--layers {spec!r}: give comma-separated layer indices, e.g. -1 or 4,8,-1"
            ) from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"--layers {spec!r}: give distinct layer indices, e.g. -1 or 4,8,-1")
    return tuple(values)


def sample_dialogue(conversations: list[dict]) -> str:
    """Every turn's text, ``<image>`` removed, joined by a blank line (the text an LM embeds)."""
    return "\n\n".join(" ".join(t["value"].replace(IMAGE_TOKEN, " ").split()) for t in conversations).strip()


# --- encoders: model + how a row becomes (input_ids, pixel_values) -------------------------------------


class _Encoder:
    """Holds a model and turns dataset rows into model inputs (picklable for DataLoader workers)."""

    def __init__(self, kind: str, source: str, seed: int) -> None:
        import torch

        self.kind = kind
        if kind == "llava":
            from train.evaluate import load_run_bundle, run_config

            bundle = load_run_bundle(Path(source))
            self.model, self.tokenizer = bundle.model, bundle.tokenizer
            self.template, self.system = bundle.template, bundle.llm_preset.system_prompt
            self.n_image_tokens, self.image_processor = bundle.num_image_tokens, bundle.image_processor
            self.aspect = run_config(Path(source)).get("config", {}).get("image_aspect", "pad")
        else:
            from train.model import load_language_model
            from train.presets import resolve_llm

            torch.manual_seed(seed)  # a tiny preset is random: a resumed run must build the same model
            self.tokenizer, self.model = load_language_model(resolve_llm(source))
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def inputs(self, row: dict, image_root: Path | None, max_length: int):
        import torch

        where = f"sample {row['sample_id']!r}"
        pixels = None
        if self.kind == "llava":
            from train.templates import tokenize_conversation

            sample = tokenize_conversation(
                row["conversations"],
                self.tokenizer,
                self.template,
                num_image_tokens=self.n_image_tokens,
                max_length=max_length,
                system=self.system,
            )
            ids = sample.input_ids
            if row["image"] is not None:
                from train.images import load_image, preprocess_image, resolve_image

                path = resolve_image(image_root, row["image"], where=where)
                pixels = preprocess_image(load_image(path, where=where), self.image_processor, self.aspect)
        else:
            ids = self.tokenizer(sample_dialogue(row["conversations"]))["input_ids"]
        if len(ids) > max_length:
            raise UserError(f"{where} has {len(ids)} tokens, more than --max-length {max_length}; raise it")
        return torch.tensor(ids, dtype=torch.long), pixels


class _Rows:
    def __init__(self, rows: list[dict], encoder: _Encoder, image_root: Path | None, max_length: int) -> None:
        self.rows, self.encoder, self.image_root, self.max_length = rows, encoder, image_root, max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        ids, pixels = self.encoder.inputs(self.rows[i], self.image_root, self.max_length)
        return i, ids, pixels


def collate(items, pad_id: int) -> dict:
    """Right-padded batch; ``pixel_values`` holds one row per image sample (None without images)."""
    import torch

    longest = max(len(ids) for _, ids, _ in items)
    input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for r, (_, ids, _) in enumerate(items):
        input_ids[r, : len(ids)] = ids
        mask[r, : len(ids)] = 1
    pixels = [p for _, _, p in items if p is not None]
    return {
        "rows": [i for i, _, _ in items],
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": torch.stack(pixels) if pixels else None,
    }


def pooled_features(model, batch: dict, layers: tuple[int, ...], device: str) -> np.ndarray:
    """Model forward (no LM head) and the pooling rule of the module docstring; float32 [B, dim]."""
    import torch
    import torch.nn.functional as F

    body = getattr(model, "model", model)  # LlavaModel / LlamaModel: hidden states without the LM head
    kwargs = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "output_hidden_states": True,
        "use_cache": False,
    }
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = batch["pixel_values"].to(device)
    hidden = body(**kwargs).hidden_states
    check_layers(layers, len(hidden))
    mask = kwargs["attention_mask"].unsqueeze(-1).float()
    pooled = [F.normalize((hidden[layer].float() * mask).sum(1) / mask.sum(1), dim=-1) for layer in layers]
    return F.normalize(torch.cat(pooled, dim=-1), dim=-1).cpu().numpy().astype(np.float32)


def check_layers(layers: tuple[int, ...], n_hidden: int) -> None:
    """Every index names one of the model's ``n_hidden`` hidden states (embeddings + one per layer)."""
    if not all(-n_hidden <= layer < n_hidden for layer in layers):
        raise UserError(
            f"--layers {','.join(map(str, layers))}: the model has hidden states 0..{n_hidden - 1} "
            f"(0 = embeddings; negative counts from the last)"
        )


def hidden_state_count(model) -> int | None:
    """Hidden states the language model returns (its layers + the embeddings), from its config; None when
    the config does not say (the first batch then checks)."""
    config = getattr(model.config, "text_config", None) or model.config
    layers = getattr(config, "num_hidden_layers", None)
    return layers + 1 if isinstance(layers, int) else None


# --- the embedding run ---------------------------------------------------------------------------------


def reference_params(
    ws: Workspace, model: str, layers: tuple[int, ...], rows_per_part: int, max_length: int, seed: int
) -> tuple[str, str, dict]:
    kind, _, source = model.partition(":")
    if not source:
        raise UserError(f"--model {model!r}: give {kind}:<path>")
    if kind == "llava" or Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"--model {model!r}: {path} does not exist")
        source = str(path.resolve())
    params = {
        "model": f"{kind}:{source}",
        "pretrained": source,
        "fuse": "layers-mean",
        "dtype": "float32",
        "layers": list(layers),
        "max_length": max_length,
        "dataset_fingerprint": ws.dataset_fingerprint(),
        "rows_per_part": rows_per_part,
        "seed": seed,
    }
    return kind, source, params


def default_reference_tag(kind: str, source: str, layers: tuple[int, ...]) -> str:
    label = "_".join(str(v) for v in layers)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{kind}-{Path(source).name}_L{label}")


def embed_reference(
    ws: Workspace,
    *,
    model: str,
    layers: str | tuple[int, ...] = "-1",
    batch_size: int = REFERENCE_BATCH_SIZE,
    device: str = "auto",
    num_workers: int = 2,
    tag: str | None = None,
    overwrite: bool = False,
    rows_per_part: int = EMBEDDING_ROWS_PER_PART,
    max_length: int = 4096,
    seed: int = 0,
    max_parts: int | None = None,
    show_progress: bool = True,
    stats: dict | None = None,
    threads: int | None = None,
) -> Path:
    """Embed every dataset sample with a reference model; return ``embeddings/<tag>/`` (see module doc)."""
    if batch_size <= 0 or rows_per_part <= 0 or max_length <= 0:
        raise UserError("--batch-size, --max-length and rows per part must be positive")
    layer_list = parse_layers(layers)
    kind, source, params = reference_params(ws, model, layer_list, rows_per_part, max_length, seed)
    job = EmbedJob(ws, tag or default_reference_tag(kind, source, layer_list), params, rule=POOLING_RULE,
                   text_rule=_text_rule(kind), batch_size=batch_size, device=device, num_workers=num_workers,
                   max_parts=max_parts, show_progress=show_progress, stats=stats)
    if finished_set(job, overwrite):
        return job.final
    if kind == "llava":
        from train.evaluate import check_run_dataset

        check_run_dataset(ws, Path(source))
    with embedding_process(threads) as (rank, world):
        return _run(job, kind, source, layer_list, rank, world)


def _run(job: EmbedJob, kind: str, source: str, layers: tuple[int, ...], rank: int, world: int) -> Path:
    table = job.ws.read_dataset(columns=["sample_id", "image", "conversations"])
    if kind == "llava":
        clip_embed._image_paths(job.ws, table)  # every image exists and stays inside the root: checked first
    dev = clip_embed.rank_device(job.device, world)
    t0 = time.perf_counter()
    encoder = _Encoder(kind, source, job.params["seed"])
    n_hidden = hidden_state_count(encoder.model)
    if n_hidden is not None:
        check_layers(layers, n_hidden)  # before any part (or the .partial directory) is written
    encoder.model.to(dev)
    if job.stats is not None:
        job.stats["seconds_model_load"] = time.perf_counter() - t0
    rows = table.to_pylist()
    dataset = _Rows(rows, encoder, job.ws.image_root(), job.params["max_length"])
    encode = _reference_vectors(dataset, layers, dev, job.num_workers)
    return run_parts(job, [r["sample_id"] for r in rows], encode, rank=rank, world=world)


def _text_rule(kind: str) -> str:
    if kind == "llava":
        return "the run's template and system prompt over every turn, <image> expanded to the patch tokens"
    return "every turn's text joined by a blank line, <image> removed"


def _reference_vectors(dataset: _Rows, layers: tuple[int, ...], device: str, num_workers: int):
    """The encoder of :func:`curate.embed_parts.run_parts`: batches of rows -> pooled hidden states."""
    import torch

    pad_id = dataset.encoder.pad_id

    def encode(batches: list[list[int]]):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers if batches else 0,
            collate_fn=lambda items: collate(items, pad_id),
        )
        with torch.inference_mode():
            for batch in loader:
                yield batch["rows"], pooled_features(dataset.encoder.model, batch, layers, device)

    return encode


def embed_any(ws: Workspace, *, model: str, layers: str = "-1", max_length: int = 4096, pretrained=None,
              fuse: str | None = None, dtype: str = "float32", image_model: str | None = None,
              grad: str = "adam", proj_dim: int | None = None, **common) -> Path:
    """``curate embed``: a reference model (``llava:`` / ``lm:``), a text model (``wordllama``, ``st:``),
    gradient features (``grad:``, curate.grad_features) or any other name through open_clip. ``None``
    options take each embedder's own default (``batch_size``, ``fuse``: ``mean`` for open_clip, ``text``
    for a text model; ``image_model``: the open_clip default)."""
    from curate import grad_features
    from curate.embed_text import embed_text, is_text_model

    if common.get("batch_size") is None:
        common.pop("batch_size", None)
    if grad_features.is_gradient(model):
        common.pop("num_workers", None)
        dim = grad_features.DEFAULT_PROJ_DIM if proj_dim is None else proj_dim
        return grad_features.embed_gradients(ws, model=model, grad=grad, proj_dim=dim, dtype=dtype, **common)
    if is_reference(model):
        if dtype != "float32":
            raise UserError(f"--dtype {dtype}: reference-model features are stored as float32")
        return embed_reference(ws, model=model, layers=layers, max_length=max_length, **common)
    if is_text_model(model):
        extra = {"image_model": image_model} if image_model is not None else {}
        if pretrained is not None:
            extra["pretrained"] = pretrained
        return embed_text(ws, model=model, fuse=fuse or "text", dtype=dtype, **extra, **common)
    if image_model is not None:
        raise UserError("--image-model: only with a text model (--model wordllama or st:<dir>)")
    extra = {"pretrained": pretrained} if pretrained is not None else {}
    return clip_embed.embed_workspace(ws, model=model, fuse=fuse or "mean", dtype=dtype, **extra, **common)
