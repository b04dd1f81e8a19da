"""VQA format (OK-VQA, VQAv2) as canonical rows: one single-turn conversation per question.

Inputs are the two files of the official release: questions ``{"data_subtype", "questions": [{image_id,
question, question_id}]}`` and annotations ``{"annotations": [{question_id, image_id, answers: [{answer,
...}], ...}]}``. Both are streamed with ijson (VQAv2 train annotations are ~350 MB).

Conversation, as LLaVA-1.5's training mix writes VQA data: human
``<image>\\n{question}\\nAnswer the question using a single word or phrase.``, gpt = the most frequent
annotator answer. Ties are broken deterministically: the highest count wins, then the alphabetically
smallest answer string (Python string order), so the same files always give the same target.

Image names follow COCO: ``COCO_{data_subtype}_{image_id:012d}.jpg`` with ``data_subtype`` (e.g.
``train2014``) read from the questions file, or any ``image_pattern`` such as
``train2014/COCO_train2014_{image_id:012d}.jpg`` or ``{image_id:012d}.jpg`` (COCO 2017 names).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import ijson
import pyarrow as pa

from datasets_spec.difficulty import conversation_difficulty, estimate_tokens
from datasets_spec.errors import UserError
from datasets_spec.llava_json import (
    DEFAULT_BATCH_SIZE,
    ImageSourceReader,
    _columns_to_table,
    _TrackedFile,
    json_error_position,
)
from datasets_spec.safe_json import GuardedJsonFile
from datasets_spec.schema import IMAGE_TOKEN, check_image_path

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
COCO_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


def most_frequent_answer(answers: list[str]) -> str:
    """The most frequent answer; ties go to the alphabetically smallest (deterministic)."""
    counts = Counter(answers)
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def vqa_human_turn(question: str) -> str:
    return f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER_PROMPT}"


def _stream(path: Path, prefix: str) -> Iterator[object]:
    """Items under ``prefix`` of a JSON file, with malformed input reported as file + byte position."""
    if not path.is_file():
        raise UserError(f"{path}: not found")
    size = path.stat().st_size
    with path.open("rb") as fh:
        tracked = _TrackedFile(GuardedJsonFile(fh, path))
        items = ijson.items(tracked, prefix, use_float=True)
        while True:
            try:
                yield next(items)
            except StopIteration:
                return
            except ijson.JSONError as exc:
                raise UserError(f"{path}: {json_error_position(str(exc), tracked, size)}") from None


def read_data_subtype(questions: Path) -> str | None:
    """The questions file's ``data_subtype`` (e.g. ``train2014``), or None if it has none."""
    for value in _stream(questions, "data_subtype"):
        return value if isinstance(value, str) else None
    return None


def read_answers(annotations: Path) -> dict[int, str]:
    """question_id -> most frequent answer, streamed from the annotations file."""
    answers: dict[int, str] = {}
    n = 0
    for n, ann in enumerate(_stream(annotations, "annotations.item"), start=1):
        where = f"{annotations}: annotation #{n - 1}"
        if not isinstance(ann, dict) or "question_id" not in ann:
            raise UserError(f"{where}: missing 'question_id'")
        qid = ann["question_id"]
        raw = ann.get("answers")
        if not isinstance(raw, list) or not raw:
            raise UserError(f"{where} (question {qid}): 'answers' must be a non-empty list")
        texts = [a.get("answer") if isinstance(a, dict) else None for a in raw]
        if not all(isinstance(t, str) for t in texts):
            raise UserError(f"{where} (question {qid}): every answer needs a string 'answer'")
        if qid in answers:
            raise UserError(f"{annotations}: duplicate annotation for question {qid!r}")
        answers[qid] = most_frequent_answer(texts)
    if n == 0:
        raise UserError(f"{annotations}: no annotations (expected {{\"annotations\": [...]}})")
    return answers


class VqaReader(ImageSourceReader):
    """Stream canonical rows from a VQA questions + annotations pair (see the module docstring)."""

    def __init__(
        self,
        questions: Path,
        annotations: Path,
        *,
        image_root: Path | None = None,
        split: str = "train",
        skip_bad_images: bool = False,
        decode_images: bool = False,
        image_pattern: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        follow_symlinks: bool = False,
    ) -> None:
        super().__init__(
            image_root=image_root, split=split, skip_bad_images=skip_bad_images, decode_images=decode_images,
            batch_size=batch_size, follow_symlinks=follow_symlinks,
        )
        self.questions = Path(questions)
        self.annotations = Path(annotations)
        self.image_pattern = image_pattern
        self.unanswered_annotations = 0

    def _pattern(self) -> tuple[str, str | None]:
        if self.image_pattern:
            return self.image_pattern, None
        subtype = read_data_subtype(self.questions)
        if not subtype:
            raise UserError(
                f"{self.questions}: no 'data_subtype' to name COCO images; pass --image-pattern "
                "(e.g. 'COCO_val2014_{image_id:012d}.jpg')"
            )
        return COCO_PATTERN, subtype

    def image_name(self, pattern: str, subtype: str | None, image_id: object, where: str) -> str:
        try:
            name = pattern.format(image_id=image_id, data_subtype=subtype)
        except (KeyError, ValueError, IndexError) as exc:
            raise UserError(
                f"image pattern {pattern!r} does not fit {where} (image_id {image_id!r}): {exc}"
            ) from None
        check_image_path(name, where=where)
        return name

    def batches(self) -> Iterator[pa.Table]:
        self._check_image_root()
        pattern, subtype = self._pattern()
        answers = read_answers(self.annotations)
        used = 0
        columns = {name: [] for name in ("sample_id", "source", "split", "image", "conversations", "question",
                                         "difficulty", "n_tokens_est")}
        seen: set[int] = set()
        n = 0
        for n, q in enumerate(_stream(self.questions, "questions.item"), start=1):
            where = f"{self.questions}: question #{n - 1}"
            if not isinstance(q, dict) or not all(k in q for k in ("question_id", "image_id", "question")):
                raise UserError(f"{where}: needs question_id, image_id and question")
            qid = q["question_id"]
            here = f"{self.questions}: question {qid!r}"
            if qid in seen:
                raise UserError(f"{self.questions}: duplicate question_id {qid!r}")
            seen.add(qid)
            if qid not in answers:
                raise UserError(f"{here}: no annotation in {self.annotations}")
            used += 1
            if not isinstance(q["question"], str) or IMAGE_TOKEN in q["question"]:
                raise UserError(f"{here}: question must be a string without {IMAGE_TOKEN}")
            image = self.image_name(pattern, subtype, q["image_id"], here)
            if self.image_root is not None and not self._image_ok(image, here):
                self.skipped_images += 1
                continue
            conversations = [
                {"from": "human", "value": vqa_human_turn(q["question"])},
                {"from": "gpt", "value": answers[qid]},
            ]
            columns["sample_id"].append(str(qid))
            columns["source"].append("vqa")
            columns["split"].append(self.split)
            columns["image"].append(image)
            columns["conversations"].append(conversations)
            columns["question"].append(q["question"])
            columns["difficulty"].append(conversation_difficulty(conversations))
            columns["n_tokens_est"].append(estimate_tokens(conversations))
            if len(columns["sample_id"]) >= self.batch_size:
                yield _columns_to_table(columns)
                columns = {k: [] for k in columns}
        if n == 0:
            raise UserError(f"{self.questions}: no questions (expected {{\"questions\": [...]}})")
        self.unanswered_annotations = len(answers) - used
        if columns["sample_id"]:
            yield _columns_to_table(columns)
