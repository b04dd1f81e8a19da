"""ScienceQA as distributed -> canonical rows, with LLaVA's prompt formats.

Input on disk: ``problems.json`` (pid -> problem), ``pid_splits.json`` (split -> [pid]) and images at
``images/<split>/<pid>/image.png`` (official download) or ``<split>/<pid>/image.png`` (some copies); the
layout is detected. The image root is the folder holding the split folders, and a row's ``image`` is
``<split>/<pid>/image.png`` relative to it.

Prompt formats follow LLaVA's ScienceQA conversion. A format is ``INPUT-OUTPUT``:

* inputs: ``QCM`` = ``Question: {q}\\nContext: {c}\\nOptions: {o}``, ``CQM`` puts the context first;
  ``QCML``/``QCME``/``QCMLE`` append ``BECAUSE: {lecture}``/``{solution}``/``{lecture} {solution}`` and
  ``QCLM``/``QCEM``/``QCLEM`` put that line before the options (upper-bound experiments only);
* outputs: ``A`` = ``The answer is X.``; ``LA``, ``EA``, ``LEA``, ``ELA`` put the lecture (L) and/or
  solution (E) before it; ``AL``, ``AE``, ``ALE``, ``AEL`` put ``BECAUSE: ...`` after it (as in the
  reference conversion, ``AL`` appends the solution and ``AE`` the lecture); ``LEPA`` is
  ``LECTURE: {l}\\nSOLUTION: {s}\\n###\\nANSWER: X.`` with empty parts left out.

The context is the ``hint`` (``N/A`` when empty), options are ``(A) first (B) second ...``. Then the
leading ``Question: `` of the input and ``Answer: `` of the output are removed, double spaces collapse
to one, ends are stripped and a dangling ``BECAUSE:`` is dropped; for a problem with an image the human
turn is ``{input}\\n<image>``. (Removing the prefix first means a problem whose lecture and solution are
both empty gets ``The answer is X.`` under ``LEA``, not a leading space.)
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from PIL import Image

from datasets_spec.difficulty import estimate_tokens, scienceqa_difficulty
from datasets_spec.errors import UserError
from datasets_spec.safe_json import load_json_file
from datasets_spec.schema import IMAGE_TOKEN, check_image_path, check_resolves_inside, rows_to_table

PRIMARY_SPLITS = ("train", "val", "test")
MINI_SPLITS = ("minitrain", "minival", "minitest")
DEFAULT_PROMPT_FORMAT = "QCM-LEA"  # the format of LLaVA's released ScienceQA training file
OPTION_LETTERS = string.ascii_uppercase
SUBJECTS = ("natural science", "social science", "language science")

INPUT_TEMPLATES = {
    "QCM": "Question: {q}\nContext: {c}\nOptions: {o}\n",
    "CQM": "Context: {c}\nQuestion: {q}\nOptions: {o}\n",
    "QCML": "Question: {q}\nContext: {c}\nOptions: {o}\nBECAUSE: {l}\n",
    "QCME": "Question: {q}\nContext: {c}\nOptions: {o}\nBECAUSE: {s}\n",
    "QCMLE": "Question: {q}\nContext: {c}\nOptions: {o}\nBECAUSE: {l} {s}\n",
    "QCLM": "Question: {q}\nContext: {c}\nBECAUSE: {l}\nOptions: {o}\n",
    "QCEM": "Question: {q}\nContext: {c}\nBECAUSE: {s}\nOptions: {o}\n",
    "QCLEM": "Question: {q}\nContext: {c}\nBECAUSE: {l} {s}\nOptions: {o}\n",
}
OUTPUT_TEMPLATES = {
    "A": "Answer: The answer is {a}.",
    "AL": "Answer: The answer is {a}. BECAUSE: {s}",
    "AE": "Answer: The answer is {a}. BECAUSE: {l}",
    "ALE": "Answer: The answer is {a}. BECAUSE: {l} {s}",
    "AEL": "Answer: The answer is {a}. BECAUSE: {s} {l}",
    "LA": "Answer: {l} The answer is {a}.",
    "EA": "Answer: {s} The answer is {a}.",
    "LEA": "Answer: {l} {s} The answer is {a}.",
    "ELA": "Answer: {s} {l} The answer is {a}.",
    "LEPA": None,  # built piecewise: empty lecture/solution lines are left out
}
PROMPT_FORMATS = tuple(f"{i}-{o}" for i in INPUT_TEMPLATES for o in OUTPUT_TEMPLATES)


def parse_prompt_format(code: str) -> tuple[str, str]:
    """Split ``INPUT-OUTPUT``; an unknown code is a UserError listing the valid pieces."""
    inp, sep, out = str(code).partition("-")
    if not sep or inp not in INPUT_TEMPLATES or out not in OUTPUT_TEMPLATES:
        raise UserError(
            f"unknown prompt format {code!r}; use INPUT-OUTPUT with INPUT one of "
            f"{', '.join(INPUT_TEMPLATES)} "
            f"and OUTPUT one of {', '.join(OUTPUT_TEMPLATES)} (e.g. QCM-LEA)"
        )
    return inp, out


def options_text(choices: list[str]) -> str:
    return " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(choices))


def build_prompt(
    *,
    question: str,
    context: str | None,
    choices: list[str],
    answer: int,
    lecture: str | None,
    solution: str | None,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
) -> tuple[str, str]:
    """The (human, gpt) texts of one problem in ``prompt_format``, without the image token."""
    inp_code, out_code = parse_prompt_format(prompt_format)
    fields = {
        "q": question,
        "c": (context or "").strip() or "N/A",
        "o": options_text(choices),
        "a": OPTION_LETTERS[answer],
        # The reference conversion turns literal "\n" sequences in lectures/solutions into newlines.
        "l": (lecture or "").replace("\\n", "\n"),
        "s": (solution or "").replace("\\n", "\n"),
    }
    inp = INPUT_TEMPLATES[inp_code].format(**fields)
    out = _lepa(fields) if out_code == "LEPA" else OUTPUT_TEMPLATES[out_code].format(**fields)
    return _tidy(inp.removeprefix("Question: ")), _tidy(out.removeprefix("Answer: "))


def _lepa(fields: dict[str, str]) -> str:
    text = ""
    if fields["l"].strip():
        text += f"LECTURE: {fields['l']}\n"
    if fields["s"].strip():
        text += f"SOLUTION: {fields['s']}\n"
    return text + f"###\nANSWER: {fields['a']}."


def _tidy(text: str) -> str:
    text = text.replace("  ", " ").strip()
    if text.endswith("BECAUSE:"):
        text = text.replace("BECAUSE:", "").strip()
    return text


def build_conversations(problem: dict, *, prompt_format: str, has_image: bool) -> list[dict[str, str]]:
    """LLaVA conversation of one ScienceQA problem; ``<image>`` ends the human turn iff it has an image."""
    human, gpt = build_prompt(
        question=problem["question"],
        context=problem.get("hint"),
        choices=problem["choices"],
        answer=problem["answer"],
        lecture=problem.get("lecture"),
        solution=problem.get("solution"),
        prompt_format=prompt_format,
    )
    if has_image:
        human = f"{human}\n{IMAGE_TOKEN}"
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


# --- reading the files ------------------------------------------------------------------------------------


def load_json_strict(path: Path) -> object:
    """Parse JSON; malformed/truncated content or a repeated object key is a UserError naming the place."""
    path = Path(path)

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise UserError(f"{path}: duplicate key {key!r} (ids must be unique)")
            out[key] = value
        return out

    return load_json_file(path, object_pairs_hook=no_duplicates)


def detect_image_root(root: Path) -> Path:
    """``root/images`` when it exists (official layout), else ``root`` (``<split>/<pid>/image.png``)."""
    return root / "images" if (root / "images").is_dir() else root


@dataclass
class ScienceQALoad:
    """Result of :func:`load_scienceqa`: the canonical table plus what the ingest records."""

    table: pa.Table
    image_root: Path
    problems_path: Path
    pid_splits_path: Path
    splits: list[str]
    skipped_images: int = 0
    skipped_ids: list[str] = field(default_factory=list)


def load_scienceqa(
    root: Path,
    *,
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
    splits: Iterable[str] | None = None,
    skip_bad_images: bool = False,
    source: str = "scienceqa",
    follow_symlinks: bool = False,
) -> ScienceQALoad:
    """Read a ScienceQA folder into canonical rows (see module doc).

    ``splits``: which lists of pid_splits.json to ingest; default train/val/test (or, if the file has
    none of them, the mini splits). A pid listed in several lists appears once, with its primary split
    (train/val/test) as ``split``. Missing or undecodable images fail, or with ``skip_bad_images`` the
    problem is skipped and counted. A problem may carry a ``source`` string (written by our exporter),
    which then overrides ``source``.
    """
    parse_prompt_format(prompt_format)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected a ScienceQA folder with problems.json)")
    problems_path, splits_path = root / "problems.json", root / "pid_splits.json"
    problems = load_json_strict(problems_path)
    pid_splits = load_json_strict(splits_path)
    _check_top_level(problems, problems_path, pid_splits, splits_path)
    chosen = _choose_splits(pid_splits, splits, splits_path)
    assignment = _assign_splits(pid_splits, chosen, problems, problems_path, splits_path)
    image_root = detect_image_root(root)
    rows, skipped = [], []
    for pid, split in assignment.items():
        problem = problems[pid]
        where = f"{problems_path}: problem {pid!r}"
        _check_problem(problem, where)
        image = _resolve_image(problem, pid, split, image_root, where, skip_bad_images)
        if image and not follow_symlinks:
            check_resolves_inside(image_root, image, where=where)
        if image is False:
            skipped.append(pid)
            continue
        rows.append(_row(pid, split, problem, image, prompt_format, source))
    return ScienceQALoad(
        table=rows_to_table(rows),
        image_root=image_root,
        problems_path=problems_path,
        pid_splits_path=splits_path,
        splits=chosen,
        skipped_images=len(skipped),
        skipped_ids=skipped,
    )


def _check_top_level(problems: object, problems_path: Path, pid_splits: object, splits_path: Path) -> None:
    if not isinstance(problems, dict):
        raise UserError(f"{problems_path}: expected a JSON object mapping problem id -> problem")
    if not isinstance(pid_splits, dict):
        raise UserError(f"{splits_path}: expected a JSON object mapping split -> list of problem ids")
    for name, ids in pid_splits.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise UserError(f"{splits_path}: split {name!r} must be a list of problem id strings")


def _choose_splits(pid_splits: dict, splits: Iterable[str] | None, splits_path: Path) -> list[str]:
    if splits is not None:
        chosen = list(dict.fromkeys(splits))
        unknown = [s for s in chosen if s not in pid_splits]
        if unknown:
            raise UserError(f"{splits_path}: no split {unknown[0]!r}; available: {', '.join(pid_splits)}")
        return chosen
    for group in (PRIMARY_SPLITS, MINI_SPLITS):
        present = [s for s in group if s in pid_splits]
        if present:
            return present
    return list(pid_splits)


def _assign_splits(
    pid_splits: dict, chosen: list[str], problems: dict, problems_path: Path, splits_path: Path
) -> dict[str, str]:
    """pid -> canonical split, in the order of the chosen lists; the primary split wins."""
    primary: dict[str, str] = {}
    for name in PRIMARY_SPLITS:
        seen_here: set[str] = set()
        for pid in pid_splits.get(name, []):
            if pid in seen_here:
                raise UserError(f"{splits_path}: duplicate problem id {pid!r} in split {name!r}")
            seen_here.add(pid)
            if pid in primary:
                raise UserError(f"{splits_path}: problem id {pid!r} is in both {primary[pid]!r} and {name!r}")
            primary[pid] = name
    assignment: dict[str, str] = {}
    for name in chosen:
        for pid in pid_splits[name]:
            if pid not in problems:
                raise UserError(
                    f"{splits_path}: split {name!r} lists problem id {pid!r}, missing from {problems_path}"
                )
            assignment.setdefault(pid, primary.get(pid, name))
    return assignment


def _check_problem(problem: object, where: str) -> None:
    if not isinstance(problem, dict):
        raise UserError(f"{where}: expected a JSON object")
    if not isinstance(problem.get("question"), str):
        raise UserError(f"{where}: missing or non-string 'question'")
    choices = problem.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: 'choices' must be a non-empty list of strings")
    if len(choices) > len(OPTION_LETTERS):
        raise UserError(f"{where}: {len(choices)} choices; at most {len(OPTION_LETTERS)} are supported")
    answer = problem.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: 'answer' {answer!r} is not an index into its {len(choices)} choices")
    for key in ("hint", "lecture", "solution", "subject", "topic", "category", "skill", "task"):
        if problem.get(key) is not None and not isinstance(problem[key], str):
            raise UserError(f"{where}: {key!r} must be a string")
    image = problem.get("image")
    if image is not None and not (isinstance(image, str) and image):
        raise UserError(f"{where}: 'image' must be a file name or null")
    parse_grade(problem.get("grade"), where)


def parse_grade(value: object, where: str) -> int | None:
    """``"grade7"`` -> 7 (also accepts an int); None stays None; anything else is a UserError."""
    if value is None:
        return None
    text = str(value).strip().lower().removeprefix("grade")
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 12:
        raise UserError(f"{where}: grade {value!r} is not grade1..grade12")
    return int(text)


def _resolve_image(
    problem: dict, pid: str, split: str, image_root: Path, where: str, skip_bad: bool
) -> str | None | bool:
    """Relative image path, None for a text-only problem, or False when a bad image is skipped."""
    name = problem.get("image")
    if name is None:
        return None
    check_image_path(name, where=where)
    folders = list(dict.fromkeys(d for d in (split, problem.get("split"), split.removeprefix("mini")) if d))
    candidates = [f"{d}/{pid}/{name}" for d in folders if isinstance(d, str)]
    for rel in candidates:
        check_image_path(rel, where=where)
    found = next((rel for rel in candidates if (image_root / rel).is_file()), None)
    if found is None:
        if skip_bad:
            return False
        raise UserError(f"{where}: image not found at {image_root / candidates[0]}")
    try:
        with Image.open(image_root / found) as img:
            img.verify()
    except Exception as exc:  # PIL signals a damaged file with many exception types
        if skip_bad:
            return False
        reason = type(exc).__name__
        raise UserError(f"{where}: image {image_root / found} does not decode ({reason})") from None
    return found


def _row(pid: str, split: str, problem: dict, image: str | None, prompt_format: str, source: str) -> dict:
    convs = build_conversations(problem, prompt_format=prompt_format, has_image=image is not None)
    grade = parse_grade(problem.get("grade"), pid)
    row_source = problem.get("source") if isinstance(problem.get("source"), str) else source
    return {
        "sample_id": pid,
        "source": row_source,
        "split": split,
        "image": image,
        "conversations": convs,
        "question": problem["question"],
        "context": problem.get("hint"),
        "lecture": problem.get("lecture"),
        "solution": problem.get("solution"),
        "choices": list(problem["choices"]),
        "answer": problem["answer"],
        "subject": problem.get("subject"),
        "topic": problem.get("topic"),
        "category": problem.get("category"),
        "skill": problem.get("skill"),
        "grade": grade,
        "difficulty": scienceqa_difficulty(
            grade=grade,
            n_choices=len(problem["choices"]),
            context=problem.get("hint"),
            solution=problem.get("solution"),
        ),
        "n_tokens_est": estimate_tokens(convs),
    }
