"""Supervised LLaVA data: every sample tokenized and checked up front, collation, modality-grouped batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import Dataset, Sampler

from datasets_spec.errors import UserError
from train.images import check_aspect, load_image, preprocess_image, resolve_image
from train.templates import (
    IGNORE_INDEX,
    TokenizedSample,
    check_tokenizer,
    get_template,
    tokenize_conversation,
)

# Reasonable prompt room next to the image tokens; a max length at or below the image tokens leaves none.
MIN_TEXT_TOKENS = 1


@dataclass(frozen=True)
class Example:
    sample_id: str
    input_ids: list[int]
    labels: list[int]
    image: str | None


class SupervisedLlavaDataset(Dataset):
    """Pre-tokenized samples; images are read and preprocessed when an item is fetched."""

    def __init__(self, examples: Sequence[Example], *, image_root: Path | None, image_processor: Any,
                 image_aspect: str = "pad") -> None:
        check_aspect(image_aspect)
        self.examples = list(examples)
        self.image_root = Path(image_root) if image_root is not None else None
        self.image_processor = image_processor
        self.image_aspect = image_aspect

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    @property
    def has_image(self) -> list[bool]:
        return [e.image is not None for e in self.examples]

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's convention: positive length for image samples, negative for text-only ones."""
        return [n if img else -n for n, img in zip(self.lengths, self.has_image, strict=True)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        item: dict[str, Any] = {
            "input_ids": torch.tensor(ex.input_ids, dtype=torch.long),
            "labels": torch.tensor(ex.labels, dtype=torch.long),
            "pixel_values": None,
        }
        if ex.image is not None:
            where = f"sample {ex.sample_id!r}"
            path = resolve_image(self.image_root, ex.image, where=where)
            item["pixel_values"] = preprocess_image(load_image(path, where=where), self.image_processor,
                                                    self.image_aspect)
        return item


def prepare_dataset(
    table: pa.Table,
    bundle: Any,
    *,
    template: str | None = None,
    image_root: Path | None,
    max_length: int,
    max_mismatch: int = 0,
    drop_overlong: bool = False,
    image_aspect: str = "pad",
    check_images: bool = True,
) -> tuple[SupervisedLlavaDataset, dict[str, int]]:
    """Tokenize and check EVERY row of a canonical table; return the dataset and counts.

    Counts: samples, kept, image, text, mismatch, overlong, dropped_overlong, target_tokens, tokens.
    Mismatches above ``max_mismatch`` and (without ``drop_overlong``) any overlong sample are UserErrors
    naming the first offending sample; mismatched samples under the limit are dropped and counted.
    """
    check_aspect(image_aspect)
    tmpl = get_template(template or bundle.template)
    check_tokenizer(bundle.tokenizer, tmpl)
    n_img = bundle.num_image_tokens
    if max_length <= n_img + MIN_TEXT_TOKENS:
        raise UserError(f"--max-length {max_length} leaves no room for text: one image takes {n_img} tokens "
                        f"(use at least {n_img + 64})")
    if table.num_rows == 0:
        raise UserError("the training set is empty (0 samples)")
    rows = table.select(["sample_id", "image", "conversations"]).to_pylist()
    counts = dict(samples=len(rows), kept=0, image=0, text=0, mismatch=0, overlong=0, dropped_overlong=0,
                  target_tokens=0, tokens=0)
    examples: list[Example] = []
    first_mismatch: str | None = None
    for row in rows:
        sid = row["sample_id"]
        try:
            sample = tokenize_conversation(row["conversations"], bundle.tokenizer, tmpl,
                                           num_image_tokens=n_img, max_length=max_length,
                                           system=bundle.llm_preset.system_prompt,
                                           image_placement=bundle.image_placement)
        except ValueError as exc:
            raise UserError(f"sample {sid!r}: {exc}") from None
        if sample.mismatch:
            counts["mismatch"] += 1
            first_mismatch = first_mismatch or sid
            continue
        if sample.overlong:
            counts["overlong"] += 1
            if not drop_overlong:
                raise UserError(f"sample {sid!r} has {len(sample.input_ids)} tokens, more than --max-length "
                                f"{max_length}; raise --max-length or pass --drop-overlong")
            counts["dropped_overlong"] += 1
            continue
        if row["image"] is not None and check_images:
            resolve_image(image_root, row["image"], where=f"sample {sid!r}")
        examples.append(_example(sid, sample, row["image"]))
        counts["image" if row["image"] is not None else "text"] += 1
        counts["target_tokens"] += sample.n_target_tokens
        counts["tokens"] += len(sample.input_ids)
    if counts["mismatch"] > max_mismatch:
        raise UserError(f"{counts['mismatch']} of {len(rows)} samples have a tokenization mismatch with "
                        f"template {tmpl.name!r} (allowed: --max-mismatch {max_mismatch}); "
                        f"first: sample {first_mismatch!r}")
    if not examples:
        raise UserError(f"no sample is left for training (of {len(rows)}: {counts['mismatch']} mismatched, "
                        f"{counts['dropped_overlong']} overlong)")
    counts["kept"] = len(examples)
    dataset = SupervisedLlavaDataset(examples, image_root=image_root, image_processor=bundle.image_processor,
                                     image_aspect=image_aspect)
    return dataset, counts


def _example(sid: str, sample: TokenizedSample, image: str | None) -> Example:
    return Example(sid, sample.input_ids, sample.labels, image)


class LlavaCollator:
    """Pad a list of items into a batch.

    Right padding for training (labels -100 on padding); left padding for batched generation. The model
    needs exactly one pixel_values row per image in the batch, so only image samples contribute one;
    a batch without images gets ``pixel_values=None``.
    """

    def __init__(self, pad_token_id: int, *, padding_side: str = "right",
                 pad_to_multiple_of: int | None = None) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(it["input_ids"]) for it in items)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            ids[row, span] = it["input_ids"]
            mask[row, span] = 1
            if it.get("labels") is not None:
                labels[row, span] = it["labels"]
        pixels = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values": torch.stack(pixels) if pixels else None,
        }


# ----------------------------------------------------------------------------------------------------
# batching


def _length_grouped(indices: list[int], lengths: Sequence[int], batch: int, megabatch: int,
                    gen: torch.Generator) -> list[list[int]]:
    """Shuffle, cut into megabatches, sort each by length (longest first), cut into batches of ``batch``."""
    order = [indices[i] for i in torch.randperm(len(indices), generator=gen).tolist()]
    out: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        mega = sorted(order[start:start + megabatch], key=lambda i: (-lengths[i], i))
        out += [mega[k:k + batch] for k in range(0, len(mega), batch)]
    return out


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's `group_by_modality_length`: every batch holds one modality; lengths grouped in megabatches.

    Yields a flat index order in which consecutive ``batch_size`` chunks are per-device batches and
    ``world_size`` consecutive chunks form one optimizer micro-step, the order HF Trainer/accelerate
    shard across processes. With ``rank`` set, yields only that rank's batches (for a plain DataLoader).

    Image and text samples are grouped separately into steps of ``batch_size * world_size``; inside a
    megabatch of ``megabatch_mult`` steps samples are sorted by length so neighbours pad little. The
    partial last step of each modality goes last. Step order is shuffled with ``seed + epoch``.
    """

    def __init__(self, lengths: Sequence[int], has_image: Sequence[bool], *, batch_size: int,
                 world_size: int = 1, rank: int | None = None, seed: int = 0, megabatch_mult: int = 50,
                 group_by_length: bool = True) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError("batch_size and world_size must be positive")
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if len(lengths) != len(has_image):
            raise ValueError("lengths and has_image differ in length")
        self.lengths = list(lengths)
        self.has_image = list(has_image)
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.megabatch_mult = megabatch_mult
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self) -> list[list[int]]:
        """Global steps: lists of ``batch_size * world_size`` indices (the last may be shorter)."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        step = self.batch_size * self.world_size
        mega = step * (self.megabatch_mult if self.group_by_length else 1)
        full: list[list[int]] = []
        leftovers: list[list[int]] = []
        for modality in (True, False):
            idx = [i for i, img in enumerate(self.has_image) if img == modality]
            if not idx:
                continue
            lengths = self.lengths if self.group_by_length else [0] * len(self.lengths)
            groups = _length_grouped(idx, lengths, step, mega, gen)
            full += [g for g in groups if len(g) == step]
            rest = [i for g in groups if len(g) < step for i in g]
            leftovers += [rest[k:k + step] for k in range(0, len(rest), step)]
        order = torch.randperm(len(full), generator=gen).tolist()
        return [full[k] for k in order] + leftovers

    def batches(self) -> list[list[int]]:
        """Per-device batches in yield order (all ranks, or only ``rank``'s)."""
        out: list[list[int]] = []
        for step in self.steps():
            chunks = [step[r * self.batch_size:(r + 1) * self.batch_size] for r in range(self.world_size)]
            if self.rank is None:
                out += [c for c in chunks if c]
            elif chunks[self.rank]:
                out.append(chunks[self.rank])
        return out

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches()) if self.rank is not None else len(self.lengths)


def random_batches(n: int, batch_size: int, *, seed: int = 0) -> list[list[int]]:
    """Baseline: a seeded random order cut into batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[k:k + batch_size] for k in range(0, n, batch_size)]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded positions over all positions when each batch pads to its longest sample."""
    total = padded = 0
    for batch in batches:
        if not batch:
            continue
        longest = max(lengths[i] for i in batch)
        total += longest * len(batch)
        padded += sum(longest - lengths[i] for i in batch)
    return padded / total if total else 0.0
