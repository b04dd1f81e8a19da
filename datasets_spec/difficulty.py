"""Sample difficulty in [0, 1] and a cheap token-count estimate, both computed once at ingest.

ScienceQA problems (:func:`scienceqa_difficulty`) use a weighted mean of four terms, each clipped to
[0, 1]::

    difficulty = 0.40 * (grade - 1) / 11
               + 0.20 * (n_choices - 2) / 3
               + 0.20 * min(1, len(context) / 400)
               + 0.20 * min(1, len(solution) / 600)

Why these terms and weights: grade is the dataset's own difficulty label (curriculum level), so it
carries the largest weight. More options lower the chance of guessing (ScienceQA has 2 to 5 options,
hence the 2..5 range). A long context means more text to read; a long solution means more reasoning
steps. The length caps (400 and 600 characters) sit near the upper tail of real ScienceQA hints and
solutions, so most problems spread over the range instead of piling at 0. A missing grade counts as the
middle of the range (0.5) rather than easy or hard.

Other samples (:func:`conversation_difficulty`, LLaVA JSON, VQA) have no grade or options, so only the
conversation's size speaks::

    difficulty = 0.5 * min(1, log1p(chars) / log1p(4000)) + 0.5 * min(1, (human_turns - 1) / 9)

Longer answers and multi-turn dialogues are harder to imitate; log scale because lengths are heavy
tailed (a 40-character VQA answer and a 4,000-character detailed description differ by 100x). 4,000
characters and 10 turns are where LLaVA-665K's long tail starts; beyond them the term is 1.

:func:`estimate_tokens` is ``ceil(characters / 4)`` of the conversation text (the usual ~4 characters per
BPE token for English) plus a fixed :data:`IMAGE_TOKENS` per image, used only to group samples of
similar length into batches, so a rough, fast estimate is what is wanted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from datasets_spec.schema import IMAGE_TOKEN

SCIENCEQA_WEIGHTS = {"grade": 0.40, "choices": 0.20, "context": 0.20, "solution": 0.20}
CONTEXT_CAP_CHARS = 400
SOLUTION_CAP_CHARS = 600
CONVERSATION_CAP_CHARS = 4000
TURNS_CAP = 10
# LLaVA-1.5's vision tower (ViT-L/14 at 336 px) yields 24 x 24 = 576 patch tokens per image.
IMAGE_TOKENS = 576
CHARS_PER_TOKEN = 4


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def scienceqa_difficulty(
    *, grade: int | None, n_choices: int, context: str | None, solution: str | None
) -> float:
    """Weighted mean of grade, number of choices, context length and solution length (see module doc)."""
    terms = {
        "grade": 0.5 if grade is None else _clip01((grade - 1) / 11),
        "choices": _clip01((n_choices - 2) / 3),
        "context": _clip01(len(context or "") / CONTEXT_CAP_CHARS),
        "solution": _clip01(len(solution or "") / SOLUTION_CAP_CHARS),
    }
    return round(sum(SCIENCEQA_WEIGHTS[k] * v for k, v in terms.items()), 6)


def conversation_difficulty(conversations: Iterable[Mapping[str, str]]) -> float:
    """Size of the conversation: characters (log scale) and number of human turns (see module doc)."""
    chars = human_turns = 0
    for turn in conversations:
        chars += len(turn["value"].replace(IMAGE_TOKEN, "").strip())
        human_turns += turn["from"] == "human"
    return difficulty_from_counts(chars, human_turns)


def difficulty_from_counts(chars: int, human_turns: int) -> float:
    """:func:`conversation_difficulty` from its two inputs: stripped characters (image tokens removed)
    and human turns, for readers that count them while validating."""
    turns = max(1, human_turns)
    length = _clip01(math.log1p(chars) / math.log1p(CONVERSATION_CAP_CHARS))
    depth = _clip01((turns - 1) / (TURNS_CAP - 1))
    return round(0.5 * length + 0.5 * depth, 6)


def estimate_tokens(conversations: Iterable[Mapping[str, str]], *, image_tokens: int = IMAGE_TOKENS) -> int:
    """``ceil(chars / 4)`` of all turns (image token text removed) + ``image_tokens`` per image token."""
    chars = 0
    images = 0
    for turn in conversations:
        value = turn["value"]
        images += value.count(IMAGE_TOKEN)
        chars += len(value.replace(IMAGE_TOKEN, ""))
    return tokens_from_counts(chars, images, image_tokens=image_tokens)


def tokens_from_counts(chars: int, images: int, *, image_tokens: int = IMAGE_TOKENS) -> int:
    """:func:`estimate_tokens` from characters (image tokens removed) and the number of image tokens."""
    return -(-chars // CHARS_PER_TOKEN) + images * image_tokens
