"""ScienceQA evaluation of a trained run: greedy generation in left-padded batches, LLaVA's scoring.

`train eval --run runs/X` loads the run's model, answers the workspace dataset's multiple-choice
problems of a split (first ``limit`` in sample_id order), writes ``predictions.jsonl`` in LLaVA's answer
format and ``metrics.json`` (ScienceQA's categories, see :mod:`train.scoring`) into the run directory.

Speed on a CPU comes from: inference mode, the KV cache, batches of same-modality prompts (image and
text-only problems are batched apart so that every batch either has one image per prompt or none), and
stopping as soon as every sequence has produced an end token. The settings and their defaults are the
fields of :class:`EvalSpec`, which `train eval`'s options and an ablation grid's ``[eval]`` table are made of.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_file, read_json, write_json
from datasets_spec.workspace import Workspace
from train.rundir import CONFIG_FILE, METRICS_FILE, MODEL_DIR, PREDICTIONS_FILE
from train.scoring import FAILED, letter_of, parse_prediction, problems_from_rows, score_predictions

# LLaVA-1.5's zero-shot ScienceQA prompt line (model_vqa_science --single-pred-prompt).
SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
PROBLEM_COLUMNS = [
    "sample_id",
    "split",
    "image",
    "conversations",
    "choices",
    "answer",
    "subject",
    "context",
    "grade",
    "question",
    "lecture",
    "solution",
]


@dataclass(frozen=True)
class EvalSpec:
    """How a run is evaluated: the options of `train eval` and the keys of an ablation grid's ``[eval]``."""

    split: str = "test"
    """Dataset split whose multiple-choice problems are answered and scored."""
    limit: int | None = None
    """Evaluate only the first LIMIT problems of the split in sample_id order (None: all), so every run
    answers the same problems."""
    batch_size: int = 16
    """Prompts generated together (left-padded, one modality per batch)."""
    max_new_tokens: int = 64
    """Generation length cap: ample for the ``A`` output format (``The answer is X.`` is about six subword
    tokens, sixteen for the character tokenizer); raise it for LEA/LEPA models, whose lecture and solution
    come first, since a cut answer is scored as unparsed."""
    prompt_format: str | None = None
    """Ask each problem in this LLaVA format (e.g. CQM-A) instead of its training prompt (None): LLaVA-1.5
    evaluates ScienceQA as CQM-A whatever it was trained on."""
    prompt_suffix: str | None = None
    """A line appended to every question, e.g. LLaVA-1.5's "Answer with the option's letter from the given
    choices directly." (``train.evaluate.SINGLE_PRED_PROMPT``)."""
    skip: bool = False
    """Ablation grids only: train the cells and evaluate them outside the ablation (lmms-eval on each run's
    model/, then `train report --lmms-eval`), as for the LLaVA-665K protocol, whose pool has no test split."""

    CLI_EXCLUDED: ClassVar[tuple[str, ...]] = ("skip",)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"limit must be positive, got {self.limit}")
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise UserError("batch_size and max_new_tokens must be positive")
        if self.prompt_format is not None:
            from datasets_spec.scienceqa import parse_prompt_format

            try:
                parse_prompt_format(self.prompt_format)
            except UserError as exc:
                raise UserError(f"prompt_format: {exc}") from None

    def key(self) -> dict:
        """What an ablation cell's key records of the evaluation: every field, except the prompt settings
        while they are unset, so that runs recorded before those fields existed keep their keys (and are
        not trained again)."""
        optional = ("prompt_format", "prompt_suffix")
        return {k: v for k, v in dataclasses.asdict(self).items()
                if (v is not None or k not in optional) and not (k == "skip" and not v)}


# --- run directories --------------------------------------------------------------------------------


def load_run_bundle(run_dir: Path):
    """The trained model of a run: ``run_dir/model`` (a standalone checkpoint) when present, else the
    run directory itself (projector + adapter/weights as the trainer saves them)."""
    from train.model import load_bundle

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    model_dir = run_dir / MODEL_DIR
    return load_bundle(model_dir if model_dir.is_dir() else run_dir)


def run_config(run_dir: Path) -> dict:
    """The run's config.json as the trainer writes it ({} for a bare model directory)."""
    path = Path(run_dir) / CONFIG_FILE
    return read_json(path) if path.exists() else {}


def run_dataset_fingerprint(run_dir: Path) -> str | None:
    """The dataset fingerprint a run's config records (None when the run records none)."""
    value = run_config(run_dir).get("dataset_fingerprint")
    return value if isinstance(value, str) else None


def check_run_dataset(ws: Workspace, run_dir: Path) -> None:
    """Refuse a run trained on a subset of another dataset than the workspace's."""
    recorded = run_dataset_fingerprint(run_dir)
    current = ws.dataset_fingerprint()
    if recorded is not None and recorded != current:
        raise UserError(
            f"{run_dir}: trained on a subset of dataset {recorded[:12]}, but the workspace dataset is "
            f"{current[:12]}; evaluate it in the workspace it was trained in"
        )


# --- problems ---------------------------------------------------------------------------------------


def select_problems(table: pa.Table, *, split: str | None = None, limit: int | None = None) -> list[dict]:
    """Multiple-choice rows (choices and answer present) of ``split``, in sample_id order, first ``limit``."""
    present = [c for c in PROBLEM_COLUMNS if c in table.column_names]
    rows = [
        r
        for r in table.select(present).to_pylist()
        if r.get("choices") and r.get("answer") is not None and (split is None or r["split"] == split)
    ]
    rows.sort(key=lambda r: r["sample_id"])
    return rows[:limit] if limit is not None else rows


def question_text(row: Mapping, prompt_suffix: str | None = None, prompt_format: str | None = None) -> str:
    """The row's first human turn (the training prompt), or the problem rebuilt in ``prompt_format`` (e.g.
    LLaVA-1.5's evaluation format ``CQM-A``; the image token ends the turn as in training), plus an optional
    instruction line."""
    if prompt_format is not None:
        human = _formatted_question(row, prompt_format)
    else:
        human = next((t["value"] for t in row["conversations"] if t["from"] == "human"), None)
    if human is None:
        raise UserError(f"sample {row['sample_id']!r}: no human turn to ask")
    return f"{human}\n{prompt_suffix}" if prompt_suffix else human


def _formatted_question(row: Mapping, prompt_format: str) -> str:
    from datasets_spec.scienceqa import IMAGE_TOKEN, build_prompt

    if not row.get("question"):
        raise UserError(
            f"sample {row['sample_id']!r}: no question field to rebuild the prompt as {prompt_format!r}"
        )
    human, _ = build_prompt(
        question=row["question"],
        context=row.get("context"),
        choices=list(row["choices"]),
        answer=int(row["answer"]),
        lecture=row.get("lecture"),
        solution=row.get("solution"),
        prompt_format=prompt_format,
    )
    return f"{human}\n{IMAGE_TOKEN}" if row.get("image") is not None else human


# --- generation -------------------------------------------------------------------------------------


def evaluate_bundle(
    bundle,
    table: pa.Table,
    image_root: Path | None,
    *,
    template: str | None = None,
    limit: int | None = EvalSpec.limit,
    batch_size: int = EvalSpec.batch_size,
    max_new_tokens: int = EvalSpec.max_new_tokens,
    prompt_suffix: str | None = EvalSpec.prompt_suffix,
    prompt_format: str | None = EvalSpec.prompt_format,
    image_aspect: str = "pad",
    model_id: str = "model",
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """Answer every multiple-choice problem of ``table`` (first ``limit`` by sample_id) and score them.

    Returns (LLaVA answer records in sample_id order, metrics). Writes nothing. ``template`` defaults to
    the bundle's own conversation template; ``prompt_format`` (None: the training prompt) asks each problem
    in another of LLaVA's formats.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise UserError("batch size and max new tokens must be at least 1")
    rows = select_problems(table, limit=limit)
    if not rows:
        raise UserError("no multiple-choice problems (rows with choices and answer) to evaluate")
    if prompt_format is not None:
        from datasets_spec.scienceqa import parse_prompt_format

        parse_prompt_format(prompt_format)  # an unknown code fails before any generation
    questions = {r["sample_id"]: question_text(r, prompt_suffix, prompt_format) for r in rows}
    texts = generate_answers(
        bundle,
        rows,
        questions,
        image_root,
        template=template or bundle.template,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        image_aspect=image_aspect,
        progress=progress,
    )
    problems = problems_from_rows(rows)
    pids = [r["sample_id"] for r in rows]
    records = [answer_record(pid, questions[pid], texts[pid], problems[pid], model_id) for pid in pids]
    return records, score_predictions(texts, problems, pids)


def answer_record(pid: str, prompt: str, text: str, problem, model_id: str) -> dict:
    """One line of LLaVA's answer JSONL; the answer id is a hash so that reruns are byte-identical."""
    parsed = parse_prediction(text, problem.n_choices)
    answer_id = hashlib.sha256(f"{model_id}\0{pid}\0{prompt}\0{text}".encode()).hexdigest()[:22]
    return {
        "question_id": pid,
        "prompt": prompt,
        "text": text,
        "answer_id": answer_id,
        "model_id": model_id,
        "metadata": {
            "parsed": letter_of(parsed) if parsed != FAILED else None,
            "answer": letter_of(problem.answer),
            "correct": parsed == problem.answer,
        },
    }


def generate_answers(
    bundle,
    rows: Sequence[Mapping],
    questions: Mapping[str, str],
    image_root: Path | None,
    *,
    template: str,
    batch_size: int,
    max_new_tokens: int,
    image_aspect: str = "pad",
    progress: bool = False,
) -> dict[str, str]:
    """sample_id -> generated text. Image and text-only problems go in separate batches, so a batch's
    pixel_values line up one-to-one with its prompts' image-token groups."""
    import torch

    from train.templates import generation_prompt, stop_token_ids

    with_image = [r for r in rows if r.get("image") is not None]
    text_only = [r for r in rows if r.get("image") is None]
    batches = [g[i : i + batch_size] for g in (with_image, text_only) for i in range(0, len(g), batch_size)]
    stop_ids = stop_token_ids(bundle.tokenizer, template)
    model = bundle.model
    was_training = model.training
    model.eval()
    out: dict[str, str] = {}
    try:
        with torch.inference_mode():
            for batch in _progress(batches, progress, "generating"):
                prompts = [
                    generation_prompt(
                        questions[r["sample_id"]],
                        bundle.tokenizer,
                        template,
                        num_image_tokens=bundle.num_image_tokens,
                        system=bundle.llm_preset.system_prompt,
                        image_placement=bundle.image_placement,
                    )
                    for r in batch
                ]
                pixels = None
                if batch[0].get("image") is not None:
                    pixels = torch.stack([_pixels(bundle, image_root, r, image_aspect) for r in batch])
                texts = _generate(bundle, prompts, pixels, stop_ids, max_new_tokens)
                out.update(zip((r["sample_id"] for r in batch), texts, strict=True))
    finally:
        model.train(was_training)
    return out


def _progress(items: list, enabled: bool, label: str):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)


def _pixels(bundle, image_root: Path | None, row: Mapping, image_aspect: str):
    from train.images import load_image, preprocess_image, resolve_image

    where = f"sample {row['sample_id']!r}"
    if image_root is None:
        raise UserError(f"{where}: has an image but the dataset records no image root")
    path = resolve_image(image_root, row["image"], where=where)
    return preprocess_image(load_image(path, where=where), bundle.image_processor, image_aspect)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) with every prompt right-aligned: generation continues each row from
    its own last token, and the attention mask keeps the padding out of every position."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids, mask


def _generate(
    bundle, prompts: list[list[int]], pixels, stop_ids: list[int], max_new_tokens: int
) -> list[str]:
    tokenizer = bundle.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    input_ids, attention_mask = left_pad(prompts, pad_id)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pixels is not None:
        inputs["pixel_values"] = pixels.to(bundle.model.dtype)
    generated = bundle.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        # Greedy decoding: clear sampling settings a saved generation config may carry.
        temperature=None,
        top_p=None,
        top_k=None,
    )
    new_tokens = generated[:, input_ids.shape[1] :]
    # Decoded without special tokens and stripped, as LLaVA's model_vqa_science writes its answers.
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


# --- the command ------------------------------------------------------------------------------------


def evaluate_run(
    ws: Workspace, run_dir: Path, spec: EvalSpec | None = None, *, bundle=None, **settings: Any
) -> dict:
    """`train eval`: generate, score, write ``predictions.jsonl`` and ``metrics.json`` into the run.

    ``spec`` (default: ``EvalSpec()``) says how; keyword ``settings`` replace single fields of it
    (``evaluate_run(ws, run, limit=8)``)."""
    spec = dataclasses.replace(spec or EvalSpec(), **settings)
    split, limit, max_new_tokens = spec.split, spec.limit, spec.max_new_tokens
    prompt_suffix, prompt_format = spec.prompt_suffix, spec.prompt_format
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    check_run_dataset(ws, run_dir)
    table = ws.read_dataset(columns=PROBLEM_COLUMNS)
    split_table = table.filter(pc.equal(table.column("split"), split))
    if not select_problems(split_table, limit=1):
        known = sorted(set(table.column("split").to_pylist()))
        raise UserError(f"{ws.dataset_dir}: no multiple-choice problems in split {split!r} (splits: {known})")
    if bundle is None:
        bundle = load_run_bundle(run_dir)
    records, metrics = evaluate_bundle(
        bundle,
        split_table,
        ws.image_root(),
        limit=limit,
        batch_size=spec.batch_size,
        max_new_tokens=max_new_tokens,
        prompt_suffix=prompt_suffix,
        prompt_format=prompt_format,
        image_aspect=run_config(run_dir).get("config", {}).get("image_aspect", "pad"),
        model_id=run_dir.name,
        progress=True,
    )
    metrics.update(
        split=split,
        limit=limit,
        max_new_tokens=max_new_tokens,
        prompt_suffix=prompt_suffix,
        prompt_format=prompt_format,
        dataset_fingerprint=ws.dataset_fingerprint(),
        run=run_dir.name,
    )
    write_jsonl(run_dir / PREDICTIONS_FILE, records)
    write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def write_jsonl(path: Path, records: Sequence[Mapping]) -> None:
    """JSON lines written to a temporary name and renamed into place."""
    with atomic_file(path) as tmp, tmp.open("w") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
