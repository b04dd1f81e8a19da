"""Benchmark the text embedders of `curate embed` against the tiny-clip open_clip path, in one process.

Workspace: the synthetic ScienceQA-like pool (``curate ingest synthetic``, QCM-LEA prompts, about half of
the samples with an image). Runs, each through the full embedder (dataset read, DataLoader, model, Parquet
parts), on CPU with one torch thread:

* baseline: tiny-clip with random weights, image + text fused by ``mean``;
* ``wordllama`` text only, and ``wordllama`` concatenated with the tiny-clip image vectors;
* ``st:<dir>`` when ``--st DIR`` names a sentence-transformers directory.

Prints samples/s of the embedding loop (model load excluded, reported separately) and the ratio to the
baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from curate.embed import embed_workspace
from curate.embed_text import embed_text
from curate.ingest import ingest_synthetic
from datasets_spec.workspace import Workspace


def _timed(fn, **kwargs) -> tuple[float, float, int]:
    stats: dict = {}
    fn(show_progress=False, stats=stats, threads=1, device="cpu", **kwargs)
    return stats["rows"] / stats["seconds_loop"], stats["seconds_model_load"], stats["rows"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1200, help="training samples of the synthetic pool")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    ap.add_argument("--st", type=Path, default=None, help="a sentence-transformers directory to time too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ingest_synthetic(ws, seed=0, n_train=args.n, n_val=0, n_test=0, prompt_format="QCM-LEA")
        runs = {
            "tiny-clip (image+text, mean)": (embed_workspace, {"model": "tiny-clip", "pretrained": "none",
                                                               "num_workers": args.num_workers}),
            "wordllama (text)": (embed_text, {"model": "wordllama"}),
            "wordllama + tiny-clip images (concat)": (embed_text, {
                "model": "wordllama", "fuse": "concat", "image_model": "tiny-clip", "pretrained": "none",
                "num_workers": args.num_workers}),
        }
        if args.st is not None:
            runs[f"st:{args.st.name} (text)"] = (embed_text, {"model": f"st:{args.st}"})
        results = {}
        t0 = time.perf_counter()
        # torch's first forward passes (kernel selection, allocator) would otherwise count against the
        # baseline, which runs first
        _timed(embed_workspace, ws=ws, tag="bench-warm-up", max_parts=1, rows_per_part=128,
               **runs["tiny-clip (image+text, mean)"][1])
        for name, (fn, kwargs) in runs.items():
            results[name] = _timed(fn, ws=ws, tag=f"bench-{len(results)}", **kwargs)
    base = next(iter(results.values()))[0]
    print(f"synthetic ScienceQA-like pool, CPU, 1 torch thread, {time.perf_counter() - t0:.0f}s in all")
    for name, (rate, load, rows) in results.items():
        print(f"{name:42s} {rows} samples {rate:9.1f} samples/s  x{rate / base:6.2f} vs tiny-clip  "
              f"(model load {load:.1f}s)")


if __name__ == "__main__":
    main()
