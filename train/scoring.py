"""ScienceQA scoring exactly as LLaVA's ScienceQA scorer does it, reported in ScienceQA's categories.

Parsing a generated text into an option index (first rule that applies):

1. the whole text is an option letter;
2. the text starts with an option letter followed by ``". "``;
3. the regular expression ``The answer is ([A-Z]).`` (the final ``.`` is a regex wildcard, as in the
   original scorer, so ``"The answer is B,"`` also counts) matches exactly once;
4. otherwise the prediction failed (index -1).

The text is used as generated: no stripping, no case folding. A letter naming no existing choice is a
failure too. Option letters for rules 1 and 2 are A-E, the scorer's fixed list (every ScienceQA problem
has at most five choices); a problem with more choices extends the list to its own count.

Every problem of the split is scored; one without a prediction counts as wrong, so the denominator is
the split, not the predictions file. Pure Python: no torch import, so scoring a published file is fast.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets_spec.errors import UserError
from datasets_spec.safe_json import check_json_bytes, load_json_file, numbered_lines

FAILED = -1
# LLaVA's scorer checks rules 1 and 2 against this fixed list, then maps the letter into the problem's
# choices; ScienceQA problems have 2-5 choices.
SCORER_OPTIONS = "ABCDE"
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
# Column order of ScienceQA's results table: the categories, then the overall accuracy.
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
ACCURACY = "Avg"
COLUMNS = (*CATEGORIES, ACCURACY)
CATEGORY_HELP = {
    "NAT": "natural science",
    "SOC": "social science",
    "LAN": "language science",
    "TXT": "has a text context (hint)",
    "IMG": "has an image",
    "NO": "no context: neither hint nor image",
    "G1-6": "grades 1-6",
    "G7-12": "grades 7-12",
    "Avg": "all problems of the split",
}


@dataclass(frozen=True)
class ProblemInfo:
    """What scoring needs to know about one problem."""

    answer: int
    """Index of the correct choice."""
    n_choices: int
    """Number of choices; letters beyond it are failures."""
    subject: str | None
    """ScienceQA subject (`natural science`, `social science`, `language science`)."""
    has_context: bool
    """The hint (text context) is non-empty."""
    has_image: bool
    """The problem has an image."""
    grade: int | None
    """Grade 1-12."""

    def categories(self) -> list[str]:
        cats = []
        if self.subject in SUBJECTS:
            cats.append(SUBJECTS[self.subject])
        if self.has_context:
            cats.append("TXT")
        if self.has_image:
            cats.append("IMG")
        if not self.has_context and not self.has_image:
            cats.append("NO")
        if self.grade is not None:
            cats.append("G1-6" if self.grade <= 6 else "G7-12")
        cats.append(ACCURACY)
        return cats


def option_letters(n_choices: int) -> str:
    return SCORER_OPTIONS if n_choices <= len(SCORER_OPTIONS) else string.ascii_uppercase[:n_choices]


def parse_prediction(text: str, n_choices: int) -> int:
    """The option index that ``text`` names under LLaVA's ScienceQA rules, or -1."""
    letters = option_letters(n_choices)
    if text in letters and len(text) == 1:
        letter = text
    elif len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        letter = text[0]
    else:
        found = ANSWER_PATTERN.findall(text)
        if len(found) != 1:
            return FAILED
        letter = found[0]
    index = string.ascii_uppercase.index(letter)
    return index if index < n_choices else FAILED


def letter_of(index: int) -> str | None:
    return string.ascii_uppercase[index] if 0 <= index < 26 else None


# --- problems --------------------------------------------------------------------------------------


def problem_from_scienceqa(problem: Mapping, *, where: str = "problem") -> ProblemInfo:
    """From one value of ScienceQA's problems.json (grade is ``"grade7"``; image is a name or null)."""
    try:
        choices = problem["choices"]
        answer = int(problem["answer"])
        grade = _grade_number(problem.get("grade"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: not a ScienceQA problem ({type(exc).__name__}: {exc})") from None
    if not isinstance(choices, list) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: answer {answer} is not an index into its choices")
    return ProblemInfo(
        answer=answer,
        n_choices=len(choices),
        subject=problem.get("subject"),
        has_context=bool(problem.get("hint")),
        has_image=bool(problem.get("image")),
        grade=grade,
    )


def problem_from_row(row: Mapping) -> ProblemInfo:
    """From a canonical row (context = hint; image non-null; grade already an int)."""
    choices = row.get("choices")
    if not choices or row.get("answer") is None:
        raise UserError(f"sample {row.get('sample_id')!r}: no choices/answer, not a multiple-choice problem")
    return ProblemInfo(
        answer=int(row["answer"]),
        n_choices=len(choices),
        subject=row.get("subject"),
        has_context=bool(row.get("context")),
        has_image=row.get("image") is not None,
        grade=row.get("grade"),
    )


def problems_from_rows(rows: Iterable[Mapping]) -> dict[str, ProblemInfo]:
    return {str(row["sample_id"]): problem_from_row(row) for row in rows}


def _grade_number(grade: object) -> int | None:
    if grade is None or grade == "":
        return None
    if isinstance(grade, int):
        return grade
    return int(str(grade).removeprefix("grade"))


def load_problems(path: Path) -> tuple[dict[str, ProblemInfo], dict[str, str]]:
    """ScienceQA problems.json -> (pid -> ProblemInfo, pid -> its `split` field)."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected an object pid -> problem, got {type(raw).__name__}")
    problems, splits = {}, {}
    for pid, problem in raw.items():
        if not isinstance(problem, dict):
            raise UserError(f"{path}: problem {pid!r} is not an object")
        problems[pid] = problem_from_scienceqa(problem, where=f"{path}: problem {pid!r}")
        splits[pid] = problem.get("split")
    return problems, splits


def split_pids(
    problems_path: Path,
    split: str,
    problems: Mapping[str, ProblemInfo],
    problem_splits: Mapping[str, str],
    pid_splits: Path | None = None,
) -> list[str]:
    """The pids of ``split``: from pid_splits.json (default: next to problems.json) when it exists, else
    from the problems' own ``split`` field. A split naming a pid the problems file lacks is an error."""
    path = pid_splits if pid_splits is not None else problems_path.with_name("pid_splits.json")
    if pid_splits is None and not path.exists():
        pids = [pid for pid, s in problem_splits.items() if s == split]
        if not pids:
            known = sorted({s for s in problem_splits.values() if s})
            raise UserError(f"{problems_path}: no problem has split {split!r} (splits: {', '.join(known)})")
        return pids
    raw = _read_json(path)
    if not isinstance(raw, dict) or split not in raw:
        known = ", ".join(sorted(raw)) if isinstance(raw, dict) else "none"
        raise UserError(f"{path}: no split {split!r} (splits: {known})")
    pids = [str(p) for p in raw[split]]
    absent = [p for p in pids if p not in problems]
    if absent:
        raise UserError(
            f"{path}: split {split!r} names {len(absent)} pid(s) missing from {problems_path},"
            f" e.g. {absent[0]!r}"
        )
    return pids


def _read_json(path: Path) -> object:
    return load_json_file(path)


# --- predictions ------------------------------------------------------------------------------------


def load_predictions(path: Path) -> dict[str, str]:
    """pid -> generated text from a predictions file.

    Accepted: LLaVA's answer JSON lines (`question_id`, `text`, ...), a JSON list of such records, a JSON
    map ``{pid: text}``, or the result JSON that LLaVA's scorer writes (its ``outputs`` map).
    """
    path = Path(path)
    try:
        content = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; give the predictions file (e.g. <run>/predictions.jsonl)") \
            from None
    check_json_bytes(content.encode("utf-8", "surrogatepass"), path)
    try:
        whole = json.loads(content)
    except json.JSONDecodeError:
        return _predictions_from_jsonl(path, content)
    if isinstance(whole, list):
        return _predictions_from_records(path, whole)
    if isinstance(whole, dict):
        if "question_id" in whole:  # JSON lines holding a single answer
            return _predictions_from_jsonl(path, content)
        if isinstance(whole.get("outputs"), dict):
            whole = whole["outputs"]
        bad = next((k for k, v in whole.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise UserError(f"{path}: entry {bad!r} is not a string; expected a map pid -> generated text")
        return {str(k): v for k, v in whole.items()}
    raise UserError(f"{path}: expected JSON lines, a list of answers or a map pid -> text")


def _predictions_from_jsonl(path: Path, content: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in numbered_lines(content):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {lineno}: malformed JSON ({exc.msg})") from None
        _add_record(out, record, f"{path}: line {lineno}")
    return out


def _predictions_from_records(path: Path, records: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, record in enumerate(records):
        _add_record(out, record, f"{path}: record {i}")
    return out


def _add_record(out: dict[str, str], record: object, where: str) -> None:
    if not isinstance(record, dict) or "question_id" not in record or "text" not in record:
        raise UserError(f"{where}: expected an object with 'question_id' and 'text'")
    if not isinstance(record["text"], str):
        raise UserError(f"{where}: 'text' is not a string")
    pid = str(record["question_id"])
    if pid in out:
        raise UserError(f"{where}: duplicate question_id {pid!r}")
    out[pid] = record["text"]


# --- metrics ----------------------------------------------------------------------------------------


def percent(correct: int, total: int) -> float | None:
    """ScienceQA reports percentages with two decimals; an empty category has none."""
    return float(f"{100.0 * correct / total:.2f}") if total else None


def score_predictions(
    predictions: Mapping[str, str], problems: Mapping[str, ProblemInfo], pids: Sequence[str]
) -> dict:
    """Score the problems ``pids`` (the split) against ``predictions`` (pid -> text).

    Returns ``accuracy`` (category -> percent or None), ``counts`` (category -> correct/total), and
    ``total``, ``correct``, ``unparsed`` (a prediction that parsed to no valid option), ``missing`` (no
    prediction; counted wrong) and ``extra`` (predictions for pids outside the split; ignored).
    """
    counts = {cat: {"correct": 0, "total": 0} for cat in COLUMNS}
    unparsed = missing = 0
    for pid in pids:
        if pid not in problems:
            raise UserError(f"problem {pid!r} of the split is not among the problems")
        problem = problems[pid]
        text = predictions.get(pid)
        if text is None:
            missing += 1
            predicted = FAILED
        else:
            predicted = parse_prediction(text, problem.n_choices)
            unparsed += predicted == FAILED
        for cat in problem.categories():
            counts[cat]["total"] += 1
            counts[cat]["correct"] += predicted == problem.answer
    split = set(pids)
    return {
        "accuracy": {cat: percent(c["correct"], c["total"]) for cat, c in counts.items()},
        "counts": counts,
        "total": counts[ACCURACY]["total"],
        "correct": counts[ACCURACY]["correct"],
        "unparsed": unparsed,
        "missing": missing,
        "extra": sum(1 for pid in predictions if pid not in split),
    }


def score_files(
    predictions_path: Path, problems_path: Path, *, split: str = "test", pid_splits: Path | None = None
) -> dict:
    """`train score`: read a predictions file and problems.json, score ``split``."""
    predictions = load_predictions(predictions_path)
    problems, problem_splits = load_problems(problems_path)
    pids = split_pids(problems_path, split, problems, problem_splits, pid_splits)
    metrics = score_predictions(predictions, problems, pids)
    metrics["split"] = split
    metrics["predictions"] = str(predictions_path)
    return metrics


def metrics_rows(metrics: Mapping) -> list[tuple[str, str, str, str]]:
    """(category, meaning, accuracy, correct/total) for display."""
    rows = []
    for cat in COLUMNS:
        acc = metrics["accuracy"][cat]
        c = metrics["counts"][cat]
        shown = "-" if acc is None else f"{acc:.2f}"
        rows.append((cat, CATEGORY_HELP[cat], shown, f"{c['correct']}/{c['total']}"))
    return rows


def metrics_value(metrics: Mapping, name: str) -> float | None:
    """Accuracy (%) of category ``name`` (or ``Avg``) in a run's metrics.json (:func:`score_predictions`)."""
    return metrics["accuracy"][name]
