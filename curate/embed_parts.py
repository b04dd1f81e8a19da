"""Resumable embedding parts, shared by every embedder (open_clip, reference models, text models).

An embedder describes its set as an :class:`EmbedJob` and hands :func:`run_parts` a function that turns
batches of row indices into vectors; this module owns everything else:

* rows are cut into parts of ``rows_per_part`` in dataset order; batches never cross a part boundary, so a
  part is computed in the same batches on every run and a resumed set is byte-identical to an
  uninterrupted one;
* finished parts live in ``embeddings/.<tag>.partial/`` with ``progress.json`` holding the job's
  parameters; a rerun with other parameters starts that directory afresh, a rerun with the same ones
  skips the parts already there;
* under ``torchrun`` part ``i`` belongs to rank ``i % world_size``; rank 0 finalises after a barrier,
  writing ``embeddings.json`` and renaming the partial directory to ``embeddings/<tag>/`` only when every
  part exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.embedding_sets import INFO_NAME, write_default
from datasets_spec.distributed import barrier, init_distributed, world_size
from datasets_spec.distributed import rank as dist_rank
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_replaceable, clean_stale_temps, has_file
from datasets_spec.parts import (
    atomic_file,
    hash_parts,
    list_parts,
    part_hashes,
    part_name,
    read_json,
    write_json,
    write_part,
    write_record,
)
from datasets_spec.workspace import Workspace, now_utc, tool_version

PROGRESS_NAME = "progress.json"
# 4096 rows is 8 MB of float32 at d=512: a killed run loses at most a few seconds of GPU work, and a
# 665k-row dataset is ~160 files. (Not datasets_spec.parts' dataset part size: embedding parts are the
# unit of resume, so they are much smaller.)
EMBEDDING_ROWS_PER_PART = 4096
# Storage dtypes: float16 halves the bytes every k-center pass reads (exactness: curate.kcenter).
DTYPES = ("float32", "float16")

# A batch of row indices -> those rows and their vectors (float32 [len(rows), dim]), in any grouping.
Encoder = Callable[[list[list[int]]], Iterable[tuple[list[int], np.ndarray]]]


@dataclass
class EmbedJob:
    """One embedding set to compute into ``embeddings/<tag>/``."""

    ws: Workspace
    """The workspace whose dataset is embedded."""
    tag: str
    """Set name under ``embeddings/`` (letters, digits, '.', '_', '-')."""
    params: dict
    """What identifies the set (model, rule, dataset fingerprint, ``rows_per_part``, ``dtype``, ...): an
    existing set or partial directory with equal params is reused, with other params refused or reset."""
    rule: str
    """How one vector is built from the model's outputs (``fuse_rule`` in ``embeddings.json``)."""
    text_rule: str
    """Which text of a sample the model reads (``text_rule`` in ``embeddings.json``)."""
    batch_size: int
    """Samples per forward pass."""
    device: str = "auto"
    """auto (cuda when present), cpu, cuda, cuda:N."""
    num_workers: int = 2
    """DataLoader workers preparing inputs (0: in the main process)."""
    max_parts: int | None = None
    """Stop after this many new parts (the run resumes later and returns the partial directory)."""
    show_progress: bool = True
    """A progress bar on rank 0."""
    stats: dict | None = field(default=None, repr=False)
    """Receives timings: ``seconds_model_load`` (from the embedder), ``seconds_loop``, ``rows``."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.tag) or self.tag.startswith("."):
            raise UserError(f"--tag {self.tag!r}: use letters, digits, '.', '_' and '-' only")
        if self.batch_size <= 0 or self.rows_per_part <= 0:
            raise UserError("--batch-size and rows per part must be positive")
        if self.params.get("dtype") not in DTYPES:
            raise UserError(f"unknown --dtype {self.params.get('dtype')!r}; valid: {', '.join(DTYPES)}")
        if self.max_parts is not None and self.max_parts < 0:
            raise UserError(f"max_parts must be >= 0 (got {self.max_parts})")

    @property
    def rows_per_part(self) -> int:
        return int(self.params.get("rows_per_part", 0))

    @property
    def final(self) -> Path:
        return self.ws.embeddings_dir / self.tag

    @property
    def partial(self) -> Path:
        return self.ws.embeddings_dir / f".{self.tag}.partial"


def finished_set(job: EmbedJob, overwrite: bool) -> bool:
    """True when ``job.final`` already holds this complete set (made the default); else check it may be
    written.

    An existing set with other parameters is refused unless ``overwrite``; only an embedding set is ever
    replaced (the output guard).
    """
    final = job.final
    if (final / INFO_NAME).exists() and not overwrite:
        info = read_json(final / INFO_NAME)
        if all(info.get(k) == v for k, v in job.params.items()) and info.get("complete"):
            write_default(job.ws, final.name)
            return True
        raise UserError(f"{final}: holds a different embedding set; pass --overwrite or another --tag")
    check_replaceable(final, kind="embedding set", overwrite=True, is_previous=has_file(INFO_NAME),
                      marker=INFO_NAME)
    return False


@contextlib.contextmanager
def embedding_process(threads: int | None) -> Iterator[tuple[int, int]]:
    """``(rank, world)`` inside the launcher's process group, with ``threads`` intra-op threads.

    The group is destroyed only if this call created it, and the caller's thread count is restored.
    """
    import torch

    if threads is not None and threads <= 0:
        raise UserError(f"--threads must be positive (got {threads})")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    owns_group = init_distributed()
    try:
        yield dist_rank(), world_size()
    finally:
        torch.set_num_threads(previous_threads)  # the caller's process keeps its own setting
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def part_batches(parts: list[int], n_rows: int, rows_per_part: int, batch_size: int) -> list[list[int]]:
    """Batches never cross a part boundary, so each part is computed identically on every run."""
    out = []
    for p in parts:
        start, stop = p * rows_per_part, min(n_rows, (p + 1) * rows_per_part)
        out.extend(list(range(s, min(stop, s + batch_size))) for s in range(start, stop, batch_size))
    return out


def write_embedding_part(path: Path, ids: list[str], vectors: np.ndarray, dtype: str = "float32") -> None:
    dim = vectors.shape[1]
    arrow = pa.float16() if dtype == "float16" else pa.float32()
    flat = pa.array(np.ascontiguousarray(vectors, dtype=dtype).reshape(-1), type=arrow)
    table = pa.table(
        {"sample_id": pa.array(ids, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)}
    )
    with atomic_file(path) as tmp:
        write_part(table, tmp)


def run_parts(job: EmbedJob, ids: list[str], encode: Encoder, *, rank: int, world: int) -> Path:
    """Compute this rank's missing parts with ``encode``; return the finished set or the partial directory.

    Call it only after the model and every input were checked: the partial directory is created here.
    """
    partial = _reset_partial(job, rank)
    barrier()
    n_rows, rpp = len(ids), job.rows_per_part
    n_parts = -(-n_rows // rpp)
    done = {p.name for p in list_parts(partial)}
    todo = [p for p in range(n_parts) if p % world == rank and part_name(p) not in done]
    if job.max_parts is not None:
        todo = todo[: job.max_parts]
    parts_rows = {p: (p * rpp, min(n_rows, (p + 1) * rpp)) for p in todo}
    total = sum(b - a for a, b in parts_rows.values())
    t0 = time.perf_counter()
    with _progress(total, job.show_progress and rank == 0) as advance:
        batches = part_batches(todo, n_rows, rpp, job.batch_size)
        _write_parts(encode(batches), parts_rows, ids, partial, job.params["dtype"], advance)
    if job.stats is not None:
        job.stats.update(seconds_loop=time.perf_counter() - t0, rows=total)
    barrier()
    complete = len(list_parts(partial)) == n_parts
    if rank == 0 and complete:
        _finalise(job, n_rows, n_parts, world)
    barrier()
    return job.final if complete else partial


def _reset_partial(job: EmbedJob, rank: int) -> Path:
    """Rank 0 keeps the partial directory of an interrupted run with the same params, else starts afresh."""
    partial = job.partial
    if rank == 0:
        progress_path = partial / PROGRESS_NAME
        if partial.exists() and (not progress_path.exists() or read_json(progress_path) != job.params):
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        write_json(progress_path, job.params)
    return partial


def _write_parts(results, parts_rows: dict[int, tuple[int, int]], ids: list[str], out_dir: Path,
                 dtype: str, advance: Callable[[int], None]) -> None:
    """Write each part as soon as all of its rows are computed."""
    pending: dict[int, dict[int, np.ndarray]] = {p: {} for p in parts_rows}
    row_part = {r: p for p, (a, b) in parts_rows.items() for r in range(a, b)}
    for rows, vectors in results:
        for j, row in enumerate(rows):
            pending[row_part[row]][row] = vectors[j]
        advance(len(rows))
        for p in {row_part[r] for r in rows}:
            a, b = parts_rows[p]
            if len(pending[p]) == b - a:
                got = pending.pop(p)
                vectors_of_part = np.stack([got[r] for r in range(a, b)])
                write_embedding_part(out_dir / part_name(p), ids[a:b], vectors_of_part, dtype)


def _finalise(job: EmbedJob, n_rows: int, n_parts: int, world: int) -> None:
    partial, final = job.partial, job.final
    first = pq.read_schema(partial / part_name(0))
    info = {
        **job.params,
        "tag": job.tag,
        "fuse_rule": job.rule,
        "text_rule": job.text_rule,
        "dim": first.field("embedding").type.list_size,
        "rows": n_rows,
        "parts": n_parts,
        "parts_hash": hash_parts(partial),
        "part_hashes": part_hashes(partial),
        "world_size": world,
        "complete": True,
        "tool_version": tool_version(),
        "created_at": now_utc(),
    }
    clean_stale_temps(partial)  # part files of killed ranks/runs never reach the finished set
    (partial / PROGRESS_NAME).unlink()
    write_record(partial / INFO_NAME, info)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(partial, final)
    write_default(job.ws, job.tag)


class _progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress("embedding", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("embed", total=self.total)
        return self.advance

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
