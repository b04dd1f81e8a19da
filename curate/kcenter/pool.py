"""What a rank needs around the loop: its slice of the embeddings, the memory check, checkpoints, progress.

* Slice: only the Parquet parts of the embedding set that hold the rank's pool rows are read (parts are
  ``rows_per_part`` rows in dataset order), never the whole matrix.
* Memory: the matrix slice, the per-sample state and the float64 centers must fit the budget (free RAM,
  or free GPU memory for CUDA, unless ``--memory-budget`` says otherwise); otherwise one line says how
  many bytes are needed and how many processes would make it fit.
* Checkpoints: ``shards/.<name>.kcenter/``: ``params.json`` (what is being selected, by how many ranks)
  and per rank ``rank-<r>-<picks>.npz`` (picks so far, the running bound, the rank's running minimum and
  nearest center). The two newest are kept per rank, so a kill while writing loses at most one interval;
  a resume continues from the newest pick count every rank has.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np

from curate.embedding_sets import DTYPES, EmbeddingSet
from curate.kcenter.engine import Greedy, Resume
from datasets_spec.checkpoints import guarded_load
from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_file, read_json, write_json
from datasets_spec.workspace import Workspace

GB = 1e9
# Per sample besides its row: float32 norm, running minimum and pass buffer, int64 nearest center, and
# a float16 copy of the pass values when dot products are float16.
STATE_BYTES_PER_SAMPLE = 4 + 4 + 4 + 8 + 2


# --- embeddings --------------------------------------------------------------------------------------


def read_rows(es: EmbeddingSet, rows: np.ndarray, dataset_ids: list[str]) -> np.ndarray:
    """Embedding rows ``rows`` (ascending dataset indices) in the stored dtype, reading only their parts
    (each verified by :meth:`EmbeddingSet.read_part`)."""
    out = np.empty((len(rows), es.dim), dtype=DTYPES[es.dtype])
    which = rows // es.rows_per_part
    for p in np.unique(which):
        sel = np.flatnonzero(which == p)
        ids, matrix = es.read_part(int(p))
        local = rows[sel] - int(p) * es.rows_per_part
        if [ids[j] for j in local] != [dataset_ids[r] for r in rows[sel]]:
            raise UserError(f"{es.parts[int(p)]}: stale embeddings, rows are not in dataset order; "
                            f"run `curate embed --overwrite`")
        out[sel] = matrix[local]
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        first = int(rows[np.flatnonzero(bad)[0]])
        raise UserError(f"{es.directory}: embedding of sample {dataset_ids[first]!r} contains NaN or inf "
                        f"({int(bad.sum())} rows); rerun `curate embed --overwrite`")
    return out


# --- memory --------------------------------------------------------------------------------------------


def bytes_needed(n_local: int, d: int, k: int, itemsize: int) -> int:
    return n_local * (d * itemsize + STATE_BYTES_PER_SAMPLE) + k * d * 8


def check_memory(
    n: int, d: int, k: int, dtype: str, world: int, device: str, budget_gb: float | None
) -> None:
    """One line with the bytes needed and the process count that fits, when a rank's share does not."""
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    n_local = -(-n // world)
    need = bytes_needed(n_local, d, k, itemsize)
    budget = budget_gb * GB if budget_gb is not None else _free_bytes(device)
    if need <= budget:
        return
    centers = k * d * 8
    per_sample = d * itemsize + STATE_BYTES_PER_SAMPLE
    where = f"{world} processes" if world > 1 else "one process"
    msg = (f"l2-maxdiverse needs {need:,} bytes ({need / GB:.2f} GB) per process for {n:,} x {d} {dtype} "
           f"over {where} (pool slice + per-sample state + {k:,} float64 centers) but the memory budget is "
           f"{int(budget):,} bytes")
    if centers >= budget:
        raise UserError(f"{msg}; the {k:,} centers alone need {centers / GB:.2f} GB: lower --k")
    procs = max(world + 1, -(-n * per_sample // int(budget - centers)))
    raise UserError(f"{msg}; shard the pool: `torchrun --nproc-per-node {procs} -m curate.cli select ...` "
                    f"(or `curate embed --dtype float16`, or raise --memory-budget)")


def _free_bytes(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.mem_get_info()[0])
    import psutil

    return float(psutil.virtual_memory().available)


# --- checkpoints ------------------------------------------------------------------------------------


def checkpoint_dir(ws: Workspace, name: str) -> Path:
    return ws.shards_dir / f".{name}.kcenter"


def selection_key(pool: np.ndarray, k: int, info: dict) -> str:
    """What determines the picks: pool rows, k and the exact embedding set (not device or world size)."""
    h = hashlib.sha256(np.ascontiguousarray(pool, dtype=np.int64).tobytes())
    h.update(json.dumps([k, info.get("tag"), info.get("parts_hash")]).encode())
    return h.hexdigest()


# A resumed selection trusts these arrays completely (an edited `picks` would select other samples with rc 0),
# so each file carries the sha256 of its arrays' dtypes, shapes and bytes, checked before they are used.
STATE_ARRAYS = ("picks", "bound", "min_d", "nearest")


def state_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in STATE_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpoints:
    """Per-rank checkpoint files of one selection (see the module docstring)."""

    def __init__(self, directory: Path, key: str, comm, every: int) -> None:
        if every <= 0:
            raise UserError(f"--checkpoint-every must be positive (got {every})")
        self.dir, self.key, self.comm, self.every = directory, key, comm, every

    def open(self) -> Resume | None:
        """The newest checkpoint all ranks share, or None (a stale directory is cleared)."""
        params = self.dir / "params.json"
        found = read_json(params) if params.exists() else None
        if found is not None and found.get("key") == self.key and found.get("world") != self.comm.world:
            raise UserError(
                f"{self.dir}: checkpoint written by {found.get('world')} process(es), this run has "
                f"{self.comm.world}; resume with `torchrun --nproc-per-node {found.get('world')}` "
                f"(one process: plain `curate select`) or delete {self.dir} to start over"
            )
        fresh = found is None or found.get("key") != self.key
        self.comm.barrier()
        if self.comm.rank == 0 and fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            write_json(params, {"key": self.key, "world": self.comm.world})
        self.comm.barrier()
        if fresh:
            return None
        counts = self._counts()
        table = np.zeros((self.comm.world, 2))
        newest = sorted(counts, reverse=True)[:2]
        table[self.comm.rank, : len(newest)] = newest
        table = self.comm.all_reduce_sum(table)
        common = set(table[0]) - {0}
        for row in table[1:]:
            common &= set(row)
        if not common:
            return None
        path = self._file(int(max(common)))
        remedy = f"delete {self.dir} and rerun the select (it starts the picks again)"
        with guarded_load(path, what="k-center checkpoint", remedy=remedy), np.load(path) as z:
            arrays = {name: z[name] for name in STATE_ARRAYS}
            sealed = str(z["digest"]) if "digest" in z.files else None
        if sealed != state_digest(arrays):
            raise UserError(f"{path}: k-center checkpoint edited since it was written (its digest no longer "
                            f"matches its arrays); {remedy}")
        return Resume(arrays["picks"], float(arrays["bound"]), arrays["min_d"], arrays["nearest"])

    def _counts(self) -> list[int]:
        pat = re.compile(rf"rank-{self.comm.rank:05d}-(\d+)\.npz$")
        return [int(m.group(1)) for p in self.dir.iterdir() if (m := pat.match(p.name))]

    def _file(self, m: int) -> Path:
        return self.dir / f"rank-{self.comm.rank:05d}-{m:09d}.npz"

    def maybe_save(self, g: Greedy) -> None:
        m = len(g.picks)
        if m % self.every or m == g.k:
            return
        min_d, nearest = g.shard.state()
        with atomic_file(self._file(m)) as tmp, open(tmp, "wb") as fh:
            arrays = {"picks": np.asarray(g.picks, dtype=np.int64), "bound": np.asarray(g.bound),
                      "min_d": min_d, "nearest": nearest}
            np.savez(fh, digest=np.asarray(state_digest(arrays)), **arrays)
        for old in sorted(self._counts())[:-2]:
            self._file(old).unlink(missing_ok=True)

    def remove(self) -> None:
        if self.comm.rank == 0:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- progress ---------------------------------------------------------------------------------------


class PickProgress:
    """A rich bar on stderr: picks done, picks/s and time remaining (rank 0 only)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        speed = TextColumn("{task.fields[rate]} picks/s")
        self.bar = Progress("l2-maxdiverse", BarColumn(), MofNCompleteColumn(), speed, TimeRemainingColumn(),
                            console=Console(stderr=True))
        self.task = self.bar.add_task("select", total=total, completed=done, rate="-")
        self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            task = self.bar.tasks[0]
            rate = f"{task.speed:.1f}" if task.speed else "-"
            self.bar.update(self.task, advance=1, rate=rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
