"""What the k-center benchmarks share: the clustered test matrix and the read-bandwidth probe."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def clustered(n: int, d: int, n_clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit-norm float32 vectors around random cluster centres (like normalised CLIP embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        block = centres[rng.integers(0, n_clusters, stop - start)]
        block = block + 0.5 * rng.standard_normal((stop - start, d), dtype=np.float32)
        x[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def read_bandwidth(x: np.ndarray, repeats: int = 3) -> float:
    """Bytes/s of the fastest full read pass over ``x``'s bytes, so the bound it sets is a strict one.

    Candidates: a SIMD integer max over the flat bytes on one thread and on one thread per core, and a
    matrix-vector product with a vector of ones in ``x``'s dtype (BLAS for float32, torch for float16).
    """
    threads = os.cpu_count() or 1
    words = x.reshape(-1).view(np.int16 if x.dtype == np.float16 else np.int32)
    chunks = np.array_split(words, threads)
    if x.dtype == np.float16:
        import torch

        t, ones = torch.from_numpy(x), torch.ones(x.shape[1], dtype=torch.float16)
        product = lambda: torch.mv(t, ones)  # noqa: E731
    else:
        ones32 = np.ones(x.shape[1], dtype=np.float32)
        product = lambda: x @ ones32  # noqa: E731
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        passes = [words.max, lambda: list(pool.map(np.max, chunks)), product]
        for _ in range(repeats):
            for run in passes:
                start = time.perf_counter()
                run()
                best = max(best, x.nbytes / (time.perf_counter() - start))
    return best


def load_average() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())
