"""Embed every sample of the workspace dataset with open_clip: image and text in one space.

Output: ``embeddings/<tag>/`` holding Parquet parts (``sample_id`` + ``embedding``, a fixed-size list of
float32, or float16 with ``dtype="float16"``) and ``embeddings.json`` (model, pretrained, fuse rule, dim,
dtype, dataset fingerprint, rows, parts hash, ``complete: true``).

* Default tag: ``<model>_<pretrained>`` with unsafe characters replaced (``ViT-B-32_laion2b_s34b_b79k``,
  ``tiny-clip_none``; a checkpoint file contributes ``ckpt-<file stem>``).
* The default embedding set: the tag named in ``embeddings/DEFAULT`` (rewritten by every completed
  ``curate embed``); without that file, the only complete set present.
* Text of a sample: the human turns joined by a blank line, ``<image>`` removed, whitespace collapsed.
  CLIP's text encoder holds 77 tokens (75 after the start/end tokens); longer text is truncated at the
  end, which in ScienceQA-style prompts keeps the question and the start of the context.
* Resume: rows are cut into parts of ``rows_per_part`` in dataset order; finished parts live in
  ``embeddings/.<tag>.partial/`` and are skipped by a rerun with the same parameters. Each part is computed
  in the same batches whatever happened before, so a resumed set is byte-identical to an uninterrupted
  one. The partial directory is renamed to ``embeddings/<tag>/`` only when every part exists.
* Under ``torchrun`` part ``i`` belongs to rank ``i % world_size``; rank 0 finalises after a barrier.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.clip_model import load_model, resolve_device
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
from datasets_spec.schema import IMAGE_TOKEN, check_image_path
from datasets_spec.workspace import Workspace, now_utc, tool_version

PROGRESS_NAME = "progress.json"
FUSE_RULES = {
    "mean": "mean of the L2-normalised image and text vectors, renormalised; text-only samples: text vector",
    "image": "L2-normalised image vector; text-only samples: text vector",
    "text": "L2-normalised text vector",
    "concat": "[image, text] of L2-normalised vectors, renormalised (2x dim); text-only: [text, text]",
}
# 4096 rows is 8 MB of float32 at d=512: a killed run loses at most a few seconds of GPU work, and a
# 665k-row dataset is ~160 files.
DEFAULT_ROWS_PER_PART = 4096
# Storage dtypes: float16 halves the bytes every k-center pass reads (exactness: curate.kcenter).
DTYPES = ("float32", "float16")
TEXT_RULE = "human turns joined by a blank line, <image> removed, truncated to the model's context length"


def default_tag(model: str, pretrained: str | None) -> str:
    label = _pretrained_label(pretrained)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}_{label}")


def _pretrained_label(pretrained: str | None) -> str:
    if not pretrained or pretrained.lower() == "none":
        return "none"
    if os.path.sep in pretrained or os.path.isfile(pretrained):
        return f"ckpt-{Path(pretrained).stem}"
    return pretrained


def sample_text(conversations: list[dict]) -> str:
    """What the human turns say, without ``<image>``, whitespace collapsed."""
    human = [t["value"].replace(IMAGE_TOKEN, " ") for t in conversations if t["from"] == "human"]
    return "\n\n".join(" ".join(v.split()) for v in human).strip()


# --- data ------------------------------------------------------------------------------------------


class _Samples:
    """Map-style dataset: index -> (index, image tensor or zeros, has_image, tokens)."""

    def __init__(self, texts, images, preprocess, tokenizer, image_size: int) -> None:
        self.texts, self.images = texts, images
        self.preprocess, self.tokenizer, self.image_size = preprocess, tokenizer, image_size

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        tokens = self.tokenizer([self.texts[i]])[0]
        path = self.images[i]
        if path is None:
            return i, torch.zeros(3, self.image_size, self.image_size), False, tokens
        with Image.open(path) as img:
            pixels = self.preprocess(img.convert("RGB"))
        return i, pixels, True, tokens


def _image_paths(ws: Workspace, table: pa.Table) -> list[Path | None]:
    root = ws.image_root()
    out: list[Path | None] = []
    ids, paths = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
    for sid, image in zip(ids, paths, strict=True):
        if image is None:
            out.append(None)
            continue
        where = f"sample {sid!r}"
        if root is None:
            raise UserError(f"{ws.dataset_dir}: {where} has an image but the dataset has no image root")
        check_image_path(image, where=where)
        path = (root / image).resolve()
        if not path.is_relative_to(root.resolve()):
            raise UserError(f"{where}: image path {image!r} escapes the image root {root}")
        if not path.is_file():
            raise UserError(f"{where}: image file {path} is missing")
        out.append(path)
    return out


def _image_size(preprocess) -> int:
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else size[0])
    return 224


# --- distributed -----------------------------------------------------------------------------------


# --- embedding -------------------------------------------------------------------------------------


def _fuse(img, txt, has_image, rule: str):
    import torch
    import torch.nn.functional as F

    txt = F.normalize(txt.float(), dim=-1)
    full = txt.clone()
    if img is not None:
        img = F.normalize(img.float(), dim=-1)
        if rule == "mean":
            full[has_image] = F.normalize(img + txt[has_image], dim=-1)
        elif rule == "image":
            full[has_image] = img
    if rule == "concat":
        other = txt.clone()
        if img is not None:
            other[has_image] = img
        full = F.normalize(torch.cat([other, txt], dim=-1), dim=-1)
    return full


def _batches(parts: list[int], n_rows: int, rows_per_part: int, batch_size: int) -> list[list[int]]:
    """Batches never cross a part boundary, so each part is computed identically on every run."""
    out = []
    for p in parts:
        start, stop = p * rows_per_part, min(n_rows, (p + 1) * rows_per_part)
        out.extend(list(range(s, min(stop, s + batch_size))) for s in range(start, stop, batch_size))
    return out


def _write_embedding_part(path: Path, ids: list[str], vectors: np.ndarray, dtype: str = "float32") -> None:
    dim = vectors.shape[1]
    arrow = pa.float16() if dtype == "float16" else pa.float32()
    flat = pa.array(np.ascontiguousarray(vectors, dtype=dtype).reshape(-1), type=arrow)
    table = pa.table(
        {"sample_id": pa.array(ids, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)}
    )
    with atomic_file(path) as tmp:
        write_part(table, tmp)


def _run_parts(net, loader, parts_rows: dict[int, tuple[int, int]], ids, out_dir, fuse, device, progress,
               dtype: str = "float32"):
    import torch

    pending: dict[int, dict[int, np.ndarray]] = {p: {} for p in parts_rows}
    row_part = {}
    for p, (a, b) in parts_rows.items():
        row_part.update({r: p for r in range(a, b)})
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for idx, pixels, has_image, tokens in loader:
            has_image = has_image.bool()
            img = net.encode_image(pixels[has_image].to(device)) if has_image.any() else None
            txt = net.encode_text(tokens.to(device))
            vec = _fuse(img, txt, has_image.to(device), fuse).cpu().numpy()
            for j, row in enumerate(idx.tolist()):
                pending[row_part[row]][row] = vec[j]
            progress(len(idx))
            for p in {row_part[r] for r in idx.tolist()}:
                a, b = parts_rows[p]
                if len(pending[p]) == b - a:
                    rows = pending.pop(p)
                    vectors = np.stack([rows[r] for r in range(a, b)])
                    _write_embedding_part(out_dir / part_name(p), ids[a:b], vectors, dtype)


def embed_workspace(
    ws: Workspace,
    *,
    model: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    fuse: str = "mean",
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 2,
    tag: str | None = None,
    overwrite: bool = False,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    seed: int = 0,
    max_parts: int | None = None,
    show_progress: bool = True,
    stats: dict | None = None,
    threads: int | None = None,
    dtype: str = "float32",
) -> Path:
    """Embed every dataset sample; return ``embeddings/<tag>/``.

    (``llava:<run>`` / ``lm:<dir>`` models: :func:`curate.embed_reference.embed_any`.)
    ``max_parts`` stops after that many new parts (the run resumes later; returns the partial directory).
    ``stats`` (optional dict) receives timings: ``seconds_model_load``, ``seconds_loop``, ``rows``.
    ``threads``: torch intra-op threads on CPU (None: torch's default). One thread is much faster for
    tiny models on a busy machine, where multi-threaded kernels wait on descheduled threads.
    ``dtype``: storage of the vectors, float32 or float16 (rounded once, when written).
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if fuse not in FUSE_RULES:
        raise UserError(f"unknown --fuse {fuse!r}; valid: {', '.join(FUSE_RULES)}")
    if batch_size <= 0 or rows_per_part <= 0:
        raise UserError("--batch-size and rows per part must be positive")
    tag = tag or default_tag(model, pretrained)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", tag) or tag.startswith("."):
        raise UserError(f"--tag {tag!r}: use letters, digits, '.', '_' and '-' only")
    fingerprint = ws.dataset_fingerprint()
    final = ws.embeddings_dir / tag
    params = {
        "model": model,
        "pretrained": str(Path(pretrained).resolve()) if pretrained and os.path.isfile(pretrained) else
        (pretrained or "none"),
        "fuse": fuse,
        "dataset_fingerprint": fingerprint,
        "rows_per_part": rows_per_part,
        "seed": seed,
        "dtype": dtype,
    }
    if finished_set(ws, final, params, overwrite):
        return final
    if threads is not None and threads <= 0:
        raise UserError(f"--threads must be positive (got {threads})")
    with embedding_process(threads) as (rank, world):
        return _embed(ws, final, tag, params, batch_size, device, num_workers, max_parts, show_progress,
                      stats, rank, world)


def finished_set(ws: Workspace, final: Path, params: dict, overwrite: bool) -> bool:
    """True when ``final`` already holds this complete set (made the default); else check it may be written.

    An existing set with other parameters is refused unless ``overwrite``; only an embedding set is ever
    replaced (the output guard).
    """
    if (final / INFO_NAME).exists() and not overwrite:
        info = read_json(final / INFO_NAME)
        if all(info.get(k) == v for k, v in params.items()) and info.get("complete"):
            write_default(ws, final.name)
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


def _embed(ws, final, tag, params, batch_size, device, num_workers, max_parts, show_progress, stats,
           rank, world) -> Path:
    import torch

    # Model and image paths are checked before anything is written, so a bad --pretrained or a missing
    # image leaves no trace under embeddings/.
    table = ws.read_dataset(columns=["sample_id", "image", "conversations"])
    images = _image_paths(ws, table)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    net, preprocess, tokenizer = load_model(
        params["model"], params["pretrained"], device=dev, seed=params["seed"]
    )
    t_load = time.perf_counter() - t0

    partial = ws.embeddings_dir / f".{tag}.partial"
    if rank == 0:
        progress_path = partial / PROGRESS_NAME
        if partial.exists() and (not progress_path.exists() or read_json(progress_path) != params):
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        write_json(progress_path, params)
    barrier()

    ids = table.column("sample_id").to_pylist()
    n_rows, rpp = len(ids), params["rows_per_part"]
    n_parts = -(-n_rows // rpp)
    done = {p.name for p in list_parts(partial)}
    todo = [p for p in range(n_parts) if p % world == rank and part_name(p) not in done]
    if max_parts is not None:
        todo = todo[:max_parts]
    texts = [sample_text(c) for c in table.column("conversations").to_pylist()]
    samples = _Samples(texts, images, preprocess, tokenizer, _image_size(preprocess))
    batches = _batches(todo, n_rows, rpp, batch_size)
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=batches, num_workers=num_workers if batches else 0,
        pin_memory=dev == "cuda", persistent_workers=False,
    )
    parts_rows = {p: (p * rpp, min(n_rows, (p + 1) * rpp)) for p in todo}
    t1 = time.perf_counter()
    with _progress(sum(b - a for a, b in parts_rows.values()), show_progress and rank == 0) as advance:
        _run_parts(net, loader, parts_rows, ids, partial, params["fuse"], dev, advance, params["dtype"])
    if stats is not None:
        stats.update(seconds_model_load=t_load, seconds_loop=time.perf_counter() - t1,
                     rows=sum(b - a for a, b in parts_rows.values()))
    barrier()
    complete = len(list_parts(partial)) == n_parts
    if rank == 0 and complete:
        _finalise(ws, partial, final, tag, params, n_rows, n_parts, world)
    barrier()
    return final if complete else partial


def _finalise(ws, partial, final, tag, params, n_rows, n_parts, world, *, rule: str | None = None,
              text_rule: str = TEXT_RULE) -> None:
    first = pq.read_schema(partial / part_name(0))
    dim = first.field("embedding").type.list_size
    info = {
        **params,
        "tag": tag,
        "fuse_rule": rule or FUSE_RULES[params["fuse"]],
        "text_rule": text_rule,
        "dim": dim,
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
    write_default(ws, tag)


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
