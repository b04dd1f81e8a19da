"""Benchmark the exact k-center engine (`l2-maxdiverse`): every backend against the plain loop and the bound.

One run, one clustered unit-norm matrix (like normalised CLIP embeddings), stored as float32 and float16,
measured in one process, side by side:

* default: what ``--device auto`` picks for each dtype (curate.kcenter.backends.backend_name);
* every backend and dtype: NumPy sgemv (float32), torch CPU float32 and float16 (the CUDA code run on the
  CPU), torch's float16 kernel with NumPy around it (float16);
* the plain sgemv greedy loop (6 lines, no exactness guarantees) and the bare pass of each kernel
  (``np.dot``, ``torch.mv`` float16), so the engine's per-pick overhead beyond its pass is a ratio;
* the read-bandwidth bound: bytes of one pass / the fastest full read of the same bytes.

Per pick: the fastest and the median of the timed picks after untimed warm-up picks (early float16 picks
recompute the new centre's large cell in float32; on a shared machine the median mostly measures other
jobs). A last section times k = the distinct count against k = the pool size on a pool of duplicates.
Usage: ``python bench/select_bench.py [--n 300000 --d 512 --k 15 --warmup 20]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from kcenter_common import clustered, load_average, read_bandwidth

from curate.kcenter import l2_maxdiverse, pool_mean, run_greedy
from curate.kcenter.backends import HalfCpuShard, NumpyShard, TorchShard, backend_name, make_shard
from curate.kcenter.engine import LocalComm


def engine_per_pick(shard, rows: np.ndarray, k: int, warmup: int) -> tuple[float, float]:
    """(fastest, median) seconds per pick of the greedy loop on ``shard`` after ``warmup`` picks."""
    stamps: list[float] = []
    comm = LocalComm()
    run_greedy(shard, k + warmup + 1, comm, offset=0, n_total=len(rows),
               mean=lambda: pool_mean(rows, comm, len(rows)),
               on_pick=lambda g: stamps.append(time.perf_counter()))
    gaps = np.diff(stamps[warmup:])
    return float(gaps.min()), float(np.median(gaps))


def plain_loop_per_pick(x: np.ndarray, k: int, warmup: int) -> tuple[float, float]:
    """The plain sgemv greedy loop: one ``x @ c`` per pick, running minimum, argmax."""
    sqn = np.einsum("ij,ij->i", x, x)
    min_d = np.full(len(x), np.inf, dtype=np.float32)
    c, stamps = x[0], []
    for _ in range(k + warmup + 1):
        stamps.append(time.perf_counter())
        np.minimum(min_d, sqn - 2.0 * (x @ c) + c @ c, out=min_d)
        c = x[int(np.argmax(min_d))]
    gaps = np.diff(stamps[warmup:])
    return float(gaps.min()), float(np.median(gaps))


def bare_pass(run, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(min(times)), float(np.median(times))


def backends(x32: np.ndarray, x16: np.ndarray) -> list[tuple[str, np.ndarray, object]]:
    """(label, rows, shard factory) of the default path per dtype and of every backend."""
    return [
        (f"default float32 ({backend_name('auto', np.float32)})", x32, lambda: make_shard(x32, "auto")),
        (f"default float16 ({backend_name('auto', np.float16)})", x16, lambda: make_shard(x16, "auto")),
        ("numpy sgemv float32", x32, lambda: NumpyShard(x32)),
        ("torch cpu float32", x32, lambda: TorchShard(x32, "cpu")),
        ("torch cpu float16", x16, lambda: TorchShard(x16, "cpu")),
        ("torch f16 kernel + numpy float16", x16, lambda: HalfCpuShard(x16)),
    ]


def main_table(x32: np.ndarray, k: int, warmup: int) -> None:
    x16 = x32.astype(np.float16)
    bounds = {"float32": x32.nbytes / read_bandwidth(x32), "float16": x16.nbytes / read_bandwidth(x16)}
    c32, c16 = x32[1].copy(), torch.from_numpy(x16[1].copy())
    t16, out16 = torch.from_numpy(x16), torch.empty(len(x16), dtype=torch.float16)
    bare = {"float32": bare_pass(lambda: np.dot(x32, c32), k),
            "float16": bare_pass(lambda: torch.mv(t16, c16, out=out16), k)}
    rows = [("plain sgemv loop float32", plain_loop_per_pick(x32, k, warmup), "float32")]
    for label, x, factory in backends(x32, x16):
        rows.append((label, engine_per_pick(factory(), x, k, warmup), str(x.dtype)))
    plain = rows[0][1][0]
    print(f"\n== per pick on {len(x32):,} x {x32.shape[1]} ({k} timed after {warmup} untimed; ms) ==")
    print(f"read-bandwidth bound: float32 {bounds['float32'] * 1e3:.1f} ms, float16 "
          f"{bounds['float16'] * 1e3:.1f} ms; bare pass (fastest/median): np.dot float32 "
          f"{_ms(bare['float32'])}, torch.mv float16 {_ms(bare['float16'])}")
    print(f"{'path':<48} {'fastest/median':>15} {'plain/this':>10} {'bound/this':>10} {'overhead':>9}")
    for label, (fast, med), dtype in rows:
        overhead = (fast - bare[dtype][0]) / bare[dtype][0]
        print(f"{label:<48} {_ms((fast, med)):>15} {plain / fast:>10.2f} {bounds[dtype] / fast:>10.2f} "
              f"{overhead:>8.0%}")
    d32, d16 = rows[1][1][0], rows[2][1][0]
    print(f"default vs plain sgemv loop: {plain / d32:.2f} (goal >= 0.9); float16 over float32 per pick "
          f"(default paths): {d32 / d16:.2f}x (goal >= 1.3x); overhead = (pick - bare pass) / bare pass")


def duplicates(n: int, n_distinct: int, d: int) -> None:
    rng = np.random.default_rng(1)
    distinct = rng.standard_normal((n_distinct, d), dtype=np.float32)
    x = np.concatenate([distinct, distinct[rng.integers(0, n_distinct, n - n_distinct)]])[rng.permutation(n)]
    times = {}
    for k in (n_distinct, n):
        start = time.perf_counter()
        l2_maxdiverse(x, k, device="auto")
        times[k] = time.perf_counter() - start
    print(f"\n== duplicates: {n:,} x {d} pool, {n_distinct:,} distinct rows ==")
    print(f"k={n_distinct}: {times[n_distinct]:.2f} s; k={n} (every row): {times[n]:.2f} s; ratio "
          f"{times[n] / times[n_distinct]:.2f} (goal <= 2)")


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1e3:.1f}/{pair[1] * 1e3:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=8, help="timed picks per path")
    ap.add_argument("--warmup", type=int, default=12, help="untimed picks first")
    ap.add_argument("--dup-n", type=int, default=3000, help="pool of the duplicates run (0: skip)")
    ap.add_argument("--dup-distinct", type=int, default=1674)
    args = ap.parse_args()
    t = time.perf_counter()
    x = clustered(args.n, args.d)
    print(f"data: {args.n:,} x {args.d} clustered unit-norm in {time.perf_counter() - t:.1f} s; "
          f"torch threads {torch.get_num_threads()}; load average {load_average()}")
    main_table(x, args.k, args.warmup)
    if args.dup_n:
        duplicates(args.dup_n, args.dup_distinct, 64)
    print(f"load average at the end: {load_average()}; total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
