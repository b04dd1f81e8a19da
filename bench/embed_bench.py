"""Benchmark `curate embed` (decode + preprocess in DataLoader workers + model + Parquet parts) against the
model's forward alone on the same preprocessed batches, measured side by side in one process.

Generated workspace: N image samples (random-colour PNGs) with short texts. Default model: the open_clip
default (curate.clip_model.DEFAULT_CLIP_MODEL) with random weights (no download); pass ``--model tiny-clip``
for a quick run. Prints images/s of both and the ratio pipeline / model-only (goal >= 0.85).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curate.clip_model import DEFAULT_CLIP_MODEL, load_model
from curate.dataset_store import write_dataset
from curate.embed import _image_size, embed_workspace, sample_text
from datasets_spec.schema import rows_to_table
from datasets_spec.workspace import Workspace


def make_workspace(root: Path, n: int, size: int) -> Workspace:
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(pixels).save(images / f"{i}.png")
        rows.append({
            "sample_id": f"s{i:06d}", "source": "synthetic", "split": "train", "image": f"{i}.png",
            "conversations": [{"from": "human", "value": f"<image>\nWhat colour is block {i}?"},
                              {"from": "gpt", "value": "red"}],
            "difficulty": 0.5, "n_tokens_est": 16,
        })
    ws = Workspace(root / "ws")
    write_dataset(ws, rows_to_table(rows), source="synthetic", source_paths={"bench": str(root)},
                  image_root=images)
    return ws


def model_only(ws: Workspace, model: str, batch_size: int) -> tuple[float, int]:
    """Seconds of encode_image + encode_text on batches preprocessed beforehand (not timed)."""
    net, preprocess, tokenizer = load_model(model, "none")
    table = ws.read_dataset().to_pylist()
    root = ws.image_root()
    batches = []
    for s in range(0, len(table), batch_size):
        rows = table[s : s + batch_size]
        pix = torch.stack([preprocess(Image.open(root / r["image"]).convert("RGB")) for r in rows])
        batches.append((pix, tokenizer([sample_text(r["conversations"]) for r in rows])))
    assert _image_size(preprocess) == pix.shape[-1]
    with torch.inference_mode():
        net.encode_image(batches[0][0][:2])  # warm-up
        t = time.perf_counter()
        for pix, tok in batches:
            net.encode_image(pix)
            net.encode_text(tok)
        return time.perf_counter() - t, len(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--model", default=DEFAULT_CLIP_MODEL)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp), args.n, args.image_size)
        secs_model, n = model_only(ws, args.model, args.batch_size)
        stats: dict = {}
        t = time.perf_counter()
        embed_workspace(ws, model=args.model, pretrained="none", batch_size=args.batch_size, device="cpu",
                        num_workers=args.num_workers, show_progress=False, stats=stats)
        secs_total = time.perf_counter() - t
    loop = n / stats["seconds_loop"]
    model = n / secs_model
    print(f"{args.model}, {n} images {args.image_size}px PNG + text, batch {args.batch_size}, "
          f"{args.num_workers} workers, {torch.get_num_threads()} torch threads")
    print(f"model forward only (preprocessed batches): {model:8.1f} img/s")
    print(f"curate embed loop (decode+model+parts):    {loop:8.1f} img/s   ratio {loop / model:.2f}")
    print(f"curate embed end to end (incl. model load {stats['seconds_model_load']:.1f}s, dataset read): "
          f"{n / secs_total:8.1f} img/s   ratio {n / secs_total / model:.2f}")


if __name__ == "__main__":
    main()
