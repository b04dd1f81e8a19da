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


# A pass smaller than this runs on one BLAS/torch thread: waking and joining a second thread costs more
# than it saves (12,000 x 64 float32: 0.47 ms on one thread, 3.5-15 ms on two on a loaded 2-core machine).
SMALL_PASS_BYTES = 16 * 2**20


class NumpyShard:
    """float32 rows, one sgemv per pass; the reference path (no torch needed)."""

    half_dot = False
    on_cpu = True

    def __init__(self, rows: np.ndarray) -> None:
        self.x = np.ascontiguousarray(rows, dtype=np.float32)
        self.n, self.d = self.x.shape
        self.sqn = np.einsum("ij,ij->i", self.x, self.x)
        self._state()

    def _state(self) -> None:
        self.min_d = np.full(self.n, np.inf, dtype=np.float32)
        self.nearest = np.full(self.n, -1, dtype=np.int64)
        self._dist = np.empty(self.n, dtype=np.float32)
        self._closer = np.empty(self.n, dtype=bool)

    def pass_bytes(self) -> int:
        return self.x.nbytes

    def max_sqnorm(self) -> float:
        return float(self.sqn.max()) if self.n else 0.0

    def make_centers(self, k: int) -> Centers:
        return Centers(k, self.d)

    def _distances(self, c: np.ndarray) -> np.ndarray:
        c32 = np.asarray(c, dtype=np.float32)
        # x.(-2c) is exactly -2 (x.c) (a power of two), one vector operation fewer per pass
        np.dot(self.x, -2.0 * c32, out=self._dist)
        self._dist += self.sqn
        self._dist += np.float32(c32 @ c32)
        return self._dist

    def first(self, mean: np.ndarray, margin: float) -> tuple[float, int, int]:
        return _top(self._distances(mean), margin)

    def update(
        self, c: np.ndarray, step: int, local: int | None, margin: float, reach: float = 0.0
    ) -> tuple[float, int, int]:
        return self._merge(self._distances(c), step, local, margin)

    def _merge(self, dist: np.ndarray, step: int, local: int | None, margin: float) -> tuple[float, int, int]:
        np.less(dist, self.min_d, out=self._closer)
        np.putmask(self.nearest, self._closer, step)
        np.minimum(self.min_d, dist, out=self.min_d)
        if local is not None:
            self.min_d[local] = -np.inf
            self.nearest[local] = step
        return _top(self.min_d, margin, self._closer)

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


class HalfCpuShard(NumpyShard):
    """float16 rows on a CPU: torch's float16 matrix-vector kernel for the pass (half the bytes of a
    float32 sgemv), NumPy for the rest. As on :class:`TorchShard`, the float16 pass only screens: samples
    it cannot rule out are recomputed in float32 (the rows gathered and widened), so the running minimum
    keeps the float32 bound."""

    half_dot = True

    def __init__(self, rows: np.ndarray) -> None:
        import torch

        self.x = np.ascontiguousarray(rows if rows.flags.writeable else np.array(rows), dtype=np.float16)
        self.n, self.d = self.x.shape
        self._x_t = torch.from_numpy(self.x)  # shares the NumPy buffer
        self.sqn = np.empty(self.n, dtype=np.float32)
        for start in range(0, self.n, 65536):  # float32 norms of the widened rows, in bounded blocks
            block = self.x[start : start + 65536].astype(np.float32)
            self.sqn[start : start + 65536] = np.einsum("ij,ij->i", block, block)
        self._state()
        self._dot_t = torch.empty(self.n, dtype=torch.float16)
        self._dot = self._dot_t.numpy()
        check_half_norms(self.max_sqnorm())

    def _widened(self, c32: np.ndarray, idx: np.ndarray | None, out: np.ndarray) -> None:
        """``out = x[idx] . c`` (all rows when ``idx`` is None) in float32, in bounded blocks."""
        import torch

        n = self.n if idx is None else len(idx)
        for start in range(0, n, 65536):
            rows = self.x[start : start + 65536] if idx is None else self.x[idx[start : start + 65536]]
            # torch widens float16 about 2x faster than NumPy's astype here (both exact)
            wide = torch.from_numpy(rows).float().numpy()
            np.dot(wide, -2.0 * c32, out=out[start : start + len(rows)])

    def first(self, mean: np.ndarray, margin: float) -> tuple[float, int, int]:
        c32 = np.asarray(mean, dtype=np.float32)  # the mean is no float16 value: a widened float32 pass
        self._widened(c32, None, self._dist)
        self._dist += self.sqn
        self._dist += np.float32(c32 @ c32)
        return _top(self._dist, margin)

    def _distances(self, c: np.ndarray) -> np.ndarray:
        import torch

        c16 = np.asarray(c, dtype=np.float16)  # a stored row: exact in float16
        torch.mv(self._x_t, torch.from_numpy(c16), out=self._dot_t)
        np.multiply(self._dot, np.float32(-2.0), out=self._dist)
        self._dist += self.sqn
        c32 = c16.astype(np.float32)
        cc = np.float32(c32 @ c32)
        self._dist += cc
        return self._dist

    def update(
        self, c: np.ndarray, step: int, local: int | None, margin: float, reach: float = 0.0
    ) -> tuple[float, int, int]:
        dist = self._distances(c)
        screen = pass_bound(self.d, reach, True) + pass_bound(self.d, reach, False)
        # in place (no per-sample buffer): the ulp this moves a value never matters, a sample either
        # keeps its running minimum (the value is far above it) or is recomputed below
        dist -= np.float32(screen)
        maybe = np.flatnonzero(np.less(dist, self.min_d, out=self._closer))
        dist += np.float32(screen)
        if len(maybe):
            c32 = np.asarray(c, dtype=np.float32)
            exact = np.empty(len(maybe), dtype=np.float32)
            self._widened(c32, maybe, exact)
            exact += self.sqn[maybe]
            exact += np.float32(c32 @ c32)
            dist[maybe] = exact
        return self._merge(dist, step, local, margin)


def check_half_norms(max_sqnorm: float) -> None:
    if max_sqnorm > _HALF_DOT_LIMIT:
        raise UserError(
            f"float16 embeddings with squared norms up to {max_sqnorm:.0f} overflow float16 dot "
            f"products; store them as float32 (`curate embed --dtype float32`)"
        )


def _top(values: np.ndarray, margin: float, scratch: np.ndarray | None = None) -> tuple[float, int, int]:
    if len(values) == 0:
        return -np.inf, 0, 0
    best = int(np.argmax(values))
    top = float(values[best])
    near = np.greater_equal(values, top - margin, out=scratch)
    return top, best, int(np.count_nonzero(near))


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
        self.on_cpu = self.device.type == "cpu"
        if self.half_dot:
            check_half_norms(self.max_sqnorm())

    def pass_bytes(self) -> int:
        return self.x.numel() * self.x.element_size()

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


@contextlib.contextmanager
def pass_threads(shard) -> Iterator[None]:
    """One BLAS/torch thread for a CPU pass under :data:`SMALL_PASS_BYTES`; the default otherwise."""
    if not shard.on_cpu or shard.pass_bytes() >= SMALL_PASS_BYTES:
        yield
        return
    import torch
    from threadpoolctl import ThreadpoolController

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadpoolController().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def make_shard(rows: np.ndarray, device: str):
    """The fastest exact pass for ``device`` and the rows' dtype (:func:`backend_name`)."""
    name = backend_name(device, rows.dtype)
    if name == "numpy-float32":
        return NumpyShard(rows)
    if name == "torch-float16-cpu":
        return HalfCpuShard(rows)
    return TorchShard(rows, name.split("-", 2)[2])


def backend_name(device: str, dtype: np.dtype) -> str:
    """The documented rule (measured by bench/select_bench.py; docs/kcenter-backends.md):

    * ``numpy``: the NumPy reference, float32 only;
    * ``auto`` is ``cuda`` when a GPU is present, else ``cpu``;
    * ``cpu`` float32: NumPy's BLAS sgemv (torch.mv float32 measured 1.9-2.3x slower here);
      ``cpu`` float16: torch's float16 matrix-vector kernel with NumPy around it (half the bytes);
    * ``cuda``/``cuda:N``: torch on that GPU, float32 or float16.
    """
    half = np.dtype(dtype) == np.float16
    if device == "numpy":
        if half:
            raise UserError("float16 embeddings need the torch backend: pass --device cpu, cuda or auto")
        return "numpy-float32"
    device = resolve_device(device)
    if device == "cpu":
        return "torch-float16-cpu" if half else "numpy-float32"
    return f"torch-{'float16' if half else 'float32'}-{device}"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when present, else ``cpu``; an unavailable or unknown device is refused."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown --device {device!r}; valid: auto, cpu, cuda, cuda:N, numpy")
    return device
