"""A training run's directory on disk: file names, the partial directory, the log, checkpoints.

```
runs/.<run>.partial/          where a run trains; renamed to runs/<run>/ only when every stage finished,
                              so runs/<run>/ is always complete. `--resume runs/.<run>.partial` continues it.
runs/<run>/
  config.json                 {"config": TrainConfig fields, "llm": LLM preset, "vision": vision preset,
                               "stages": [...], "subset": {"path", "name", "rows", "manifest_sha256",
                               "parts_hash"}, "dataset_fingerprint", "command", "tool_version", "world_size",
                               "created_at", "finished_at"}
  model/                      the final model as a standalone checkpoint (train.model.save_bundle, LoRA
                              merged): LlavaForConditionalGeneration + processor + bundle metadata;
                              train.model.load_bundle(run/"model") loads it. Stage-1-only runs have it too.
  projector.safetensors       the final projector (train.model.projector_state_dict keys); a stage-1 run's
                              projector is what `train run --projector runs/<run>` starts stage 2 from
  adapter/                    LoRA runs: the stage-2 adapter in peft format (adapter_config.json,
                              adapter_model.safetensors; includes the trained projector copy)
  stage1/projector.safetensors, stage1/done.json, stage2/done.json
                              per-stage outputs; done.json = the stage's summary (resume skips done stages)
  trainer_log.jsonl           one JSON object per log event: {"stage", "step", "epoch", and "loss",
                              "learning_rate", "grad_norm" | "eval_loss" | "eval_scienceqa_accuracy",
                              "eval_scienceqa_unparsed" | the end-of-stage "train_runtime" ...}
  train_metrics.json          per stage: steps, samples, tokens, epochs, runtime_s, steps_per_s,
                              first_loss, last_loss, train_loss, eval history, dataset counts (kept, dropped)
  predictions.jsonl, metrics.json
                              `train eval`: LLaVA-format answers and their ScienceQA scores (train.scoring)
```

Trainer checkpoints live in ``stage<N>/checkpoints/checkpoint-<step>/`` of the partial directory and are
deleted when the run completes, unless the run keeps them (``--keep-checkpoints``: all of them, moved with
the run to ``runs/<run>/stage<N>/checkpoints/``). Each holds the trainable weights
(``adapter_model.safetensors`` for LoRA), ``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json``
(the logged learning rates) and ``optimizer_params.json`` (the parameter names of each optimiser group,
in the order of the state's keys).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.errors import UserError
from datasets_spec.safe_json import loads_json

CONFIG_FILE = "config.json"
PROJECTOR_FILE = "projector.safetensors"
LOG_FILE = "trainer_log.jsonl"
TRAIN_METRICS_FILE = "train_metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
OPTIMIZER_NAMES_FILE = "optimizer_params.json"
DONE_FILE = "done.json"
STAGE_DIRS = {"pretrain": "stage1", "finetune": "stage2"}


def partial_dir(final: Path) -> Path:
    """Where the run named ``final.name`` trains until it is complete."""
    return final.with_name(f".{final.name}.partial")


def projector_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/projector.safetensors`` for a run directory; it must exist."""
    path = Path(path)
    if path.is_dir():
        path = path / PROJECTOR_FILE
    if not path.is_file():
        raise UserError(
            f"--projector {path}: not found (give a {PROJECTOR_FILE} or a stage-1 run directory)"
        )
    return path


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The Trainer checkpoint with the highest step in ``checkpoints``, if any."""
    found = [p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def append_log(run_dir: Path, entry: dict) -> None:
    with (run_dir / LOG_FILE).open("a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return []
    return [loads_json(line, path) for line in path.read_text().splitlines() if line.strip()]


def split_rows(table: pa.Table, split: str) -> pa.Table:
    """The rows of ``table`` in dataset split ``split``."""
    return table.filter(pc.equal(table.column("split"), split))
