"""Exact k-center engine: torch backend, float16 storage, sharding over ranks, against brute force."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_strategies import brute_force_k_center, seeded_cases

from curate.kcenter import l2_maxdiverse, pool_mean, run_greedy
from curate.kcenter.backends import NumpyShard, TorchShard, make_shard
from curate.kcenter.distributed import slice_bounds
from curate.kcenter.engine import LocalComm
from curate.kcenter.exact import carry_sum, pass_bound
from datasets_spec.errors import UserError

CASES = list(seeded_cases())
IDS = [name for name, _ in CASES]


@pytest.mark.parametrize("name,x", CASES, ids=IDS)
def test_torch_cpu_matches_brute_force_and_numpy(name, x):
    k = min(80, len(x))
    ref = brute_force_k_center(x, k)
    assert l2_maxdiverse(x, k, device="cpu").tolist() == ref
    assert l2_maxdiverse(x, k, device="numpy").tolist() == ref


def _float16_cases():
    for name, x in CASES:
        if name != "offset":  # |x|^2 = 8e4 overflows float16 dot products (refused, tested below)
            yield name, x.astype(np.float16)


@pytest.mark.parametrize("name,x16", list(_float16_cases()), ids=[n for n, _ in _float16_cases()])
def test_float16_is_exact_for_the_stored_values(name, x16):
    k = min(80, len(x16))
    assert l2_maxdiverse(x16, k, device="cpu").tolist() == brute_force_k_center(x16, k)


def test_float16_rounding_decides_ties_the_float32_values_would_not():
    # Two far points whose float32 distances to the rest differ by less than float16 resolution: rounded
    # to float16 they are the same point, so the lowest index wins; in float32 the farther one wins.
    base = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    far = np.array([[3.0, 3.0], [3.0, 3.0 + 2e-4]], dtype=np.float32)
    x = np.concatenate([base, far])
    assert x.astype(np.float16)[3].tolist() == x.astype(np.float16)[4].tolist()
    picks32 = l2_maxdiverse(x, 3, device="cpu").tolist()
    picks16 = l2_maxdiverse(x.astype(np.float16), 3, device="cpu").tolist()
    assert picks32 == brute_force_k_center(x, 3) and picks32[0] == 4
    assert picks16 == brute_force_k_center(x.astype(np.float16), 3) and picks16[0] == 3


def test_pass_bound_holds_for_torch_float16_and_float32_passes():
    """The widened bound covers the measured error of torch's float16 dot products (and float32's)."""
    rng = np.random.default_rng(5)
    for d in (8, 64, 512):
        # aligned positive vectors make |x.c| as large as it gets for their norms
        x = np.abs(rng.normal(size=(4000, d))).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True) / rng.uniform(0.5, 4.0, size=(4000, 1))
        for dtype in (np.float32, np.float16):
            xs = x.astype(dtype)
            shard = TorchShard(xs, "cpu")
            c = xs[7].astype(np.float64)
            got = shard._distances(c).numpy().astype(np.float64)  # the float16 screen itself
            exact = ((xs.astype(np.float64) - c) ** 2).sum(1)
            reach = float(np.sqrt(shard.max_sqnorm())) + float(np.sqrt(c @ c))
            err = np.abs(got - exact).max()
            assert err <= pass_bound(d, reach, dtype == np.float16) / 1.01
            if dtype == np.float16:  # the float16 rounding is real: the float32 bound would not hold
                assert err > pass_bound(d, reach, False)


def test_float16_with_large_norms_is_refused():
    x = (np.ones((10, 4)) * 100).astype(np.float16)
    with pytest.raises(UserError, match="overflow float16"):
        l2_maxdiverse(x, 3, device="cpu")
    with pytest.raises(UserError, match="torch backend"):
        make_shard(x, "numpy")


def test_unavailable_cuda_and_unknown_device_are_user_errors():
    x = np.zeros((5, 2), dtype=np.float32)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            l2_maxdiverse(x, 2, device="cuda")
    with pytest.raises(UserError, match="valid: auto, cpu"):
        l2_maxdiverse(x, 2, device="tpu")


def test_carry_sum_is_cut_invariant_and_equals_numpy_mean():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(30000, 24)) * 10 + 1e3).astype(np.float32)
    whole = carry_sum(x)
    assert np.array_equal(whole / len(x), np.mean(x, axis=0, dtype=np.float64))
    for cuts in ([7], [9999, 20001], [1, 2, 29999]):
        carry = None
        for part in np.split(x, cuts):
            carry = carry_sum(part, carry)
        assert np.array_equal(carry, whole)


class ThreadComm:
    """A world of ``world`` ranks as threads, summing payloads like an all-reduce (for unit tests)."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.world, self.shared = rank, shared["world"], shared

    def _reduce(self, value, combine):
        s = self.shared
        s["barrier"].wait()
        s["slots"][self.rank] = value
        s["barrier"].wait()
        out = combine(s["slots"])
        s["barrier"].wait()
        return out

    def all_reduce_sum(self, values):
        return self._reduce(values, lambda slots: np.sum(slots, axis=0))

    def all_reduce_max(self, value):
        return self._reduce(value, max)

    def chain_sum(self, rows, step):
        carry = None
        for r in range(self.world):
            got = self._reduce(rows if r == self.rank else None, lambda slots, r=r: slots[r])
            carry = step(got, carry)
        return carry

    def barrier(self):
        self.shared["barrier"].wait()


def sharded(x: np.ndarray, k: int, world: int, backend) -> list[list[int]]:
    shared = {"world": world, "barrier": threading.Barrier(world), "slots": [None] * world}
    out: list = [None] * world

    def rank(r: int) -> None:
        comm = ThreadComm(r, shared)
        lo, hi = slice_bounds(len(x), r, world)
        rows = x[lo:hi]
        picks, _ = run_greedy(backend(rows), k, comm, offset=lo, n_total=len(x),
                              mean=lambda: pool_mean(rows, comm, len(x)))
        out[r] = picks.tolist()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("world", [2, 3, 7])
@pytest.mark.parametrize("name,x", CASES, ids=IDS)
def test_sharded_ranks_agree_with_brute_force(name, x, world):
    k = min(60, len(x))
    ref = brute_force_k_center(x, k)
    for backend in (NumpyShard, lambda rows: TorchShard(rows, "cpu")):
        per_rank = sharded(x, k, world, backend)
        assert all(p == ref for p in per_rank)


def test_duplicates_across_a_slice_boundary_go_to_the_lowest_global_index():
    # rows 0..5 identical pairs straddling the cut at 3 (world 2 of 6 rows): (2, 3) are the same point
    x = np.array([[0, 0], [5, 5], [9, 9], [9, 9], [1, 8], [1, 8]], dtype=np.float32)
    ref = brute_force_k_center(x, 4)
    assert 2 in ref and 3 not in ref
    assert sharded(x, 4, 2, NumpyShard) == [ref, ref]


def test_checkpoints_resume_from_the_newest_pick_count_every_rank_has(tmp_path):
    from types import SimpleNamespace

    from curate.kcenter.pool import Checkpoints

    shared = {"world": 2, "barrier": threading.Barrier(2), "slots": [None] * 2}
    found: list = [None, None]

    def rank(r: int) -> None:
        comm = ThreadComm(r, shared)
        ck = Checkpoints(tmp_path / "ck", "key", comm, every=2)
        assert ck.open() is None
        saved = (2, 4, 6) if r == 0 else (2, 4)  # rank 1 was killed before writing pick 6
        for m in saved:
            state = (np.full(3, float(m + r), np.float32), np.full(3, m, np.int64))
            shard = SimpleNamespace(state=lambda s=state: s)
            g = SimpleNamespace(picks=list(range(m)), k=10, bound=0.5, shard=shard)
            ck.maybe_save(g)
        comm.barrier()
        found[r] = Checkpoints(tmp_path / "ck", "key", comm, every=2).open()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(f.picks) for f in found] == [4, 4]
    assert found[0].min_d.tolist() == [4.0] * 3 and found[1].min_d.tolist() == [5.0] * 3
    # two newest kept per rank
    assert sorted(p.name for p in (tmp_path / "ck").glob("rank-00000-*")) == [
        "rank-00000-000000004.npz", "rank-00000-000000006.npz"]


def greedy_reference(x: np.ndarray, k: int) -> list[int]:
    """Plain float64 greedy k-center: farthest from the mean first, then farthest from the picks;
    ties (duplicates included) -> lowest index."""
    x64 = x.astype(np.float64)
    picks = [int(np.argmax(((x64 - np.mean(x, axis=0, dtype=np.float64)) ** 2).sum(1)))]
    min_d = np.full(len(x), np.inf)
    while len(picks) < k:
        min_d = np.minimum(min_d, ((x64 - x64[picks[-1]]) ** 2).sum(1))
        min_d[picks] = -np.inf
        picks.append(int(np.argmax(min_d)))
    return picks


def _many_duplicates(seed: int = 4) -> np.ndarray:
    """400 rows drawn from 70 distinct ones (uneven multiplicities), rows shuffled."""
    rng = np.random.default_rng(seed)
    distinct = rng.normal(size=(70, 6)).astype(np.float32)
    return distinct[rng.integers(0, 70, 400)]


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_duplicates_beyond_the_distinct_count_follow_the_tie_order(device):
    x = _many_duplicates()
    n_distinct = len(np.unique(x, axis=0))
    assert n_distinct < 70 + 1 and len(x) == 400
    for k in (n_distinct - 1, n_distinct, n_distinct + 1, 250, len(x)):
        assert l2_maxdiverse(x, k, device=device).tolist() == greedy_reference(x, k), k


def test_duplicates_are_picked_without_a_pass_once_only_duplicates_are_left(monkeypatch):
    x = _many_duplicates()
    n_distinct = len(np.unique(x, axis=0))
    passes = []
    original = NumpyShard.update

    def counted(self, *args, **kwargs):
        passes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NumpyShard, "update", counted)
    assert l2_maxdiverse(x, len(x), device="numpy").tolist() == greedy_reference(x, len(x))
    assert len(passes) == n_distinct  # one pass per distinct pick, none for the duplicates after them


def test_signed_zeros_are_duplicates():
    x = np.array([[0.0, 1.0], [-0.0, 1.0], [3.0, 3.0], [0.0, -1.0]], dtype=np.float32)
    assert l2_maxdiverse(x, 4).tolist() == greedy_reference(x, 4)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_ranks_agree_on_duplicates_beyond_the_distinct_count(world):
    x = _many_duplicates(seed=9)
    for backend in (NumpyShard, lambda rows: TorchShard(rows, "cpu")):
        assert sharded(x, 300, world, backend) == [greedy_reference(x, 300)] * world


def test_resume_while_only_duplicates_are_left_continues_the_tie_order():
    from curate.kcenter.engine import Resume

    x = _many_duplicates()
    comm = LocalComm()
    shard, seen = NumpyShard(x), {}
    cut, _ = run_greedy(shard, 200, comm, offset=0, n_total=len(x), mean=lambda: pool_mean(x, comm, len(x)),
                        stop_after=150, on_pick=lambda g: seen.update(g=g))
    assert seen["g"].duplicates is not None  # stopped after the distinct rows ran out
    min_d, nearest = shard.state()
    resume = Resume(cut, seen["g"].bound, min_d, nearest)
    fresh = NumpyShard(x)
    picks, coverage = run_greedy(fresh, 300, comm, offset=0, n_total=len(x), mean=lambda: None, resume=resume)
    assert picks.tolist() == greedy_reference(x, 300)
    assert coverage.radius == 0.0 and coverage.farthest_pool_index == greedy_reference(x, 301)[-1]


@pytest.mark.parametrize("name,x16", list(_float16_cases()), ids=[n for n, _ in _float16_cases()])
def test_torch_shard_float16_is_exact_for_the_stored_values(name, x16):
    # the CUDA backend's code, run on the CPU
    k = min(60, len(x16))
    comm = LocalComm()
    picks, _ = run_greedy(TorchShard(x16, "cpu"), k, comm, offset=0, n_total=len(x16),
                          mean=lambda: pool_mean(x16, comm, len(x16)))
    assert picks.tolist() == brute_force_k_center(x16, k)


def test_half_cpu_pass_is_within_the_float16_bound():
    from curate.kcenter.backends import HalfCpuShard

    rng = np.random.default_rng(6)
    x = np.abs(rng.normal(size=(3000, 256))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) / rng.uniform(0.5, 4.0, size=(3000, 1))
    x16 = x.astype(np.float16)
    shard = HalfCpuShard(x16)
    c = x16[11].astype(np.float64)
    got = shard._distances(c).astype(np.float64)
    exact = ((x16.astype(np.float64) - c) ** 2).sum(1)
    reach = float(np.sqrt(shard.max_sqnorm())) + float(np.sqrt(c @ c))
    err = np.abs(got - exact).max()
    assert pass_bound(256, reach, False) < err <= pass_bound(256, reach, True) / 1.01


def test_device_rule_picks_the_blas_pass_for_float32_and_the_half_kernel_for_float16():
    from curate.kcenter.backends import HalfCpuShard, backend_name

    x = np.zeros((4, 3), dtype=np.float32)
    assert backend_name("numpy", np.float32) == "numpy-float32"
    if not torch.cuda.is_available():
        assert backend_name("auto", np.float32) == "numpy-float32"
        assert backend_name("auto", np.float16) == "torch-float16-cpu"
        assert type(make_shard(x, "auto")) is NumpyShard
        assert type(make_shard(x.astype(np.float16), "auto")) is HalfCpuShard
    assert backend_name("cpu", np.float16) == "torch-float16-cpu"
