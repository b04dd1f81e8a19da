"""Influence selection on gradient features (LESS, Xia et al. 2024, sec. 4.2; ICONS, Wu et al. 2025).

``curate select --strategy influence --embeddings <adam gradient set> --target <split or subset>``: the
pool's features (``curate embed --model grad:... --grad adam``) are matched against the target samples'
SGD features (``--grad sgd`` from the same warm-up, projection and seed; ``--target-embeddings TAG``, or
the only such set in the workspace). The target samples form groups (``--target-group-by COLUMN``, e.g.
``subject``; by default one group). With unit-norm features the inner product is LESS's cosine, summed
over the warm-up's checkpoints with their learning-rate weights (curate/grad_features.py), so

* LESS: ``score(x) = max over groups G of mean over t in G of <x, t>``; the k highest scores are kept;
* ICONS (``--vote``): per group, a sample votes for itself when its group mean is at or above that group's
  ``(100 - p)``-th percentile over the pool (``--percentile p``, ICONS' default 20); samples are ranked by
  votes. ICONS leaves ties to the sort; here they go to the LESS score, then to dataset order.

The target must not be the test split (nor a subset holding test samples): selecting on the data a
model is scored on would leak it. The subset manifest's ``strategy_report.target`` records the target
data used: kind, name, rows, a hash of their sample ids, the groups and the target feature set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kcenter import check_k
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace

REFUSED_SPLIT = "test"
DEFAULT_PERCENTILE = 20.0  # ICONS' released code: top 20% of each task
# Feature-set fields that must agree between pool and target sets: same warm-up, checkpoints, projection.
MATCHING_FIELDS = ("pretrained", "proj_dim", "seed", "checkpoints", "checkpoint_weights", "projection")
CHUNK_ROWS = 8192  # pool rows scored at once: 8192 x 16384 float64 is 1 GiB at most


def group_means(pool: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``[n_pool, n_groups]``: each pool row's mean inner product with each group's target rows.

    The mean of inner products is the inner product with the group's mean vector, so the target side
    shrinks to one vector per group before the pool is read.
    """
    labels = np.unique(groups)
    means = np.stack([targets[groups == g].astype(np.float64).mean(axis=0) for g in labels], axis=1)
    out = np.empty((pool.shape[0], len(labels)), dtype=np.float64)
    for start in range(0, pool.shape[0], CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = pool[start:start + CHUNK_ROWS].astype(np.float64) @ means
    return out


def influence(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    targets: np.ndarray | None = None,
    target_groups: np.ndarray | None = None,
    vote: bool = False,
    percentile: float = DEFAULT_PERCENTILE,
    report: dict | None = None,
) -> np.ndarray:
    """The ``k`` pool rows with the highest LESS score (or ICONS votes); see the module doc.

    ``targets``: the target rows' features (same dimension as ``embeddings``); ``target_groups``: one label
    per target row (None: one group). ``seed`` is unused: the ranking has no random choice.
    """
    check_k(k, len(embeddings))
    if targets is None or len(targets) == 0:
        raise UserError("influence needs target samples (--target SPLIT or SUBSET)")
    if targets.shape[1] != embeddings.shape[1]:
        raise UserError(f"target features have {targets.shape[1]} values, the pool's {embeddings.shape[1]}")
    check_percentile(percentile)
    groups = np.zeros(len(targets), dtype=np.int64) if target_groups is None else np.asarray(target_groups)
    means = group_means(embeddings, targets, groups)
    less = means.max(axis=1)
    index = np.arange(len(less))
    if vote:
        thresholds = np.percentile(means, 100.0 - percentile, axis=0)
        votes = (means >= thresholds).sum(axis=1)
        order = np.lexsort((index, -less, -votes))
    else:
        order = np.lexsort((index, -less))
    picks = order[:k].astype(np.int64)
    if report is not None:
        report.update(rule="icons-vote" if vote else "less-max-mean", groups=int(means.shape[1]),
                      score_min=float(less.min()), score_max=float(less.max()),
                      kept_score_min=float(less[picks].min()))
        if vote:
            report.update(percentile=percentile, kept_votes_min=int(votes[picks].min()))
    return picks


def check_percentile(value: float) -> None:
    if not 0.0 < value <= 100.0:
        raise UserError(f"percentile must be in (0, 100] (got {value})")


# --- the target, resolved in the workspace -------------------------------------------------------------


def influence_inputs(ws: Workspace, options: dict, table: pa.Table, kept: np.ndarray, info: dict | None,
                     report: dict) -> dict:
    """The function's keywords: the target rows' features and groups read from the workspace; the
    target's description goes into ``report['target']``."""
    from curate.embedding_sets import load_embeddings

    opts = dict(options)
    target = opts.pop("target", None)
    set_tag = opts.pop("target_embeddings", None)
    group_by = opts.pop("target_group_by", None)
    if not target:
        raise UserError("strategy 'influence' needs --target: a split (e.g. val) or a subset under shards/")
    if info is None or info.get("fuse") != "gradient":
        raise UserError("strategy 'influence' runs on gradient features: pass --embeddings of a "
                        "`curate embed --model grad:...` set")
    ids, description = target_ids(ws, table, target)
    set_tag = set_tag or default_target_set(ws, info)
    matrix, dataset_ids, target_info = load_embeddings(ws, set_tag)
    check_target_set(info, target_info)
    position = {sid: i for i, sid in enumerate(dataset_ids)}
    rows = np.array([position[s] for s in ids], dtype=np.int64)
    opts["targets"] = matrix[rows]
    opts["target_groups"] = _groups(table, rows, group_by)
    labels, counts = np.unique(opts["target_groups"], return_counts=True)
    report["target"] = {
        **description,
        "rows": len(ids),
        "sample_ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
        "group_by": group_by,
        "groups": {str(g): int(n) for g, n in zip(labels, counts, strict=True)},
        "embeddings": {"tag": target_info["tag"], "grad": target_info.get("grad"),
                       "parts_hash": target_info.get("parts_hash")},
    }
    return opts


def target_ids(ws: Workspace, table: pa.Table, target: str) -> tuple[list[str], dict]:
    """Sample ids of the target (a subset directory, a subset name under shards/, or a split)."""
    from curate.shards import MANIFEST, read_manifest

    candidates = [Path(target), ws.shards_dir / target]
    subset = next((p for p in candidates if (p / MANIFEST).is_file()), None)
    split = table.column("split").to_pylist()
    if subset is not None:
        from datasets_spec.parts import list_parts, read_part

        ids = [s for part in list_parts(subset) for s in read_part(part, columns=["sample_id"])
               .column("sample_id").to_pylist()]
        split_of = dict(zip(table.column("sample_id").to_pylist(), split, strict=True))
        if any(split_of.get(s) == REFUSED_SPLIT for s in ids):
            raise UserError(f"--target {subset}: holds samples of the test split; selecting on them leaks "
                            f"the evaluation data")
        unknown = [s for s in ids if s not in split_of]
        if unknown:
            raise UserError(f"--target {subset}: sample {unknown[0]!r} is not in the workspace dataset")
        description = {"kind": "subset", "name": subset.name, "path": str(subset.resolve()),
                       "parts_hash": read_manifest(subset).get("parts_hash")}
    else:
        if target == REFUSED_SPLIT:
            raise UserError("--target test: the test split is what models are scored on; selecting on it "
                            "leaks the evaluation data (use val or a subset of train)")
        mask = pc.equal(table.column("split"), target).to_numpy(zero_copy_only=False)
        ids = table.column("sample_id").filter(pa.array(mask)).to_pylist()
        description = {"kind": "split", "name": target}
    if not ids:
        present = ", ".join(sorted(set(split)))
        raise UserError(f"--target {target}: no samples (neither a subset under {ws.shards_dir} nor a split "
                        f"with rows; splits present: {present})")
    return ids, description


def default_target_set(ws: Workspace, info: dict) -> str:
    """The one SGD gradient set that matches the pool's set (same warm-up, checkpoints, projection)."""
    from curate.embedding_sets import INFO_NAME, complete_sets
    from datasets_spec.parts import read_json

    found = []
    for tag in complete_sets(ws):
        other = read_json(ws.embeddings_dir / tag / INFO_NAME)
        if other.get("grad") == "sgd" and all(other.get(f) == info.get(f) for f in MATCHING_FIELDS):
            found.append(tag)
    if len(found) != 1:
        what = f"several ({', '.join(found)}); pass one" if found else "none; run `curate embed --model " \
            f"grad:{info.get('pretrained')} --grad sgd --proj-dim {info.get('proj_dim')}` or pass one"
        raise UserError(f"target gradient features for {info.get('tag')}: {what} with --target-embeddings")
    return found[0]


def check_target_set(pool: dict, target: dict) -> None:
    if target.get("fuse") != "gradient" or target.get("grad") != "sgd":
        raise UserError(f"--target-embeddings {target.get('tag')}: not SGD gradient features "
                        f"(curate embed --model grad:... --grad sgd)")
    for field in MATCHING_FIELDS:
        if pool.get(field) != target.get(field):
            raise UserError(f"--target-embeddings {target.get('tag')}: {field} differs from the pool set "
                            f"{pool.get('tag')} ({target.get(field)!r} vs {pool.get(field)!r})")


def _groups(table: pa.Table, rows: np.ndarray, column: str | None) -> np.ndarray:
    if column is None:
        return np.zeros(len(rows), dtype=np.int64)
    if column not in table.column_names:
        raise UserError(f"--target-group-by {column!r}: no such column; columns: "
                        f"{', '.join(table.column_names)}")
    values = table.column(column).take(pa.array(rows)).to_pylist()
    return np.array(["(none)" if v is None else str(v) for v in values])
