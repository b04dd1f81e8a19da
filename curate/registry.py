"""The one list of selection strategies: a record per strategy (function, what it needs, its options).

``curate select``'s options and help, the ablation grid's validation and :func:`curate.select.select_subset`
are all generated from :data:`REGISTRY`, so a new method is its module plus one record here. A strategy
function is ``fn(embeddings, k, *, seed, **options) -> int64 indices`` in selection order; strategies that
need scores also receive ``scores=`` (float64, NaN where a sample has none), and a function that accepts
``report=`` fills a dict the subset manifest keeps (e.g. the eps SemDeDup settled on).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from curate.coincide import coincide
from curate.correlation import centred_correlation
from curate.d2pruning import check_gamma, check_neighbors, d2_pruning
from curate.influence import check_percentile, influence, influence_inputs
from curate.kcenter import l2_maxdiverse
from curate.leverage import check_energy, leverage
from curate.rules import RULES, check_minimum, check_minimum_by, check_prefer, rules_inputs, rules_select
from curate.scores import top_score
from curate.semdedup import check_eps, semdedup
from curate.strategies import kmeans_balanced, random_subset
from datasets_spec.errors import UserError

NEEDS = ("embeddings", "scores", "nothing", "embeddings+scores")
# The needs that read a score set (the ``score`` option) and that read an embedding set.
NEEDS_SCORE_SET = ("scores", "embeddings+scores")
NEEDS_EMBEDDING_SET = ("embeddings", "embeddings+scores")


@dataclass(frozen=True)
class Option:
    """One strategy option, as a CLI flag and a grid key."""

    name: str
    """Keyword of the strategy function (the grid key; the CLI flag is ``--name-with-dashes``)."""
    type: type
    """int, float, str or bool."""
    help: str
    """One line for ``--help``."""
    default: object = None
    """Default when not given (None: the function's own default or "unset")."""
    passed_as: str | None = None
    """Keyword the value reaches the function under, if not ``name`` (None: ``name``); ``score`` is
    resolved by select into the ``scores`` array."""
    check: Callable[[Any], object] | None = None
    """Range check run on the converted value (raises UserError), so a grid is refused before any work."""

    def __post_init__(self) -> None:
        if self.type not in (int, float, str, bool):
            raise ValueError(f"option {self.name}: type must be int, float, str or bool")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: object, where: str) -> object:
        """The value as this option's type, range-checked; a UserError naming ``where`` otherwise."""
        out = self._typed(value, where)
        if self.check is not None:
            try:
                self.check(out)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        return out

    def _typed(self, value: object, where: str) -> object:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif self.type is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif self.type is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif self.type is str and isinstance(value, str):
            return value
        elif isinstance(value, str) and self.type in (int, float):
            try:
                return self.type(value)
            except ValueError:
                pass
        raise UserError(f"{where}: {self.name} must be {self.type.__name__} (got {value!r})")


@dataclass(frozen=True)
class StrategyRecord:
    """A registered selection strategy."""

    name: str
    """Exact name used by ``--strategy`` and grid entries."""
    fn: Callable[..., np.ndarray]
    """The plain function on arrays."""
    needs: str
    """``embeddings`` (an embedding set), ``scores`` (a score set named by the ``score`` option) or
    ``nothing`` (the pool size only) or ``embeddings+scores`` (both)."""
    summary: str
    """One line for help texts."""
    options: tuple[Option, ...] = ()
    """Strategy-specific options (k, seed and the pool filters are common to every strategy)."""
    inputs: Callable[..., dict] | None = None
    """Reads what the function needs from the workspace beyond the pool's rows (influence: the target
    samples' features): ``inputs(ws, options, table, pool_rows, embeddings_info, report) -> keywords``;
    None: the options reach the function as given."""

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"strategy {self.name}: needs must be one of {NEEDS}")
        params = inspect.signature(self.fn).parameters
        for opt in self.options:
            if (opt.passed_as or opt.name) not in params and opt.passed_as != "scores":
                raise ValueError(f"strategy {self.name}: {self.fn.__name__} has no keyword {opt.name!r}")

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        valid = ", ".join(self.option_names) or "none"
        raise UserError(f"strategy {self.name!r} has no option {name!r}; its options: {valid}")

    def takes_report(self) -> bool:
        return "report" in inspect.signature(self.fn).parameters


def _positive(name: str) -> Callable[[float], None]:
    def check(value: float) -> None:
        if value <= 0:
            raise UserError(f"{name} must be positive (got {value})")

    return check


NITER = Option("niter", int, "k-means iterations.", check=_positive("niter"))
N_CLUSTERS = Option("n_clusters", int, "k-means clusters (default: the method's own rule of thumb).",
                    check=_positive("n_clusters"))

REGISTRY: dict[str, StrategyRecord] = {
    r.name: r
    for r in (
        StrategyRecord("l2-maxdiverse", l2_maxdiverse, "embeddings",
                       "exact greedy k-center (farthest-point sampling) in L2"),
        StrategyRecord("random", random_subset, "nothing", "seeded uniform sample without replacement"),
        StrategyRecord("kmeans-balanced", kmeans_balanced, "embeddings",
                       "k-means with k centroids, the nearest sample of each", (NITER,)),
        StrategyRecord("semdedup", semdedup, "embeddings",
                       "SemDeDup: drop samples within cosine distance eps of a kept one in their k-means "
                       "cluster (eps unset: searched to fit k)",
                       (Option("eps", float, "Cosine distance in [0, 2] (unset: the largest that keeps k).",
                               check=check_eps),
                        N_CLUSTERS, NITER)),
        StrategyRecord("coincide", coincide, "embeddings",
                       "COINCIDE: clusters weighted by transferability / density, MMD prototypes in each",
                       (N_CLUSTERS, NITER,
                        Option("nredo", int, "k-means restarts (the best objective is kept).",
                               check=_positive("nredo")),
                        Option("temp", float, "Softmax temperature of the cluster weights (paper: 0.1).",
                               check=_positive("temp")),
                        Option("gamma", float, "Gaussian kernel width of density and MMD (paper: 1.0).",
                               check=_positive("gamma")))),
        StrategyRecord(RULES, rules_select, "nothing",
                       "a curator's hand rules: at least --min-per-subject of every group, then hardest "
                       "(or easiest) first, ties broken by a seeded permutation",
                       (Option("min_per_subject", int, "At least this many samples of every group of "
                               "--minimum-by.", default=0, check=check_minimum),
                        Option("minimum_by", str, "Column of the minimums: subject, topic, category, skill.",
                               default="subject", passed_as="minimum_groups", check=check_minimum_by),
                        Option("prefer", str, "Difficulty order: hard, easy or none.", default="hard",
                               check=check_prefer),
                        Option("image_first", bool, "Image-bearing samples first (text-only ones still fill "
                               "in; --require-image filters them out instead).", default=False)),
                       inputs=rules_inputs),
        StrategyRecord("top-score", top_score, "scores",
                       "the k samples with the highest (or, --ascending, lowest) score",
                       (Option("score", str, "Score set under scores/ (curate score makes it).",
                               passed_as="scores"),
                        Option("ascending", bool, "Lowest scores first.", default=False))),
        StrategyRecord("leverage", leverage, "embeddings",
                       "ScalSelect-style: top-k statistical leverage in the rank that keeps --energy of the "
                       "centred feature matrix's squared singular values",
                       (Option("energy", float, "Share of the energy the rank keeps, in (0, 1] (paper: 0.9).",
                               check=check_energy),
                        Option("no_center", bool, "Skip centring the features (the authors' script centres).",
                               default=False))),
        StrategyRecord("centred-correlation", centred_correlation, "embeddings",
                       "PRISM-style redundancy: the k samples of lowest mean correlation with the pool "
                       "after re-centring on the pool mean",
                       (Option("no_recentre", bool, "Skip subtracting the pool mean (raw cosine, the "
                               "paper's ablation).", default=False),)),
        StrategyRecord("d2-pruning", d2_pruning, "embeddings+scores",
                       "D2-Pruning: kNN graph, forward message passing of a difficulty score, reverse-"
                       "weighted greedy selection",
                       (Option("score", str, "Difficulty score set under scores/ (e.g. a warm-up loss).",
                               passed_as="scores"),
                        Option("n_neighbors", int, "Neighbours per sample in the graph (paper: 5).",
                               check=check_neighbors),
                        Option("gamma_forward", float, "Forward edge weight exp(-gamma d) (paper: 1.0).",
                               check=check_gamma),
                        Option("gamma_reverse", float, "Reverse edge weight exp(-gamma d) (paper: 0.1).",
                               check=check_gamma))),
        StrategyRecord("influence", influence, "embeddings",
                       "LESS/ICONS gradient influence: mean inner product with each target group's SGD "
                       "gradients, max over groups (or ICONS' per-group top-percentile votes)",
                       (Option("target", str, "Target data: a split (not test) or a subset under shards/.",
                               passed_as="targets"),
                        Option("target_embeddings", str, "SGD gradient set of the target (default: the "
                               "one matching the pool's set).", passed_as="targets"),
                        Option("target_group_by", str, "Column grouping the target samples (default: one "
                               "group).", passed_as="target_groups"),
                        Option("vote", bool, "ICONS' vote instead of LESS's max over groups.", default=False),
                        Option("percentile", float, "--vote: top percent of the pool each group votes for "
                               "(ICONS: 20).", check=check_percentile)),
                       inputs=influence_inputs),
    )
}


# The plain functions by name, and whether each reads an embedding set.
STRATEGIES: dict[str, Callable[..., np.ndarray]] = {name: r.fn for name, r in REGISTRY.items()}
NEEDS_EMBEDDINGS: dict[str, bool] = {name: r.needs in NEEDS_EMBEDDING_SET for name, r in REGISTRY.items()}


def get_strategy(name: str) -> Callable[..., np.ndarray]:
    return get_record(name).fn


def get_record(name: str) -> StrategyRecord:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; valid: {', '.join(sorted(REGISTRY))}") from None


def all_options() -> dict[str, Option]:
    """Every option of every strategy by name (shared names must agree on type)."""
    out: dict[str, Option] = {}
    for record in REGISTRY.values():
        for opt in record.options:
            if opt.name in out and out[opt.name].type is not opt.type:
                raise ValueError(f"option {opt.name}: strategies disagree on its type")
            out.setdefault(opt.name, opt)
    return out


def check_options(name: str, options: dict, *, where: str) -> dict:
    """``options`` (from the CLI or a grid) converted to their types; unknown keys are UserErrors."""
    record = get_record(name)
    out = {}
    for key, value in options.items():
        if key not in record.option_names:
            valid = ", ".join(record.option_names) or "none"
            raise UserError(f"{where}: strategy {name!r} has no option {key!r}; its options: {valid}")
        out[key] = record.option(key).convert(value, where)
    for opt in record.options:
        if opt.name not in out and opt.default is not None:
            out[opt.name] = opt.default
    if record.needs in NEEDS_SCORE_SET and not out.get("score"):
        raise UserError(f"{where}: strategy {name!r} needs a score set: give score (--score NAME)")
    return out


def strategies_help() -> str:
    """One line per strategy: name, what it needs, options, summary."""
    lines = []
    for r in REGISTRY.values():
        opts = f", options {' '.join(o.flag for o in r.options)}" if r.options else ""
        lines.append(f"{r.name} (needs {r.needs}{opts}): {r.summary}")
    return "; ".join(lines)
