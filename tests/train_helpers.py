"""Shared pieces of the trainer tests: a private workspace with subsets, CLI runner, logits of a model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from curate.shards import write_subset
from datasets_spec.parts import read_json, write_record
from datasets_spec.workspace import Workspace
from tests.cli_helpers import run_app

TINY = dict(llm="tiny-llama", vision="tiny-clip", preset="tiny-cpu", max_length=512, eval_limit=0)


def private_workspace(source: Workspace, dest: Path) -> Workspace:
    """A copy of the shared synthetic workspace with subsets: k12, k4, empty, foreign (other dataset)."""
    shutil.copytree(source.root, dest)
    ws = Workspace(dest)
    dataset = ws.read_dataset()
    train = np.flatnonzero(pc.equal(dataset.column("split"), "train").to_numpy(zero_copy_only=False))
    for name, rows in (("k12", train[:12]), ("k4", train[:4]), ("empty", train[:0]), ("foreign", train[:4])):
        write_subset(ws, name, dataset, rows, {"strategy": "first", "k": len(rows), "seed": 0})
    manifest = read_json(ws.shards_dir / "foreign" / "manifest.json")
    # A subset another dataset's select wrote: sealed like any record (an edit by hand would be refused).
    write_record(ws.shards_dir / "foreign" / "manifest.json", dict(manifest, dataset_fingerprint="0" * 64))
    return ws


def run_args(ws: Workspace, subset: str | None = None, *, llm: str = "tiny-llama",
             vision: str = "tiny-clip") -> list[str]:
    """`train run` arguments naming ``ws``, one of its subsets (None: the caller passes --subset) and the
    two models."""
    where = ["-w", str(ws.root)] + (["--subset", str(ws.shards_dir / subset)] if subset is not None else [])
    return ["run", *where, "--llm", llm, "--vision", vision]


def cli(args: list[str]) -> tuple[int, str]:
    """Run `train ARGS` the way the console script does; (exit code, stderr)."""
    from train.cli import app

    return run_app(app, args)


def logged_losses(run: Path) -> list[float]:
    """The training losses a finished run logged, in step order."""
    from train.rundir import read_log

    return [e["loss"] for e in read_log(run) if "loss" in e]


def sample_batch(bundle, ws: Workspace, n: int = 4) -> dict:
    """A right-padded training batch of the first ``n`` image samples of the dataset."""
    from train.data import LlavaCollator, prepare_dataset

    table = ws.read_dataset()
    table = table.filter(pc.is_valid(table.column("image"))).slice(0, n)
    dataset, _ = prepare_dataset(table, bundle, image_root=ws.image_root(), max_length=512)
    return LlavaCollator(bundle.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])


@torch.no_grad()
def logits(model, batch: dict) -> torch.Tensor:
    model.eval()
    keys = ("input_ids", "attention_mask", "pixel_values")
    return model(**{k: batch[k] for k in keys}).logits


def question_rows(
    n_train: int,
    n_test: int,
    *,
    id_format: str = "{}",
    subjects: tuple[str, ...] = ("natural science",),
    grades: tuple[int, ...] = (3,),
) -> list[dict]:
    """Text-only three-choice problems in canonical form: problem i answers option ``i % 3``, the first
    ``n_train`` are in the train split and the rest in test; subjects and grades cycle through the given."""
    rows = []
    for i in range(n_train + n_test):
        answer = i % 3
        rows.append(
            {
                "sample_id": id_format.format(i),
                "source": "synthetic",
                "split": "train" if i < n_train else "test",
                "image": None,
                "conversations": [
                    {"from": "human", "value": f"Question {i}? Options: (A) a (B) b (C) c"},
                    {"from": "gpt", "value": f"The answer is {'ABC'[answer]}."},
                ],
                "question": f"Question {i}?",
                "context": "",
                "choices": ["a", "b", "c"],
                "answer": answer,
                "subject": subjects[i % len(subjects)],
                "grade": grades[i % len(grades)],
                "difficulty": 0.5,
                "n_tokens_est": 20,
            }
        )
    return rows
