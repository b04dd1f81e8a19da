"""The Trainer callbacks of a stage: optimiser-group names beside each checkpoint, the run's JSONL log, and
ScienceQA accuracy after each evaluation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
from transformers import Trainer, TrainerCallback

from datasets_spec.parts import write_json
from train.config import TrainConfig
from train.rundir import OPTIMIZER_NAMES_FILE, append_log
from train.scoring import ACCURACY


class OptimizerNames(TrainerCallback):
    """Write the parameter names of each optimiser group next to every checkpoint's optimizer.pt.

    The optimiser state is keyed by position (group by group); this file maps positions back to the
    parameter names, which is how gradient features find the Adam moments of each LoRA matrix.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir() and self.trainer.optimizer_param_names:
            write_json(folder / OPTIMIZER_NAMES_FILE, {"groups": self.trainer.optimizer_param_names})


class JsonlLog(TrainerCallback):
    """Append every Trainer log event, tagged with the stage, to the run's trainer_log.jsonl."""

    def __init__(self, run_dir: Path, stage: str):
        self.run_dir, self.stage = run_dir, stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_log(
                self.run_dir, {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, **logs}
            )


class ScienceQAAccuracy(TrainerCallback):
    """After each evaluation, generate answers for the held-out problems and log their ScienceQA accuracy."""

    def __init__(self, bundle, table: pa.Table, image_root: Path | None, template: str, config: TrainConfig):
        self.bundle, self.table, self.image_root = bundle, table, image_root
        self.template, self.config = template, config
        self.trainer: Trainer | None = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self.trainer is None:
            return
        from train.evaluate import evaluate_bundle

        bundle = dataclasses.replace(self.bundle, model=self.trainer.model)
        was_training = bundle.model.training
        bundle.model.eval()
        try:
            _, metrics = evaluate_bundle(
                bundle,
                self.table,
                self.image_root,
                template=self.template,
                limit=self.config.eval_limit,
                batch_size=max(1, args.per_device_eval_batch_size),
                max_new_tokens=self.config.eval_max_new_tokens,
            )
        finally:
            bundle.model.train(was_training)
        self.trainer.log(
            {
                "eval_scienceqa_accuracy": metrics["accuracy"][ACCURACY],
                "eval_scienceqa_unparsed": metrics["unparsed"],
                "eval_scienceqa_total": metrics["total"],
            }
        )
