"""A small synthetic dataset in exactly the ScienceQA layout, learnable by a tiny model in a minute.

``generate_synthetic_scienceqa(out_dir)`` writes ``problems.json``, ``pid_splits.json`` and
``images/<split>/<pid>/image.png`` the way the official ScienceQA download does, so every code path that
reads real ScienceQA (ingest, stats, export, training, the LLaVA scorer) runs on it unchanged.

Why it looks the way it does. The demo trains a tiny randomly initialised LLaVA (a 2-layer, ~64-dim
language model with a character tokenizer, a random frozen CLIP tower) for about a minute on a CPU and must
reach at least twice chance accuracy on the test split. So:

* Every family has a fixed, canonical option order (colours always red, green, blue, yellow; counts
  ascending; months in calendar order ...). The answer *letter* is then a direct function of what the
  picture shows or of one keyword in the text, which a small model can learn without reading the options.
* Images are drawn large and bold with a few saturated colours on a plain background: a random vision
  tower keeps solid colour regions and coarse layout, not fine detail.
* Questions, contexts and options are short (well under 150 characters) because the language model reads
  characters.
* Most families have 4 options (chance 25 %); ``shape``, ``matter`` and ``tense`` have 3 and
  ``story_count`` has 5, as real ScienceQA mixes option counts. Test chance is about 27 %.
* About half the problems carry an image. Image families can only be answered from the picture; text
  families from the question or the context (ScienceQA's ``hint``), some with no context at all, so all of
  ScienceQA's categories (IMG, TXT, NO; NAT/SOC/LAN; G1-6/G7-12) are populated.

Families (subject / topic / grades / options, and what decides the answer):

============ ================= ==================== ====== ===== =========================================
family       subject           topic                grades opts  answer decided by
============ ================= ==================== ====== ===== =========================================
color        natural science   physics              1-2    4     colour of the one big shape
count        natural science   science-practices    1-3    4     number of big black dots (1-4)
position     natural science   physics              1-3    4     half of the picture holding the red ball
shape        natural science   science-practices    1-2    3     outline of the big black shape
bars         natural science   earth-science        3-6    4     which of four bars is tallest
map_north    social science    geography            4-8    4     colour of the region nearest the top
animals      natural science   biology              2-5    4     the animal named in the question
matter       natural science   physics              2-4    3     the substance named in the question
units        natural science   units-and-measurement 4-7   4     the object named in the question
opposite     social science    geography            2-4    4     the direction named in the question
tense        language science  grammar              2-4    3     verb form in the context sentence
story_count  language science  reading-comprehension 1-3   5     the number stated in the context
============ ================= ==================== ====== ===== =========================================

Same seed and sizes give byte-identical files (JSON with sorted keys; PNGs drawn and encoded without
timestamps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datasets_spec.parts import write_json
from datasets_spec.synthetic_families import FAMILIES, IMAGE_FAMILIES, TASK, TEXT_FAMILIES, Family
from datasets_spec.synthetic_planted import (
    PLANTED,
    GeneratedProblem,
    balanced_families,
    repeat_pool_problems,
    train_plan,
)

# ``uniform``: every problem distinct, families drawn at random (half image, half text). ``planted``: the
# pool with duplicated and rare families and balanced val/test splits
# (:mod:`datasets_spec.synthetic_planted`).
LAYOUTS = ("uniform", "planted")

# Mini splits are the first 10% of each split, like ScienceQA's minitrain/minival/minitest.
MINI_FRACTION = 0.1


def draw_problem(
    rng: np.random.Generator, family: Family, split: str, image_size: int
) -> tuple[dict, Image.Image | None]:
    """One ScienceQA problem dict (every field) of ``family`` and its image (or None)."""
    drawn = family.make(rng, image_size)
    lo, hi = family.grades
    grade = int(rng.integers(lo, hi + 1))
    problem = {
        "question": drawn.question,
        "choices": drawn.choices,
        "answer": drawn.answer,
        "hint": drawn.hint,
        "image": "image.png" if drawn.image is not None else None,
        "task": TASK,
        "grade": f"grade{grade}",
        "subject": family.subject,
        "topic": family.topic,
        "category": family.category,
        "skill": family.skill,
        "lecture": drawn.lecture,
        "solution": drawn.solution,
        "split": split,
    }
    return problem, drawn.image


def choose_family(rng: np.random.Generator) -> Family:
    """Half image families, half text families, uniform within each half."""
    group = IMAGE_FAMILIES if rng.random() < 0.5 else TEXT_FAMILIES
    return group[int(rng.integers(len(group)))]


def family_of(problem: dict) -> str:
    """The family name of a generated problem (recovered from its skill, which is unique per family)."""
    for fam in FAMILIES:
        if fam.skill == problem.get("skill"):
            return fam.name
    raise KeyError(problem.get("skill"))


def generate_synthetic_scienceqa(
    out_dir: Path,
    *,
    n_train: int = 1200,
    n_val: int = 200,
    n_test: int = 300,
    seed: int = 0,
    image_size: int = 64,
    layout: str = "uniform",
) -> Path:
    """Write a synthetic ScienceQA dataset into ``out_dir`` and return ``out_dir``.

    Layout: ``problems.json``, ``pid_splits.json`` (train/val/test, trainval, minitrain/minival/minitest)
    and ``images/<split>/<pid>/image.png``. pids are "1".."N" (train first, then val, then test).
    ``layout`` is ``uniform`` or ``planted`` (see :data:`LAYOUTS`).
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    pid = 0
    pool: dict[str, list[GeneratedProblem]] = {}  # the train split's distinct problems, by family
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        drawn = _draw_split(layout, split, n, rng, image_size, pool)
        if split == "train":
            pool = _distinct_by_family(drawn)
        for problem, image in drawn:
            pid += 1
            key = str(pid)
            problems[key] = dict(problem)
            splits[split].append(key)
            if image is not None:
                folder = out_dir / "images" / split / key
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / "image.png", format="PNG")
    splits["trainval"] = splits["train"] + splits["val"]
    for split in ("train", "val", "test"):
        ids = splits[split]
        splits[f"mini{split}"] = ids[: int(np.ceil(len(ids) * MINI_FRACTION))]
    write_json(out_dir / "problems.json", problems)
    write_json(out_dir / "pid_splits.json", splits)
    return out_dir


def _draw_split(
    layout: str, split: str, n: int, rng: np.random.Generator, image_size: int,
    pool: dict[str, list[GeneratedProblem]],
) -> list[GeneratedProblem]:
    """The problems of one split in order: new draws, exact copies of earlier rows of the split (the planted
    pool) or, for the planted val and test splits, repeats of the pool's problems."""
    plan = _split_plan(layout, split, n, rng)
    repeats: list[GeneratedProblem | None] = [None] * len(plan)
    if layout == "planted" and split != "train" and PLANTED.evaluation_repeats_pool:
        repeats = repeat_pool_problems([family for family, _ in plan], pool, rng, split)
    drawn: list[GeneratedProblem] = []
    for (family, copy_of), repeat in zip(plan, repeats, strict=True):
        copy = drawn[copy_of] if copy_of is not None else repeat
        drawn.append(copy or draw_problem(rng, family, split, image_size))
    return drawn


def _distinct_by_family(drawn: list[GeneratedProblem]) -> dict[str, list[GeneratedProblem]]:
    """Each family's distinct problems (first occurrence, pool order; copies share their dict)."""
    pool: dict[str, list[GeneratedProblem]] = {}
    seen: set[int] = set()
    for entry in drawn:
        if id(entry) in seen:
            continue
        seen.add(id(entry))
        pool.setdefault(family_of(entry[0]), []).append(entry)
    return pool


def _split_plan(layout: str, split: str, n: int, rng: np.random.Generator) -> list[tuple[Family, int | None]]:
    """(family, copy-of) for each problem of ``split``: copy-of is the index of an earlier problem of this
    split that the row repeats exactly, or None for a new draw."""
    if layout == "uniform":
        return [(choose_family(rng), None) for _ in range(n)]
    if split == "train":
        return train_plan(PLANTED, n, rng)
    return [(family, None) for family in balanced_families(n)]
