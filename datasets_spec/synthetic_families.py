"""The problem families of the synthetic ScienceQA set: how each one draws its picture and words its
question (see :mod:`datasets_spec.synthetic` for why they look the way they do)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def _centred_box(
    rng: np.random.Generator, size: int, radius: tuple[float, float], frac: float
) -> tuple[int, int, int, int]:
    """The box of one big shape near the centre: a radius drawn from ``radius`` (fractions of the canvas),
    the centre moved by up to ``frac`` of the canvas on each axis."""
    r = size * float(rng.uniform(*radius))
    cx, cy = size / 2 + _jitter(rng, size, frac), size / 2 + _jitter(rng, size, frac)
    return _box(cx, cy, r)


def _draw_answer(rng: np.random.Generator, choices: tuple[str, ...]) -> tuple[int, str]:
    """The correct choice, drawn uniformly: (its index, its text)."""
    answer = int(rng.integers(len(choices)))
    return answer, choices[answer]


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
    answer, name = _draw_answer(rng, COLOR_NAMES)
    img, draw = _canvas(size)
    box = _centred_box(rng, size, (0.30, 0.40), 0.06)
    _draw_shape(draw, ("circle", "square")[int(rng.integers(2))], box, COLORS[name])
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
    answer, where = _draw_answer(rng, POSITIONS)
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
    answer, kind = _draw_answer(rng, SHAPES)
    img, draw = _canvas(size)
    _draw_shape(draw, kind, _centred_box(rng, size, (0.36, 0.44), 0.04), BLACK)
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


@dataclass(frozen=True, eq=False)
class ClassifyExample:
    """A text family that names one example of a class and asks for its class. ``question`` and
    ``solution`` are templates over ``{example}``, ``{Example}`` (capitalised) and ``{kind}`` (the class)."""

    classes: tuple[str, ...]
    examples: dict[str, tuple[str, ...]]
    question: str
    lecture: str
    solution: str

    def __call__(self, rng: np.random.Generator, size: int) -> Drawn:
        answer, kind = _draw_answer(rng, self.classes)
        example = _pick(rng, self.examples[kind])
        words = {"example": example, "Example": f"{example[0].upper()}{example[1:]}", "kind": kind}
        return Drawn(
            question=self.question.format(**words),
            choices=list(self.classes),
            answer=answer,
            hint="",
            lecture=self.lecture,
            solution=self.solution.format(**words),
        )


make_animals = ClassifyExample(
    ANIMAL_KINDS, ANIMALS, question="What kind of animal is a {example}?",
    lecture="Animals are sorted into groups by their traits.", solution="A {example} is a {kind}.",
)

MATTER = ("solid", "liquid", "gas")
SUBSTANCES = {
    "solid": ("rock", "ice cube", "coin", "brick", "pencil"),
    "liquid": ("milk", "juice", "tea", "honey", "rain water"),
    "gas": ("steam", "air", "helium", "oxygen", "water vapor"),
}
make_matter = ClassifyExample(
    MATTER, SUBSTANCES, question="Is {example} a solid, a liquid, or a gas?",
    lecture="Matter can be a solid, a liquid, or a gas.", solution="{Example} is a {kind}.",
)

UNITS = ("millimeters", "centimeters", "meters", "kilometers")
THINGS = {
    "millimeters": ("an ant", "a seed", "a grain of rice", "a flea"),
    "centimeters": ("a pencil", "a spoon", "a crayon", "a book"),
    "meters": ("a bus", "a classroom", "a pool", "a tree"),
    "kilometers": ("a river", "a highway", "a road trip", "a coastline"),
}
make_units = ClassifyExample(
    UNITS, THINGS, question="Which unit best measures the length of {example}?",
    lecture="Pick a unit that fits the size of the object.",
    solution="The length of {example} is best measured in {kind}.",
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
