"""Check and time the CUDA paths against the CPU ones, in a few minutes, with nothing downloaded.

1. k-center: picks on a 200K x 512 clustered matrix on CUDA equal the CPU reference (float32: NumPy;
   float16: the CPU float16 path, exact over the same stored values), with picks/s on both and the GPU
   pass's fraction of the device's read bandwidth (measured here by a full read of the same bytes);
2. embedding: tiny-clip (random weights, no download) on a synthetic workspace on CUDA and on the CPU give
   the same vectors within tolerance;
3. training: a 20-step tiny LLaVA run on CUDA has a finite loss and its checkpoint loads on the CPU.

Exit 0 only if every check holds, 1 if one fails; on a machine without CUDA one line and exit 2.
Usage: ``python bench/gpu_check.py [--n 200000 --d 512 --k 100]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from kcenter_common import clustered, load_average

EMBED_TOLERANCE = 2e-3  # max |cuda - cpu| per value of unit-norm tiny-clip embeddings (TF32 off)


def cuda_read_bandwidth(t: torch.Tensor, repeats: int = 5) -> float:
    """Bytes/s of the fastest full read of ``t`` on its GPU (a max reduction over every element)."""
    best = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        t.max()
        torch.cuda.synchronize()
        best = max(best, t.numel() * t.element_size() / (time.perf_counter() - start))
    return best


def timed_picks(x: np.ndarray, k: int, device: str) -> tuple[list[int], float]:
    """Picks and seconds per pick of the engine on ``device`` (setup and first pick excluded)."""
    from curate.kcenter import pool_mean, run_greedy
    from curate.kcenter.backends import make_shard
    from curate.kcenter.engine import LocalComm

    shard, comm, stamps = make_shard(x, device), LocalComm(), []

    def on_pick(_g) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    picks, _ = run_greedy(shard, k, comm, offset=0, n_total=len(x), mean=lambda: pool_mean(x, comm, len(x)),
                          on_pick=on_pick)
    return picks.tolist(), float(np.median(np.diff(stamps)))


def check_kcenter(n: int, d: int, k: int) -> list[tuple[str, bool, str]]:
    x32 = clustered(n, d)
    results = []
    per_pick = {}
    for dtype, x, cpu_device in (("float32", x32, "numpy"), ("float16", x32.astype(np.float16), "cpu")):
        cpu, cpu_s = timed_picks(x, k, cpu_device)
        gpu, gpu_s = timed_picks(x, k, "cuda")
        per_pick[dtype] = gpu_s
        bound = x.nbytes / cuda_read_bandwidth(torch.from_numpy(x).cuda())
        detail = (f"{1 / gpu_s:.0f} picks/s on CUDA vs {1 / cpu_s:.1f} on CPU ({cpu_s / gpu_s:.1f}x); "
                  f"pass at {bound / gpu_s:.2f} of the read bandwidth")
        first_diff = next((i for i, (a, b) in enumerate(zip(cpu, gpu, strict=True)) if a != b), None)
        same = first_diff is None
        results.append((f"k-center {dtype} picks identical ({n:,} x {d}, k={k})", same,
                        detail if same else f"first difference at pick {first_diff}"))
    speedup = per_pick["float32"] / per_pick["float16"]
    results.append(("k-center float16 >= 1.8x float32 per pick on CUDA", speedup >= 1.8, f"{speedup:.2f}x"))
    return results


def check_embedding(root: Path) -> tuple[str, bool, str]:
    from curate.embed import embed_workspace
    from curate.embedding_sets import load_embeddings
    from curate.ingest import ingest_synthetic
    from datasets_spec.workspace import Workspace

    ws = Workspace(root / "embed-ws")
    ingest_synthetic(ws, seed=0)
    vectors = {}
    for device in ("cpu", "cuda"):
        embed_workspace(ws, model="tiny-clip", pretrained="none", device=device, num_workers=0,
                        tag=f"tiny-{device}", show_progress=False)
        vectors[device] = load_embeddings(ws, f"tiny-{device}")[0]
    diff = float(np.abs(vectors["cpu"] - vectors["cuda"]).max())
    return (f"tiny-clip embeddings on CUDA equal the CPU ones ({len(vectors['cpu'])} samples)",
            diff <= EMBED_TOLERANCE, f"max |difference| {diff:.2e} (tolerance {EMBED_TOLERANCE})")


def check_training(root: Path) -> tuple[str, bool, str]:
    import json

    from safetensors.torch import load_file

    from curate.ingest import ingest_synthetic
    from curate.select import select_subset
    from datasets_spec.workspace import Workspace
    from train.config import TrainConfig
    from train.runner import run_training

    ws = Workspace(root / "train-ws")
    ingest_synthetic(ws, seed=0)
    subset = select_subset(ws, "random", k=16, name="k16")
    config = TrainConfig(llm="tiny-llama", vision="tiny-clip", preset="tiny-cpu", stage="pretrain",
                         max_steps=20, max_length=512, eval_limit=0, run_name="gpu-check")
    run = run_training(ws, subset, config, command="gpu_check")
    losses = [v for p in run.rglob("train_metrics.json") for v in _losses(json.loads(p.read_text()))]
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    weights = sorted(run.rglob("*.safetensors"))
    loads = bool(weights) and all(bool(torch.isfinite(t.float()).all())
                                  for w in weights for t in load_file(str(w), "cpu").values())
    return ("20-step tiny training on CUDA: finite loss, checkpoint loads on CPU", finite and loads,
            f"losses {losses}, {len(weights)} weight file(s) loaded on CPU")


def _losses(metrics) -> list[float]:
    """Every ``*loss`` number in train_metrics.json (one summary per stage: ``{stage: summary}``)."""
    found = []
    for item in metrics.values() if isinstance(metrics, dict) else []:
        if isinstance(item, dict):
            found += [float(v) for key, v in item.items()
                      if key.endswith("loss") and isinstance(v, int | float)]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); "
              "nothing checked", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}; load average {load_average()}")
    torch.backends.cuda.matmul.allow_tf32 = False  # same float32 products as the CPU
    torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    results = check_kcenter(args.n, args.d, args.k)
    with tempfile.TemporaryDirectory() as tmp:
        results.append(check_embedding(Path(tmp)))
        results.append(check_training(Path(tmp)))
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    held = sum(ok for _, ok, _ in results)
    print(f"{held}/{len(results)} checks hold in {time.perf_counter() - start:.0f} s")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
