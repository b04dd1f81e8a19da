"""Two-stage LLaVA training on one subset per run, HF Trainer underneath.

A run trains in ``runs/.<run>.partial/`` and is renamed to ``runs/<run>/`` when every stage finished
(``<run>`` = ``<subset>-<llm>-<stage>`` unless named); the directory layout is :mod:`train.rundir`'s.
Trainer checkpoints store only the trainable weights (the projector in stage 1; projector + LLM, or the
LoRA adapter, in stage 2) plus optimiser state; frozen parts are rebuilt from the presets.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa

from datasets_spec.distributed import barrier, init_distributed, world_size
from datasets_spec.distributed import rank as dist_rank
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_output_path, check_replaceable, has_file
from datasets_spec.parts import hash_parts, read_json, write_json
from datasets_spec.workspace import Workspace, now_utc, tool_version
from train.config import TrainConfig, deepspeed_config_path
from train.rundir import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    DONE_FILE,
    MODEL_DIR,
    PROJECTOR_FILE,
    STAGE_DIRS,
    TRAIN_METRICS_FILE,
    partial_dir,
    projector_file,
)

# --- public entry points ----------------------------------------------------------------------------


def run_subsets(ws: Workspace, subset_path: Path, config: TrainConfig, *, command: str = "") -> list[Path]:
    """One run per subset under ``subset_path`` (itself, or each child holding manifest.json)."""
    from curate.shards import find_subsets

    subsets = find_subsets(Path(subset_path))
    if config.run_name and len(subsets) > 1:
        raise UserError(f"--run-name names one run but {subset_path} holds {len(subsets)} subsets")
    return [run_training(ws, s, config, command=command) for s in subsets]


def run_training(ws: Workspace, subset_dir: Path, config: TrainConfig, *, command: str = "") -> Path:
    """Train ``config``'s stages on the subset in ``subset_dir``; return the finished run directory."""
    from train.presets import resolve_llm, resolve_vision

    subset_dir = Path(subset_dir)
    table, subset_info = load_subset(ws, subset_dir)
    # Names and offline availability are checked before anything is written.
    resolve_llm(config.llm)
    resolve_vision(config.vision)
    init_distributed(deepspeed=bool(config.deepspeed))
    rank, world = dist_rank(), world_size()
    if config.resume:
        partial, final = _resume_target(ws, config)
    else:
        final = ws.runs_dir / (config.run_name or default_run_name(subset_dir, config))
        partial = partial_dir(final)
        if final.exists():
            raise UserError(f"{final}: run already exists; pass --run-name or remove it")
        if partial.exists():
            raise UserError(
                f"{partial}: an unfinished run of this name exists; continue it with --resume {partial}"
            )
    record = _run_record(ws, subset_info, config, command, world)
    barrier()  # every rank has checked the run directories before rank 0 creates one
    created = False
    try:
        if rank == 0 and not partial.exists():
            partial.mkdir(parents=True)
            created = True
            write_json(partial / CONFIG_FILE, record)
        barrier()
        summaries = {}
        for stage in config.stages():
            summaries[stage] = _run_stage(ws, table, config, stage, partial, rank)
        if rank == 0:
            _finish(partial, final, record, summaries)
        barrier()
    except UserError:
        # Bad input found before any training step: leave nothing behind.
        if created and not any(partial.glob("stage*/checkpoints/checkpoint-*")):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def merge_run(run_dir: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write the run's final model as a standalone checkpoint in ``out_dir``.

    The result loads with ``LlavaForConditionalGeneration.from_pretrained(out_dir)`` and
    ``AutoProcessor.from_pretrained(out_dir)`` alone. LoRA runs are merged from ``adapter/`` onto the
    base model the run records; full fine-tuning runs re-save ``model/``.
    """
    from train.model import BUNDLE_FILE, load_bundle, save_bundle

    run_dir = Path(run_dir)
    # The run's own workspace (runs/<run>) is protected, and so is the run being merged.
    owner = run_dir.resolve().parent
    check_output_path(out_dir, workspaces=[owner.parent] if owner.name == "runs" else [], sources=[run_dir])
    check_replaceable(out_dir, kind="merged model", overwrite=overwrite, is_previous=has_file(BUNDLE_FILE),
                      marker=BUNDLE_FILE)
    if not (run_dir / CONFIG_FILE).exists():
        raise UserError(f"{run_dir}: not a finished training run (no {CONFIG_FILE})")
    model_dir = run_dir / MODEL_DIR
    if not model_dir.is_dir():
        raise UserError(f"{run_dir}: has no model/ directory to merge")
    bundle = load_bundle(model_dir)
    model = bundle.model
    if hasattr(model, "merge_and_unload"):
        bundle.model = model.merge_and_unload()
    out_dir = Path(out_dir)
    save_bundle(bundle, out_dir, overwrite=True)  # itself atomic: temporary name, then rename
    return Path(out_dir)


def default_run_name(subset_dir: Path, config: TrainConfig) -> str:
    llm = config.llm.rstrip("/").replace("/", "--")
    if Path(config.llm).expanduser().is_dir():
        llm = Path(config.llm).expanduser().resolve().name
    name = f"{Path(subset_dir).resolve().name}-{llm}-{config.stage}"
    if config.lora:
        name += f"-lora{config.lora_r}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


# --- subset checks ----------------------------------------------------------------------------------


def load_subset(ws: Workspace, subset_dir: Path) -> tuple[pa.Table, dict]:
    """The subset's rows and a summary of where they came from; refuses empty/foreign/unmanifested subsets."""
    from curate.shards import MANIFEST
    from curate.shards import load_subset as load_checked_subset

    table, manifest = load_checked_subset(ws, subset_dir)
    manifest_path = subset_dir / MANIFEST
    info = {
        "path": str(subset_dir.resolve()),
        "name": subset_dir.resolve().name,
        "rows": table.num_rows,
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "parts_hash": hash_parts(subset_dir),
        "strategy": manifest.get("strategy"),
    }
    return table, info


# --- one stage --------------------------------------------------------------------------------------


def _run_stage(
    ws: Workspace, table: pa.Table, config: TrainConfig, stage: str, run_dir: Path, rank: int
) -> dict:
    stage_dir = run_dir / STAGE_DIRS[stage]
    done = stage_dir / DONE_FILE
    if done.exists():
        return read_json(done)
    from train.trainer import train_stage

    projector = _stage_projector(config, stage, run_dir)
    summary = train_stage(ws, table, config, stage, stage_dir, run_dir, projector_path=projector, rank=rank)
    if rank == 0:
        write_json(done, summary)
    barrier()
    gc.collect()
    return summary


def _stage_projector(config: TrainConfig, stage: str, run_dir: Path) -> Path | None:
    if stage == "finetune" and config.stage == "both":
        return run_dir / STAGE_DIRS["pretrain"] / PROJECTOR_FILE
    return projector_file(config.projector_path) if config.projector_path else None


def _finish(partial: Path, final: Path, record: dict, summaries: dict) -> None:
    last = STAGE_DIRS[list(summaries)[-1]]
    for name in (PROJECTOR_FILE, MODEL_DIR, ADAPTER_DIR):
        src = partial / last / name
        if src.exists():
            os.replace(src, partial / name)
    keep = bool(read_json(partial / CONFIG_FILE).get("config", {}).get("keep_checkpoints"))
    for stage_dir in STAGE_DIRS.values():
        if not keep:
            shutil.rmtree(partial / stage_dir / CHECKPOINTS_DIR, ignore_errors=True)
        if stage_dir != last:
            shutil.rmtree(partial / stage_dir / MODEL_DIR, ignore_errors=True)
    write_json(partial / TRAIN_METRICS_FILE, summaries)
    record = dict(read_json(partial / CONFIG_FILE), finished_at=now_utc())
    write_json(partial / CONFIG_FILE, record)
    if final.exists():
        raise UserError(f"{final}: appeared while training; the finished run stays in {partial}")
    os.replace(partial, final)


# --- resume -----------------------------------------------------------------------------------------


def _resume_target(ws: Workspace, config: TrainConfig) -> tuple[Path, Path]:
    """(partial dir, final dir) of ``--resume``; refuses a run of another model or stage."""
    path = Path(config.resume).expanduser()
    if not path.exists():
        raise UserError(f"--resume {path}: not found")
    run = path.resolve()
    while not (run / CONFIG_FILE).exists() and run != run.parent:
        run = run.parent
    if not (run / CONFIG_FILE).exists():
        raise UserError(f"--resume {path}: not inside a training run (no {CONFIG_FILE} above it)")
    recorded = read_json(run / CONFIG_FILE).get("config", {})
    for key in ("llm", "vision", "stage"):
        if recorded.get(key) != getattr(config, key):
            raise UserError(
                f"--resume {path}: that checkpoint is {key} {recorded.get(key)!r}, this run asks for "
                f"{getattr(config, key)!r}; resume with the same --llm/--vision/--stage or start a new run"
            )
    if recorded.get("lora_r") != config.lora_r:
        raise UserError(
            f"--resume {path}: that checkpoint has lora_r {recorded.get('lora_r')}, this run {config.lora_r}"
        )
    match = re.fullmatch(r"\.(.+)\.partial", run.name)
    if not match:
        raise UserError(f"--resume {path}: {run.name} is a finished run; nothing to resume")
    return run, run.with_name(match.group(1))


# --- records ----------------------------------------------------------------------------------------


def _run_record(ws: Workspace, subset_info: dict, config: TrainConfig, command: str, world: int) -> dict:
    from train.presets import LLM_PRESETS, VISION_PRESETS, preset_to_dict

    llm = LLM_PRESETS.get(config.llm)
    vision = VISION_PRESETS.get(config.vision)
    return {
        "config": config.to_dict(),
        "hparams": {s: dataclasses.asdict(config.stage_hparams(s)) for s in config.stages()},
        "llm": preset_to_dict(llm) if llm else {"name": config.llm},
        "vision": preset_to_dict(vision) if vision else {"name": config.vision},
        "stages": config.stages(),
        "subset": subset_info,
        "dataset_fingerprint": ws.dataset_fingerprint(),
        "command": command,
        "tool_version": tool_version(),
        "world_size": world,
        "deepspeed": str(deepspeed_config_path(config.deepspeed)) if config.deepspeed else None,
        "created_at": now_utc(),
    }
