"""Ingest a source into the workspace's ``dataset/``: ScienceQA folders and the synthetic dataset.

LLaVA conversation JSON and VQA sources have their own modules (``curate.ingest_llava``,
``curate.ingest_vqa``); all of them end in :func:`curate.dataset_store.write_dataset`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from curate.dataset_store import write_dataset
from datasets_spec.errors import UserError
from datasets_spec.fingerprint import table_fingerprint
from datasets_spec.parts import atomic_directory, read_json
from datasets_spec.scienceqa import DEFAULT_PROMPT_FORMAT, load_scienceqa
from datasets_spec.synthetic import generate_synthetic_scienceqa
from datasets_spec.workspace import Workspace

SYNTHETIC_SOURCE_DIR = "synthetic-source"
# Defaults of the demo dataset: large enough that a tiny model learns every family, small enough that
# generating and ingesting it takes about a second.
SYNTHETIC_DEFAULTS = {"n_train": 1200, "n_val": 200, "n_test": 300, "image_size": 64}


def ingest_scienceqa(
    ws: Workspace,
    root: Path,
    *,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
    splits: Iterable[str] | None = None,
    skip_bad_images: bool = False,
    overwrite: bool = False,
) -> dict:
    """Load the ScienceQA folder ``root`` and write it as the workspace dataset; return dataset.json."""
    loaded = load_scienceqa(
        Path(root), prompt_format=prompt_format, splits=splits, skip_bad_images=skip_bad_images
    )
    return write_dataset(
        ws,
        loaded.table,
        source="scienceqa",
        source_paths={
            "problems": str(loaded.problems_path.resolve()),
            "pid_splits": str(loaded.pid_splits_path.resolve()),
        },
        image_root=loaded.image_root,
        skipped_images=loaded.skipped_images,
        overwrite=overwrite,
        extra={"prompt_format": prompt_format, "scienceqa_splits": loaded.splits},
    )


def ingest_synthetic(
    ws: Workspace,
    *,
    seed: int = 0,
    n_train: int = SYNTHETIC_DEFAULTS["n_train"],
    n_val: int = SYNTHETIC_DEFAULTS["n_val"],
    n_test: int = SYNTHETIC_DEFAULTS["n_test"],
    image_size: int = SYNTHETIC_DEFAULTS["image_size"],
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
    overwrite: bool = False,
) -> dict:
    """Generate the synthetic ScienceQA folder into ``ws.root/synthetic-source`` and ingest it.

    The folder is the dataset's image root. It is replaced only once the new dataset is known to be
    acceptable (same as the existing one, or ``overwrite``), so a refused ingest leaves the images of the
    current dataset untouched.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {n}")
    if n_train + n_val + n_test == 0:
        raise UserError("synthetic dataset: the dataset is empty (0 samples); pass a positive --n-train")
    source_dir = ws.root / SYNTHETIC_SOURCE_DIR
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test, "image_size": image_size}
    with atomic_directory(source_dir, overwrite=True) as tmp:
        generate_synthetic_scienceqa(tmp, **params)
        loaded = load_scienceqa(tmp, prompt_format=prompt_format, source="synthetic")
        _refuse_different_dataset(ws, table_fingerprint(loaded.table), overwrite)
    return write_dataset(
        ws,
        loaded.table,
        source="synthetic",
        source_paths={
            "problems": str(source_dir / "problems.json"),
            "pid_splits": str(source_dir / "pid_splits.json"),
        },
        image_root=source_dir / "images",
        overwrite=overwrite,
        extra={"prompt_format": prompt_format, "synthetic": params},
    )


def _refuse_different_dataset(ws: Workspace, fingerprint: str, overwrite: bool) -> None:
    info_path = ws.dataset_dir / "dataset.json"
    if overwrite or not info_path.exists():
        return
    existing = read_json(info_path)
    if existing.get("fingerprint") != fingerprint:
        raise UserError(
            f"{ws.dataset_dir}: already holds a different dataset ({existing.get('source')}, "
            f"{existing.get('rows')} rows); pass --overwrite to replace it"
        )
