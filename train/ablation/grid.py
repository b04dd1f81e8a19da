"""Ablation grids: the TOML file, its dataclasses, and the checks of every name it refers to.

A grid is a TOML file (see ``train/grids/*.toml``)::

    name = "demo"
    llms = ["tiny-llama", "tiny-mistral"]
    vision = "tiny-clip"
    seeds = [0]
    budgets = [60, 0.25, "full"]        # k (int), fraction of the pool (float), or "full"
    steps = "pool"                      # compute: "epochs", "pool" (equal compute), a number, or a list

    [pool]                              # the training pool every subset is drawn from
    split = "train"                     # or "all" for every split, as `curate select --split all`

    [strategies.random]                 # label -> options; `strategy` defaults to the label
    [strategies.rules]
    min_per_subject = 1

    [stage1]                            # projector pre-training, once per LLM, reused by every cell
    hparams = "tiny-cpu"

    [train]                             # stage 2 of every cell
    hparams = "tiny-cpu"
    overrides = { epochs = 3 }

    [eval]
    split = "test"
    limit = 200

The keys each table accepts, and their defaults, are the fields of the dataclass it becomes.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets_spec.errors import UserError
from train.comparisons import FULL
from train.controls import ControlsSpec
from train.evaluate import EvalSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport
    import tomli as tomllib

DEFAULT_RUN_NAME = "{subset}__{llm}__s{seed}"
# With more than one compute setting the default name also says which: the cells differ only in it.
COMPUTE_RUN_NAME = "{subset}__{llm}__{compute}__s{seed}"
RUN_NAME_FIELDS = ("subset", "strategy", "budget", "k", "llm", "seed", "vision", "compute")
EPOCHS = "epochs"
POOL_STEPS = "pool"
# Grid fields written under [pool] in the TOML file; every other field is a top-level key.
POOL_FIELDS = ("split", "require_image", "dedup_eps")
# Options a strategy entry may carry besides its registry record's options (curate/registry.py);
# everything else is a typo the user must hear about.
SELECT_OPTION_KEYS = ("strategy", "seed", "require_image", "dedup_eps", "embeddings_tag", "min_scores",
                      "max_scores")
# Fields the grid itself decides for every run; the rest of TrainConfig may be overridden per stage.
GRID_OWNED_FIELDS = ("llm", "vision", "stage", "preset", "seed", "projector_path", "run_name", "resume")


@dataclass(frozen=True)
class StrategySpec:
    """One row family of the table: a selection strategy with its options under a label."""

    label: str
    """Name used in subset and run names and in the table (the TOML key)."""
    strategy: str
    """Registered strategy name (curate.registry.REGISTRY)."""
    options: dict = field(default_factory=dict)
    """Keyword options passed to ``select_subset`` (seed, require_image, min_scores, ...)."""
    budgets: tuple[Budget, ...] | None = None
    """The grid budgets this row family is trained at (TOML ``budgets = [150]``); None: every budget. A
    control row needs only the budget it controls, so the grid's time goes where the question is."""

    def __post_init__(self) -> None:
        if self.label == FULL:
            raise UserError(f"strategy label {FULL!r} is reserved for the whole-pool budget; rename it")


@dataclass(frozen=True)
class Budget:
    """A subset size: exactly one of ``k`` (samples), ``fraction`` (of the pool) or ``full``."""

    k: int | None = None
    """Number of samples."""
    fraction: float | None = None
    """Fraction of the pool in (0, 1]; resolved to ``round(fraction * pool)`` samples (at least 1)."""
    full: bool = False
    """The whole pool (one shared subset named ``full``)."""

    def __post_init__(self) -> None:
        if sum([self.k is not None, self.fraction is not None, self.full]) != 1:
            raise UserError('a budget is exactly one of: an integer k, a fraction in (0, 1], or "full"')
        if self.k is not None and self.k <= 0:
            raise UserError(f"budgets: k must be positive, got {self.k}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"budgets: a fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def parse(cls, value: Any) -> Budget:
        if isinstance(value, bool):
            raise UserError(f'budgets: {value!r} is not a budget (use an integer k, a fraction, or "full")')
        if isinstance(value, int):
            return cls(k=value)
        if isinstance(value, float):
            return cls(fraction=value)
        if isinstance(value, str) and value.strip().lower() == FULL:
            return cls(full=True)
        raise UserError(f'budgets: {value!r} is not a budget (use an integer k, a fraction, or "full")')

    @property
    def label(self) -> str:
        """``k<k>`` / ``f<fraction>`` as written in the grid, or ``full``."""
        if self.full:
            return FULL
        if self.k is not None:
            return f"k{self.k}"
        return f"f{self.fraction:g}"

    def resolve(self, pool_size: int) -> int:
        """Number of samples for a pool of ``pool_size``, as `curate select --k/--fraction` resolves it;
        a budget above the pool is a UserError."""
        from curate.pool import resolve_k

        return pool_size if self.full else resolve_k(self.k, self.fraction, pool_size)


@dataclass(frozen=True)
class StageSpec:
    """Training settings of one stage: an hyper-parameter preset plus overrides."""

    hparams: str = "tiny-cpu"
    """Hyper-parameter preset name (train.presets)."""
    overrides: dict = field(default_factory=dict)
    """Field overrides applied on top of the preset (e.g. ``epochs``, ``lr``)."""
    subset: str = FULL
    """Stage 1 only: subset the projector is pre-trained on (``full`` = the whole pool, or a subset name
    under shards/, e.g. an LCS-558K-like caption set)."""
    skip: bool = False
    """Stage 1 only: start stage 2 from a freshly initialised projector instead."""
    projector: str | None = None
    """Stage 1 only: an existing projector (a projector.safetensors, or a stage-1 run directory) every cell
    starts from; stage 1 is then not trained (the protocol's "from the pretrained projector")."""

    def __post_init__(self) -> None:
        if self.projector is not None and self.skip:
            raise UserError("[stage1]: give either projector or skip = true, not both")


@dataclass(frozen=True)
class AblationGrid:
    """A whole ablation: strategies x budgets x LLMs x seeds, plus the shared stage-1 / training / eval."""

    strategies: tuple[StrategySpec, ...]
    """Selection strategies compared (one row family each)."""
    budgets: tuple[Budget, ...]
    """Subset sizes; ``full`` adds the whole-pool reference row per LLM."""
    llms: tuple[str, ...]
    """LLM presets (or hub ids / local dirs) compared as backbones."""
    vision: str = "tiny-clip"
    """Vision tower preset shared by every run."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds; the table reports mean and std over them."""
    redraw_subsets: bool = False
    """Each seed draws its own subset (the strategy's seed + the training seed, named
    ``<label>-k<k>-s<seed>``), so a row's replicates vary the subset draw as well as training, and the
    run-level test (:mod:`train.paired_stats`) sees both. False (the default): one subset per row, every
    seed trains on it, and the replicates measure training noise only."""
    steps: tuple[str | int, ...] = (EPOCHS,)
    """Compute axis, one cell per entry: ``"epochs"`` (each subset trains the stage's epochs, so a smaller
    subset gets fewer optimiser steps, raised to ``min_steps``), ``"pool"`` (every cell trains as many
    optimiser steps as the whole pool does: equal compute) or a number of optimiser steps."""
    name: str = "ablation"
    """Title of the report."""
    run_name: str = DEFAULT_RUN_NAME
    """Run directory name template; fields: subset, strategy, budget, k, llm, seed, vision, compute (the
    ``steps`` entry). With several ``steps`` entries the default adds ``__{compute}``."""
    split: str = "train"
    """Pool split every subset is drawn from (``all``: every split)."""
    require_image: bool = False
    """Pool filter: only image-bearing samples (a strategy may override it)."""
    dedup_eps: float | None = None
    """Pool filter: drop near-duplicates closer than this L2 distance (selection strategies only)."""
    stage1: StageSpec = StageSpec()
    """Projector pre-training, once per LLM."""
    train: StageSpec = StageSpec()
    """Stage-2 training of every cell."""
    eval: EvalSpec = EvalSpec()
    """Evaluation of every cell."""
    controls: ControlsSpec = ControlsSpec()
    """The rows that check the measurement itself: a positive and a negative control
    (:mod:`train.controls`)."""

    def __post_init__(self) -> None:
        for name, values in (
            ("llms", self.llms),
            ("seeds", self.seeds),
            ("budgets", self.budgets),
            ("steps", self.steps),
        ):
            if not values:
                raise UserError(f"grid: {name} is empty")
        for value in self.steps:
            number = isinstance(value, int) and not isinstance(value, bool)
            if not (value in (EPOCHS, POOL_STEPS) or number):
                raise UserError(
                    f'grid: steps {value!r} is not a compute setting (use "epochs", "pool" or a step count)'
                )
            if number and value < 1:
                raise UserError(f"grid: steps must be at least 1, got {value}")
        if len(set(map(str, self.steps))) != len(self.steps):
            raise UserError(f"grid: steps lists a setting twice: {list(self.steps)}")
        if not self.strategies and not any(b.full for b in self.budgets):
            raise UserError('grid: no strategies and no "full" budget: nothing to train')
        if not self.strategies and not all(b.full for b in self.budgets):
            raise UserError('grid: budgets other than "full" need at least one entry under [strategies]')
        for spec in self.strategies:
            for budget in spec.budgets or ():
                if budget.full or budget not in self.budgets:
                    raise UserError(
                        f"grid: [strategies.{spec.label}] budgets: {budget.label} is not one of the grid's "
                        f"subset budgets ({', '.join(b.label for b in self.budgets if not b.full)})"
                    )
        self.controls.check([spec.label for spec in self.strategies], "grid:")
        try:
            self.run_name.format(**dict.fromkeys(RUN_NAME_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(
                f"grid: run_name {self.run_name!r} uses an unknown field {exc}; "
                f"valid: {', '.join(RUN_NAME_FIELDS)}"
            ) from None


# --- parsing ------------------------------------------------------------------------------------------


def _check_keys(table: Mapping, allowed: typing.Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")


def _typed(value: Any, types_: type | tuple[type, ...], where: str) -> Any:
    types_ = types_ if isinstance(types_, tuple) else (types_,)
    if (isinstance(value, bool) and bool not in types_) or not isinstance(value, types_):
        raise UserError(f"{where}: expected {' or '.join(t.__name__ for t in types_)}, got {value!r}")
    return value


def _accepted_types(hint: Any) -> tuple[type, ...]:
    """The TOML value types a field annotated ``hint`` accepts (an int where a float is expected)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    accepted = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return (*accepted, int) if float in accepted else accepted


def _fields_from_table(cls: type, raw: Mapping, where: str, names: typing.Iterable[str]) -> dict:
    """Keyword arguments for dataclass ``cls`` from a TOML table whose keys are the fields ``names``.

    Each value is checked against the field's annotation; an absent key keeps the field's default.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in names:
        if name in raw:
            value = _typed(raw[name], _accepted_types(hints[name]), f"{where} {name}")
            kwargs[name] = float(value) if float in _accepted_types(hints[name]) else value
    return kwargs


def _table_kwargs(cls: type, raw: Any, where: str) -> dict:
    """Keyword arguments for dataclass ``cls`` from a TOML table whose keys are exactly its fields."""
    raw = _typed(raw, dict, where)
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(raw, names, where)
    return _fields_from_table(cls, raw, where, names)


def _table(cls: type, raw: Any, where: str) -> Any:
    """Dataclass ``cls`` from a TOML table: its keys are exactly the fields of ``cls``."""
    return cls(**_table_kwargs(cls, raw, where))


def _eval_table(raw: Any, where: str) -> EvalSpec:
    """The ``[eval]`` table; EvalSpec's own checks (shared with `train eval`) get the table's name."""
    kwargs = _table_kwargs(EvalSpec, raw, where)
    try:
        return EvalSpec(**kwargs)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _typed(value, list, where)
    return tuple(_typed(v, str, where) for v in value)


def _strategies(raw: Any, where: str) -> tuple[StrategySpec, ...]:
    specs = []
    for label, options in _typed(raw, dict, f"{where} [strategies]").items():
        options = dict(_typed(options, dict, f"{where} [strategies.{label}]"))
        budgets = options.pop("budgets", None)
        if budgets is not None:
            budgets = tuple(
                Budget.parse(b) for b in _typed(budgets, list, f"{where} [strategies.{label}] budgets")
            )
        specs.append(
            StrategySpec(label=label, strategy=str(options.get("strategy", label)), options=options,
                         budgets=budgets)
        )
    return tuple(specs)


def grid_from_dict(raw: Mapping, *, where: str = "grid") -> AblationGrid:
    """Build and validate a grid from parsed TOML; every problem is a one-line UserError."""
    top = [f.name for f in dataclasses.fields(AblationGrid) if f.name not in POOL_FIELDS]
    _check_keys(raw, [*top, "pool"], where)
    for required in ("llms", "budgets"):
        if required not in raw:
            raise UserError(f"{where}: missing key {required!r}")
    pool = _typed(raw.get("pool", {}), dict, f"{where} [pool]")
    _check_keys(pool, POOL_FIELDS, f"{where} [pool]")
    scalars = [name for name in top if name in ("vision", "name", "run_name", "redraw_subsets")]
    kwargs = {
        **_fields_from_table(AblationGrid, raw, where, scalars),
        **_fields_from_table(AblationGrid, pool, f"{where} [pool]", POOL_FIELDS),
        "strategies": _strategies(raw.get("strategies", {}), where),
        "budgets": tuple(Budget.parse(b) for b in _typed(raw["budgets"], list, f"{where} budgets")),
        "llms": _str_list(raw["llms"], f"{where} llms"),
        "stage1": _table(StageSpec, raw.get("stage1", {}), f"{where} [stage1]"),
        "train": _table(StageSpec, raw.get("train", {}), f"{where} [train]"),
        "eval": _eval_table(raw.get("eval", {}), f"{where} [eval]"),
        "controls": _table(ControlsSpec, raw.get("controls", {}), f"{where} [controls]"),
    }
    if "steps" in raw:
        values = raw["steps"] if isinstance(raw["steps"], list) else [raw["steps"]]
        kwargs["steps"] = tuple(_typed(v, (str, int), f"{where} steps") for v in values)
    if "seeds" in raw:
        seeds = _typed(raw["seeds"], list, f"{where} seeds")
        kwargs["seeds"] = tuple(_typed(s, int, f"{where} seeds") for s in seeds)
    return AblationGrid(**kwargs)


def load_grid(path: str | Path) -> AblationGrid:
    """Parse and validate a grid TOML file; names the file in every error."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: grid file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise UserError(f"{path}: TOML nested too deeply; not a grid file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    grid = grid_from_dict(raw, where=str(path))
    check_names(grid, where=str(path))
    return grid


def packaged_grid(name: str) -> Path:
    """Path of a grid shipped with the package (``train/grids/<name>.toml``)."""
    path = Path(__file__).parents[1] / "grids" / f"{name}.toml"
    if not path.exists():
        shipped = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise UserError(f"no packaged grid {name!r}; shipped: {', '.join(shipped)}")
    return path


# --- names the grid refers to -------------------------------------------------------------------------


def strategy_names() -> list[str]:
    """Every strategy a grid may name: the registered selection strategies."""
    from curate.registry import REGISTRY

    return sorted(REGISTRY)


def strategy_option_keys(strategy: str) -> tuple[str, ...]:
    """Options a grid may give ``strategy``: the pool options plus its registry record's options."""
    from curate.registry import REGISTRY

    record = REGISTRY.get(strategy)
    return SELECT_OPTION_KEYS + (() if record is None else record.option_names)


def check_strategy_options(spec: StrategySpec, where: str) -> None:
    """Types, ranges and required options of a registered strategy, as ``curate select`` checks them."""
    from curate.registry import check_options

    own = {key: value for key, value in spec.options.items() if key not in SELECT_OPTION_KEYS}
    check_options(spec.strategy, own, where=f"{where} [strategies.{spec.label}]")


def override_keys() -> list[str]:
    """TrainConfig fields a grid's ``overrides`` table may set."""
    from train.config import TrainConfig

    return sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in GRID_OWNED_FIELDS)


def _preset_names(kind: str) -> list[str]:
    """Names of the LLM / vision / hyper-parameter presets."""
    if kind == "hparams":
        from train.hparams import HPARAM_PRESETS

        return sorted(HPARAM_PRESETS)
    from train.presets import LLM_PRESETS, VISION_PRESETS

    return sorted(LLM_PRESETS if kind == "llm" else VISION_PRESETS)


def _is_model_path(name: str) -> bool:
    # Hub ids ("org/model") and local directories are accepted where presets are; the trainer checks them.
    return "/" in name or Path(name).exists()


def check_names(grid: AblationGrid, *, where: str = "grid") -> None:
    """Unknown strategies and presets -> UserError naming the value and listing the valid ones."""
    valid = strategy_names()
    for spec in grid.strategies:
        if spec.strategy not in valid:
            raise UserError(
                f"{where}: unknown strategy {spec.strategy!r} in [strategies.{spec.label}]; "
                f"valid: {', '.join(valid)}"
            )
        _check_keys(spec.options, strategy_option_keys(spec.strategy), f"{where} [strategies.{spec.label}]")
        check_strategy_options(spec, where)
    checks = [("llm", name, "llms") for name in grid.llms] + [("vision", grid.vision, "vision")]
    checks += [("hparams", grid.train.hparams, "[train] hparams")]
    if not grid.stage1.skip and grid.stage1.projector is None:
        checks.append(("hparams", grid.stage1.hparams, "[stage1] hparams"))
    valid_overrides = override_keys()
    for key, spec in (("[train]", grid.train), ("[stage1]", grid.stage1)):
        unknown = sorted(set(spec.overrides) - set(valid_overrides))
        if unknown:
            raise UserError(
                f"{where}: unknown override {unknown[0]!r} in {key} overrides; "
                f"valid: {', '.join(valid_overrides)}"
            )
    for kind, name, key in checks:
        names = _preset_names(kind)
        if name not in names and (kind == "hparams" or not _is_model_path(name)):
            raise UserError(f"{where}: unknown {kind} preset {name!r} in {key}; valid: {', '.join(names)}")
