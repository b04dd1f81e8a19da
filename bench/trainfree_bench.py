"""Benchmark the training-free selectors and D2-Pruning at LLaVA-665K scale beside one k-means pass.

Data: the synthetic 665,298 x 512 float32 unit vectors of bench/methods_bench.py (1,000 centres, 10%
near-copies); D2-Pruning's difficulty scores are seeded uniform numbers (the cost does not depend on
them). Each method runs in its own child process so its peak RSS (VmHWM minus the RSS after the matrix
is built) is its own. The baseline is one FAISS k-means pass as semdedup runs it (its default cluster
count, 20 iterations, spherical) plus the nearest-centroid assignment, in the same run.

Printed: seconds and peak extra memory per method, each method's time / the k-means pass (goal <= 3x),
and, for D2-Pruning's approximate neighbours (pools above curate.d2pruning.EXACT_KNN_MAX), recall@5
against an exact search for 1,000 seeded queries.
Usage: ``python bench/trainfree_bench.py [--n 665298 --d 512 --methods kmeans,leverage,...]``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from bench.methods_bench import BUDGET, GB, kmeans_pass, measure_in_child

METHODS = "kmeans,leverage,centred-correlation,d2-pruning,knn-recall"


def _knn_recall(x: np.ndarray, queries: int = 1000, m: int = 5) -> float:
    import faiss

    from curate.d2pruning import nearest_neighbors

    approx = nearest_neighbors(x, m, seed=0)
    picks = np.random.default_rng(0).choice(len(x), size=queries, replace=False)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, exact = index.search(x[picks], m + 1)
    hits = [len(set(approx[q]) & (set(exact[i]) - {q})) / m for i, q in enumerate(picks)]
    return float(np.mean(hits))


def _run_method(method: str, x: np.ndarray, k: int, report: dict) -> None:
    n = len(x)
    if method == "kmeans":
        kmeans_pass(x)
    elif method == "leverage":
        from curate.leverage import leverage

        leverage(x, k, report=report)
    elif method == "centred-correlation":
        from curate.correlation import centred_correlation

        centred_correlation(x, k, report=report)
    elif method == "d2-pruning":
        from curate.d2pruning import d2_pruning

        d2_pruning(x, k, scores=np.random.default_rng(0).random(n), report=report)
    elif method == "knn-recall":
        report["recall_at_5"] = _knn_recall(x)


def measure(method: str, n: int, d: int) -> dict:
    return measure_in_child(_run_method, method, n, d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=665_298)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--methods", default=METHODS)
    args = parser.parse_args()
    print(f"N = {args.n:,} x d = {args.d} float32 ({args.n * args.d * 4 / GB:.2f} GB), k = {BUDGET:.0%}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = {}
    for method in args.methods.split(","):
        results[method] = r = measure(method, args.n, args.d)
        print(f"{method:>20}: {r['seconds']:8.1f} s   peak extra {r['extra_gb']:.2f} GB   "
              f"{json.dumps(r['report'])}", flush=True)
    if "kmeans" in results:
        base = results["kmeans"]["seconds"]
        for method in ("leverage", "centred-correlation", "d2-pruning"):
            if method in results:
                print(f"{method} / one k-means pass: {results[method]['seconds'] / base:.2f}x (goal <= 3x)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
