"""Benchmark gradient features (`curate embed --model grad:runs/<warm-up>`) against one training step of
the same LoRA model, side by side in one process.

Workspace: the synthetic ScienceQA-layout set. Model: the tiny LoRA warm-up (tiny-llama + tiny-clip, one
kept checkpoint). Training = forward, backward and an AdamW step on batches of ``--batch-size`` training
examples built beforehand (the LoRA matrices only, so the step is if anything cheaper than the trainer's,
which also trains the projector); features = the ``curate embed`` loop: each sample's gradient alone, the
Adam normalisation, the Rademacher projection to ``--proj-dim`` and the Parquet parts. Prints samples/s
and the ratio features / training (goal >= 0.8).
Usage: ``python bench/grad_features_bench.py [--n 48 --batch-size 4 --lora-r 4 --proj-dim 8192 --threads 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from curate.grad_features import embed_gradients
from curate.ingest import ingest_synthetic
from curate.shards import write_subset
from datasets_spec.workspace import Workspace
from train.config import TrainConfig
from train.runner import run_training
from train.warmup import WarmupRun


def warm_up(ws: Workspace, lora_r: int) -> Path:
    table = ws.read_dataset()
    train = np.flatnonzero(pc.equal(table.column("split"), "train").to_numpy(zero_copy_only=False))
    write_subset(ws, "warm", table, train[:8], {"strategy": "first", "k": 8, "seed": 0})
    config = TrainConfig(stage="finetune", lora_r=lora_r, epochs=1, keep_checkpoints=True, run_name="warm",
                         llm="tiny-llama", vision="tiny-clip", preset="tiny-cpu", max_length=512,
                         eval_limit=0)
    return run_training(ws, ws.shards_dir / "warm", config)


def training_steps(ws: Workspace, run: Path, batch_size: int) -> tuple[int, float]:
    """Samples and seconds of forward + backward + AdamW step over the whole dataset in batches."""
    warm = WarmupRun(ws, run)
    model = warm.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    data = warm.examples(ws.read_dataset())
    batches = [warm.collate([data[i] for i in range(s, min(len(data), s + batch_size))])
               for s in range(0, len(data), batch_size)]
    keys = ("input_ids", "attention_mask", "labels", "pixel_values")

    def step(batch):
        model(**{k: batch[k] for k in keys if batch.get(k) is not None}).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    return len(data), time.perf_counter() - t0


def features(ws: Workspace, run: Path, proj_dim: int) -> tuple[int, float]:
    stats: dict = {}
    embed_gradients(ws, model=f"grad:{run}", grad="adam", proj_dim=proj_dim, batch_size=16,
                    rows_per_part=4096, show_progress=False, stats=stats, tag="bench")
    return stats["rows"], stats["seconds_loop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="train samples (plus 8 val and 8 test)")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (tiny-cpu's global batch)")
    parser.add_argument("--lora-r", type=int, default=4)
    parser.add_argument("--proj-dim", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ingest_synthetic(ws, seed=0, n_train=args.n, n_val=8, n_test=8, prompt_format="QCM-A")
        run = warm_up(ws, args.lora_r)
        n_train, t_train = training_steps(ws, run, args.batch_size)
        n_feat, t_feat = features(ws, run, args.proj_dim)
    train_rate, feat_rate = n_train / t_train, n_feat / t_feat
    print(f"gradient features vs one training step: tiny LoRA r={args.lora_r}, {n_feat} samples, "
          f"proj-dim {args.proj_dim}, {args.threads} thread(s)")
    print(f"  training step (batch {args.batch_size}): {train_rate:8.2f} samples/s")
    print(f"  features (per-sample, adam, projected): {feat_rate:8.2f} samples/s")
    print(f"  ratio features / training: {feat_rate / train_rate:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
