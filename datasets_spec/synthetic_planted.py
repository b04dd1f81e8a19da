"""The ``planted`` layout of the synthetic ScienceQA set: a train pool with a known flaw that a selector can
fix, and a test split that shows whether it did.

Why. A measurement that compares subsets is only worth trusting once it has seen a selector that must help,
for a reason known in advance (a positive control). Real data have such reasons: LLaVA's mix repeats images
and questions, and a few tasks dominate it while others are rare. The planted pool has both, by design:

* **Duplicated families.** Four families (two image, two text: ``color``, ``count``, ``animals``,
  ``opposite``) fill ``common_share`` of the train pool, but each is made of only ``distinct_per_common``
  distinct problems, every one repeated as exact copies (same text, same picture, a new pid). A random
  subset spends most of its budget on copies of problems it already holds.
* **Rare families.** The other eight families share the rest of the pool, every problem distinct.
* **Balanced evaluation.** val and test hold the same number of problems of every family (families in a
  fixed order, cycled), so a model that never saw a rare family loses as much as one that never saw a
  common one.
* **Evaluation asks what the pool teaches.** Every val and test problem repeats one of its family's pool
  problems (each in turn, in a seeded order), as ScienceQA's splits share question templates and facts.
  The tiny random models of the demo memorise; they do not generalise to problems they never saw (unseen
  text problems scored 13-31% against 64-100% for seen ones). So a family's test accuracy measures how many
  of its pool problems a subset kept and learned, which is what a coverage selector changes.

So at a budget well below the pool, a subset that holds each distinct problem once covers more of every
family than a random one (a random 150 holds about a quarter of the rare problems, the k-center 150 nearly
all); any selector that measures distance (k-center, SemDeDup) on any features that
tell two different problems apart should beat random, and random should gain from a larger budget (more of
the rare families) up to the whole pool. What decides a problem's answer is unchanged (see
:mod:`datasets_spec.synthetic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from datasets_spec.synthetic_families import FAMILIES, FAMILY_BY_NAME, Family

# A generated ScienceQA problem dict and its picture (or None), as :mod:`datasets_spec.synthetic` writes them.
GeneratedProblem = tuple[dict, Image.Image | None]


@dataclass(frozen=True)
class PlantedLayout:
    """How the planted train pool departs from the uniform one."""

    common: tuple[str, ...] = ("color", "count", "animals", "opposite")
    """Families that dominate the pool as copies of few distinct problems (two image, two text families,
    so neither modality alone explains a selector's gain)."""
    common_share: float = 0.8
    """Fraction of the train pool taken by the common families (split equally among them)."""
    distinct_per_common: int = 10
    """Distinct problems per common family; the family's other pool rows are exact copies of them."""
    evaluation_repeats_pool: bool = True
    """val and test problems repeat the pool's problems of their family (True) or are new draws (False). New
    draws measure generalisation, which models this small do not show: at any budget they score near chance
    on problems they never saw, so no subset of the pool could change the test score for a known reason."""

    def __post_init__(self) -> None:
        unknown = [name for name in self.common if name not in FAMILY_BY_NAME]
        if unknown:
            raise ValueError(f"unknown families {unknown}; valid: {', '.join(FAMILY_BY_NAME)}")
        if not 0.0 < self.common_share < 1.0:
            raise ValueError(f"common_share must be in (0, 1), got {self.common_share}")
        if self.distinct_per_common < 1:
            raise ValueError(f"distinct_per_common must be >= 1, got {self.distinct_per_common}")

    @property
    def rare(self) -> tuple[Family, ...]:
        return tuple(f for f in FAMILIES if f.name not in self.common)


PLANTED = PlantedLayout()


def train_plan(
    layout: PlantedLayout, n_train: int, rng: np.random.Generator
) -> list[tuple[Family, int | None]]:
    """The train pool as (family, copy-of) pairs in pool order: ``copy-of`` is the position in this list of
    the distinct problem a row repeats, or None for a distinct problem. Order is shuffled with ``rng`` so
    copies are spread through the pool (a selector must find them, not read them off the order)."""
    n_common = int(round(n_train * layout.common_share))
    per_common = _split_evenly(n_common, len(layout.common))
    per_rare = _split_evenly(n_train - n_common, len(layout.rare))
    rows: list[tuple[Family, int]] = []  # (family, index of its distinct draw within the family)
    for name, n in zip(layout.common, per_common, strict=True):
        rows += [(FAMILY_BY_NAME[name], i % layout.distinct_per_common) for i in range(n)]
    for family, n in zip(layout.rare, per_rare, strict=True):
        rows += [(family, i) for i in range(n)]
    order = rng.permutation(len(rows))
    plan: list[tuple[Family, int | None]] = []
    first_seen: dict[tuple[str, int], int] = {}
    for position, row in enumerate(rows[i] for i in order):
        family, draw = row
        key = (family.name, draw)
        plan.append((family, first_seen.get(key)))
        first_seen.setdefault(key, position)
    return plan


def balanced_families(n: int) -> list[Family]:
    """``n`` families for an evaluation split: every family in turn, so each gets n/12 problems (+-1)."""
    return [FAMILIES[i % len(FAMILIES)] for i in range(n)]


def repeat_pool_problems(
    families: list[Family], pool: dict[str, list[GeneratedProblem]], rng: np.random.Generator, split: str
) -> list[GeneratedProblem | None]:
    """For each evaluation family in ``families``, a copy (``split`` set) of one of that family's distinct
    pool problems in ``pool``: each family's problems in a seeded cyclic order, so every pool problem is
    asked about equally often (+-1). None where the pool holds no problem of the family (a tiny pool)."""
    orders = {name: rng.permutation(len(problems)) for name, problems in sorted(pool.items())}
    asked: dict[str, int] = {}
    out: list[GeneratedProblem | None] = []
    for family in families:
        problems = pool.get(family.name, [])
        if not problems:
            out.append(None)
            continue
        i = asked.get(family.name, 0)
        asked[family.name] = i + 1
        problem, image = problems[int(orders[family.name][i % len(problems)])]
        out.append(({**problem, "split": split}, image))
    return out


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
