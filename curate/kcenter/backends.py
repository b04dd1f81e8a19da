"""One rank's slice of the pool and its greedy pass, on NumPy (float32 BLAS) or on torch (any device).

A backend holds the local rows, their squared norms (float32), the running minimum ``min_d`` of the
squared distance to the selected centers, and the index of the nearest center (for the coverage report).
``update`` runs one pass against a center and returns ``(top, argmax, count)``: the largest running
minimum, its lowest local index, and how many samples lie within ``margin`` of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from curate.kcenter.exact import Centers, TorchCenters, pass_bound
from datasets_spec.errors import UserError

# float16 dot products are rounded to float16: |x.c| must stay well below float16's max (65504).
_HALF_DOT_LIMIT = 16384.0


class NumpyShard:
    """float32 rows, one sgemv per pass; the reference path (no torch needed)."""

    half_dot = False

    def __init__(self, rows: np.ndarray) -> None:
        self.x = np.ascontiguousarray(rows, dtype=np.float32)
        self.n, self.d = self.x.shape
        self.sqn = np.einsum("ij,ij->i", self.x, self.x)
        self.min_d = np.full(self.n, np.inf, dtype=np.float32)
        self.nearest = np.full(self.n, -1, dtype=np.int64)
        self._dist = np.empty(self.n, dtype=np.float32)
        self._closer = np.empty(self.n, dtype=bool)

    def max_sqnorm(self) -> float:
        return float(self.sqn.max()) if self.n else 0.0

    def make_centers(self, k: int) -> Centers:
        return Centers(k, self.d)

    def _distances(self, c: np.ndarray) -> np.ndarray:
        c32 = np.asarray(c, dtype=np.float32)
        np.dot(self.x, c32, out=self._dist)
        self._dist *= -2.0
        self._dist += self.sqn
        self._dist += np.float32(c32 @ c32)
        return self._dist

    def first(self, mean: np.ndarray, margin: float) -> tuple[float, int, int]:
        return _top(self._distances(mean), margin)

    def update(
        self, c: np.ndarray, step: int, local: int | None, margin: float, reach: float = 0.0
    ) -> tuple[float, int, int]:
        dist = self._distances(c)
        np.less(dist, self.min_d, out=self._closer)
        np.putmask(self.nearest, self._closer, step)
        np.minimum(self.min_d, dist, out=self.min_d)
        if local is not None:
            self.min_d[local] = -np.inf
            self.nearest[local] = step
        return _top(self.min_d, margin)

    def candidates(self, threshold: float, first: bool) -> np.ndarray:
        values = self._dist if first else self.min_d
        return np.flatnonzero(values >= threshold)

    def mark_selected(self, local: int, step: int) -> None:
        """``local`` picked without a pass (it duplicates a selected row): its own center."""
        self.min_d[local] = -np.inf
        self.nearest[local] = step

    def rows(self, local: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(local, dtype=np.int64)].astype(np.float64)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.min_d.copy(), self.nearest.copy()

    def load_state(self, min_d: np.ndarray, nearest: np.ndarray) -> None:
        self.min_d[:] = min_d
        self.nearest[:] = nearest


def _top(values: np.ndarray, margin: float) -> tuple[float, int, int]:
    if len(values) == 0:
        return -np.inf, 0, 0
    best = int(np.argmax(values))
    top = float(values[best])
    return top, best, int(np.count_nonzero(values >= top - margin))


class TorchShard:
    """Rows as a torch tensor on ``device``: float32, or float16 read by float16 dot products."""

    def __init__(self, rows: np.ndarray, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.half_dot = rows.dtype == np.float16
        self.n, self.d = rows.shape
        rows = rows if rows.flags.writeable else np.array(rows)  # a read-only memory map is copied
        host = torch.from_numpy(np.ascontiguousarray(rows))
        self.x = host.to(self.device)
        self.sqn = torch.empty(self.n, dtype=torch.float32, device=self.device)
        for start in range(0, self.n, 65536):  # float32 norms of the widened rows, in bounded blocks
            block = self.x[start : start + 65536].float()
            self.sqn[start : start + 65536] = (block * block).sum(1)
        self.min_d = torch.full((self.n,), float("inf"), dtype=torch.float32, device=self.device)
        self.nearest = torch.full((self.n,), -1, dtype=torch.int64, device=self.device)
        self._dist = torch.empty(self.n, dtype=torch.float32, device=self.device)
        self._dot = torch.empty(self.n, dtype=self.x.dtype, device=self.device)
        if self.half_dot and self.max_sqnorm() > _HALF_DOT_LIMIT:
            raise UserError(
                f"float16 embeddings with squared norms up to {self.max_sqnorm():.0f} overflow float16 dot "
                f"products; store them as float32 (`curate embed --dtype float32`)"
            )

    def max_sqnorm(self) -> float:
        return float(self.sqn.max()) if self.n else 0.0

    def make_centers(self, k: int) -> Centers:
        return TorchCenters(k, self.d, self.device)

    def _distances(self, c: np.ndarray, widened: bool = False):
        """Pass values ``||x||^2 - 2 x.c + ||c||^2``: float16 dot products for float16 rows unless
        ``widened`` (then float32 on rows widened block by block, the float32 bound)."""
        torch = self.torch
        c32 = torch.from_numpy(np.asarray(c, dtype=np.float32)).to(self.device)
        if self.half_dot and not widened:
            c_t = c32.half()
            c32 = c_t.float()  # a stored row is exact in float16; the pool mean is not (never used here)
            torch.mv(self.x, c_t, out=self._dot)
            self._dist.copy_(self._dot)
        elif self.half_dot:
            self._widened_dots(torch.arange(self.n, device=self.device), c32, self._dist)
        else:
            torch.mv(self.x, c32, out=self._dist)
        self._dist.mul_(-2.0).add_(self.sqn).add_(float(torch.dot(c32, c32)))
        return self._dist

    def _widened_dots(self, idx, c32, out) -> None:
        """``out[j] = x[idx[j]] . c`` in float32, in bounded blocks of widened rows."""
        for start in range(0, len(idx), 65536):
            part = idx[start : start + 65536]
            out[start : start + len(part)] = self.x[part].float() @ c32

    def first(self, mean: np.ndarray, margin: float) -> tuple[float, int, int]:
        return self._top(self._distances(mean, widened=True), margin)

    def update(
        self, c: np.ndarray, step: int, local: int | None, margin: float, reach: float = 0.0
    ) -> tuple[float, int, int]:
        torch = self.torch
        dist = self._distances(c)
        if self.half_dot:
            # The float16 pass only screens: a sample whose float16 value cannot be below its running
            # minimum (error bounds of both) keeps it; the others are recomputed in float32, so the running
            # minimum always carries the float32 bound and near-ties stay as rare as with float32 rows.
            screen = pass_bound(self.d, reach, True) + pass_bound(self.d, reach, False)
            maybe = torch.nonzero(dist < self.min_d + screen).flatten()
            if len(maybe):
                c32 = torch.from_numpy(np.asarray(c, dtype=np.float32)).to(self.device)
                dots = torch.empty(len(maybe), dtype=torch.float32, device=self.device)
                self._widened_dots(maybe, c32, dots)
                dist[maybe] = self.sqn[maybe] - 2.0 * dots + float(torch.dot(c32, c32))
        self.nearest.masked_fill_(dist < self.min_d, step)
        torch.minimum(self.min_d, dist, out=self.min_d)
        if local is not None:
            self.min_d[local] = float("-inf")
            self.nearest[local] = step
        return self._top(self.min_d, margin)

    def _top(self, values, margin: float) -> tuple[float, int, int]:
        if self.n == 0:
            return -np.inf, 0, 0
        best = int(self.torch.argmax(values))  # documented: the first maximal index
        top = float(values[best])
        return top, best, int((values >= top - margin).sum())

    def candidates(self, threshold: float, first: bool) -> np.ndarray:
        values = self._dist if first else self.min_d
        return self.torch.nonzero(values >= threshold).flatten().cpu().numpy()

    def mark_selected(self, local: int, step: int) -> None:
        self.min_d[local] = float("-inf")
        self.nearest[local] = step

    def rows(self, local: np.ndarray):
        idx = self.torch.from_numpy(np.asarray(local, dtype=np.int64)).to(self.device)
        return self.x[idx].cpu().numpy().astype(np.float64)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.min_d.cpu().numpy().copy(), self.nearest.cpu().numpy().copy()

    def load_state(self, min_d: np.ndarray, nearest: np.ndarray) -> None:
        self.min_d.copy_(self.torch.from_numpy(min_d))
        self.nearest.copy_(self.torch.from_numpy(nearest))


@contextlib.contextmanager
def exact_accumulation() -> Iterator[None]:
    """float32 accumulation in float16 matrix products (the bound of ``pass_bound`` assumes it)."""
    import torch

    cuda = torch.backends.cuda.matmul
    before_cuda = cuda.allow_fp16_reduced_precision_reduction
    get_cpu = getattr(torch._C, "_get_cpu_allow_fp16_reduced_precision_reduction", None)
    set_cpu = getattr(torch._C, "_set_cpu_allow_fp16_reduced_precision_reduction", None)
    before_cpu = get_cpu() if get_cpu else None
    cuda.allow_fp16_reduced_precision_reduction = False
    if set_cpu:
        set_cpu(False)
    try:
        yield
    finally:
        cuda.allow_fp16_reduced_precision_reduction = before_cuda
        if set_cpu:
            set_cpu(before_cpu)


def make_shard(rows: np.ndarray, device: str):
    """``numpy``: the NumPy path; ``cpu``/``cuda``/``cuda:N``/``auto``: torch on that device."""
    if device == "numpy":
        if rows.dtype == np.float16:
            raise UserError("float16 embeddings need the torch backend: pass --device cpu, cuda or auto")
        return NumpyShard(rows)
    return TorchShard(rows, resolve_device(device))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown --device {device!r}; valid: auto, cpu, cuda, cuda:N, numpy")
    return device
