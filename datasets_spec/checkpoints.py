"""One guard around every read of a model, checkpoint or saved array: a damaged file is one line.

Loaders raise many types for a truncated, corrupt or foreign file (safetensors' ``SafetensorError``,
``zipfile.BadZipFile`` from ``np.load`` and ``torch.load``, ``RuntimeError`` from torch's archive reader,
``UnpicklingError`` from ``weights_only`` loads, ``OSError``/``ValueError`` from transformers).
:func:`guarded_load` turns each into a UserError naming the file and saying what to delete or rerun;
:func:`check_trainer_checkpoint` opens every file of a Trainer checkpoint before a resume relies on it.
Nothing here unpickles: torch files are read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

from datasets_spec.errors import UserError
from datasets_spec.safe_json import load_json_file

# Longest loader message kept in the one line (a safetensors or torch reason is usually short).
REASON_CHARS = 120


def load_errors() -> tuple[type[BaseException], ...]:
    """The exception types a damaged file makes the loaders raise."""
    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, EOFError, KeyError,
                                         zipfile.BadZipFile, pickle.UnpicklingError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    return tuple(errors)


@contextlib.contextmanager
def guarded_load(path: str | Path, *, what: str, remedy: str) -> Iterator[None]:
    """Run the block that reads ``path`` (a ``what``: "model", "k-center checkpoint", ...); a load error
    becomes ``<path>: <what> cannot be read (<reason>); <remedy>``."""
    try:
        yield
    except UserError:
        raise
    except load_errors() as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise UserError(f"{path}: {what} cannot be read ({detail}); corrupt or truncated: {remedy}") from None


def check_safetensors(path: Path, *, what: str, remedy: str) -> None:
    """Open ``path`` and read every tensor in it (a truncated or damaged file fails here, not mid-run)."""
    from safetensors import safe_open

    with guarded_load(path, what=what, remedy=remedy), safe_open(str(path), framework="np") as fh:
        for key in fh.keys():
            fh.get_slice(key)[...]


def check_torch_file(path: Path, *, what: str, remedy: str) -> None:
    """Load a torch file without unpickling code (``weights_only=True``)."""
    import torch

    with guarded_load(path, what=what, remedy=remedy), torch.serialization.safe_globals(_numpy_globals()):
        torch.load(path, map_location="cpu", weights_only=True)


def _numpy_globals() -> list:
    """The NumPy types a Trainer's RNG state holds (its ``np.random`` state is an array): allowed in a
    ``weights_only`` load as the Trainer itself allows them, and nothing else."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def check_trainer_checkpoint(checkpoint: Path) -> None:
    """Every file a resume reads from a Trainer checkpoint (weights, optimizer, scheduler, trainer state,
    RNG states) must load; the first that does not is named, with the remedy: delete the checkpoint to
    resume from the one before it, or train again without --resume."""
    checkpoint = Path(checkpoint)
    remedy = f"delete {checkpoint} to resume from the previous checkpoint, or rerun without --resume"
    # Top-level files only: what Trainer's resume reads (training_args.bin is never loaded back, and a
    # DeepSpeed global_step*/ folder is read by DeepSpeed's own loader).
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        if path.suffix == ".safetensors":
            check_safetensors(path, what="checkpoint weights", remedy=remedy)
        elif path.suffix in (".pt", ".pth"):
            check_torch_file(path, what="checkpoint state", remedy=remedy)
        elif path.suffix == ".json":
            with guarded_load(path, what="checkpoint record", remedy=remedy):
                try:
                    load_json_file(path)
                except UserError as exc:
                    raise UserError(f"{exc}; {remedy}") from None
