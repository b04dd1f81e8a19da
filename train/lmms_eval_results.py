"""Reading lmms-eval's output files: per-benchmark scores and, where logged, per-sample scores.

lmms-eval (``--output_path OUT [--log_samples]``) writes, under ``OUT/<sanitised model name>/``:

* ``<date>_results.json``: ``{"results": {task: {"alias", "<metric>,<filter>": value,
  "<metric>_stderr,<filter>": ...}}, "config": {"model", "model_args", ...}, "model_name",
  "total_evaluation_time_seconds", "n-samples", ...}``;
* ``<date>_samples_<task>.jsonl`` (with ``--log_samples``): one line per document with ``doc_id``,
  ``target``, ``filtered_resps`` and each metric's per-document value, a number (``exact_match``) or a
  dict holding a ``score`` (MME, POPE); metrics scored only in aggregate (MMBench's GPT matching,
  LLaVA-W's ratio of judge scores) carry no per-document score.

lmms-eval is not needed to read them. The benchmarks of the LLaVA-1.5 protocol and the task and metric that
give each one's headline number are :data:`BENCHMARKS`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from datasets_spec.errors import UserError

RESULTS_SUFFIX = "_results.json"


@dataclass(frozen=True)
class Benchmark:
    """One column of the protocol table."""

    label: str
    """Column header."""
    task: str
    """lmms-eval task name."""
    metric: str
    """Metric whose aggregate is the headline score."""
    scale: float = 100.0
    """Factor to the printed unit: 100 for metrics lmms-eval reports as fractions, 1 for points/sums."""


# POPE's headline is F1 (LLaVA-1.5 reports F1 averaged over its three splits, which the `pope` task
# pools); MME-P is the perception score summed over categories (max 2000).
BENCHMARKS = (
    Benchmark("VQAv2", "vqav2_val", "exact_match"),
    Benchmark("GQA", "gqa", "exact_match"),
    Benchmark("VizWiz", "vizwiz_vqa_val", "exact_match"),
    Benchmark("SQA-I", "scienceqa_img", "exact_match"),
    Benchmark("TextVQA", "textvqa_val", "exact_match"),
    Benchmark("POPE", "pope", "pope_f1_score"),
    Benchmark("MME-P", "mme", "mme_perception_score", scale=1.0),
    Benchmark("MMBench-en", "mmbench_en_dev", "gpt_eval_score", scale=1.0),
    Benchmark("MMBench-cn", "mmbench_cn_dev", "gpt_eval_score", scale=1.0),
    Benchmark("LLaVA-W", "llava_in_the_wild", "gpt_eval_llava_all", scale=1.0),
)


@dataclass
class RunResults:
    """Everything lmms-eval wrote for one run."""

    scores: dict[str, float] = field(default_factory=dict)
    """Benchmark label -> headline score in printed units."""
    samples: dict[str, dict[int, float]] = field(default_factory=dict)
    """Benchmark label -> doc_id -> per-document score in percent, where logged and defined (for MME and
    POPE the document's correctness, which the headline sum / F1 is built from, not the headline itself)."""
    files: dict[str, str] = field(default_factory=dict)
    """Benchmark label -> the results file it came from."""
    models: set[str] = field(default_factory=set)
    """``config.model_args`` of every results file."""
    eval_seconds: float = 0.0
    """Sum of the files' ``total_evaluation_time_seconds``."""
    evaluators: set[str] = field(default_factory=set)
    """``<lmms-eval model type> (lmms-eval <version>)`` of every file: ``llava`` and ``llava_hf``, or two
    lmms-eval versions, score the same checkpoint differently."""


def results_files(directory: Path) -> list[Path]:
    """Every ``*_results.json`` under ``directory`` (lmms-eval nests them under the model name)."""
    return sorted(p for p in Path(directory).rglob(f"*{RESULTS_SUFFIX}") if p.is_file())


def read_run_results(directory: Path, benchmarks: tuple[Benchmark, ...] = BENCHMARKS) -> RunResults:
    """The scores of one run from the lmms-eval files under ``directory``; a task reported by two files
    is an error naming both (keep one)."""
    out = RunResults()
    files = results_files(directory)
    if not files:
        raise UserError(f"{directory}: no lmms-eval *{RESULTS_SUFFIX} file (see lmms-eval --output_path)")
    for path in files:
        payload = _read_json(path)
        results = payload.get("results")
        if not isinstance(results, dict):
            raise UserError(f"{path}: no 'results' object; not an lmms-eval results file")
        config = payload.get("config") or {}
        out.models.add(str(config.get("model_args") or ""))
        version = payload.get("lmms_eval_version") or "?"
        out.evaluators.add(f"{config.get('model') or '?'} (lmms-eval {version})")
        out.eval_seconds += _float(payload.get("total_evaluation_time_seconds")) or 0.0
        for bench in benchmarks:
            if bench.task not in results:
                continue
            if bench.label in out.files:
                raise UserError(f"{directory}: {bench.task} is in both {out.files[bench.label]} and {path}; "
                                "keep one")
            value = _headline(results[bench.task], bench, path)
            out.scores[bench.label] = value * bench.scale
            out.files[bench.label] = str(path)
            per_doc = _samples(path, bench)
            if per_doc is not None:
                out.samples[bench.label] = per_doc
    return out


def _headline(task_results: dict, bench: Benchmark, path: Path) -> float:
    keys = [k for k in task_results if k.split(",")[0] == bench.metric]
    key = f"{bench.metric},none" if f"{bench.metric},none" in keys else (keys[0] if len(keys) == 1 else None)
    value = _float(task_results.get(key)) if key else None
    if value is None:
        raise UserError(f"{path}: task {bench.task} has no numeric {bench.metric!r} score")
    return value


def model_path(model_args: str) -> str | None:
    """The checkpoint an lmms-eval run loaded: ``pretrained=`` (or ``model=``/``path=``) in model_args."""
    for key in ("pretrained", "model", "path"):
        found = re.search(rf"(?:^|,)\s*{key}=([^,]+)", model_args)
        if found:
            return found.group(1).strip()
    return None


def _samples(results_path: Path, bench: Benchmark) -> dict[int, float] | None:
    """doc_id -> per-document score from the samples log beside ``results_path``; None when the log is
    absent or the metric has no per-document score."""
    date = results_path.name[: -len(RESULTS_SUFFIX)]
    path = results_path.with_name(f"{date}_samples_{bench.task}.jsonl")
    if not path.is_file():
        return None
    scores: dict[int, float] = {}
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {number} is not JSON") from None
            if not isinstance(doc, dict) or "doc_id" not in doc:
                raise UserError(f"{path}: line {number} has no doc_id; not an lmms-eval samples log")
            if bench.metric not in doc:
                continue  # e.g. an MME cognition document in a perception column
            value = doc[bench.metric]
            score = _float(value.get("score")) if isinstance(value, dict) else _float(value)
            if score is None:
                return None  # scored only in aggregate
            scores[int(doc["doc_id"])] = 100.0 * score
    return scores or None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: not an lmms-eval results file (top level is not an object)")
    return payload
