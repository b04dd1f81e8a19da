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

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

COLOR_NAMES = ("red", "green", "blue", "yellow")
COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
}
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
SEA: RGB = (170, 215, 235)
BAR: RGB = (40, 90, 170)
NAMES = ("Mia", "Ben", "Ava", "Leo", "Zoe", "Sam", "Eli", "Ivy")
TASK = "closed choice"


@dataclass(frozen=True)
class Drawn:
    """One generated problem before it gets a pid: text fields plus an optional image."""

    question: str
    choices: list[str]
    answer: int
    hint: str
    lecture: str
    solution: str
    image: Image.Image | None = None


@dataclass(frozen=True)
class Family:
    name: str
    subject: str
    topic: str
    category: str
    skill: str
    grades: tuple[int, int]
    make: Callable[[np.random.Generator, int], Drawn]
    has_image: bool


# --- drawing ---------------------------------------------------------------------------------------------


def _canvas(size: int, color: RGB = WHITE) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size, size), color)
    return img, ImageDraw.Draw(img)


def _jitter(rng: np.random.Generator, size: int, frac: float = 0.06) -> int:
    span = max(1, int(round(size * frac)))
    return int(rng.integers(-span, span + 1))


def _box(cx: float, cy: float, r: float) -> tuple[int, int, int, int]:
    return (int(round(cx - r)), int(round(cy - r)), int(round(cx + r)), int(round(cy + r)))


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: RGB) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


# --- image families ---------------------------------------------------------------------------------------


def make_color(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    name = COLOR_NAMES[answer]
    img, draw = _canvas(size)
    r = size * float(rng.uniform(0.30, 0.40))
    cx, cy = size / 2 + _jitter(rng, size), size / 2 + _jitter(rng, size)
    _draw_shape(draw, ("circle", "square")[int(rng.integers(2))], _box(cx, cy, r), COLORS[name])
    return Drawn(
        question="What color is the big shape?",
        choices=list(COLOR_NAMES),
        answer=answer,
        hint="",
        lecture="Color is one property of an object.",
        solution=f"Look at the picture. The big shape is {name}.",
        image=img,
    )


def make_count(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    n = answer + 1
    img, draw = _canvas(size)
    cells = rng.permutation(4)[:n]
    for cell in sorted(int(c) for c in cells):
        cx = size * (0.27 + 0.46 * (cell % 2)) + _jitter(rng, size, 0.04)
        cy = size * (0.27 + 0.46 * (cell // 2)) + _jitter(rng, size, 0.04)
        draw.ellipse(_box(cx, cy, size * 0.15), fill=BLACK)
    word = "dot" if n == 1 else "dots"
    return Drawn(
        question="How many dots are in the picture?",
        choices=["1", "2", "3", "4"],
        answer=answer,
        hint="",
        lecture="Count each object once.",
        solution=f"There {'is' if n == 1 else 'are'} {n} {word}.",
        image=img,
    )


POSITIONS = ("left", "right", "top", "bottom")


def make_position(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    where = POSITIONS[answer]
    img, draw = _canvas(size)
    near, mid = size * 0.25, size * 0.5
    far = size - near
    centres = {"left": (near, mid), "right": (far, mid), "top": (mid, near), "bottom": (mid, far)}
    cx, cy = centres[where]
    cx += _jitter(rng, size, 0.05)
    cy += _jitter(rng, size, 0.05)
    draw.ellipse(_box(cx, cy, size * 0.2), fill=COLORS["red"])
    return Drawn(
        question="Where is the red ball?",
        choices=list(POSITIONS),
        answer=answer,
        hint="",
        lecture="Position words tell where a thing is.",
        solution=f"The red ball is on the {where} side of the picture.",
        image=img,
    )


SHAPES = ("circle", "square", "triangle")


def make_shape(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(3))
    kind = SHAPES[answer]
    img, draw = _canvas(size)
    r = size * float(rng.uniform(0.36, 0.44))
    cx, cy = size / 2 + _jitter(rng, size, 0.04), size / 2 + _jitter(rng, size, 0.04)
    _draw_shape(draw, kind, _box(cx, cy, r), BLACK)
    return Drawn(
        question="Which shape is shown?",
        choices=list(SHAPES),
        answer=answer,
        hint="",
        lecture="Shapes have sides and corners, or none.",
        solution=f"The shape is a {kind}.",
        image=img,
    )


MONTHS = ("January", "February", "March", "April")


def make_bars(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    img, draw = _canvas(size)
    base = size - max(2, size // 16)
    top = float(rng.uniform(0.75, 0.88)) * size
    heights = [top * float(rng.uniform(0.15, 0.55)) for _ in range(4)]
    heights[answer] = top
    width = size / 4
    for i, h in enumerate(heights):
        x0 = i * width + width * 0.15
        draw.rectangle((int(round(x0)), int(round(base - h)), int(round(x0 + width * 0.7)), base), fill=BAR)
    draw.line((0, base, size, base), fill=BLACK, width=max(1, size // 32))
    return Drawn(
        question="Which month had the most rain?",
        choices=list(MONTHS),
        answer=answer,
        hint="The bar graph shows rain each month.",
        lecture="A taller bar shows a larger amount.",
        solution=f"The tallest bar is {MONTHS[answer]}.",
        image=img,
    )


def make_map_north(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    img, draw = _canvas(size, SEA)
    columns = rng.permutation(4)
    col_w = size / 4
    for color_idx in range(4):
        x0 = int(columns[color_idx]) * col_w + col_w * 0.1
        if color_idx == answer:
            y0 = size * float(rng.uniform(0.04, 0.10))
        else:
            y0 = size * float(rng.uniform(0.45, 0.62))
        h = size * 0.32
        box = (int(round(x0)), int(round(y0)), int(round(x0 + col_w * 0.8)), int(round(y0 + h)))
        draw.rectangle(box, fill=COLORS[COLOR_NAMES[color_idx]])
    name = COLOR_NAMES[answer]
    return Drawn(
        question="Which region is farthest north?",
        choices=[f"the {c} region" for c in COLOR_NAMES],
        answer=answer,
        hint="North is at the top of the map.",
        lecture="Maps show north at the top.",
        solution=f"The {name} region is closest to the top.",
        image=img,
    )


# --- text families ----------------------------------------------------------------------------------------

ANIMAL_KINDS = ("mammal", "bird", "fish", "reptile")
ANIMALS = {
    "mammal": ("dog", "cow", "horse", "bat", "whale"),
    "bird": ("robin", "eagle", "duck", "owl", "penguin"),
    "fish": ("trout", "shark", "salmon", "tuna", "goldfish"),
    "reptile": ("snake", "lizard", "turtle", "crocodile", "gecko"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def make_animals(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    kind = ANIMAL_KINDS[answer]
    animal = _pick(rng, ANIMALS[kind])
    return Drawn(
        question=f"What kind of animal is a {animal}?",
        choices=list(ANIMAL_KINDS),
        answer=answer,
        hint="",
        lecture="Animals are sorted into groups by their traits.",
        solution=f"A {animal} is a {kind}.",
    )


MATTER = ("solid", "liquid", "gas")
SUBSTANCES = {
    "solid": ("rock", "ice cube", "coin", "brick", "pencil"),
    "liquid": ("milk", "juice", "tea", "honey", "rain water"),
    "gas": ("steam", "air", "helium", "oxygen", "water vapor"),
}


def make_matter(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(3))
    state = MATTER[answer]
    thing = _pick(rng, SUBSTANCES[state])
    return Drawn(
        question=f"Is {thing} a solid, a liquid, or a gas?",
        choices=list(MATTER),
        answer=answer,
        hint="",
        lecture="Matter can be a solid, a liquid, or a gas.",
        solution=f"{thing[0].upper()}{thing[1:]} is a {state}.",
    )


UNITS = ("millimeters", "centimeters", "meters", "kilometers")
THINGS = {
    "millimeters": ("an ant", "a seed", "a grain of rice", "a flea"),
    "centimeters": ("a pencil", "a spoon", "a crayon", "a book"),
    "meters": ("a bus", "a classroom", "a pool", "a tree"),
    "kilometers": ("a river", "a highway", "a road trip", "a coastline"),
}


def make_units(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(4))
    unit = UNITS[answer]
    thing = _pick(rng, THINGS[unit])
    return Drawn(
        question=f"Which unit best measures the length of {thing}?",
        choices=list(UNITS),
        answer=answer,
        hint="",
        lecture="Pick a unit that fits the size of the object.",
        solution=f"The length of {thing} is best measured in {unit}.",
    )


DIRECTIONS = ("north", "south", "east", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def make_opposite(rng: np.random.Generator, size: int) -> Drawn:
    asked = _pick(rng, DIRECTIONS)
    answer = DIRECTIONS.index(OPPOSITE[asked])
    return Drawn(
        question=f"Which direction is opposite to {asked}?",
        choices=list(DIRECTIONS),
        answer=answer,
        hint="",
        lecture="North is opposite south. East is opposite west.",
        solution=f"The opposite of {asked} is {DIRECTIONS[answer]}.",
    )


TENSES = ("past tense", "present tense", "future tense")
VERBS = ("paint", "walk", "jump", "cook", "clean", "play", "help", "watch")


def make_tense(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(3))
    verb = _pick(rng, VERBS)
    form = (f"{verb}ed", f"{verb}es" if verb.endswith("ch") else f"{verb}s", f"will {verb}")[answer]
    name = _pick(rng, NAMES)
    return Drawn(
        question="Which tense does the sentence use?",
        choices=list(TENSES),
        answer=answer,
        hint=f"{name} {form} today.",
        lecture="The form of the verb shows the tense.",
        solution=f"The verb is {form}, so the sentence uses the {TENSES[answer]}.",
    )


COUNTED = ("birds", "frogs", "boats", "kites")


def make_story_count(rng: np.random.Generator, size: int) -> Drawn:
    answer = int(rng.integers(5))
    n = answer + 1
    thing = _pick(rng, COUNTED)
    name = _pick(rng, NAMES)
    return Drawn(
        question=f"How many {thing} did {name} see?",
        choices=["1", "2", "3", "4", "5"],
        answer=answer,
        hint=f"{name} saw {n} {thing} at the lake.",
        lecture="The text tells you the details.",
        solution=f"The text says {name} saw {n}.",
    )


FAMILIES: tuple[Family, ...] = (
    Family("color", "natural science", "physics", "Colors", "Identify colors", (1, 2), make_color, True),
    Family("count", "natural science", "science-and-engineering-practices", "Observations",
           "Count objects in a picture", (1, 3), make_count, True),
    Family("position", "natural science", "physics", "Position", "Describe where an object is", (1, 3),
           make_position, True),
    Family("shape", "natural science", "science-and-engineering-practices", "Shapes", "Identify shapes",
           (1, 2), make_shape, True),
    Family("bars", "natural science", "earth-science", "Weather and climate", "Read a bar graph", (3, 6),
           make_bars, True),
    Family("map_north", "social science", "geography", "Geography", "Read a map: cardinal directions",
           (4, 8), make_map_north, True),
    Family("animals", "natural science", "biology", "Classification",
           "Identify mammals, birds, fish, and reptiles", (2, 5), make_animals, False),
    Family("matter", "natural science", "physics", "States of matter", "Identify solids, liquids, and gases",
           (2, 4), make_matter, False),
    Family("units", "natural science", "units-and-measurement", "Units and measurement",
           "Choose the best unit of length", (4, 7), make_units, False),
    Family("opposite", "social science", "geography", "Cardinal directions", "Identify opposite directions",
           (2, 4), make_opposite, False),
    Family("tense", "language science", "grammar", "Verb tense", "Identify the tense of a verb", (2, 4),
           make_tense, False),
    Family("story_count", "language science", "reading-comprehension", "Reading for details",
           "Find details in a text", (1, 3), make_story_count, False),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
IMAGE_FAMILIES = tuple(f for f in FAMILIES if f.has_image)
TEXT_FAMILIES = tuple(f for f in FAMILIES if not f.has_image)

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
) -> Path:
    """Write a synthetic ScienceQA dataset into ``out_dir`` and return ``out_dir``.

    Layout: ``problems.json``, ``pid_splits.json`` (train/val/test, trainval, minitrain/minival/minitest)
    and ``images/<split>/<pid>/image.png``. pids are "1".."N" (train first, then val, then test).
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    pid = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            pid += 1
            key = str(pid)
            problem, image = draw_problem(rng, choose_family(rng), split, image_size)
            problems[key] = problem
            splits[split].append(key)
            if image is not None:
                folder = out_dir / "images" / split / key
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / "image.png", format="PNG")
    splits["trainval"] = splits["train"] + splits["val"]
    for split in ("train", "val", "test"):
        ids = splits[split]
        splits[f"mini{split}"] = ids[: int(np.ceil(len(ids) * MINI_FRACTION))]
    _write_sorted_json(out_dir / "problems.json", problems)
    _write_sorted_json(out_dir / "pid_splits.json", splits)
    return out_dir


def _write_sorted_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
