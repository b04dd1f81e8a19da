"""The budget check every selection strategy shares (kept apart so strategy modules import no registry)."""

from __future__ import annotations

from datasets_spec.errors import UserError


def check_k(k: int, n: int) -> None:
    """``k`` must be in [1, pool size]."""
    if k <= 0:
        raise UserError(f"k must be positive (got {k})")
    if k > n:
        raise UserError(f"k={k} is larger than the pool ({n} samples after filters)")
