"""Ablation grids: subsets (strategy x budget) x LLM backbones x seeds -> trained, evaluated runs and a table.

A grid is a TOML file (see ``train/grids/*.toml``)::

    name = "demo"
    llms = ["tiny-llama", "tiny-mistral"]
    vision = "tiny-clip"
    seeds = [0]
    budgets = [60, 0.25, "full"]        # k (int), fraction of the pool (float), or "full"

    [pool]                              # the training pool every subset is drawn from
    split = "train"

    [strategies.random]                 # label -> options; `strategy` defaults to the label
    [strategies.rules]
    min_per_group = 1

    [stage1]                            # projector pre-training, once per LLM, reused by every cell
    hparams = "tiny-cpu"

    [train]                             # stage 2 of every cell
    hparams = "tiny-cpu"
    overrides = { epochs = 3 }

    [eval]
    split = "test"
    limit = 200

``run_ablation`` creates the missing subsets through the curate functions, trains stage 1 once per LLM,
trains and evaluates every cell and writes ``reports/ablation.{csv,md}`` plus plots. A cell whose run has
``metrics.json`` and whose recorded cell key (subset hash, full training config, stage-1 key, evaluation
settings) matches is skipped, so an interrupted ablation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.workspace import Workspace
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_ablation_owned
from datasets_spec.parts import read_json, write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport
    import tomli as tomllib

FULL = "full"
RULES = "rules"
STAGE1_SUBSET = "full"
CELL_FILE = "ablation_cell.json"
DEFAULT_RUN_NAME = "{subset}__{llm}__s{seed}"
RUN_NAME_FIELDS = ("subset", "strategy", "budget", "k", "llm", "seed", "vision")

TOP_KEYS = (
    "name",
    "llms",
    "vision",
    "seeds",
    "budgets",
    "run_name",
    "pool",
    "strategies",
    "stage1",
    "train",
    "eval",
)
POOL_KEYS = ("split", "require_image", "dedup_eps")
# Options a strategy entry may carry; everything else is a typo the user must hear about.
SELECT_OPTION_KEYS = ("strategy", "seed", "require_image", "dedup_eps", "embeddings_tag")
RULES_OPTION_KEYS = (
    "strategy",
    "seed",
    "require_image",
    "min_per_group",
    "group_by",
    "prefer",
    "embeddings_tag",
)
STAGE_KEYS = ("hparams", "overrides", "subset", "skip")
EVAL_KEYS = ("split", "limit", "batch_size", "max_new_tokens")


# --- grid -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategySpec:
    """One row family of the table: a selection strategy with its options under a label."""

    label: str
    """Name used in subset and run names and in the table (the TOML key)."""
    strategy: str
    """Registered strategy name (curate.strategies.STRATEGIES) or ``rules``."""
    options: dict = field(default_factory=dict)
    """Keyword options passed to ``select_subset`` / ``rules_subset`` (seed, require_image, ...)."""

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

    def resolve(self, pool_size: int) -> int:
        """Number of samples for a pool of ``pool_size``; a budget above the pool is a UserError."""
        if self.full:
            return pool_size
        k = self.k if self.k is not None else max(1, round(self.fraction * pool_size))
        if k > pool_size:
            raise UserError(f"budgets: k={k} is larger than the training pool ({pool_size} samples)")
        return k


@dataclass(frozen=True)
class StageSpec:
    """Training settings of one stage: an hyper-parameter preset plus overrides."""

    hparams: str = "tiny-cpu"
    """Hyper-parameter preset name (train.presets)."""
    overrides: dict = field(default_factory=dict)
    """Field overrides applied on top of the preset (e.g. ``epochs``, ``lr``)."""
    subset: str = STAGE1_SUBSET
    """Stage 1 only: subset the projector is pre-trained on (``full`` = the whole pool, or a subset name
    under shards/, e.g. an LCS-558K-like caption set)."""
    skip: bool = False
    """Stage 1 only: start stage 2 from a freshly initialised projector instead."""


@dataclass(frozen=True)
class EvalSpec:
    """How every cell is evaluated."""

    split: str = "test"
    """Dataset split scored for the table."""
    limit: int | None = None
    """Score only the first ``limit`` problems of the split (None: all); the same problems for every cell."""
    batch_size: int = 16
    """Generation batch size."""
    max_new_tokens: int = 64
    """Generation length; short-answer formats (``The answer is X.``) need about 20 tokens, QCM-LEA's
    lecture and solution far more, and a cut answer is scored as unparsed."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"[eval] limit must be positive, got {self.limit}")
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise UserError("[eval] batch_size and max_new_tokens must be positive")


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
    name: str = "ablation"
    """Title of the report."""
    run_name: str = DEFAULT_RUN_NAME
    """Run directory name template; fields: subset, strategy, budget, k, llm, seed, vision."""
    split: str = "train"
    """Pool split every subset is drawn from."""
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

    def __post_init__(self) -> None:
        for name, values in (("llms", self.llms), ("seeds", self.seeds), ("budgets", self.budgets)):
            if not values:
                raise UserError(f"grid: {name} is empty")
        if not self.strategies and not any(b.full for b in self.budgets):
            raise UserError('grid: no strategies and no "full" budget: nothing to train')
        if not self.strategies and not all(b.full for b in self.budgets):
            raise UserError('grid: budgets other than "full" need at least one entry under [strategies]')
        try:
            self.run_name.format(**{f: "x" for f in RUN_NAME_FIELDS})
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(
                f"grid: run_name {self.run_name!r} uses an unknown field {exc}; "
                f"valid: {', '.join(RUN_NAME_FIELDS)}"
            ) from None


def _check_keys(table: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")


def _typed(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise UserError(f"{where}: expected {_type_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise UserError(f"{where}: expected {_type_names(types)}, got {value!r}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _typed(value, list, where)
    return tuple(_typed(v, str, where) for v in value)


def _stage(raw: Any, where: str) -> StageSpec:
    raw = _typed(raw, dict, where)
    _check_keys(raw, STAGE_KEYS, where)
    return StageSpec(
        hparams=_typed(raw.get("hparams", "tiny-cpu"), str, f"{where} hparams"),
        overrides=dict(_typed(raw.get("overrides", {}), dict, f"{where} overrides")),
        subset=_typed(raw.get("subset", STAGE1_SUBSET), str, f"{where} subset"),
        skip=_typed(raw.get("skip", False), bool, f"{where} skip"),
    )


def grid_from_dict(raw: Mapping, *, where: str = "grid") -> AblationGrid:
    """Build and validate a grid from parsed TOML; every problem is a one-line UserError."""
    _check_keys(raw, TOP_KEYS, where)
    for required in ("llms", "budgets"):
        if required not in raw:
            raise UserError(f"{where}: missing key {required!r}")
    strategies_raw = _typed(raw.get("strategies", {}), dict, f"{where} [strategies]")
    strategies = []
    for label, options in strategies_raw.items():
        options = dict(_typed(options, dict, f"{where} [strategies.{label}]"))
        strategies.append(
            StrategySpec(label=label, strategy=str(options.get("strategy", label)), options=options)
        )
    pool = _typed(raw.get("pool", {}), dict, f"{where} [pool]")
    _check_keys(pool, POOL_KEYS, f"{where} [pool]")
    ev = _typed(raw.get("eval", {}), dict, f"{where} [eval]")
    _check_keys(ev, EVAL_KEYS, f"{where} [eval]")
    seeds = tuple(
        _typed(s, int, f"{where} seeds") for s in _typed(raw.get("seeds", [0]), list, f"{where} seeds")
    )
    dedup = pool.get("dedup_eps")
    return AblationGrid(
        strategies=tuple(strategies),
        budgets=tuple(Budget.parse(b) for b in _typed(raw["budgets"], list, f"{where} budgets")),
        llms=_str_list(raw["llms"], f"{where} llms"),
        vision=_typed(raw.get("vision", "tiny-clip"), str, f"{where} vision"),
        seeds=seeds,
        name=_typed(raw.get("name", "ablation"), str, f"{where} name"),
        run_name=_typed(raw.get("run_name", DEFAULT_RUN_NAME), str, f"{where} run_name"),
        split=_typed(pool.get("split", "train"), str, f"{where} [pool] split"),
        require_image=_typed(pool.get("require_image", False), bool, f"{where} [pool] require_image"),
        dedup_eps=None if dedup is None else float(_typed(dedup, (int, float), f"{where} [pool] dedup_eps")),
        stage1=_stage(raw.get("stage1", {}), f"{where} [stage1]"),
        train=_stage(raw.get("train", {}), f"{where} [train]"),
        eval=EvalSpec(
            split=_typed(ev.get("split", "test"), str, f"{where} [eval] split"),
            limit=ev.get("limit")
            if ev.get("limit") is None
            else _typed(ev["limit"], int, f"{where} [eval] limit"),
            batch_size=_typed(ev.get("batch_size", 16), int, f"{where} [eval] batch_size"),
            max_new_tokens=_typed(ev.get("max_new_tokens", 64), int, f"{where} [eval] max_new_tokens"),
        ),
    )


def load_grid(path: str | Path) -> AblationGrid:
    """Parse and validate a grid TOML file; names the file in every error."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: grid file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    grid = grid_from_dict(raw, where=str(path))
    check_names(grid, where=str(path))
    return grid


def packaged_grid(name: str) -> Path:
    """Path of a grid shipped with the package (``train/grids/<name>.toml``)."""
    path = Path(__file__).parent / "grids" / f"{name}.toml"
    if not path.exists():
        shipped = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise UserError(f"no packaged grid {name!r}; shipped: {', '.join(shipped)}")
    return path


# --- names the grid refers to -------------------------------------------------------------------------


def strategy_names() -> list[str]:
    """Every strategy a grid may name: the registered selection strategies plus ``rules``."""
    from curate.strategies import STRATEGIES

    return sorted([*STRATEGIES, RULES])


def strategy_option_keys(strategy: str) -> tuple[str, ...]:
    """Options a grid may give ``strategy``: the pool options plus the strategy function's own keywords."""
    if strategy == RULES:
        return RULES_OPTION_KEYS
    from curate.strategies import STRATEGIES

    fn = STRATEGIES.get(strategy)
    own = (
        ()
        if fn is None
        else tuple(
            name
            for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in SELECT_OPTION_KEYS
        )
    )
    return SELECT_OPTION_KEYS + own


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
    checks = [("llm", name, "llms") for name in grid.llms] + [("vision", grid.vision, "vision")]
    checks += [("hparams", grid.train.hparams, "[train] hparams")]
    if not grid.stage1.skip:
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


# --- cells --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetPlan:
    """A subset the grid needs: its name under shards/ and how to make it."""

    name: str
    strategy: StrategySpec | None
    """None for the whole-pool subset."""
    k: int


@dataclass(frozen=True)
class Cell:
    """One training run: a subset, an LLM and a seed."""

    strategy: str
    """Strategy label, or ``full``."""
    budget: str
    """``k<k>`` / ``f<fraction>`` as written in the grid, or ``full``."""
    k: int
    subset: str
    llm: str
    seed: int
    run: str


@dataclass(frozen=True)
class Plan:
    subsets: tuple[SubsetPlan, ...]
    cells: tuple[Cell, ...]
    pool_sizes: dict


def budget_label(budget: Budget) -> str:
    if budget.full:
        return FULL
    if budget.k is not None:
        return f"k{budget.k}"
    return f"f{budget.fraction:g}"


def plan_ablation(grid: AblationGrid, pool_size: Callable[[bool], int]) -> Plan:
    """Resolve budgets against the pool and list every subset and cell.

    ``pool_size(require_image)`` gives the number of pool samples. Budgets above the pool and two cells
    (or two subsets) landing on the same name are UserErrors.
    """
    subsets: dict[str, SubsetPlan] = {}
    cells: list[Cell] = []
    sources: dict[str, str] = {}

    def add_subset(plan: SubsetPlan, origin: str) -> None:
        if plan.name in subsets and subsets[plan.name] != plan:
            raise UserError(f"grid: {origin} and {sources[plan.name]} both make subset {plan.name!r}")
        subsets[plan.name] = plan
        sources.setdefault(plan.name, origin)

    families: list[tuple[str, Budget, SubsetPlan]] = []
    full_pool = pool_size(grid.require_image)
    for budget in grid.budgets:
        if budget.full:
            families.append((FULL, budget, SubsetPlan(STAGE1_SUBSET, None, full_pool)))
            continue
        for spec in grid.strategies:
            require_image = bool(spec.options.get("require_image", grid.require_image))
            size = pool_size(require_image)
            try:
                k = budget.resolve(size)
            except UserError as exc:
                raise UserError(f"grid: [strategies.{spec.label}] {exc}") from None
            families.append((spec.label, budget, SubsetPlan(f"{spec.label}-k{k}", spec, k)))
    origins: dict[str, str] = {}
    for label, budget, subset in families:
        add_subset(subset, f"{label} at budget {budget_label(budget)}")
        for llm in grid.llms:
            for seed in grid.seeds:
                fields = {
                    "subset": subset.name,
                    "strategy": label,
                    "budget": budget_label(budget),
                    "k": subset.k,
                    "llm": llm,
                    "seed": seed,
                    "vision": grid.vision,
                }
                run = grid.run_name.format(**fields)
                origin = f"({label}, {budget_label(budget)}, {llm}, seed {seed})"
                if run in origins:
                    raise UserError(f"grid: cells {origins[run]} and {origin} collide on run name {run!r}")
                origins[run] = origin
                cells.append(Cell(label, budget_label(budget), subset.k, subset.name, llm, seed, run))
    if not grid.stage1.skip and grid.stage1.subset == STAGE1_SUBSET:
        add_subset(SubsetPlan(STAGE1_SUBSET, None, full_pool), "[stage1]")
    stage1_runs = {stage1_run_name(llm) for llm in grid.llms}
    for run in origins:
        if run in stage1_runs:
            raise UserError(f"grid: cell run name {run!r} collides with a stage-1 run")
    return Plan(tuple(subsets.values()), tuple(cells), {"pool": full_pool})


def stage1_run_name(llm: str) -> str:
    return f"stage1__{_safe(llm)}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --- backend: the curate and train functions the ablation drives ------------------------------------------


def workspace_pool_size(ws: Workspace, split: str, require_image: bool) -> int:
    """Number of dataset samples in ``split`` (image-bearing only when ``require_image``)."""
    import pyarrow.compute as pc

    table = ws.read_dataset(columns=["split", "image"])
    mask = pc.equal(table.column("split"), split)
    if require_image:
        mask = pc.and_(mask, pc.is_valid(table.column("image")))
    return int(pc.sum(mask).as_py() or 0)


def make_subset(ws: Workspace, grid: AblationGrid, plan: SubsetPlan, *, command: str = "") -> Path:
    """Create ``shards/<plan.name>`` through the curate functions.

    The whole pool is ``random`` with k = pool size, so it has a manifest like every other subset.
    """
    if plan.strategy is None:
        from curate.select import select_subset

        return select_subset(
            ws,
            "random",
            k=plan.k,
            seed=0,
            split=grid.split,
            require_image=grid.require_image,
            name=plan.name,
            command=command,
        )
    opts = dict(plan.strategy.options)
    opts.pop("strategy", None)
    opts.setdefault("require_image", grid.require_image)
    if plan.strategy.strategy == RULES:
        from curate.rules import rules_subset

        return rules_subset(ws, k=plan.k, split=grid.split, name=plan.name, command=command, **opts)
    from curate.select import select_subset

    if grid.dedup_eps is not None:
        opts.setdefault("dedup_eps", grid.dedup_eps)
    return select_subset(
        ws, plan.strategy.strategy, k=plan.k, split=grid.split, name=plan.name, command=command, **opts
    )


# Fields the grid itself decides for every run; the rest of TrainConfig may be overridden per stage.
GRID_OWNED_FIELDS = ("llm", "vision", "stage", "preset", "seed", "projector_path", "run_name", "resume")


def override_keys() -> list[str]:
    """TrainConfig fields a grid's ``overrides`` table may set."""
    from train.config import TrainConfig

    return sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in GRID_OWNED_FIELDS)


def build_config(
    grid: AblationGrid, *, llm: str, stage: str, seed: int, run: str, projector_path: Path | None
) -> Any:
    """The TrainConfig of one run: the stage's preset and overrides plus the grid's shared settings.

    Between-epoch evaluation is off unless the overrides ask for it: the ablation scores every run once,
    after training, on the grid's evaluation split.
    """
    from train.config import TrainConfig

    spec = grid.stage1 if stage == "pretrain" else grid.train
    kwargs = {"eval_split": None, **spec.overrides}
    return TrainConfig(
        llm=llm,
        vision=grid.vision,
        stage=stage,
        preset=spec.hparams,
        seed=seed,
        projector_path=None if projector_path is None else str(projector_path),
        run_name=run,
        **kwargs,
    )


def config_dict(config: Any) -> dict:
    """A JSON-stable dict of a config (dataclass or mapping)."""
    if dataclasses.is_dataclass(config):
        payload = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        payload = config.to_dict()
    else:
        payload = dict(config)
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def preset_key(llm: str, vision: str) -> dict:
    """What a named preset stands for (shapes, template, system prompt), so that a cell trained before a
    preset changed is trained again; hub ids and directories stand for themselves."""
    from train.presets import LLM_PRESETS, VISION_PRESETS, preset_to_dict

    return config_dict({
        "llm": preset_to_dict(LLM_PRESETS[llm]) if llm in LLM_PRESETS else llm,
        "vision": preset_to_dict(VISION_PRESETS[vision]) if vision in VISION_PRESETS else vision,
    })


@dataclass
class Backend:
    """The functions an ablation calls; tests swap them for fakes."""

    pool_size: Callable[[Workspace, str, bool], int] = workspace_pool_size
    make_subset: Callable[..., Path] = make_subset
    build_config: Callable[..., Any] = build_config
    train: Callable[..., Path] | None = None
    evaluate: Callable[..., dict] | None = None

    def run_training(self, ws: Workspace, subset_dir: Path, config: Any, *, command: str = "") -> Path:
        if self.train is not None:
            return self.train(ws, subset_dir, config, command=command)
        from train.runner import run_training

        return run_training(ws, subset_dir, config, command=command)

    def evaluate_run(self, ws: Workspace, run_dir: Path, spec: EvalSpec) -> dict:
        kwargs = {
            "split": spec.split,
            "limit": spec.limit,
            "batch_size": spec.batch_size,
            "max_new_tokens": spec.max_new_tokens,
        }
        if self.evaluate is not None:
            return self.evaluate(ws, run_dir, **kwargs)
        from train.evaluate import evaluate_run

        return evaluate_run(ws, run_dir, **kwargs)


# --- running ------------------------------------------------------------------------------------------


def read_manifest(subset_dir: Path) -> dict:
    return read_json(Path(subset_dir) / "manifest.json")


def manifest_value(manifest: Mapping, *names: str) -> Any:
    """First of ``names`` found in the manifest, also looking one level down (e.g. coverage.radius)."""
    for name in names:
        node: Any = manifest
        for part in name.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    return None


def subset_hash(manifest: Mapping) -> str | None:
    return manifest_value(manifest, "parts_hash", "parts_sha256", "hash", "parts.hash")


def _key_hash(payload: Mapping) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _finished(run_dir: Path, key: Mapping, *, need_metrics: bool = True) -> bool:
    """True when ``run_dir`` was made for exactly ``key`` and (if asked) holds its metrics."""
    marker = run_dir / CELL_FILE
    if not marker.exists() or (need_metrics and not (run_dir / "metrics.json").exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("key_hash") == _key_hash(key)
    except (json.JSONDecodeError, OSError):
        return False


def _trained(run_dir: Path, key: Mapping) -> bool:
    marker = run_dir / CELL_FILE
    if not marker.exists():
        return False
    try:
        data = json.loads(marker.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return data.get("key_hash") == _key_hash(key) and data.get("trained", False)


def _mark(run_dir: Path, key: Mapping, **extra: Any) -> None:
    write_json(run_dir / CELL_FILE, {"key": dict(key), "key_hash": _key_hash(key), "trained": True, **extra})


def _prepare_run(ws: Workspace, config: Any) -> Any:
    """Clear a stale run of this name; continue an interrupted one of the same config from its checkpoint.

    The trainer keeps an unfinished run in ``runs/.<run>.partial``; when its recorded config equals this
    one, the returned config resumes it (``resume``), otherwise it is removed with the finished-but-stale
    ``runs/<run>``.
    """
    run = config.run_name if hasattr(config, "run_name") else config["run_name"]
    final = ws.runs_dir / run
    partial = ws.runs_dir / f".{run}.partial"
    if final.exists():
        check_ablation_owned(final, CELL_FILE)
        shutil.rmtree(final)
    if partial.exists():
        recorded = _recorded_config(partial)
        if recorded is not None and recorded == config_dict(config) and dataclasses.is_dataclass(config):
            return dataclasses.replace(config, resume=str(partial))
        check_ablation_owned(partial, CELL_FILE)
        shutil.rmtree(partial)
    return config


def _recorded_config(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "config.json").read_text()).get("config")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _log(message: str) -> None:
    print(message, flush=True)


def run_ablation(
    ws: Workspace,
    grid: AblationGrid,
    *,
    command: str = "",
    backend: Backend | None = None,
    log: Callable[[str], None] = _log,
    plots: bool = True,
    jobs: int = 1,
) -> Path:
    """Create missing subsets, train stage 1 once per LLM, train + evaluate every cell, write reports.

    Finished cells (metrics.json present and the recorded cell key equal to the current one) are
    skipped; a run trained but not evaluated is only evaluated. ``jobs`` > 1 trains that many cells at
    once in separate processes (each with an equal share of the CPU threads); cells are independent, so
    results do not depend on it. Returns ``reports/ablation.md``.
    """
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    backend = backend or Backend()
    check_names(grid)
    plan = plan_ablation(grid, lambda require_image: backend.pool_size(ws, grid.split, require_image))
    if plan.pool_sizes["pool"] == 0:
        raise UserError(f"{ws.dataset_dir}: split {grid.split!r} has no samples to draw subsets from")
    manifests = {}
    for subset in plan.subsets:
        manifests[subset.name] = _ensure_subset(ws, grid, subset, backend, command, log)
    projectors = {}
    stage1_keys = {}
    for llm in grid.llms:
        projectors[llm], stage1_keys[llm] = _ensure_stage1(ws, grid, llm, manifests, backend, command, log)
    total = len(plan.cells)
    jobs_args = []
    for i, cell in enumerate(plan.cells, 1):
        config = backend.build_config(
            grid,
            llm=cell.llm,
            stage="finetune",
            seed=cell.seed,
            run=cell.run,
            projector_path=projectors[cell.llm],
        )
        key = {
            "subset": cell.subset,
            "subset_hash": subset_hash(manifests[cell.subset]),
            "config": config_dict(config),
            "stage1": stage1_keys[cell.llm],
            "eval": dataclasses.asdict(grid.eval),
            "presets": preset_key(cell.llm, grid.vision),
        }
        jobs_args.append((ws, grid, cell, config, key, backend, command, log, f"[{i}/{total}]"))
    _run_cells(jobs_args, jobs)
    from train.report import write_reports

    return write_reports(ws, grid, plan, manifests, plots=plots, log=log)


def _ensure_subset(
    ws: Workspace,
    grid: AblationGrid,
    subset: SubsetPlan,
    backend: Backend,
    command: str,
    log: Callable[[str], None],
) -> dict:
    path = ws.shards_dir / subset.name
    if (path / "manifest.json").exists():
        manifest = read_manifest(path)
        k = manifest_value(manifest, "k", "counts.total", "rows")
        if k is not None and int(k) != subset.k:
            raise UserError(
                f"{path}: existing subset has k={k}, the grid needs k={subset.k}; "
                "remove it or rename the strategy"
            )
        made_by = manifest.get("strategy")
        wanted = "random" if subset.strategy is None else subset.strategy.strategy
        if made_by is not None and made_by != wanted:
            raise UserError(
                f"{path}: existing subset was made by {made_by!r}, the grid needs {wanted!r}; "
                "remove it or rename the strategy"
            )
        return manifest
    how = "whole pool" if subset.strategy is None else subset.strategy.strategy
    log(f"subset {subset.name}: selecting {subset.k} samples ({how})")
    made = backend.make_subset(ws, grid, subset, command=command)
    return read_manifest(Path(made))


def _ensure_stage1(ws, grid, llm, manifests, backend, command, log) -> tuple[Path | None, dict | None]:
    if grid.stage1.skip:
        return None, None
    run = stage1_run_name(llm)
    subset_dir = ws.shards_dir / grid.stage1.subset
    manifest = manifests.get(grid.stage1.subset) or read_manifest(subset_dir)
    config = backend.build_config(
        grid, llm=llm, stage="pretrain", seed=grid.seeds[0], run=run, projector_path=None
    )
    key = {
        "subset": grid.stage1.subset,
        "subset_hash": subset_hash(manifest),
        "config": config_dict(config),
        "presets": preset_key(llm, grid.vision),
    }
    run_dir = ws.runs_dir / run
    projector = _projector_file(run_dir)
    if _trained(run_dir, key) and projector is not None:
        log(f"stage 1 {llm}: done earlier, reusing {projector}")
        return projector, key
    resumable = _prepare_run(ws, config)
    log(f"stage 1 {llm}: training the projector on {grid.stage1.subset} ({grid.stage1.hparams})")
    run_dir = Path(backend.run_training(ws, subset_dir, resumable, command=command))
    projector = _projector_file(run_dir)
    if projector is None:
        raise UserError(f"{run_dir}: stage 1 finished without projector.safetensors")
    _mark(run_dir, key, kind="stage1")
    return projector, key


def _projector_file(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "projector.safetensors", *sorted(run_dir.glob("**/projector.safetensors"))):
        if candidate.exists():
            return candidate
    return None


def _run_cells(jobs_args: list[tuple], jobs: int) -> None:
    """Run every cell: in this process when ``jobs`` is 1, else in a pool of ``jobs`` spawned processes.

    Spawned (not forked) workers: a forked child of a process that already ran OpenMP work can hang.
    """
    if jobs == 1 or len(jobs_args) <= 1:
        for args in jobs_args:
            _run_cell(*args)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or jobs) // jobs)
    context = multiprocessing.get_context("spawn")
    # Longest cells first: queued in plan order, the whole-pool cells come last and train alone while the
    # other workers idle (measured in the demo: 2 of 12 minutes with one of two cores idle).
    ordered = sorted(jobs_args, key=lambda args: -estimated_steps(args[2], args[3]))
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_limit_threads, initargs=(threads,))
    with pool:
        for future in [pool.submit(_run_cell, *args) for args in ordered]:
            future.result()  # re-raises a worker's error (a UserError stays one line)


def estimated_steps(cell: Cell, config: Any) -> int:
    """Stage-2 optimiser steps ``cell`` will take under ``config`` (for scheduling only)."""
    batch = config.stage_hparams("finetune").global_batch_size
    return config.planned_steps("finetune", math.ceil(cell.k / batch))


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_cell(ws, grid, cell: Cell, config, key, backend, command, log, progress: str) -> None:
    run_dir = ws.runs_dir / cell.run
    label = f"{progress} {cell.run}"
    if _finished(run_dir, key):
        log(f"{label}: finished earlier, skipped")
        return
    if not _trained(run_dir, key):
        resumable = _prepare_run(ws, config)
        resumed = " (resuming its checkpoint)" if resumable is not config else ""
        log(f"{label}: training ({cell.strategy}, {cell.k} samples, {cell.llm}, seed {cell.seed}){resumed}")
        run_dir = Path(backend.run_training(ws, ws.shards_dir / cell.subset, resumable, command=command))
        _mark(run_dir, key, kind="cell", cell=dataclasses.asdict(cell))
    log(
        f"{label}: evaluating on {grid.eval.split}"
        + (f" (first {grid.eval.limit})" if grid.eval.limit else "")
    )
    metrics = backend.evaluate_run(ws, run_dir, grid.eval)
    if not (run_dir / "metrics.json").exists():
        write_json(run_dir / "metrics.json", metrics)
    avg = metrics_value(metrics, "Avg")
    log(f"{label}: Avg {avg:.2f}" if isinstance(avg, (int, float)) else f"{label}: evaluated")


def metrics_value(metrics: Mapping, name: str) -> Any:
    """A ScienceQA category from metrics.json, flat or under ``accuracy``/``metrics``."""
    for node in (metrics, metrics.get("accuracy"), metrics.get("metrics"), metrics.get("categories")):
        if isinstance(node, Mapping) and name in node and not isinstance(node[name], Mapping):
            return node[name]
        if isinstance(node, Mapping) and isinstance(node.get(name), Mapping):
            inner = node[name]
            for k in ("acc", "accuracy", "value"):
                if k in inner:
                    return inner[k]
    return None


def describe_plan(ws: Workspace, grid: AblationGrid, *, backend: Backend | None = None) -> str:
    """The subsets and runs a grid needs, and which of them exist already (nothing is trained)."""
    backend = backend or Backend()
    check_names(grid)
    plan = plan_ablation(grid, lambda require_image: backend.pool_size(ws, grid.split, require_image))
    lines = [
        f"grid {grid.name!r}: pool {plan.pool_sizes['pool']} samples ({grid.split}), "
        f"{len(plan.subsets)} subsets, {len(plan.cells)} runs + {0 if grid.stage1.skip else len(grid.llms)} "
        f"stage-1 runs"
    ]
    for subset in plan.subsets:
        state = "exists" if (ws.shards_dir / subset.name / "manifest.json").exists() else "to select"
        lines.append(f"  subset {subset.name} (k={subset.k}): {state}")
    for cell in plan.cells:
        state = "evaluated" if (ws.runs_dir / cell.run / "metrics.json").exists() else "to run"
        lines.append(f"  run {cell.run}: {state}")
    return "\n".join(lines)
