"""Running a grid: make the missing subsets, train stage 1 once per LLM, train and evaluate every cell.

A cell whose run holds ``metrics.json`` and whose recorded cell key (subset hash, full training config,
stage-1 key, evaluation settings, what the presets stand for) matches is skipped, so an interrupted
ablation resumes where it stopped; a run trained but not evaluated is only evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from curate.pool import pool_size as workspace_pool_size
from curate.shards import MANIFEST, read_manifest, subset_hash
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_ablation_owned
from datasets_spec.parts import atomic_file, file_sha256, read_json, write_json
from datasets_spec.workspace import Workspace
from train.ablation.grid import AblationGrid, EvalSpec, check_names
from train.ablation.plan import (
    Cell,
    Plan,
    SubsetPlan,
    build_config,
    cell_config,
    finetune_steps,
    plan_ablation,
    stage1_run_name,
)
from train.ablation.progress import CellProgress
from train.config import TrainConfig
from train.report import write_reports
from train.rundir import CONFIG_FILE, METRICS_FILE, PROJECTOR_FILE, partial_dir, projector_file
from train.scoring import ACCURACY, metrics_value

CELL_FILE = "ablation_cell.json"


# --- backend: the curate and train functions the ablation drives ------------------------------------------


def make_subset(ws: Workspace, grid: AblationGrid, plan: SubsetPlan, *, command: str = "") -> Path:
    """Create ``shards/<plan.name>`` through the curate functions.

    The whole pool is ``random`` with k = pool size, so it has a manifest like every other subset.
    """
    from curate.select import select_subset

    if plan.strategy is None:
        return select_subset(
            ws, "random", k=plan.k, seed=0, split=grid.split, require_image=grid.require_image,
            name=plan.name, command=command,
        )
    opts = dict(plan.strategy.options)
    opts.pop("strategy", None)
    opts.setdefault("require_image", grid.require_image)
    if plan.seed_offset:
        opts["seed"] = int(opts.get("seed", 0)) + plan.seed_offset
    if grid.dedup_eps is not None:
        opts.setdefault("dedup_eps", grid.dedup_eps)
    return select_subset(
        ws, plan.strategy.strategy, k=plan.k, split=grid.split, name=plan.name, command=command, **opts
    )


def train_run(ws: Workspace, subset_dir: Path, config: TrainConfig, *, command: str = "") -> Path:
    """``train.runner.run_training``, looked up when called (so a test may patch the runner)."""
    from train.runner import run_training

    return run_training(ws, subset_dir, config, command=command)


def evaluate_run(ws: Workspace, run_dir: Path, spec: EvalSpec) -> dict:
    """``train.evaluate.evaluate_run`` with the grid's evaluation settings, looked up when called."""
    from train.evaluate import evaluate_run as evaluate

    return evaluate(ws, run_dir, spec)


@dataclass(frozen=True)
class Backend:
    """The functions an ablation calls; tests swap them for fakes that write the same files."""

    pool_size: Callable[[Workspace, str, bool], int] = workspace_pool_size
    """(workspace, split, require_image) -> pool samples."""
    make_subset: Callable[..., Path] = make_subset
    """Writes ``shards/<plan.name>`` (subset parts + manifest.json)."""
    train: Callable[..., Path] = train_run
    """Trains one TrainConfig on a subset; returns the finished run directory."""
    evaluate: Callable[[Workspace, Path, EvalSpec], dict] = evaluate_run
    """Scores a run; writes its predictions.jsonl and metrics.json."""


# --- cell keys and markers ----------------------------------------------------------------------------


def json_stable(payload: object) -> dict:
    """``payload`` as JSON would give it back (sorted keys, tuples as lists), for comparing records."""
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def preset_key(llm: str, vision: str) -> dict:
    """What a named preset stands for (shapes, template, system prompt), so that a cell trained before a
    preset changed is trained again; hub ids and directories stand for themselves."""
    from train.presets import LLM_PRESETS, VISION_PRESETS, preset_to_dict

    return json_stable({
        "llm": preset_to_dict(LLM_PRESETS[llm]) if llm in LLM_PRESETS else llm,
        "vision": preset_to_dict(VISION_PRESETS[vision]) if vision in VISION_PRESETS else vision,
    })


def _key_hash(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _marker(run_dir: Path) -> dict:
    path = run_dir / CELL_FILE
    return read_json(path) if path.exists() else {}


def _trained(run_dir: Path, key: Mapping) -> bool:
    """True when ``run_dir`` was trained for exactly ``key``."""
    return _marker(run_dir).get("key_hash") == _key_hash(key)


def _finished(run_dir: Path, key: Mapping) -> bool:
    """True when ``run_dir`` was trained for exactly ``key`` and holds its metrics."""
    return (run_dir / METRICS_FILE).exists() and _trained(run_dir, key)


def _mark(run_dir: Path, key: Mapping, **extra: object) -> None:
    write_json(run_dir / CELL_FILE, {"key": dict(key), "key_hash": _key_hash(key), **extra})


def _prepare_run(ws: Workspace, config: TrainConfig) -> TrainConfig:
    """Clear a stale run of this name; continue an interrupted one of the same config from its checkpoint.

    The trainer keeps an unfinished run in ``runs/.<run>.partial``; when its recorded config equals this
    one, the returned config resumes it (``resume``), otherwise it is removed with the finished-but-stale
    ``runs/<run>``.
    """
    final = ws.runs_dir / config.run_name
    partial = partial_dir(final)
    if final.exists():
        check_ablation_owned(final, CELL_FILE)
        shutil.rmtree(final)
    if partial.exists():
        record = partial / CONFIG_FILE
        recorded = read_json(record).get("config") if record.exists() else None
        if recorded == json_stable(config.to_dict()):
            return dataclasses.replace(config, resume=str(partial))
        check_ablation_owned(partial, CELL_FILE)
        shutil.rmtree(partial)
    return config


# --- running ------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class CellJob:
    """Everything one cell's training and evaluation needs (picklable: it crosses to worker processes)."""

    ws: Workspace
    grid: AblationGrid
    cell: Cell
    config: TrainConfig
    """The cell's stage-2 TrainConfig."""
    key: dict
    """What decides the cell's result; a run recorded with another key is trained again."""
    backend: Backend
    command: str
    log: Callable[[str], None]
    progress: str
    """``[i/n]`` shown in the log."""

    @property
    def estimated_steps(self) -> int:
        """Stage-2 optimiser steps the cell will take (for scheduling only)."""
        return finetune_steps(self.config, self.cell.k)


def _plan(ws: Workspace, grid: AblationGrid, backend: Backend) -> Plan:
    check_names(grid)
    plan = plan_ablation(grid, lambda require_image: backend.pool_size(ws, grid.split, require_image))
    if plan.pool_size == 0:
        raise UserError(f"{ws.dataset_dir}: split {grid.split!r} has no samples to draw subsets from")
    return plan


def run_ablation(
    ws: Workspace,
    grid: AblationGrid,
    *,
    command: str = "",
    backend: Backend | None = None,
    log: Callable[[str], None] = _log,
    plots: bool = True,
    jobs: int = 1,
    verbose: bool = True,
) -> Path:
    """Create missing subsets, train stage 1 once per LLM, train + evaluate every cell, write reports.

    ``jobs`` > 1 trains that many cells at once in separate processes (each with an equal share of the
    CPU threads); cells are independent, so results do not depend on it. ``verbose`` False: one line per
    finished cell (accuracy, elapsed, ETA) instead of each cell's training and evaluation messages.
    Returns ``reports/ablation.md``.
    """
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    backend = backend or Backend()
    plan = _plan(ws, grid, backend)
    manifests = {s.name: _ensure_subset(ws, grid, s, backend, command, log) for s in plan.subsets}
    stage1 = {llm: _ensure_stage1(ws, grid, llm, manifests, backend, command, log) for llm in grid.llms}
    cell_jobs = []
    for i, cell in enumerate(plan.cells, 1):
        projector, stage1_key = stage1[cell.llm]
        config = cell_config(grid, cell, pool_size=plan.pool_size, projector_path=projector)
        key = {
            "subset": cell.subset,
            "subset_hash": subset_hash(manifests[cell.subset]),
            "config": json_stable(config.to_dict()),
            "stage1": stage1_key,
            "eval": grid.eval.key(),
            "presets": preset_key(cell.llm, grid.vision),
        }
        progress = f"[{i}/{len(plan.cells)}]"
        cell_log = log if verbose else _quiet
        cell_jobs.append(CellJob(ws, grid, cell, config, key, backend, command, cell_log, progress))
    _run_cells(cell_jobs, jobs, _progress_printer(cell_jobs, log, verbose))
    if grid.eval.skip:
        return _write_trained_list(ws, grid, plan)
    return write_reports(ws, grid, plan, manifests, plots=plots, log=log)


def _progress_printer(cell_jobs: list[CellJob], log: Callable[[str], None], verbose: bool) -> Callable:
    """The ``on_done`` of :func:`_run_cells`: nothing when verbose (each cell logs itself), else one line."""
    progress = CellProgress(len(cell_jobs), sum(job.estimated_steps for job in cell_jobs))

    def on_done(job: CellJob, outcome: str, reused: bool) -> None:
        line = progress.done(job.cell.run, job.estimated_steps, outcome, reused=reused)
        if not verbose:
            log(line)

    return on_done


def _ensure_subset(
    ws: Workspace, grid: AblationGrid, subset: SubsetPlan, backend: Backend, command: str, log: Callable
) -> dict:
    path = ws.shards_dir / subset.name
    if (path / MANIFEST).exists():
        manifest = read_manifest(path)
        if manifest.get("k") != subset.k:
            raise UserError(
                f"{path}: existing subset has k={manifest.get('k')}, the grid needs k={subset.k}; "
                "remove it or rename the strategy"
            )
        wanted = "random" if subset.strategy is None else subset.strategy.strategy
        if manifest.get("strategy") != wanted:
            raise UserError(
                f"{path}: existing subset was made by {manifest.get('strategy')!r}, the grid needs "
                f"{wanted!r}; remove it or rename the strategy"
            )
        return manifest
    how = "whole pool" if subset.strategy is None else subset.strategy.strategy
    log(f"subset {subset.name}: selecting {subset.k} samples ({how})")
    return read_manifest(backend.make_subset(ws, grid, subset, command=command))


def _ensure_stage1(
    ws: Workspace,
    grid: AblationGrid,
    llm: str,
    manifests: dict,
    backend: Backend,
    command: str,
    log: Callable,
) -> tuple[Path | None, dict | None]:
    """(projector file, stage-1 key) of ``llm``, training stage 1 unless a run of the same key exists."""
    if grid.stage1.skip:
        return None, None
    if grid.stage1.projector is not None:
        path = projector_file(grid.stage1.projector)
        log(f"stage 1 {llm}: using the pretrained projector {path}")
        return path, {"projector": str(path.resolve()), "sha256": file_sha256(path)}
    run = stage1_run_name(llm)
    subset_dir = ws.shards_dir / grid.stage1.subset
    manifest = manifests.get(grid.stage1.subset) or read_manifest(subset_dir)
    config = build_config(grid, llm=llm, stage="pretrain", seed=grid.seeds[0], run=run, projector_path=None)
    key = {
        "subset": grid.stage1.subset,
        "subset_hash": subset_hash(manifest),
        "config": json_stable(config.to_dict()),
        "presets": preset_key(llm, grid.vision),
    }
    run_dir = ws.runs_dir / run
    if _trained(run_dir, key) and (run_dir / PROJECTOR_FILE).is_file():
        log(f"stage 1 {llm}: done earlier, reusing {run_dir / PROJECTOR_FILE}")
        return run_dir / PROJECTOR_FILE, key
    resumable = _prepare_run(ws, config)
    log(f"stage 1 {llm}: training the projector on {grid.stage1.subset} ({grid.stage1.hparams})")
    run_dir = backend.train(ws, subset_dir, resumable, command=command)
    if not (run_dir / PROJECTOR_FILE).is_file():
        raise UserError(f"{run_dir}: stage 1 finished without {PROJECTOR_FILE}")
    _mark(run_dir, key, kind="stage1")
    return run_dir / PROJECTOR_FILE, key


def _run_cells(cell_jobs: list[CellJob], jobs: int, on_done: Callable[[CellJob, str, bool], None]) -> None:
    """Run every cell: in this process when ``jobs`` is 1, else in a pool of ``jobs`` spawned processes;
    ``on_done(job, outcome, reused)`` is called in this process as each cell ends.

    Spawned (not forked) workers: a forked child of a process that already ran OpenMP work can hang.
    """
    if jobs == 1 or len(cell_jobs) <= 1:
        for job in cell_jobs:
            on_done(job, *_run_cell(job))
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or jobs) // jobs)
    context = multiprocessing.get_context("spawn")
    # Longest cells first: queued in plan order, the whole-pool cells come last and train alone while the
    # other workers idle (measured in the demo: 2 of 12 minutes with one of two cores idle).
    ordered = sorted(cell_jobs, key=lambda job: -job.estimated_steps)
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_limit_threads, initargs=(threads,))
    with pool:
        futures = {pool.submit(_run_cell, job): job for job in ordered}
        for future in as_completed(futures):
            # result() re-raises a worker's error (a UserError stays one line)
            on_done(futures[future], *future.result())


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_cell(job: CellJob) -> tuple[str, bool]:
    """Train (unless trained with the same key) and evaluate one cell; returns (outcome, reused)."""
    cell, ws, log = job.cell, job.ws, job.log
    run_dir = ws.runs_dir / cell.run
    label = f"{job.progress} {cell.run}"
    if _finished(run_dir, job.key):
        log(f"{label}: finished earlier, skipped")
        return _outcome(run_dir, "finished earlier"), True
    trained_now = not _trained(run_dir, job.key)
    if trained_now:
        resumable = _prepare_run(ws, job.config)
        resumed = " (resuming its checkpoint)" if resumable is not job.config else ""
        log(f"{label}: training ({cell.strategy}, {cell.k} samples, {cell.llm}, seed {cell.seed}){resumed}")
        run_dir = job.backend.train(ws, ws.shards_dir / cell.subset, resumable, command=job.command)
        _mark(run_dir, job.key, kind="cell", cell=dataclasses.asdict(cell))
    eval_spec = job.grid.eval
    if eval_spec.skip:
        log(f"{label}: trained; evaluated outside the ablation ([eval] skip)")
        return ("trained; evaluated outside the ablation" if trained_now else "trained earlier, skipped"), \
            not trained_now
    first = f" (first {eval_spec.limit})" if eval_spec.limit else ""
    log(f"{label}: evaluating on {eval_spec.split}{first}")
    avg = metrics_value(job.backend.evaluate(ws, run_dir, eval_spec), ACCURACY)
    log(f"{label}: Avg {avg:.2f}" if avg is not None else f"{label}: evaluated (no problem scored)")
    return _outcome(avg, "trained and evaluated"), False


def _outcome(avg: float | None | Path, how: str) -> str:
    if isinstance(avg, Path):
        metrics = avg / METRICS_FILE
        avg = metrics_value(read_json(metrics), ACCURACY) if metrics.is_file() else None
    return f"Avg {avg:.2f}% ({how})" if avg is not None else f"no problem scored ({how})"


def _quiet(message: str) -> None:
    """The log of a cell whose progress the parent prints (one line per cell)."""


def _write_trained_list(ws: Workspace, grid: AblationGrid, plan: Plan) -> Path:
    """reports/ablation.md for a train-only grid: its runs and how they become the table."""
    lines = [f"# {grid.name}", "", "Trained; evaluate each run's model/ with lmms-eval into "
             "<results>/<run>/, then `train report --lmms-eval <results>`.", ""]
    lines += [f"- {cell.strategy} ({cell.budget}, {cell.k} samples): runs/{cell.run}" for cell in plan.cells]
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    path = ws.reports_dir / "ablation.md"
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def describe_plan(ws: Workspace, grid: AblationGrid, *, backend: Backend | None = None) -> str:
    """The subsets and runs a grid needs, and which of them exist already (nothing is trained)."""
    plan = _plan(ws, grid, backend or Backend())
    lines = [
        f"grid {grid.name!r}: pool {plan.pool_size} samples ({grid.split}), "
        f"{len(plan.subsets)} subsets, {len(plan.cells)} runs + {0 if grid.stage1.skip else len(grid.llms)} "
        f"stage-1 runs"
    ]
    for subset in plan.subsets:
        state = "exists" if (ws.shards_dir / subset.name / MANIFEST).exists() else "to select"
        lines.append(f"  subset {subset.name} (k={subset.k}): {state}")
    for cell in plan.cells:
        state = "evaluated" if (ws.runs_dir / cell.run / METRICS_FILE).exists() else "to run"
        lines.append(f"  run {cell.run}: {state}")
    return "\n".join(lines)
