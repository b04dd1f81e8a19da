"""Per-sample score sets (``scores/<name>/``) and the ``top-score`` strategy.

A score set is one Parquet part ``part-00000.parquet`` (``sample_id`` string, ``score`` float64, null
where a sample has no score) in dataset order, plus ``scores.json`` (name, what was scored and from what,
dataset fingerprint, rows, nulls, parts hash, ``complete: true``). Kinds (``curate score --by``):

* ``length``: characters of the assistant (gpt) turns, the "longer answers teach more" heuristic;
* ``clip-sim``: cosine similarity of the open_clip image and text vectors (the sample's human turns, as
  ``curate embed`` reads them); null for text-only samples;
* ``loss``: the mean cross-entropy per answer token under a trained run of this project (the warm-up
  model of ICONS, TIVE and PreSel); null for samples the run's template cannot tokenize or that exceed
  ``max_length``;
* ``ppl``: exp(loss).

Scores are columns, selection is thresholds (the Data-Juicer pattern): ``top-score`` ranks by one set,
``curate rules --min-score NAME=X --max-score NAME=Y`` filters the pool by any number of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.clip_model import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from curate.kcenter import check_k
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_replaceable, has_file
from datasets_spec.parts import (
    atomic_directory,
    hash_parts,
    part_hashes,
    part_name,
    read_record,
    read_verified_parts,
    write_part,
    write_record,
)
from datasets_spec.workspace import Workspace, now_utc, tool_version

SCORE_KINDS = ("length", "clip-sim", "loss", "ppl")
INFO_NAME = "scores.json"


def scores_dir(ws: Workspace) -> Path:
    return ws.root / "scores"


# --- the strategy ----------------------------------------------------------------------------------


def top_score(
    embeddings: np.ndarray, k: int, *, seed: int = 0, scores: np.ndarray, ascending: bool = False
) -> np.ndarray:
    """The k pool samples with the highest score (``ascending``: lowest); ties -> lowest index.

    Samples without a score (NaN) are never picked. ``embeddings`` only gives the pool size; ``seed`` is
    recorded but unused (the order is fully determined by the scores).
    """
    values = np.asarray(scores, dtype=np.float64)
    if len(values) != len(embeddings):
        raise ValueError("top_score: one score per pool sample")
    scored = np.flatnonzero(~np.isnan(values))
    check_k(k, len(values))
    if k > len(scored):
        raise UserError(f"k={k} is larger than the {len(scored)} pool samples that have a score")
    key = values[scored] if ascending else -values[scored]
    return scored[np.argsort(key, kind="stable")[:k]].astype(np.int64)


# --- reading ---------------------------------------------------------------------------------------


def check_score_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise UserError(f"score set name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def load_scores(ws: Workspace, name: str, sample_ids: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Scores aligned to ``sample_ids`` (default: the whole dataset, in order) and the set's info.

    Refused: no such set, a set computed for another dataset, any requested id without a row.
    """
    d = scores_dir(ws) / check_score_name(name)
    if not (d / INFO_NAME).is_file():
        present = sorted(p.name for p in scores_dir(ws).glob("*") if (p / INFO_NAME).is_file()) \
            if scores_dir(ws).is_dir() else []
        have = f" (present: {', '.join(present)})" if present else ""
        raise UserError(f"{d}: no score set{have}; run `curate score --by ... --name {name}` first")
    info = read_record(d / INFO_NAME)
    fingerprint = ws.dataset_fingerprint()
    if info.get("dataset_fingerprint") != fingerprint:
        raise UserError(f"{d}: scores were computed for dataset {str(info.get('dataset_fingerprint'))[:12]} "
                        f"but the workspace dataset is {fingerprint[:12]}; run `curate score --overwrite`")
    table = read_verified_parts(d, info, INFO_NAME, columns=["sample_id", "score"])
    ids = table.column("sample_id").to_pylist()
    values = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    if sample_ids is None:
        sample_ids = ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    if ids == sample_ids:
        return values, info
    pos = {sid: i for i, sid in enumerate(ids)}
    missing = [s for s in sample_ids if s not in pos]
    if missing:
        raise UserError(f"{d}: score set has no row for sample {missing[0]!r} ({len(missing)} of "
                        f"{len(sample_ids)} samples missing); recompute it with `curate score --overwrite`")
    return values[[pos[s] for s in sample_ids]], info


# --- writing ---------------------------------------------------------------------------------------


def write_scores(ws: Workspace, name: str, ids: list[str], values: np.ndarray, info: dict, *,
                 overwrite: bool = False) -> Path:
    """Write ``scores/<name>/`` atomically (NaN becomes null)."""
    values = np.asarray(values, dtype=np.float64)
    target = scores_dir(ws) / check_score_name(name)
    table = pa.table({"sample_id": pa.array(ids, pa.string()),
                      "score": pa.array(values, pa.float64(), mask=np.isnan(values))})
    full = {"name": name, **info, "dataset_fingerprint": ws.dataset_fingerprint(), "rows": len(ids),
            "nulls": int(np.isnan(values).sum()), "tool_version": tool_version(), "created_at": now_utc()}
    scores_dir(ws).mkdir(parents=True, exist_ok=True)
    check_replaceable(target, kind="score set", overwrite=overwrite, is_previous=has_file(INFO_NAME),
                      marker=INFO_NAME)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        write_part(table, tmp / part_name(0))
        full.update(parts=[part_name(0)], parts_hash=hash_parts(tmp), part_hashes=part_hashes(tmp),
                    complete=True)
        write_record(tmp / INFO_NAME, full)
    return target


def length_scores(ws: Workspace) -> tuple[list[str], np.ndarray]:
    table = ws.read_dataset(columns=["sample_id", "conversations"])
    values = [sum(len(t["value"]) for t in conv if t["from"] == "gpt")
              for conv in table.column("conversations").to_pylist()]
    return table.column("sample_id").to_pylist(), np.asarray(values, dtype=np.float64)


def score_workspace(
    ws: Workspace,
    by: str,
    *,
    name: str | None = None,
    run: Path | None = None,
    model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    batch_size: int = 8,
    max_length: int = 2048,
    device: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
    command: str = "",
) -> Path:
    """Compute one score set; return ``scores/<name>/`` (default name: ``by`` plus its source)."""
    if by not in SCORE_KINDS:
        raise UserError(f"unknown score kind --by {by!r}; valid: {', '.join(SCORE_KINDS)}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive (got {batch_size})")
    info: dict = {"by": by, "command": command}
    if by == "length":
        ids, values = length_scores(ws)
        info["rule"] = "characters of the gpt turns"
        default = "length"
    elif by == "clip-sim":
        from curate.score_models import clip_similarity

        ids, values = clip_similarity(ws, model, pretrained, batch_size=batch_size, device=device,
                                      show_progress=show_progress)
        info.update(model=model, pretrained=pretrained or "none",
                    rule="cosine of the open_clip image and text vectors; null without an image")
        from curate.embed import default_tag

        default = f"clip-sim_{default_tag(model, pretrained)}"
    else:
        if run is None:
            raise UserError(f"--by {by} needs --run runs/<run> (the model whose loss scores the samples)")
        from curate.score_models import run_losses

        ids, values = run_losses(ws, Path(run), batch_size=batch_size, max_length=max_length, device=device,
                                 show_progress=show_progress)
        if by == "ppl":
            values = np.exp(values)
        info.update(run=str(Path(run).resolve()), max_length=max_length,
                    rule="mean cross-entropy per answer token" + ("; exp of it" if by == "ppl" else ""))
        default = f"{by}_{Path(run).resolve().name}"
    return write_scores(ws, name or re.sub(r"[^A-Za-z0-9._-]+", "-", default), ids, values, info,
                        overwrite=overwrite)
