"""Benchmark `l2-maxdiverse` (exact greedy k-center) against baselines on clustered synthetic embeddings.

Measured side by side in one process on the same float32 matrix:

* ours: ``curate.strategies.l2_maxdiverse`` (one sgemv pass over X per step);
* the bound ``k * bytes(X) / read bandwidth``, the bandwidth measured here by full read passes over X
  (fastest of SIMD max on 1 and all threads, and BLAS X @ ones);
* a plain NumPy loop ``((X - c) ** 2).sum(1)`` per step (timed for a few steps, per-step cost compared);
* a DeepCore-style k-center that keeps the k x N distance matrix (refused when it would not fit the
  memory budget; the needed bytes are printed).

Prints ratios (bound / ours, baseline / ours), linear growth in N and in k, and peak extra RSS (above the
matrix) of each method.
Usage: ``python bench/kcenter_baselines_bench.py [--n-max 1000000 --k 100 --k-sweep 100,300,1000]``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import psutil
from kcenter_common import clustered, read_bandwidth

from curate.kcenter import l2_maxdiverse

GB = 1e9


class PeakRSS:
    """Sample this process's RSS every few ms; ``extra`` = peak minus RSS at entry."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.extra = self.peak - self.base
        return False


def numpy_loop_step_seconds(x: np.ndarray, steps: int) -> float:
    """Per-step time of the naive loop: ((X - c) ** 2).sum(1), running min, argmax."""
    min_d = np.full(x.shape[0], np.inf, dtype=np.float32)
    c = x[0]
    t = time.perf_counter()
    for _ in range(steps):
        d = ((x - c) ** 2).sum(1)
        np.minimum(min_d, d, out=min_d)
        c = x[int(np.argmax(min_d))]
    return (time.perf_counter() - t) / steps


def deepcore_style(x: np.ndarray, k: int) -> np.ndarray:
    """k-center greedy keeping the k x N matrix of distances to every selected centre (as DeepCore does)."""
    n = x.shape[0]
    sqn = np.einsum("ij,ij->i", x, x)
    dist = np.empty((k, n), dtype=np.float32)
    picks = [int(np.argmax(sqn))]
    for i in range(k - 1):
        c = x[picks[-1]]
        row = dist[i]
        np.dot(x, c, out=row)
        row *= -2.0
        row += sqn
        row += sqn[picks[-1]]
        mins = dist[: i + 1].min(axis=0)
        mins[picks] = -np.inf
        picks.append(int(np.argmax(mins)))
    return np.asarray(picks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-max", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=100, help="k for the N sweep and the baselines")
    ap.add_argument("--k-sweep", default="100,300,1000", help="k values run at N = n-max")
    ap.add_argument("--baseline-steps", type=int, default=5, help="steps timed for the NumPy loop")
    ap.add_argument("--deepcore-budget-gb", type=float, default=4.0, help="largest k x N matrix attempted")
    args = ap.parse_args()

    t = time.perf_counter()
    x_all = clustered(args.n_max, args.d)
    print(f"data: {args.n_max} x {args.d} float32 clustered ({x_all.nbytes / GB:.2f} GB), "
          f"generated in {time.perf_counter() - t:.1f}s; {os.cpu_count()} cores")
    sizes = [args.n_max // 8, args.n_max // 4, args.n_max // 2, args.n_max]
    print(f"\n== N sweep at k={args.k} ==")
    print(f"{'N':>9} {'GB/s':>6} {'bound s':>8} {'ours s':>8} {'bound/ours':>10} {'ours us/row':>11} "
          f"{'numpy s':>8} {'numpy/ours':>10} {'deepcore s':>10} {'dc/ours':>7} "
          f"{'RSS+ ours':>9} {'RSS+ numpy':>10} {'RSS+ dc':>8}")
    l2_maxdiverse(x_all[: sizes[0]], 5)  # warm-up: BLAS threads, page faults of the first rows
    per_row = []
    for n in sizes:
        x = x_all[:n]
        bw = read_bandwidth(x)
        bound = args.k * x.nbytes / bw
        with PeakRSS() as m_ours:
            t = time.perf_counter()
            l2_maxdiverse(x, args.k)
            ours = time.perf_counter() - t
        per_row.append(ours / n * 1e6)
        with PeakRSS() as m_np:
            numpy_total = numpy_loop_step_seconds(x, args.baseline_steps) * args.k
        need = args.k * n * 4
        if need > args.deepcore_budget_gb * GB:
            dc_s, dc_ratio, dc_mem = "OOM>budget", "-", "-"
        else:
            with PeakRSS() as m_dc:
                t = time.perf_counter()
                deepcore_style(x, args.k)
                dc = time.perf_counter() - t
            dc_s, dc_ratio, dc_mem = f"{dc:.2f}", f"{dc / ours:.2f}", f"{m_dc.extra / 1e6:.0f}MB"
        print(f"{n:>9} {bw / GB:>6.1f} {bound:>8.2f} {ours:>8.2f} {bound / ours:>10.2f} {per_row[-1]:>11.3f} "
              f"{numpy_total:>8.1f} {numpy_total / ours:>10.1f} {dc_s:>10} {dc_ratio:>7} "
              f"{m_ours.extra / 1e6:>7.0f}MB {m_np.extra / 1e6:>8.0f}MB {dc_mem:>8}")
    ratio = per_row[0] / per_row[-1]
    print(f"linear in N: time per row at N={sizes[0]} / N={sizes[-1]}: {ratio:.2f} (1.0 = linear)")

    print(f"\n== k sweep at N={args.n_max} ==")
    bw = read_bandwidth(x_all)
    print(f"{'k':>6} {'bound s':>8} {'ours s':>8} {'bound/ours':>10} {'ours s/step':>11} {'RSS+':>8} "
          f"{'deepcore k x N bytes':>21}")
    for k in [int(v) for v in args.k_sweep.split(",") if v]:
        bound = k * x_all.nbytes / bw
        with PeakRSS() as m:
            t = time.perf_counter()
            l2_maxdiverse(x_all, k)
            ours = time.perf_counter() - t
        need = k * args.n_max * 4
        verdict = "fits budget" if need <= args.deepcore_budget_gb * GB else "exceeds budget"
        print(f"{k:>6} {bound:>8.1f} {ours:>8.1f} {bound / ours:>10.2f} {ours / k:>11.4f} "
              f"{m.extra / 1e6:>6.0f}MB {need / GB:>8.1f} GB ({verdict})")
    print(f"read bandwidth (best full pass over X): {bw / GB:.1f} GB/s")


if __name__ == "__main__":
    main()
