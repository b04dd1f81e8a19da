"""The workspace: one directory holding dataset/, embeddings/<tag>/, shards/<subset>/, runs/, reports/.

Resolved from ``--workspace/-w``, else ``$CURATE_WORKSPACE``, else the current directory. Shared by
curate/ and train/, with the provenance every manifest and run record carries (tool version, UTC time).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from datasets_spec.errors import UserError
from datasets_spec.parts import read_record, read_verified_parts
from datasets_spec.schema import COLUMNS

WORKSPACE_ENV = "CURATE_WORKSPACE"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def dataset_info(self) -> dict:
        """The dataset's ``dataset.json``; a clear error naming the command that makes it if absent."""
        path = self.dataset_dir / "dataset.json"
        if not path.exists():
            aside = sorted(self.root.glob(".dataset.old-*"))
            if aside:
                raise UserError(f"{self.dataset_dir}: missing; a killed ingest left the previous dataset in "
                                f"{aside[0]}; rerun the ingest and it is put back first")
            raise UserError(f"{self.dataset_dir}: no dataset here; run `curate ingest ...` first")
        return read_record(path)

    def dataset_fingerprint(self) -> str:
        return self.dataset_info()["fingerprint"]

    def image_root(self) -> Path | None:
        root = self.dataset_info().get("image_root")
        return Path(root) if root else None

    def read_dataset(self, columns: list[str] | None = None) -> pa.Table:
        """The dataset's rows, after checking every part against the hash dataset.json recorded."""
        info = self.dataset_info()
        # Asking for the canonical columns by name turns a foreign part into an error naming it.
        columns = list(COLUMNS) if columns is None else columns
        return read_verified_parts(self.dataset_dir, info, "dataset.json", columns=columns)


def resolve_workspace(path: str | os.PathLike | None = None) -> Workspace:
    """``path`` if given, else ``$CURATE_WORKSPACE``, else the current directory."""
    chosen = path if path is not None else os.environ.get(WORKSPACE_ENV) or "."
    return Workspace(Path(chosen).resolve())


def tool_version() -> str:
    """The installed llava-curate version, recorded in every manifest and run record."""
    try:
        return version("llava-curate")
    except PackageNotFoundError:
        return "0+unknown"


def now_utc() -> str:
    """The current UTC time to the second, ISO 8601 (manifests' ``created_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
