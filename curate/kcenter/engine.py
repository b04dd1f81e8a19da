"""The greedy k-center loop over one or many ranks' slices of the pool.

Each rank holds a contiguous slice (global pool index = ``offset`` + local index) in a backend
(:mod:`curate.kcenter.backends`). Per pick, every rank contributes its local best (value, global index,
number of near-ties, row) to one all-reduce; when a single sample is within the rounding bound of the
global best it is the pick, and its row arrived with the all-reduce. Otherwise (near-ties) every rank
re-scores its near-tie samples exactly and a second all-reduce picks the largest exact value, ties ->
lowest global index. One process is the same code with a world of one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from curate.kcenter.exact import exact_sq_dists, mean_bound, pass_bound

# Near-tie candidates re-scored per block (bounded float64 copies of their rows).
_RESCORE_BLOCK = 65536


class LocalComm:
    """A world of one: every reduction is the identity."""

    rank, world = 0, 1

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def all_reduce_max(self, value: float) -> float:
        return value

    def chain_sum(self, rows: np.ndarray, step: Callable) -> np.ndarray:
        return step(rows, None)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Resume:
    """A checkpointed selection: picks so far, the running bound, and this rank's pass state."""

    picks: np.ndarray
    bound: float
    min_d: np.ndarray
    nearest: np.ndarray


@dataclass
class Coverage:
    radius: float
    mean_distance: float
    farthest_pool_index: int
    sizes: np.ndarray

    def report(self) -> dict:
        s = self.sizes
        return {
            "radius": round(self.radius, 6),
            "mean_distance": round(self.mean_distance, 6),
            "farthest_pool_index": self.farthest_pool_index,
            "cluster_sizes": {
                "min": int(s.min()), "median": float(np.median(s)), "mean": round(float(s.mean()), 3),
                "max": int(s.max()), "singletons": int((s == 1).sum()),
            },
        }


class Greedy:
    """State of one selection on one rank; :meth:`run` performs the picks."""

    def __init__(self, shard, k: int, comm, *, offset: int, n_total: int) -> None:
        self.shard, self.k, self.comm, self.offset, self.n_total = shard, k, comm, offset, n_total
        self.max_norm = float(np.sqrt(comm.all_reduce_max(shard.max_sqnorm())))
        self.centers = shard.make_centers(k)
        self.picks: list[int] = []
        self.bound = 0.0
        self.last: tuple[float, int, int] | None = None
        # How often near-ties needed the exact re-scoring, and how many samples it re-scored (bench).
        self.rescored_picks = 0
        self.rescored_samples = 0
        # Once the exact farthest distance is 0, every remaining sample duplicates a selected one: the
        # remaining picks are the unselected pool indices in ascending order (the tie rule), no passes.
        self.duplicates: np.ndarray | None = None
        self.taken = 0

    # --- picks ------------------------------------------------------------------------------------

    def start(self, mean: np.ndarray) -> None:
        """First pick: the sample farthest from the pool mean."""
        margin = 2.0 * mean_bound(self.shard.d, self.max_norm, mean)  # a float32 pass
        top = self.shard.first(mean, margin)
        pick, row, exact = self._choose(top, margin, lambda rows: exact_sq_dists(rows, mean), first=True)
        self._apply(pick, row)
        if exact == 0.0:  # every sample equals the mean: all rows are one point
            self._only_duplicates_left()

    def resume(self, state: Resume) -> None:
        """Continue from checkpointed picks: centers are rebuilt from the rows each rank holds."""
        m, d = len(state.picks), self.shard.d
        rows = np.zeros((m, d), dtype=np.float64)
        local = state.picks - self.offset
        mine = np.flatnonzero((local >= 0) & (local < self.shard.n))
        if len(mine):
            rows[mine] = self.shard.rows(local[mine])
        rows = self.comm.all_reduce_sum(rows)
        for row in rows:
            self.centers.add(row)
        self.picks = [int(p) for p in state.picks]
        self.bound = state.bound
        self.shard.load_state(state.min_d, state.nearest)
        self.last = _top_of(self.shard, 2.0 * self.bound)

    def step(self) -> None:
        if self.duplicates is None:
            assert self.last is not None
            pick, row, exact = self._choose(self.last, 2.0 * self.bound, self.centers.exact_min, first=False)
            if exact != 0.0:
                self._apply(pick, row)
                return
            self._only_duplicates_left()
            assert self.duplicates[0] == pick
        self._take_duplicate()

    def _only_duplicates_left(self) -> None:
        self.duplicates = np.setdiff1d(np.arange(self.n_total, dtype=np.int64), np.asarray(self.picks))
        self.taken = 0

    def _take_duplicate(self) -> None:
        """Pick the lowest unselected index; it becomes its own center (distance 0 to all others kept)."""
        assert self.duplicates is not None
        pick = int(self.duplicates[self.taken])
        self.taken += 1
        step = len(self.picks)
        self.picks.append(pick)
        local = pick - self.offset
        if 0 <= local < self.shard.n:
            self.shard.mark_selected(local, step)

    def _apply(self, pick: int, row: np.ndarray) -> None:
        step = len(self.picks)
        self.picks.append(pick)
        self.centers.add(row)
        reach = self.max_norm + float(np.sqrt(row @ row))
        # float32 bound in every backend: float16 passes keep the running minimum at float32 accuracy
        self.bound = max(self.bound, pass_bound(self.shard.d, reach, False))
        local = pick - self.offset
        local = local if 0 <= local < self.shard.n else None
        self.last = self.shard.update(row, step, local, 2.0 * self.bound, reach)

    def _choose(self, top: tuple[float, int, int], margin: float, rescore: Callable, *, first: bool):
        """(global index, row, exact value or None) of the exact farthest sample over all ranks;
        ``(None, None, None)`` when none is left. The value is None when no re-scoring was needed."""
        value, idx, count = top
        d, rank, world = self.shard.d, self.comm.rank, self.comm.world
        payload = np.zeros((world, 3 + d), dtype=np.float64)
        payload[rank, 0] = value
        if value > -np.inf:
            payload[rank, 1:3] = self.offset + idx, count
            payload[rank, 3:] = self.shard.rows(np.array([idx]))[0]
        payload = self.comm.all_reduce_sum(payload)
        best = payload[:, 0].max()
        if best == -np.inf:
            return None, None, None
        contenders = np.flatnonzero(payload[:, 0] >= best - margin)
        if len(contenders) == 1 and payload[contenders[0], 2] == 1:
            return int(payload[contenders[0], 1]), payload[contenders[0], 3:].copy(), None
        exact = np.zeros((world, 2 + d), dtype=np.float64)
        exact[rank, 0] = -np.inf
        cand = self.shard.candidates(best - margin, first) if self.shard.n else np.empty(0, np.int64)
        self.rescored_picks += 1
        self.rescored_samples += len(cand)
        for start in range(0, len(cand), _RESCORE_BLOCK):  # ascending: the first maximum is the lowest
            part = cand[start : start + _RESCORE_BLOCK]
            rows = self.shard.rows(part)
            scores = rescore(rows)
            j = int(np.argmax(scores))
            if scores[j] > exact[rank, 0]:
                exact[rank] = [scores[j], self.offset + int(part[j]), *rows[j]]
        exact = self.comm.all_reduce_sum(exact)
        order = np.lexsort((exact[:, 1], -exact[:, 0]))
        return int(exact[order[0], 1]), exact[order[0], 2:].copy(), float(exact[order[0], 0])

    # --- result -----------------------------------------------------------------------------------

    def coverage(self) -> Coverage:
        """After the last pick's pass: exact radius (the next pick's value), float32 mean distance and
        nearest-center cluster sizes, reduced over ranks."""
        radius, farthest = 0.0, -1
        if self.duplicates is not None:
            farthest = int(self.duplicates[self.taken]) if self.taken < len(self.duplicates) else -1
        else:
            pick, row, _ = self._choose(self.last, 2.0 * self.bound, self.centers.exact_min, first=False)
            if pick is not None:
                radius = float(np.sqrt(self.centers.exact_min(row[None])[0]))
                farthest = pick
        min_d, nearest = self.shard.state()
        dist = np.sqrt(np.maximum(min_d.astype(np.float64), 0.0))
        sizes = np.bincount(nearest, minlength=self.k).astype(np.float64)
        totals = self.comm.all_reduce_sum(np.concatenate([[dist.sum()], sizes]))
        return Coverage(radius, float(totals[0] / self.n_total), farthest, totals[1:].astype(np.int64))


def _top_of(shard, margin: float) -> tuple[float, int, int]:
    min_d, _ = shard.state()
    if len(min_d) == 0:
        return -np.inf, 0, 0
    best = int(np.argmax(min_d))
    top = float(min_d[best])
    return top, best, int(np.count_nonzero(min_d >= top - margin))
