"""Per-group budgets for any selector: split k among the groups of a column, run the strategy in each.

A strategy ranks the whole pool at once, so a large group (e.g. one LLaVA-mix task) can crowd out a small
one. With ``curate select --group-by COLUMN`` the pool is cut by that column (a null value is the group
:data:`MISSING_GROUP`), :func:`allocate` gives every group present a budget, and
:func:`select_within_groups` runs the strategy on each group's rows with its budget and seed.

Allocation rules (``--per-group``): ``proportional`` (largest-remainder / Hamilton apportionment by group
size), ``equal`` (even split, water-filled when a group is smaller than its share) or a JSON file mapping
group -> count. ``--min-per-group N`` first gives every group min(N, its size); the rest follows the rule.
Every tie is broken by group name, so an allocation is a function of the sizes, k and the rule alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datasets_spec.errors import UserError
from datasets_spec.safe_json import load_json_file

# The curator's group columns (curate rules uses the same ones) ...
GROUP_COLUMNS = ("subject", "topic", "category", "skill")
# ... and what `curate select --group-by` accepts besides: the LLaVA-mix task label and the source.
SELECT_GROUP_COLUMNS = (*GROUP_COLUMNS, "task", "source")
# A null group value is a group of its own under this name (never a real subject/topic/task name).
MISSING_GROUP = "(none)"
RULES = ("proportional", "equal")


@dataclass(frozen=True)
class Grouping:
    """What ``--group-by`` / ``--per-group`` / ``--min-per-group`` asked for, checked."""

    by: str
    rule: str | dict[str, int]
    """``proportional``, ``equal`` or the file's group -> count."""
    label: str
    """The rule as the manifest records it: the name, or ``file:<path>``."""
    min_per_group: int = 0

    def manifest(self, allocation: dict[str, int], sizes: dict[str, int]) -> dict:
        return {"by": self.by, "rule": self.label, "min_per_group": self.min_per_group,
                "allocation": allocation, "pool_sizes": sizes}


def parse_grouping(group_by: str | None, per_group: str | None, min_per_group: int | None) -> Grouping | None:
    """The checked grouping options, or None when grouping is off; every mistake is one UserError, raised
    before any embedding is read."""
    if group_by is None:
        if per_group is not None or min_per_group is not None:
            raise UserError("--per-group and --min-per-group need --group-by COLUMN")
        return None
    if group_by not in SELECT_GROUP_COLUMNS:
        raise UserError(f"--group-by {group_by!r}: valid: {', '.join(SELECT_GROUP_COLUMNS)}")
    minimum = 0 if min_per_group is None else int(min_per_group)
    if minimum < 0:
        raise UserError(f"--min-per-group must be >= 0 (got {minimum})")
    per_group = per_group or "proportional"
    if per_group in RULES:
        return Grouping(group_by, per_group, per_group, minimum)
    return Grouping(group_by, read_allocation_file(per_group), f"file:{per_group}", minimum)


def read_allocation_file(path: str | Path) -> dict[str, int]:
    """A JSON object group -> non-negative int count (the whole allocation, spelled out by hand)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--per-group {str(path)!r}: not proportional, equal or a readable JSON file")
    data = load_json_file(path)
    if not isinstance(data, dict):
        raise UserError(f"--per-group {path}: expected a JSON object group -> count, got "
                        f"{type(data).__name__}")
    # bool is an int subclass in Python, but `true` is no count.
    bad = [g for g, v in data.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise UserError(f"--per-group {path}: counts must be non-negative integers (group {bad[0]!r}: "
                        f"{data[bad[0]]!r})")
    return {str(g): int(v) for g, v in data.items()}


def group_labels(table: pa.Table, rows: np.ndarray, column: str) -> np.ndarray:
    """The group of each of ``rows`` (dataset row indices) as a string array, nulls as MISSING_GROUP."""
    if column not in table.column_names:
        raise UserError(f"--group-by {column!r}: the dataset has no such column")
    values = table.column(column).take(pa.array(rows)).to_pylist()
    return np.array([MISSING_GROUP if v is None else str(v) for v in values], dtype=object)


def group_sizes(labels: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(labels.astype(str), return_counts=True)
    return {str(g): int(c) for g, c in zip(names, counts, strict=True)}


def allocate(group_sizes: dict[str, int], k: int, *, rule: str | dict[str, int],
             min_per_group: int = 0) -> dict[str, int]:
    """Split ``k`` among the groups (name -> pool size); returns name -> count in name order.

    Minimums first (min(min_per_group, size) each, refused if they need more than k), then the rest by
    ``rule``: ``proportional`` apportions it by what each group has left (largest remainder, exact integer
    arithmetic so no float rounding decides a tie), ``equal`` water-fills it, a dict is checked and
    returned as given. Ties go to the group whose name sorts first.
    """
    names = sorted(group_sizes)
    total = sum(group_sizes.values())
    if k <= 0 or k > total:
        raise UserError(f"k={k} must be in 1..{total} (the pool's size)")
    if min_per_group < 0:
        raise UserError(f"--min-per-group must be >= 0 (got {min_per_group})")
    need = {g: min(min_per_group, group_sizes[g]) for g in names}
    if sum(need.values()) > k:
        raise UserError(f"k={k} cannot give each of the {len(names)} groups {min_per_group} sample(s): the "
                        f"minimums need {sum(need.values())}; raise --k or lower --min-per-group")
    if isinstance(rule, dict):
        return _check_given(group_sizes, k, rule, need)
    if rule not in RULES:
        raise UserError(f"--per-group {rule!r}: valid: {', '.join(RULES)} or a JSON file")
    room = {g: group_sizes[g] - need[g] for g in names}
    extra = _hamilton(room, k - sum(need.values())) if rule == "proportional" else _water_fill(
        room, k - sum(need.values()))
    return {g: need[g] + extra[g] for g in names}


def _hamilton(weights: dict[str, int], r: int) -> dict[str, int]:
    """Largest-remainder apportionment of ``r`` seats by ``weights`` (r <= sum: no count exceeds its
    weight, since a quota below its weight rounds up to at most the weight)."""
    names = sorted(weights)
    whole = sum(weights.values())
    if r == 0 or whole == 0:
        return dict.fromkeys(names, 0)
    # quota_g = r * w_g / whole: floor and remainder numerator as integers
    out = {g: r * weights[g] // whole for g in names}
    left = r - sum(out.values())
    by_remainder = sorted(names, key=lambda g: (-(r * weights[g] % whole), g))
    for g in by_remainder[:left]:
        out[g] += 1
    return out


def _water_fill(room: dict[str, int], r: int) -> dict[str, int]:
    """``r`` split evenly among groups with room; a group that fills up drops out and its unused share
    is spread over the others; a last remainder smaller than the group count goes by name order."""
    out = dict.fromkeys(sorted(room), 0)
    while r > 0:
        open_ = [g for g in out if out[g] < room[g]]
        share = r // len(open_)
        if share == 0:
            for g in open_[:r]:
                out[g] += 1
            break
        for g in open_:
            give = min(share, room[g] - out[g])
            out[g] += give
            r -= give
    return out


def _check_given(sizes: dict[str, int], k: int, given: dict[str, int],
                 need: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(given) - set(sizes))
    if unknown:
        raise UserError(f"--per-group file names group(s) not in the pool: {', '.join(map(repr, unknown))}; "
                        f"pool groups: {', '.join(sorted(sizes))}")
    over = [g for g in sorted(given) if given[g] > sizes[g]]
    if over:
        raise UserError(f"--per-group file asks {given[over[0]]} from group {over[0]!r}, which has "
                        f"{sizes[over[0]]} sample(s) in the pool")
    if sum(given.values()) != k:
        raise UserError(f"--per-group file counts sum to {sum(given.values())}, but k={k}")
    out = {g: given.get(g, 0) for g in sorted(sizes)}
    short = [g for g in out if out[g] < need[g]]
    if short:
        raise UserError(f"--per-group file gives group {short[0]!r} {out[short[0]]}, below --min-per-group "
                        f"({need[short[0]]})")
    return out


def group_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th group (name order): a SeedSequence of (seed, index), so groups draw
    independent streams yet a rerun draws the same ones; below 2**31 for FAISS's C int."""
    state = np.random.SeedSequence([seed % 2**64, index]).generate_state(1, dtype=np.uint32)[0]
    return int(state >> 1)


def select_within_groups(fn: Callable[..., np.ndarray], embeddings: np.ndarray, k: int, groups: np.ndarray,
                         allocation: dict[str, int], *, seed: int, **opts: object) -> np.ndarray:
    """Run ``fn`` on each group's rows with its budget; pool positions, groups in name order, each in
    the strategy's order.

    ``groups`` is the group of each row of ``embeddings``. The per-row options (:data:`PER_ROW_OPTIONS`:
    ``scores``, the rules' columns) are cut to the group's rows; every other option (influence's targets)
    is shared. A ``report`` dict receives one report per group. A group with budget 0 is not run.
    """
    n = len(embeddings)
    groups = np.asarray(groups).astype(str)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} rows")
    if sum(allocation.values()) != k:
        raise ValueError(f"the allocation sums to {sum(allocation.values())}, not k={k}")
    report = opts.pop("report", None)
    members = _members(groups)
    picks = []
    for index, name in enumerate(sorted(allocation)):
        budget = allocation[name]
        if budget == 0:
            continue
        rows = members.get(name, np.empty(0, dtype=np.int64))
        sub_opts = {key: _rows_of(key, value, rows, n) for key, value in opts.items()}
        if report is not None:
            sub_opts["report"] = report.setdefault("groups", {}).setdefault(name, {})
        local = fn(embeddings[rows], budget, seed=group_seed(seed, index), **sub_opts)
        picks.append(rows[np.asarray(local, dtype=np.int64)])
    return np.concatenate(picks).astype(np.int64) if picks else np.empty(0, dtype=np.int64)


def pick_in_groups(grouping: Grouping, fn: Callable[..., np.ndarray], embeddings: np.ndarray, k: int,
                   table: pa.Table, rows: np.ndarray, *, seed: int,
                   **opts: object) -> tuple[np.ndarray, dict]:
    """The grouped selection of ``curate select``: ``rows`` (the pool's dataset rows, one per row of
    ``embeddings``) grouped, k allocated, the strategy run per group; pool positions and the manifest's
    ``groups`` record."""
    labels = group_labels(table, rows, grouping.by)
    sizes = group_sizes(labels)
    allocation = allocate(sizes, k, rule=grouping.rule, min_per_group=grouping.min_per_group)
    picks = select_within_groups(fn, embeddings, k, labels, allocation, seed=seed, **opts)
    return picks, grouping.manifest(allocation, sizes)


def _members(groups: np.ndarray) -> dict[str, np.ndarray]:
    """Each group's row positions, ascending: one sort of the labels, not one scan per group."""
    names, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable").astype(np.int64)
    stops = np.cumsum(np.bincount(inverse, minlength=len(names)))
    starts = stops - np.bincount(inverse, minlength=len(names))
    return {str(g): order[a:b] for g, a, b in zip(names, starts, stops, strict=True)}


# The strategy options that hold one value per pool row (curate select fills `scores` from a score set, the
# rules' columns from the dataset); by name, not by shape, so that another array that happens to have as
# many rows (influence's targets) is never cut.
PER_ROW_OPTIONS = ("scores", "difficulty", "has_image", "minimum_groups")


def _rows_of(key: str, value: object, rows: np.ndarray, n: int) -> object:
    if key not in PER_ROW_OPTIONS:
        return value
    value = np.asarray(value)
    if value.shape[0] != n:
        raise ValueError(f"option {key!r} has {value.shape[0]} rows for a pool of {n}")
    return value[rows]
