"""The model-backed score kinds: CLIP image-text similarity (open_clip) and per-sample loss of a run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from curate.embed import (
    _image_paths,
    _image_size,
    _progress,
    _Samples,
    load_model,
    resolve_device,
    sample_text,
)
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace


def clip_similarity(ws: Workspace, model: str, pretrained: str | None, *, batch_size: int, device: str,
                    show_progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Cosine of the L2-normalised open_clip image and text vectors per sample; NaN without an image."""
    import torch
    import torch.nn.functional as F

    table = ws.read_dataset(columns=["sample_id", "image", "conversations"])
    images = _image_paths(ws, table)
    dev = resolve_device(device)
    net, preprocess, tokenizer = load_model(model, pretrained, device=dev)
    texts = [sample_text(c) for c in table.column("conversations").to_pylist()]
    samples = _Samples(texts, images, preprocess, tokenizer, _image_size(preprocess))
    rows = [i for i, path in enumerate(images) if path is not None]
    values = np.full(len(texts), np.nan)
    batches = [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]
    loader = torch.utils.data.DataLoader(samples, batch_sampler=batches, num_workers=0)
    with torch.inference_mode(), _progress(len(rows), show_progress) as advance:
        for idx, pixels, _, tokens in loader:
            img = F.normalize(net.encode_image(pixels.to(dev)).float(), dim=-1)
            txt = F.normalize(net.encode_text(tokens.to(dev)).float(), dim=-1)
            values[idx.numpy()] = (img * txt).sum(-1).cpu().numpy()
            advance(len(idx))
    return table.column("sample_id").to_pylist(), values


def run_losses(ws: Workspace, run: Path, *, batch_size: int, max_length: int, device: str,
               show_progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Mean cross-entropy per answer (label) token of every dataset sample under the run's model.

    Samples the run's template cannot tokenize, or longer than ``max_length``, get NaN (they are
    counted in nothing else; a score set records its null count).
    """
    import torch

    from train.data import LlavaCollator, prepare_dataset
    from train.evaluate import check_run_dataset, load_run_bundle, run_config

    check_run_dataset(ws, run)
    bundle = load_run_bundle(run)
    dev = resolve_device(device)
    model = bundle.model.to(dev).eval()
    table = ws.read_dataset(columns=["sample_id", "image", "conversations"])
    aspect = run_config(run).get("config", {}).get("image_aspect", "pad")
    dataset, _ = prepare_dataset(table, bundle, image_root=ws.image_root(), max_length=max_length,
                                 max_mismatch=table.num_rows, drop_overlong=True, image_aspect=aspect)
    ids = table.column("sample_id").to_pylist()
    where = {sid: i for i, sid in enumerate(ids)}
    values = np.full(len(ids), np.nan)
    collate = LlavaCollator(bundle.tokenizer.pad_token_id)
    # Same-length neighbours waste the least padding: batch in length order.
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.examples[i].input_ids))
    with torch.inference_mode(), _progress(len(order), show_progress) as advance:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([dataset[i] for i in chunk])
            losses = batch_losses(model, batch, dev)
            for i, loss in zip(chunk, losses, strict=True):
                values[where[dataset.examples[i].sample_id]] = loss
            advance(len(chunk))
    if np.isnan(values).all():
        raise UserError(f"{run}: no sample of the dataset could be scored (all mismatched or overlong)")
    return ids, values


def batch_losses(model, batch: dict, device: str) -> list[float]:
    """Per-row mean next-token cross-entropy over the label positions (labels != -100)."""
    import torch.nn.functional as F

    pixels = batch["pixel_values"]
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   pixel_values=None if pixels is None else pixels.to(device)).logits.float()
    labels = batch["labels"].to(device)[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = (labels != -100).float()
    counts = mask.sum(1)
    out = (per_token * mask).sum(1) / counts.clamp(min=1)
    return [float(v) if c > 0 else math.nan for v, c in zip(out.tolist(), counts.tolist(), strict=True)]

