"""Training data pipeline benchmark (issue 4, Performance); every figure is a ratio measured in this run.

1. Padding fraction of modality/length-grouped batches (ModalityLengthGroupedSampler) against random
   batches and against LLaVA's original grouping (megabatch = one step), on the synthetic dataset (real
   token lengths from the tiny model's tokenizer) and on a ScienceQA-like length distribution
   (QCM-LEA answers with lecture and solution, about half the samples with 576 CLIP-336 image tokens).
   Goal: at most 10 % padding.
2. Data pipeline time (dataset fetch + image preprocessing + collation) against model step time
   (forward + backward + AdamW step), for the tiny model and for SmolLM2-135M. Goal: at most 10 %.
3. Training tokens per second of the tiny model on this CPU.
4. Tokenizing + checking (masking, mismatch and overlong checks, 576 image tokens) per sample with the
   real LLaMA-2, Mistral and SmolLM2 vocabularies, against the character tokenizer in the same run.
   Goal: under 1 ms per sample.

Run: `.venv/bin/python bench/train_bench.py [--quick] [--skip-smollm2]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from curate.ingest import ingest_synthetic  # noqa: E402
from datasets_spec.workspace import Workspace  # noqa: E402
from train.data import (  # noqa: E402
    LlavaCollator,
    ModalityLengthGroupedSampler,
    padding_fraction,
    prepare_dataset,
    random_batches,
)
from train.model import build_llava  # noqa: E402


def scienceqa_like_lengths(n: int, seed: int = 0) -> tuple[list[int], list[bool]]:
    """Token lengths shaped like ScienceQA QCM-LEA in LLaVA-1.5 format (LLaMA tokenizer).

    Text part: prompt + lecture + solution, log-normal around 190 tokens (lectures range from none to
    several hundred tokens); 49 % of problems carry an image worth 576 tokens (CLIP ViT-L/336).
    """
    rng = np.random.default_rng(seed)
    text = np.clip(rng.lognormal(mean=np.log(190), sigma=0.6, size=n), 40, 1500).astype(int)
    has_image = rng.random(n) < 0.49
    return (text + 576 * has_image).tolist(), has_image.tolist()


def padding_rows(name: str, lengths: list[int], has_image: list[bool], batch_sizes: list[int]) -> list[str]:
    rows = []
    for bs in batch_sizes:
        grouped = ModalityLengthGroupedSampler(lengths, has_image, batch_size=bs, seed=0).batches()
        llava = ModalityLengthGroupedSampler(lengths, has_image, batch_size=bs, seed=0,
                                             megabatch_mult=1).batches()
        rand = random_batches(len(lengths), bs, seed=0)
        g, lv, r = (padding_fraction(lengths, b) for b in (grouped, llava, rand))
        rows.append(f"| {name} | {len(lengths)} | {bs} | {100 * r:.1f}% | {100 * lv:.1f}% | {100 * g:.1f}% "
                    f"| {r / max(g, 1e-9):.1f}x |")
    return rows


def time_pipeline_and_steps(bundle, dataset, *, batch_size: int, n_batches: int, seed: int = 0) -> dict:
    """Seconds spent fetching+collating batches vs training on them (same batches, same process)."""
    collate = LlavaCollator(bundle.tokenizer.pad_token_id)
    sampler = ModalityLengthGroupedSampler(dataset.lengths, dataset.has_image, batch_size=batch_size,
                                           seed=seed)
    batches = sampler.batches()[:n_batches]
    model = bundle.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data_s = step_s = 0.0
    tokens = 0
    for k, idx in enumerate(batches):
        t0 = time.perf_counter()
        batch = collate([dataset[i] for i in idx])
        t1 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if k > 0:  # the first step pays one-off allocation costs
            data_s += t1 - t0
            step_s += t2 - t1
            tokens += int(batch["attention_mask"].sum())
    return {"data_s": data_s, "step_s": step_s, "tokens": tokens, "batches": len(batches) - 1}


def tokenize_rows(tokenizer, template: str, rows: list[dict], n_img: int = 576) -> tuple[float, int]:
    """Seconds to tokenize and check every row (train.templates.tokenize_conversation), and mismatches."""
    from train.templates import tokenize_conversation

    t0 = time.perf_counter()
    bad = sum(tokenize_conversation(r["conversations"], tokenizer, template, num_image_tokens=n_img,
                                    max_length=4096).mismatch for r in rows)
    return time.perf_counter() - t0, bad


def real_vocab_rows(rows: list[dict], skip_smollm2: bool) -> list[str]:
    from train.model import prepare_tokenizer
    from train.presets import LLM_PRESETS, gguf_package_dir
    from train.tokenizers import char_tokenizer
    from train.vocabs import llama2_tokenizer, mistral_tokenizer, repair_gguf_special_tokens

    def smollm2():
        from transformers import AutoTokenizer

        p = LLM_PRESETS["smollm2-135m"]
        path = gguf_package_dir(p.repo_or_path) / p.gguf_file
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        repair_gguf_special_tokens(tok, path)
        return tok

    cases = [("character (baseline)", char_tokenizer, "vicuna_v1"),
             ("LLaMA-2", llama2_tokenizer, "vicuna_v1"), ("LLaMA-2", llama2_tokenizer, "llama_2"),
             ("Mistral v1", mistral_tokenizer, "mistral_instruct")]
    if not skip_smollm2:
        cases.append(("SmolLM2", smollm2, "chat_template"))
    loaded: dict = {}
    out, base = [], None
    for name, load, template in cases:
        if name not in loaded:
            loaded[name] = load()
            prepare_tokenizer(loaded[name])
        tokenize_rows(loaded[name], template, rows[:20])  # warm-up
        seconds, bad = tokenize_rows(loaded[name], template, rows)
        per = 1e3 * seconds / len(rows)
        base = base or per
        out.append(f"| {name} | {template} | {len(rows)} | {per:.3f} | {bad} | {per / base:.2f}x |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller data and fewer steps.")
    parser.add_argument("--skip-smollm2", action="store_true", help="Skip the SmolLM2-135M timing.")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    n_train = 300 if args.quick else 1200
    # Timings share the CPU with whatever else runs; the load average says how much.
    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} at start\n")

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        ingest_synthetic(ws, seed=0, n_train=n_train, n_val=0, n_test=0, prompt_format="QCM-LEA")
        table = ws.read_dataset()
        tiny = build_llava("tiny-llama", "tiny-clip", seed=0)
        t0 = time.perf_counter()
        ds, counts = prepare_dataset(table, tiny, image_root=ws.image_root(), max_length=2048)
        prep_s = time.perf_counter() - t0

        print("## Padding fraction (share of padded positions; lower is better)\n")
        print("| data | samples | batch | random | LLaVA grouping (megabatch = 1 step) | ours "
              "(megabatch = 50 steps) | random / ours |")
        print("|---|---|---|---|---|---|---|")
        for row in padding_rows("synthetic (tiny tokenizer)", ds.lengths, ds.has_image, [4, 8, 16]):
            print(row)
        sq_len, sq_img = scienceqa_like_lengths(12726)
        for row in padding_rows("ScienceQA-like (train size)", sq_len, sq_img, [4, 8, 16]):
            print(row)

        print(f"\nTokenizing and checking all {counts['samples']} samples: {prep_s:.2f} s "
              f"({1e3 * prep_s / counts['samples']:.2f} ms/sample, {counts['mismatch']} mismatches)\n")

        print("## Tokenizing + checking with real vocabularies (576 image tokens per image sample)\n")
        print("| vocabulary | template | samples | ms/sample | mismatches | vs character tokenizer |")
        print("|---|---|---|---|---|---|")
        rows = table.select(["conversations"]).to_pylist()
        for row in real_vocab_rows(rows, args.skip_smollm2):
            print(row)
        print()

        print("## Data pipeline vs model step (same batches, one process, 0 loader workers)\n")
        print(f"(load average {os.getloadavg()[0]:.1f})\n")
        print("| model | batch | batches | data s | step s | data / step | train tokens/s |")
        print("|---|---|---|---|---|---|---|")
        n_batches = 15 if args.quick else 40
        r = time_pipeline_and_steps(tiny, ds, batch_size=8, n_batches=n_batches)
        print(f"| tiny-llama + tiny-clip | 8 | {r['batches']} | {r['data_s']:.2f} | {r['step_s']:.2f} | "
              f"{100 * r['data_s'] / r['step_s']:.1f}% | {r['tokens'] / r['step_s']:.0f} |")
        if not args.skip_smollm2:
            smol = build_llava("smollm2-135m", "tiny-clip", seed=0)
            ds_s, _ = prepare_dataset(table, smol, image_root=ws.image_root(), max_length=2048)
            r = time_pipeline_and_steps(smol, ds_s, batch_size=4, n_batches=4 if args.quick else 8)
            print(f"| smollm2-135m + tiny-clip | 4 | {r['batches']} | {r['data_s']:.2f} | "
                  f"{r['step_s']:.2f} | "
                  f"{100 * r['data_s'] / r['step_s']:.1f}% | {r['tokens'] / r['step_s']:.0f} |")


if __name__ == "__main__":
    main()
