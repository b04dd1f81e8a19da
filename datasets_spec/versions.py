"""Versions of the libraries whose changes can change a selection, recorded in every subset manifest.

FAISS (index and BLAS kernels: ties and rounding in nearest-neighbour searches), NumPy (random generators,
sorting and reductions) and torch (k-center on torch, reference-model embeddings) can each move a pick
between releases, so a released subset says which ones made it. Read from the installed distributions'
metadata, without importing the libraries.
"""

from __future__ import annotations

import platform
from importlib import metadata

# Library -> the distributions that provide it, first installed one wins (FAISS ships under several names).
SELECTION_LIBRARIES = {
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "numpy": ("numpy",),
    "torch": ("torch",),
}


def _installed(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def selection_library_versions() -> dict[str, str | None]:
    """``{"faiss", "numpy", "torch", "python"}`` -> installed version (None: not installed)."""
    versions = {lib: _installed(dists) for lib, dists in SELECTION_LIBRARIES.items()}
    return {**versions, "python": platform.python_version()}
