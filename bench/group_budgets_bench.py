"""Benchmark per-group selection (curate.group_budgets) against the same strategy on the whole pool.

Data: 665,000 x 512 float32 seeded standard-normal rows, cut into 12 groups of Zipf-like sizes (the
largest ~12x the smallest, labels shuffled over the rows), k = 20% for ``random`` and ``leverage`` and
k = 100 for ``l2-maxdiverse`` (the greedy k-center at 20% would take hours either way); ``random`` gets
a matrix with no columns, as in ``curate select`` (it reads no embedding set). Grouped time
covers the allocation, the per-group row lookup, the sub-matrix copies and the strategy calls; both sides
run in this process, alternating, so a busy machine slows both alike.

Printed per strategy: min / median seconds of ``--repeats`` runs, grouped and ungrouped, and the ratio of
the medians (grouped / ungrouped).
Usage (from the repository root):
``python -m bench.group_budgets_bench [--n 665000 --d 512 --groups 12 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from curate.group_budgets import allocate, group_sizes, select_within_groups
from curate.registry import NEEDS_EMBEDDINGS, get_strategy

# strategy -> (k as a share of the pool, or an absolute k when >= 1; keyword options)
CASES = {"random": (0.2, {}), "leverage": (0.2, {}), "l2-maxdiverse": (100, {"device": "auto"})}


def labels(n: int, groups: int, seed: int = 0) -> np.ndarray:
    """Group names g00..g<groups-1> with sizes proportional to 1 / (i + 1), in a seeded random order."""
    weights = 1.0 / np.arange(1, groups + 1)
    sizes = np.floor(n * weights / weights.sum()).astype(np.int64)
    sizes[0] += n - sizes.sum()
    names = np.repeat(np.array([f"g{i:02d}" for i in range(groups)], dtype=object), sizes)
    return names[np.random.default_rng(seed).permutation(n)]


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def grouped(fn, x: np.ndarray, k: int, names: np.ndarray, **opts) -> np.ndarray:
    allocation = allocate(group_sizes(names), k, rule="proportional")
    return select_within_groups(fn, x, k, names, allocation, seed=0, **opts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=665_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(CASES))
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((args.n, args.d), dtype=np.float32)
    names = labels(args.n, args.groups)
    sizes = group_sizes(names)
    print(f"N = {args.n:,} x d = {args.d} float32, {len(sizes)} groups (sizes {min(sizes.values()):,} .. "
          f"{max(sizes.values()):,}), load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for strategy in args.strategies.split(","):
        share, opts = CASES[strategy]
        k = int(share) if share >= 1 else int(round(share * args.n))
        fn = get_strategy(strategy)
        # as curate select does: a strategy that reads no embedding set gets a matrix with no columns
        data = x if NEEDS_EMBEDDINGS[strategy] else np.empty((args.n, 0), dtype=np.float32)
        plain, split = [], []
        for _ in range(args.repeats):
            plain.append(timed(fn, data, k, seed=0, **opts))
            split.append(timed(grouped, fn, data, k, names, **opts))
        ratio = statistics.median(split) / statistics.median(plain)
        print(f"{strategy:>14} k={k:<7,} ungrouped min {min(plain):7.2f} s  median "
              f"{statistics.median(plain):7.2f} s | grouped min {min(split):7.2f} s  median "
              f"{statistics.median(split):7.2f} s"
              f" | grouped / ungrouped {ratio:.2f}x", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
