"""Data pipeline: every sample checked, collation, modality/length-grouped batching."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
import torch
from PIL import Image

from datasets_spec.errors import UserError
from datasets_spec.schema import rows_to_table
from train.data import (
    LlavaCollator,
    ModalityLengthGroupedSampler,
    padding_fraction,
    prepare_dataset,
    random_batches,
)
from train.model import build_llava
from train.presets import TINY_SYSTEM_PROMPT
from train.templates import IGNORE_INDEX
from train.tokenizers import char_tokenizer


@pytest.fixture(scope="module")
def bundle():
    return build_llava("tiny-llama", "tiny-clip", seed=0)


def _row(sid: str, question: str, answer: str, image: str | None = None) -> dict:
    human = f"{question}\n<image>" if image else question
    return dict(sample_id=sid, source="synthetic", split="train", image=image, difficulty=0.5,
                n_tokens_est=10,
                conversations=[{"from": "human", "value": human}, {"from": "gpt", "value": answer}])


@pytest.fixture()
def rows_and_root(tmp_path):
    root = tmp_path / "images"
    for k in range(3):
        (root / f"p{k}").mkdir(parents=True)
        Image.new("RGB", (48, 30), (80 * k, 120, 40)).save(root / f"p{k}" / "image.png")
    rows = [_row(f"p{k}", f"What colour is shape {k}?", f"The answer is {'ABC'[k]}.", f"p{k}/image.png")
            for k in range(3)]
    rows += [_row(f"t{k}", "Which word is a noun?" + " really" * k, "dog") for k in range(3)]
    return rows, root


def test_prepare_checks_and_counts_every_sample(bundle, rows_and_root):
    rows, root = rows_and_root
    ds, counts = prepare_dataset(rows_to_table(rows), bundle, image_root=root, max_length=256)
    assert len(ds) == 6
    assert counts["samples"] == counts["kept"] == 6 and counts["image"] == 3 and counts["text"] == 3
    assert counts["mismatch"] == counts["overlong"] == 0
    item = ds[0]
    assert item["pixel_values"].shape == (3, 32, 32)
    assert int((item["input_ids"] == bundle.image_token_id).sum()) == bundle.num_image_tokens
    assert ds[3]["pixel_values"] is None
    assert ds.modality_lengths[0] > 0 and ds.modality_lengths[3] < 0
    assert counts["tokens"] == sum(ds.lengths)
    # tiny-llama's preset replaces Vicuna's long system prompt (one token per character here).
    text = bundle.tokenizer.decode(ds.examples[3].input_ids)
    assert text.startswith(f"<s>{TINY_SYSTEM_PROMPT} USER: Which word is a noun?")


def test_mismatch_over_the_limit_names_the_first_sample(bundle, rows_and_root):
    rows, root = rows_and_root
    # ": " as one token crosses the vicuna "ASSISTANT:" | " answer" boundary in every sample
    merged = dataclasses.replace(bundle, tokenizer=char_tokenizer(merges=[(":", " ")]))
    with pytest.raises(UserError, match=r"6 of 6 samples have a tokenization mismatch.*max-mismatch 0.*'p0'"):
        prepare_dataset(rows_to_table(rows), merged, image_root=root, max_length=256)
    # allowing all six leaves nothing to train on
    with pytest.raises(UserError, match="no sample is left"):
        prepare_dataset(rows_to_table(rows), merged, image_root=root, max_length=256, max_mismatch=6)


def test_mismatches_under_the_limit_are_dropped_and_counted(bundle, rows_and_root):
    rows, root = rows_and_root
    # "\nd" as one token crosses ChatML's "assistant\n" | "dog" boundary: only the three text rows
    merged = dataclasses.replace(bundle, tokenizer=char_tokenizer(merges=[("\n", "d")]))
    table = rows_to_table(rows)
    ds, counts = prepare_dataset(table, merged, template="chat_template", image_root=root, max_length=256,
                                 max_mismatch=3)
    assert counts["mismatch"] == 3 and counts["kept"] == len(ds) == 3 and counts["text"] == 0
    with pytest.raises(UserError, match=r"3 of 6 samples .* --max-mismatch 2\); first: sample 't0'"):
        prepare_dataset(table, merged, template="chat_template", image_root=root, max_length=256,
                        max_mismatch=2)


def test_overlong_is_an_error_or_dropped(bundle, rows_and_root):
    rows, root = rows_and_root
    table = rows_to_table(rows)
    lengths = sorted(prepare_dataset(table, bundle, image_root=root, max_length=512)[0].lengths)
    limit = lengths[-1] - 1
    n_long = lengths.count(lengths[-1])
    message = rf"sample '.+' has {lengths[-1]} tokens, more than --max-length {limit}"
    with pytest.raises(UserError, match=message):
        prepare_dataset(table, bundle, image_root=root, max_length=limit)
    ds, counts = prepare_dataset(table, bundle, image_root=root, max_length=limit, drop_overlong=True)
    assert len(ds) == 6 - n_long and counts["overlong"] == counts["dropped_overlong"] == n_long
    assert max(ds.lengths) <= limit


def test_max_length_below_image_tokens_is_refused(bundle, rows_and_root):
    rows, root = rows_and_root
    with pytest.raises(UserError, match=r"--max-length 16 .* one image takes 16 tokens"):
        prepare_dataset(rows_to_table(rows), bundle, image_root=root, max_length=16)


def test_missing_image_and_empty_table(bundle, rows_and_root, tmp_path):
    rows, root = rows_and_root
    rows[1]["image"] = "p9/image.png"
    with pytest.raises(UserError, match="sample 'p1'.*does not exist"):
        prepare_dataset(rows_to_table(rows), bundle, image_root=root, max_length=256)
    with pytest.raises(UserError, match="empty"):
        prepare_dataset(rows_to_table([]), bundle, image_root=root, max_length=256)
    with pytest.raises(UserError, match="image aspect"):
        prepare_dataset(rows_to_table(rows), bundle, image_root=root, max_length=256, image_aspect="squash")


def test_collator_pads_right_and_stacks_only_images(bundle, rows_and_root):
    rows, root = rows_and_root
    ds, _ = prepare_dataset(rows_to_table(rows), bundle, image_root=root, max_length=256)
    pad = bundle.tokenizer.pad_token_id
    items = [ds[0], ds[3], ds[5]]  # one image, two text
    batch = LlavaCollator(pad)(items)
    longest = max(len(it["input_ids"]) for it in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][row, n:].eq(pad).all() and batch["labels"][row, n:].eq(IGNORE_INDEX).all()
    out = bundle.model(**batch)  # a mixed batch runs: one pixel row per image-token group
    assert torch.isfinite(out.loss)
    assert LlavaCollator(pad)([ds[3], ds[4]])["pixel_values"] is None
    left = LlavaCollator(pad, padding_side="left")(items)
    assert left["attention_mask"][1].tolist()[-1] == 1 and left["input_ids"][1, 0] == pad


def _toy(n=503, seed=0):
    rng = random.Random(seed)
    has_image = [rng.random() < 0.5 for _ in range(n)]
    lengths = [rng.randint(20, 400) + (64 if img else 0) for img in has_image]
    return lengths, has_image


def test_sampler_is_a_seeded_permutation_with_pure_batches():
    lengths, has_image = _toy()
    def make(seed):
        return ModalityLengthGroupedSampler(lengths, has_image, batch_size=8, seed=seed, megabatch_mult=4)

    s = make(1)
    order = list(s)
    assert sorted(order) == list(range(len(lengths)))
    assert order == list(make(1)) and order != list(make(2))
    s.set_epoch(1)
    assert list(s) != order
    for batch in s.batches():
        assert len({has_image[i] for i in batch}) == 1
    assert sum(len(b) < 8 for b in s.batches()) <= 2  # at most one partial batch per modality


def test_sampler_shards_across_ranks():
    lengths, has_image = _toy()
    kw = dict(batch_size=4, world_size=2, seed=0)
    full = ModalityLengthGroupedSampler(lengths, has_image, **kw)
    ranks = [ModalityLengthGroupedSampler(lengths, has_image, rank=r, **kw) for r in range(2)]
    assert sorted(itertools.chain(*ranks)) == list(range(len(lengths)))
    batches = full.batches()
    # the global order alternates rank 0, rank 1 batches, as accelerate shards it
    assert ranks[0].batches()[:5] == batches[0:10:2] and ranks[1].batches()[:5] == batches[1:10:2]
    for step in full.steps()[:-2]:
        assert len({has_image[i] for i in step}) == 1


def test_padding_fraction_matches_brute_force_and_grouping_helps():
    lengths = [3, 5, 5, 10]
    assert padding_fraction(lengths, [[0, 1], [2, 3]]) == pytest.approx((2 + 5) / (10 + 20))
    lengths, has_image = _toy(2000)
    grouped = ModalityLengthGroupedSampler(lengths, has_image, batch_size=8, seed=0).batches()
    baseline = random_batches(len(lengths), 8, seed=0)
    assert padding_fraction(lengths, grouped) < 0.1 < padding_fraction(lengths, baseline)


def test_synthetic_workspace_prepares_with_every_template(bundle, synthetic_workspace):
    ws = synthetic_workspace
    table = ws.read_dataset()
    for template in ("vicuna_v1", "plain", "chat_template"):
        ds, counts = prepare_dataset(table, bundle, template=template, image_root=ws.image_root(),
                                     max_length=512)
        assert counts["mismatch"] == 0 and counts["kept"] == table.num_rows == len(ds)
    assert 0 < counts["image"] < table.num_rows
    batch = LlavaCollator(bundle.tokenizer.pad_token_id)([ds[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 4
