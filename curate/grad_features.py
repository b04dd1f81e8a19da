"""Gradient features (LESS, Xia et al. 2024, sec. 4.1; ICONS, Wu et al. 2025): an embedding set of
per-sample LoRA gradients of a warm-up run.

``curate embed --model grad:runs/<warm-up>`` computes, for every dataset sample on its own (the gradient
of its loss alone, as at batch size 1; several samples share a forward pass without mixing; the run's
template, image tokens and label masking; dropout off), the gradient ``g`` of the training loss
with respect to every LoRA matrix of the warm-up at each kept checkpoint, then

* ``--grad adam`` (the training-sample features of LESS, eq. 2): from the checkpoint's optimiser state
  ``m, v`` (no bias correction, as LESS), ``m' = 0.9 m + 0.1 g``, ``v' = 0.999 v + 0.001 g^2``,
  ``feature = m' / sqrt(v' + 1e-8)``;  ``--grad sgd`` (LESS's target features): ``feature = g``;
* projects it with a Rademacher random matrix (entries +-1, seed ``--seed``, generated as the ``traker``
  package's BasicProjector generates it: blocks of 128 columns, block ``i`` seeded ``seed + 1000 i``) to
  ``--proj-dim`` values (LESS: 8192); a dimension at least the gradient's is the gradient itself;
* L2-normalises it, and concatenates the checkpoints, checkpoint ``i`` scaled by ``sqrt(w_i)`` where
  ``w_i`` is its mean learning rate, the weights normalised to sum to 1. The stored vector has unit norm
  and the inner product of two of them is ``sum_i w_i <a_i, b_i>``: LESS's checkpoint-weighted score.

The set is written like every embedding set (curate/embed.py): parts of ``rows_per_part`` rows, resumable
from ``embeddings/.<tag>.partial/``, parts split over ``torchrun`` ranks, float16 on request.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

import numpy as np

from curate import embed as clip_embed
from curate.embed_parts import PROGRESS_NAME, EmbedJob, _progress
from curate.embed_parts import _finalise as finalise_set
from curate.embed_parts import write_embedding_part as _write_embedding_part
from datasets_spec.distributed import barrier
from datasets_spec.errors import UserError
from datasets_spec.parts import list_parts, part_name, read_json, write_json
from datasets_spec.workspace import Workspace

PREFIX = "grad:"
GRAD_KINDS = ("adam", "sgd")
DEFAULT_PROJ_DIM = 8192  # LESS's choice: its ablation finds 8192 as good as larger and cheaper to store
ADAM_BETAS = (0.9, 0.999)  # the warm-up's AdamW defaults, as LESS assumes
ADAM_EPS = 1e-8
BLOCK_SIZE = 128  # LESS's traker block size; it fixes the seeds of the matrix, so it is part of the set
# Below this many bytes the whole projection matrix is generated once and kept; above, traker regenerates
# it block by block for every batch (a 7B model's LoRA gradient times 8192 columns would not fit).
CACHE_BYTES = 1 << 30
PROJECT_BYTES = 256 << 20  # gradients gathered before one projection (at least one batch)


def is_gradient(model: str) -> bool:
    return model.startswith(PREFIX)


def adam_features(grad, exp_avg, exp_avg_sq):
    """LESS eq. 2: one Adam step's update direction from the saved moments, without bias correction."""
    import torch

    beta1, beta2 = ADAM_BETAS
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad**2
    return m / torch.sqrt(v + ADAM_EPS)


def checkpoint_weights(mean_lrs: list[float]) -> list[float]:
    """LESS's checkpoint weights: the mean learning rates, normalised to sum to 1."""
    total = sum(mean_lrs)
    if not total > 0:
        raise UserError("the warm-up's checkpoints logged no positive learning rate; they cannot be weighted")
    return [lr / total for lr in mean_lrs]


class Projector:
    """``[B, grad_dim] -> [B, proj_dim]`` by traker's Rademacher BasicProjector (identity when
    ``proj_dim >= grad_dim``: a projection that does not shrink the gradient only adds noise)."""

    def __init__(self, grad_dim: int, proj_dim: int, seed: int, device: str = "cpu") -> None:
        import torch

        self.identity = proj_dim >= grad_dim
        self.out_dim = grad_dim if self.identity else proj_dim
        self.matrix = self.basic = None
        if self.identity:
            return
        from trak.projectors import BasicProjector, ProjectionType

        # Generated on the CPU whatever the compute device, so a set is the same on a GPU machine.
        self.basic = BasicProjector(grad_dim=grad_dim, proj_dim=proj_dim, seed=seed,
                                    proj_type=ProjectionType.rademacher, device=torch.device("cpu"),
                                    block_size=BLOCK_SIZE)
        if grad_dim * proj_dim * 4 <= CACHE_BYTES:
            self.matrix = self._full_matrix(proj_dim).to(device)

    def _full_matrix(self, proj_dim: int):
        import torch

        blocks = []
        for i, state in enumerate(self.basic.generator_states):
            self.basic.generate_sketch_matrix(state)
            width = min(BLOCK_SIZE, proj_dim - i * BLOCK_SIZE)
            blocks.append(self.basic.proj_matrix[:, :width].clone())
        return torch.cat(blocks, dim=1)

    def project(self, grads):
        if self.identity:
            return grads
        if self.matrix is not None:
            return grads @ self.matrix
        return self.basic.project(grads.cpu(), model_id=0).to(grads.device)


class PerSampleGradients:
    """Per-sample gradients of the LoRA matrices from one batched forward and backward pass.

    A LoRA matrix ``W`` is a Linear layer without bias, so the gradient of sample ``b``'s own loss is
    ``sum over its tokens t of delta[b, t] outer x[b, t]`` (input ``x``, gradient at the output ``delta``).
    Hooks keep both for every LoRA layer; the batch loss is the sum of the samples' mean token losses, so
    each row's ``delta`` is that of its sample trained alone (batch size 1): rows of a batch never mix,
    and padding gets no gradient. ``matrices`` are the LoRA weights' Linear modules in feature order.
    """

    def __init__(self, model, matrices: list) -> None:
        self.model, self.matrices = model, matrices
        self.inputs: dict[int, object] = {}
        self.deltas: dict[int, object] = {}
        for i, module in enumerate(matrices):
            module.register_forward_hook(self._keep(i))

    def _keep(self, i: int):
        def hook(module, args, output):
            self.inputs[i] = args[0].detach()
            output.register_hook(lambda grad: self.deltas.__setitem__(i, grad.detach()))

        return hook

    def __call__(self, batch: dict, device: str, ids: list[str]):
        """``[batch, n_lora_values]`` float32: each sample's gradient of its mean token loss."""
        import torch
        import torch.nn.functional as F

        keys = ("input_ids", "attention_mask", "pixel_values")
        logits = self.model(**{k: batch[k].to(device) for k in keys if batch.get(k) is not None}).logits
        labels = batch["labels"].to(device)[:, 1:]
        token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100,
                                     reduction="none")
        counts = (labels != -100).sum(dim=1)
        if bool((counts == 0).any()):
            first = ids[int((counts == 0).nonzero()[0])]
            raise UserError(f"sample {first!r}: no answer tokens to learn, so no training gradient")
        loss = (token_loss.sum(dim=1) / counts).sum()
        params = [m.weight for m in self.matrices]
        torch.autograd.grad(loss, params)  # runs the backward pass that fills the hooks' deltas
        rows = [torch.einsum("bto,bti->boi", self.deltas[i].float(), self.inputs[i].float()).flatten(1)
                for i in range(len(self.matrices))]
        self.inputs.clear()
        self.deltas.clear()
        return torch.cat(rows, dim=1)


# --- the embedding run ---------------------------------------------------------------------------------


def _warmup():
    """train.warmup, imported here only: the warm-up is a training run, rebuilt the way it trained, and
    this is the one place curate reaches into train (at call time, so importing curate never loads it)."""
    import train.warmup

    return train.warmup


class _Source:
    """The warm-up model with what every part needs: checkpoints, weights, moments, projector."""

    def __init__(self, ws: Workspace, run_dir: Path, grad: str, proj_dim: int, seed: int,
                 device: str) -> None:
        self.warm = _warmup().WarmupRun(ws, run_dir)
        self.grad, self.device = grad, device
        self.weights = checkpoint_weights([c.mean_lr for c in self.warm.checkpoints])
        # Every checkpoint's optimiser state is read before anything is written: a missing one is refused
        # up front, not after hours of gradients.
        self.moments = [self.warm.adam_moments(c) if grad == "adam" else None for c in self.warm.checkpoints]
        self.projector = Projector(self.warm.grad_dim, proj_dim, seed, device)
        self.warm.model.to(device)
        # "...lora_A.default.weight" -> its Linear module "...lora_A.default", in the feature order
        matrices = [self.warm.model.get_submodule(n.removesuffix(".weight")) for n in self.warm.names]
        self.gradients = PerSampleGradients(self.warm.model, matrices)

    @property
    def dim(self) -> int:
        return self.projector.out_dim * len(self.warm.checkpoints)

    def part_vectors(self, table, batch_size: int, advance) -> np.ndarray:
        """Unit-norm features of the rows of ``table`` (one part), float32 ``[rows, dim]``."""
        import torch
        import torch.nn.functional as F

        dataset = self.warm.examples(table)
        ids = table.column("sample_id").to_pylist()
        blocks = []
        plan = zip(self.warm.checkpoints, self.weights, self.moments, strict=True)
        for checkpoint, weight, moments in plan:
            self.warm.load(checkpoint)
            if moments is not None:
                moments = tuple(t.to(self.device) for t in moments)
            out, pending = [], []
            # Gradients wait for one projection of many rows: the matrix is read once per group, not per
            # batch (a skinny matmul against a 512 MB matrix is memory-bound).
            group_rows = max(batch_size, PROJECT_BYTES // (4 * self.warm.grad_dim))
            for start in range(0, len(ids), batch_size):
                rows = range(start, min(len(ids), start + batch_size))
                batch = self.warm.collate([dataset[i] for i in rows])
                g = self.gradients(batch, self.device, [ids[i] for i in rows])
                pending.append(adam_features(g, *moments) if moments is not None else g)
                advance(len(rows))
                if sum(len(t) for t in pending) >= group_rows or rows.stop == len(ids):
                    projected = self.projector.project(torch.cat(pending))
                    out.append(F.normalize(projected, dim=-1) * math.sqrt(weight))
                    pending = []
            blocks.append(torch.cat(out).cpu())
        return F.normalize(torch.cat(blocks, dim=1), dim=-1).numpy().astype(np.float32)


def gradient_params(ws: Workspace, model: str, grad: str, proj_dim: int, rows_per_part: int, seed: int,
                    dtype: str) -> tuple[Path, dict]:
    """The run directory and the set's parameters (checked before anything is loaded or written)."""
    if grad not in GRAD_KINDS:
        raise UserError(f"unknown --grad {grad!r}; valid: {', '.join(GRAD_KINDS)}")
    if proj_dim <= 0:
        raise UserError(f"--proj-dim must be positive (got {proj_dim})")
    if dtype not in clip_embed.DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; valid: {', '.join(clip_embed.DTYPES)}")
    source = model[len(PREFIX):]
    if not source:
        raise UserError(f"--model {model!r}: give grad:runs/<warm-up run>")
    run_dir = Path(source).expanduser()
    if not run_dir.is_dir() and not run_dir.is_absolute() and (ws.root / run_dir).is_dir():
        run_dir = ws.root / run_dir  # runs/<run> of the workspace, from any working directory
    if not run_dir.is_dir():
        raise UserError(f"--model {model!r}: {run_dir} is not a run directory")
    run_dir = run_dir.resolve()
    checkpoints = _warmup().run_checkpoints(run_dir)
    params = {
        "model": f"{PREFIX}{run_dir}",
        "pretrained": str(run_dir),
        "fuse": "gradient",
        "grad": grad,
        "proj_dim": proj_dim,
        "projection": f"rademacher (traker BasicProjector, block {BLOCK_SIZE}, seed {seed}; none when "
                      f"proj_dim >= the gradient's size)",
        "checkpoints": [{"step": c.step, "mean_lr": c.mean_lr} for c in checkpoints],
        "checkpoint_weights": checkpoint_weights([c.mean_lr for c in checkpoints]),
        "dtype": dtype,
        "dataset_fingerprint": ws.dataset_fingerprint(),
        "rows_per_part": rows_per_part,
        "seed": seed,
    }
    return run_dir, params


def default_gradient_tag(run_dir: Path, grad: str, proj_dim: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"grad-{run_dir.name}-{grad}-d{proj_dim}")


def embed_gradients(
    ws: Workspace,
    *,
    model: str,
    grad: str = "adam",
    proj_dim: int = DEFAULT_PROJ_DIM,
    batch_size: int = 16,
    device: str = "auto",
    tag: str | None = None,
    overwrite: bool = False,
    rows_per_part: int = clip_embed.EMBEDDING_ROWS_PER_PART,
    seed: int = 0,
    max_parts: int | None = None,
    show_progress: bool = True,
    stats: dict | None = None,
    threads: int | None = None,
    dtype: str = "float32",
    **_ignored: object,
) -> Path:
    """Gradient features of every dataset sample (module doc); return ``embeddings/<tag>/``.

    ``batch_size`` samples share one forward and backward pass (:class:`PerSampleGradients`: each
    gradient is still the sample's own, as at batch size 1); on a 7B model use a handful.
    ``max_parts``, ``stats`` and ``threads`` as for :func:`curate.embed.embed_workspace`.
    """
    if batch_size <= 0 or rows_per_part <= 0:
        raise UserError("--batch-size and rows per part must be positive")
    run_dir, params = gradient_params(ws, model, grad, proj_dim, rows_per_part, seed, dtype)
    tag = tag or default_gradient_tag(run_dir, grad, proj_dim)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", tag) or tag.startswith("."):
        raise UserError(f"--tag {tag!r}: use letters, digits, '.', '_' and '-' only")
    final = ws.embeddings_dir / tag
    if clip_embed.finished_set(_job(ws, tag, params), overwrite):
        return final
    with clip_embed.embedding_process(threads) as (rank, world):
        t0 = time.perf_counter()
        source = _Source(ws, run_dir, grad, proj_dim, seed, clip_embed.rank_device(device, world))
        t_load = time.perf_counter() - t0
        out = _run(ws, final, tag, params, source, batch_size, max_parts, show_progress, stats, rank, world)
        if stats is not None:
            stats["seconds_model_load"] = t_load
        return out


def _start_partial(partial: Path, params: dict, rank: int) -> None:
    if rank == 0:
        if partial.exists() and (
            not (partial / PROGRESS_NAME).exists() or read_json(partial / PROGRESS_NAME) != params
        ):
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        write_json(partial / PROGRESS_NAME, params)
    barrier()


def _run(ws, final, tag, params, source: _Source, batch_size, max_parts, show_progress, stats, rank,
         world) -> Path:
    table = ws.read_dataset(columns=["sample_id", "image", "conversations"])
    if table.column("image").null_count < table.num_rows:
        clip_embed._image_paths(ws, table)  # every image exists and stays inside the root: checked first
    partial = ws.embeddings_dir / f".{tag}.partial"
    _start_partial(partial, params, rank)
    n_rows, rpp = table.num_rows, params["rows_per_part"]
    n_parts = -(-n_rows // rpp)
    done = {p.name for p in list_parts(partial)}
    todo = [p for p in range(n_parts) if p % world == rank and part_name(p) not in done]
    if max_parts is not None:
        todo = todo[:max_parts]
    spans = [(p * rpp, min(n_rows, (p + 1) * rpp)) for p in todo]
    n_todo = sum(b - a for a, b in spans)
    t1 = time.perf_counter()
    with _progress(n_todo * len(source.weights), show_progress and rank == 0) as advance:
        for p, (a, b) in zip(todo, spans, strict=True):
            rows = table.slice(a, b - a)
            vectors = source.part_vectors(rows, batch_size, advance)
            _write_embedding_part(partial / part_name(p), rows.column("sample_id").to_pylist(), vectors,
                                  params["dtype"])
    if stats is not None:
        stats.update(seconds_loop=time.perf_counter() - t1, rows=n_todo)
    barrier()
    complete = len(list_parts(partial)) == n_parts
    if rank == 0 and complete:
        finalise_set(_job(ws, tag, params), n_rows, n_parts, world)
    barrier()
    return final if complete else partial


def _job(ws: Workspace, tag: str, params: dict) -> EmbedJob:
    """The set's identity as the shared parts helper sees it (for its existing-set check and finalise)."""
    return EmbedJob(ws=ws, tag=tag, params=params, rule=FEATURE_RULE, batch_size=1,
                    text_rule="the warm-up run's training example: template, image tokens, labels")


FEATURE_RULE = (
    "per LoRA-gradient checkpoint: (adam: m'/sqrt(v'+1e-8) from the saved moments; sgd: the gradient), "
    "Rademacher-projected, L2-normalised, scaled by sqrt(checkpoint weight), concatenated"
)
