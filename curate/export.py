"""Export the dataset or a selected subset for other trainers: LLaVA conversation JSON or ScienceQA layout.

``llava-json`` writes ``[{"id", "image"?, "conversations"}]`` in stored order (a subset in selection
order), with the ids the source file had (integers stay integers; see curate.ingest_llava), so the
official LLaVA training code reads it as is, plus ``<out>.index.json`` (curate.export_index: ids, source
positions, the source file's sha256, the subset's seed and library versions). ``scienceqa`` writes a
self-contained ScienceQA folder: ``problems.json``, ``pid_splits.json`` and copies of the images at
``images/<split>/<pid>/image.png``;
ingesting that folder again gives the same rows (each problem also carries its ``source``). Both write to a
temporary name and rename at the end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import pyarrow as pa

from curate.export_index import (
    build_index,
    check_index_replaceable,
    index_path,
    subset_manifest,
    write_index,
)
from curate.ingest_llava import read_original_ids
from curate.stats import read_target, resolve_target
from datasets_spec.errors import UserError
from datasets_spec.outputs import (
    EXPORT_MARKER,
    check_output_path,
    check_replaceable,
    export_marker_path,
    is_previous_export,
)
from datasets_spec.parts import atomic_directory, atomic_file
from datasets_spec.workspace import Workspace, now_utc, tool_version

EXPORT_FORMATS = ("llava-json", "scienceqa")
SCIENCEQA_FIELDS = ("question", "choices", "answer")


def export_llava_json(
    table: pa.Table,
    out: Path,
    *,
    original_ids: dict[str, str] | None = None,
    overwrite: bool = False,
    index: dict | None = None,
) -> dict:
    """Write ``table`` as LLaVA conversation JSON at ``out``; return a summary.

    ``index`` (curate.export_index.build_index) is written beside it as ``<out>.index.json`` before the
    export itself is renamed into place.

    ``original_ids`` maps sample_id -> the source file's id as JSON text (int ids, renamed duplicates).
    Rows are written batch by batch, so exporting mix665k does not build the whole list in memory.
    """
    out = Path(out)
    _refuse_existing(out, "llava-json", overwrite)
    original_ids = original_ids or {}
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with atomic_file(out) as tmp, tmp.open("w", encoding="utf-8") as fh:
        fh.write("[")
        columns = table.select(["sample_id", "image", "conversations"])
        for batch in columns.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                item = {"id": _original_id(row["sample_id"], original_ids)}
                if row["image"] is not None:
                    item["image"] = row["image"]
                item["conversations"] = row["conversations"]
                fh.write(("," if rows else "") + "\n" + json.dumps(item, ensure_ascii=False))
                rows += 1
        fh.write("\n]\n")
        if index is not None:
            write_index(out, index)
        # The marker goes before the rename: a file is only replaced when its marker says it is an export.
        _write_json(export_marker_path(out), _marker("llava-json", rows))
    summary = {"format": "llava-json", "out": str(out), "rows": rows}
    return {**summary, "index": str(index_path(out))} if index is not None else summary


def _original_id(sample_id: str, original_ids: dict[str, str]) -> str | int:
    text = original_ids.get(sample_id)
    return sample_id if text is None else json.loads(text)


def export_scienceqa(
    table: pa.Table, out_dir: Path, *, image_root: Path | None, overwrite: bool = False
) -> dict:
    """Write ``table`` as a ScienceQA folder (problems.json, pid_splits.json, images/); return a summary.

    Every row needs ScienceQA fields (question, choices, answer); images are copied from ``image_root``.
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, "scienceqa", overwrite)
    problems: dict[str, dict] = {}
    pid_splits: dict[str, list[str]] = {}
    images = 0
    with atomic_directory(out_dir, overwrite=True) as tmp:
        for row in table.to_pylist():
            pid = row["sample_id"]
            missing = [f for f in SCIENCEQA_FIELDS if row[f] is None]
            if missing:
                raise UserError(
                    f"sample {pid!r} has no ScienceQA fields {missing} (source {row['source']}); "
                    "export it with --format llava-json"
                )
            problems[pid] = _problem(row)
            pid_splits.setdefault(row["split"], []).append(pid)
            if row["image"] is not None:
                _copy_image(row, image_root, tmp / "images")
                images += 1
        _write_json(tmp / "problems.json", problems)
        _write_json(tmp / "pid_splits.json", pid_splits)
        _write_json(tmp / EXPORT_MARKER, _marker("scienceqa", len(problems)))
    return {"format": "scienceqa", "out": str(out_dir), "rows": len(problems), "images": images}


def _problem(row: dict) -> dict:
    grade = row["grade"]
    return {
        "question": row["question"],
        "choices": row["choices"],
        "answer": row["answer"],
        "hint": row["context"],
        "image": PurePosixPath(row["image"]).name if row["image"] is not None else None,
        # ScienceQA's own question-form task is not kept (the canonical `task` labels LLaVA-mix sources).
        "task": None,
        "grade": f"grade{grade}" if grade is not None else None,
        "subject": row["subject"],
        "topic": row["topic"],
        "category": row["category"],
        "skill": row["skill"],
        "lecture": row["lecture"],
        "solution": row["solution"],
        "split": row["split"],
        "source": row["source"],
    }


def _copy_image(row: dict, image_root: Path | None, images_dir: Path) -> None:
    pid, rel = row["sample_id"], PurePosixPath(row["image"])
    if image_root is None:
        raise UserError(f"sample {pid!r} has an image but the dataset records no image root")
    src = Path(image_root) / rel
    if not src.is_file():
        raise UserError(f"sample {pid!r}: image {src} not found")
    # Keep the dataset's own <split-folder>/<pid>/<name> when it has that shape, so re-ingest finds the
    # same relative path; anything else goes to <split>/<pid>/<name>.
    own_shape = len(rel.parts) == 3 and rel.parts[1] == pid
    dest_rel = rel if own_shape else PurePosixPath(row["split"], pid, rel.name)
    dest = images_dir / dest_rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _marker(fmt: str, rows: int) -> dict:
    return {"kind": "export", "format": fmt, "rows": rows, "tool_version": tool_version(),
            "created_at": now_utc()}


def _refuse_existing(out: Path, fmt: str, overwrite: bool) -> None:
    """Only a previous export of the same format (its marker says so) is ever replaced."""
    check_replaceable(out, kind=f"{fmt} export", overwrite=overwrite, is_previous=is_previous_export(fmt),
                      marker=f"{EXPORT_MARKER} marker")


def export_target(
    ws: Workspace, target: Path | None, *, fmt: str, out: Path, overwrite: bool = False
) -> dict:
    """Export the workspace dataset (``target`` None) or a subset directory in format ``fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    _, source = resolve_target(ws, target)
    image_root = ws.image_root() if (ws.dataset_dir / "dataset.json").is_file() else None
    check_output_path(out, workspaces=[ws.root], sources=[source, ws.dataset_dir, image_root])
    _refuse_existing(Path(out), fmt, overwrite)
    kind, path, table = read_target(ws, target)
    if fmt == "llava-json":
        check_index_replaceable(out, overwrite)
        ids = read_original_ids(ws.dataset_dir) if ws.dataset_dir.is_dir() else {}
        index = build_index(ws, table, subset=subset_manifest(kind, path), export_name=Path(out).name)
        summary = export_llava_json(table, out, original_ids=ids, overwrite=overwrite, index=index)
    else:
        summary = export_scienceqa(table, out, image_root=ws.image_root(), overwrite=overwrite)
    return {"target": str(path), "kind": kind, **summary}
