"""Benchmark the exact k-center engine (`l2-maxdiverse`) against the read-bandwidth bound.

One run, one clustered unit-norm matrix (like normalised CLIP embeddings), stored as float32 and float16
memory maps. For N in a sweep and both dtypes, measured side by side:

* bound: bytes of one pass over X / read bandwidth (fastest full read pass over the same bytes: SIMD
  integer max on 1 and all threads, and torch.mv of the stored dtype);
* one process (torch CPU backend, all threads), one process on one thread, and two processes (gloo,
  torch.distributed, one thread each, each rank holding its contiguous slice of the memory map);
* the float16 / float32 speed per pick and the 2-process / 1-process speedup.

A second run at a field-like budget (20% of a small pool) counts how often near-ties need the exact
re-scoring. From these per-pass figures it projects 133K picks of a 665K x d pool here and, as a
projection only (no GPU on this machine), on one 80 GB GPU from its nominal bandwidth.
Usage: ``python bench/select_bench.py [--n-max 1000000 --d 512 --k 20]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from curate.kcenter import pool_mean, run_greedy
from curate.kcenter.backends import TorchShard
from curate.kcenter.engine import LocalComm

GB = 1e9
LLAVA_POOL, LLAVA_PICKS = 665_298, 133_060  # LLaVA-665K and its 20% budget


def clustered(n: int, d: int, n_clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit-norm vectors around random cluster centres."""
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
    """Bytes/s of the fastest full read pass over ``x``'s bytes (strict: the best pass sets the bound)."""
    threads = os.cpu_count() or 1
    words = x.reshape(-1).view(np.int32)
    chunks = np.array_split(words, threads)
    t = torch.from_numpy(x)
    ones = torch.ones(x.shape[1], dtype=t.dtype)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        passes = [words.max, lambda: list(pool.map(np.max, chunks)), lambda: torch.mv(t, ones)]
        for _ in range(repeats):
            for run in passes:
                start = time.perf_counter()
                run()
                best = max(best, x.nbytes / (time.perf_counter() - start))
    return best


def greedy_seconds_per_pick(rows: np.ndarray, k: int, comm, offset: int, n_total: int, warmup: int = 0):
    """(median, fastest) time per pick of the loop, and the loop's state (setup, mean, coverage excluded).

    The fastest pick is the figure comparable to the bound, which is also the fastest of its passes: on a
    shared machine the median mostly measures how long other jobs held the cores."""
    shard = TorchShard(rows, "cpu")
    stamps: list[float] = []
    holder: dict = {}

    def on_pick(g) -> None:
        stamps.append(time.perf_counter())
        holder["g"] = g

    run_greedy(shard, k + warmup, comm, offset=offset, n_total=n_total,
               mean=lambda: pool_mean(rows, comm, n_total), on_pick=on_pick)
    gaps = np.diff(stamps[warmup:])
    return (float(np.median(gaps)), float(gaps.min())), holder["g"]


def single(x: np.ndarray, k: int, threads: int, warmup: int = 0) -> tuple:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return greedy_seconds_per_pick(np.ascontiguousarray(x), k, LocalComm(), 0, len(x), warmup)
    finally:
        torch.set_num_threads(before)


def _rank(rank: int, world: int, port: int, path: str, n: int, k: int, warmup: int, out) -> None:
    import torch.distributed as dist

    from curate.kcenter.distributed import TorchComm, slice_bounds

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lo, hi = slice_bounds(n, rank, world)
    rows = np.array(np.load(path, mmap_mode="r")[lo:hi])  # only this rank's slice is read
    comm = TorchComm(owns_group=True)
    comm.barrier()
    per_pick, _ = greedy_seconds_per_pick(rows, k, comm, lo, n, warmup)
    if rank == 0:
        out.put(per_pick)
    comm.close()


def two_processes(path: Path, n: int, k: int, warmup: int) -> tuple:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(path), n, k, warmup, out)) for r in range(2)]
    for p in procs:
        p.start()
    while True:
        try:
            per_pick = tuple(out.get(timeout=5))
            break
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a rank of the 2-process run died (its traceback is above)") from None
    for p in procs:
        p.join()
    return per_pick


def sweep(files: dict, sizes: list[int], k: int, warmup: int, all_threads: bool) -> dict:
    print(f"\n== per pick, {k} timed picks per run after {warmup} untimed (ms) ==")
    print("median / fastest pick; ratios from the fastest; 1p = the faster of 1 process on all or 1 thread")
    print(f"{'N':>9} {'dtype':>7} {'MB/pass':>8} {'GB/s':>6} {'bound':>6} {'1 proc':>13} {'bound/1p':>8} "
          f"{'1p 1 thread':>13} {'2 procs':>13} {'2p/1p':>6} {'2p/1p1t':>7}")
    res = {}
    for n in sizes:
        for dtype, path in files.items():
            x = np.array(np.load(path, mmap_mode="r")[:n])  # in RAM, as the single process holds it
            bw = read_bandwidth(x)
            bound = x.nbytes / bw
            one_t, _ = single(x, k, 1, warmup)
            one, _ = single(x, k, os.cpu_count() or 1, warmup) if all_threads else (one_t, None)
            two = two_processes(path, n, k, warmup)
            best = min(one[1], one_t[1])  # one process, whichever thread count was faster
            res[(n, dtype)] = {"bw": bw, "bound": bound, "one": best, "two": two[1]}
            print(f"{n:>9} {dtype:>7} {x.nbytes / 1e6:>8.0f} {bw / GB:>6.1f} {bound * 1e3:>6.1f} "
                  f"{_ms(one):>13} {bound / best:>8.2f} {_ms(one_t):>13} {_ms(two):>13} "
                  f"{best / two[1]:>6.2f} {one_t[1] / two[1]:>7.2f}")
    print("\nfloat16 speed per pick over float32 (1 process):",
          ", ".join(f"N={n}: {res[(n, 'float32')]['one'] / res[(n, 'float16')]['one']:.2f}x" for n in sizes))
    return res


def _ms(pair: tuple) -> str:
    return f"{pair[0] * 1e3:.1f}/{pair[1] * 1e3:.1f}"


def late_stage(files: dict, n: int, fraction: float) -> dict:
    """A field-like budget on a small pool: how often and how much the exact re-scoring works."""
    k = int(fraction * n)
    print(f"\n== {fraction:.0%} budget: k={k} of N={n} (re-scoring of near-ties) ==")
    out = {}
    for dtype, path in files.items():
        x = np.array(np.load(path, mmap_mode="r")[:n])
        t = time.perf_counter()
        per_pick, g = single(x, k, os.cpu_count() or 1)
        total = time.perf_counter() - t
        bound = x.nbytes / read_bandwidth(x)
        share = g.rescored_picks / k
        per_rescored = g.rescored_samples / max(1, g.rescored_picks)
        out[dtype] = {"share": share, "cands": per_rescored}
        print(f"{dtype}: {total:.1f} s, {_ms(per_pick)} ms/pick ({bound / per_pick[1]:.2f} of the bound), "
              f"{share:.1%} of picks re-scored, {per_rescored:.1f} samples each")
    return out


def project(res: dict, late: dict, n_max: int, d: int, gpu_bw: float, gpu_eff: float) -> None:
    """Per pick = one pass at the measured fraction of the bound + re-scored picks x their cost."""
    print(f"\n== projection: {LLAVA_PICKS:,} picks of {LLAVA_POOL:,} x {d} ==")
    for dtype, item in (("float32", 4), ("float16", 2)):
        m = res[(n_max, dtype)]
        pass_bytes = LLAVA_POOL * d * item
        frac = m["bound"] / m["one"]
        here = pass_bytes / m["bw"] / frac
        # a re-scored pick reads the selected float64 centres once per candidate, on the pass's device
        centres = late[dtype]["share"] * late[dtype]["cands"] * (LLAVA_PICKS / 2) * d * 8
        rescore_here, rescore_gpu = centres / m["bw"], centres / (gpu_bw * gpu_eff)
        gpu = pass_bytes / (gpu_bw * gpu_eff) + 1e-4  # + ~0.1 ms of launches and host syncs per pick
        print(f"{dtype}: this machine {LLAVA_PICKS * (here + rescore_here) / 3600:.2f} h "
              f"({here * 1e3:.1f} ms/pass at {m['bw'] / GB:.1f} GB/s x {frac:.2f} + "
              f"{rescore_here * 1e3:.1f} ms re-scoring per pick on average); one 80 GB GPU (projection, "
              f"{gpu_bw / 1e12:.2f} TB/s x "
              f"{gpu_eff:.2f}): {LLAVA_PICKS * (gpu + rescore_gpu) / 60:.1f} min ({gpu * 1e3:.3f} ms/pass + "
              f"{rescore_gpu * 1e3:.3f} ms re-scoring)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-max", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=20, help="picks per timed run of the sweep")
    ap.add_argument("--warmup", type=int, default=0, help="untimed picks first (float16: early picks "
                    "recompute the new centre's large cell in float32)")
    ap.add_argument("--one-thread-only", action="store_true",
                    help="skip the single process on all threads (slow and noisy on a crowded machine)")
    ap.add_argument("--late-n", type=int, default=20_000, help="pool of the 20%% budget run (0: skip)")
    ap.add_argument("--gpu-bw", type=float, default=3.35e12, help="H100 80 GB SXM nominal HBM3 bytes/s")
    ap.add_argument("--gpu-efficiency", type=float, default=0.8, help="assumed fraction of it a gemv reaches")
    args = ap.parse_args()
    sizes = [args.n_max // 8, args.n_max // 4, args.n_max // 2, args.n_max]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        x = clustered(args.n_max, args.d)
        files = {"float32": Path(tmp) / "x32.npy", "float16": Path(tmp) / "x16.npy"}
        np.save(files["float32"], x)
        np.save(files["float16"], x.astype(np.float16))
        del x
        print(f"data: {args.n_max} x {args.d} clustered unit-norm, float32 + float16 memory maps, "
              f"{time.perf_counter() - t:.1f} s; {os.cpu_count()} cores, load average "
              f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
        res = sweep(files, sizes, args.k, args.warmup, not args.one_thread_only)
        if args.late_n:
            late = late_stage(files, args.late_n, 0.2)
            project(res, late, args.n_max, args.d, args.gpu_bw, args.gpu_efficiency)
    print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
