"""What a grid asks for: the subsets it needs, its cells (subset x LLM x seed) and each run's TrainConfig.

Budgets are resolved against the pool the way `curate select` resolves ``--k`` / ``--fraction``;
nothing here reads or writes files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from curate.shards import default_subset_name
from datasets_spec.errors import UserError
from train.ablation.grid import (
    COMPUTE_RUN_NAME,
    DEFAULT_RUN_NAME,
    EPOCHS,
    FULL,
    POOL_STEPS,
    AblationGrid,
    Budget,
    StrategySpec,
)
from train.config import TrainConfig


@dataclass(frozen=True)
class SubsetPlan:
    """A subset the grid needs: its name under shards/ and how to make it."""

    name: str
    """Directory name under shards/."""
    strategy: StrategySpec | None
    """None for the whole-pool subset."""
    k: int
    """Samples in the subset."""
    seed_offset: int = 0
    """Added to the strategy's seed: the training seed of the cells that use this draw when the grid has
    ``redraw_subsets``, else 0."""


@dataclass(frozen=True)
class Cell:
    """One training run: a subset, an LLM and a seed."""

    strategy: str
    """Strategy label, or ``full``."""
    budget: str
    """``k<k>`` / ``f<fraction>`` as written in the grid, or ``full``."""
    k: int
    """Samples in the cell's subset."""
    subset: str
    """The subset's name under shards/."""
    llm: str
    """LLM preset, hub id or local directory."""
    seed: int
    """Training seed."""
    run: str
    """Run directory name under runs/."""
    compute: str = EPOCHS
    """The grid's ``steps`` entry this cell trains at: ``epochs``, ``pool`` or a number of steps."""


@dataclass(frozen=True)
class Plan:
    """Every subset and cell of a grid, resolved against the pool."""

    subsets: tuple[SubsetPlan, ...]
    """Subsets to make (or reuse), the whole-pool one included when a cell or stage 1 needs it."""
    cells: tuple[Cell, ...]
    """Runs to train and evaluate, in table order."""
    pool_size: int
    """Samples in the grid's pool (its split, image filter applied)."""


def plan_ablation(grid: AblationGrid, pool_size: Callable[[bool], int]) -> Plan:
    """Resolve budgets against the pool and list every subset and cell.

    ``pool_size(require_image)`` gives the number of pool samples. Budgets above the pool and two cells
    (or two subsets) landing on the same name are UserErrors.
    """
    subsets: dict[str, SubsetPlan] = {}
    sources: dict[str, str] = {}

    def add_subset(plan: SubsetPlan, origin: str) -> None:
        if plan.name in subsets and subsets[plan.name] != plan:
            raise UserError(f"grid: {origin} and {sources[plan.name]} both make subset {plan.name!r}")
        subsets[plan.name] = plan
        sources.setdefault(plan.name, origin)

    full_pool = pool_size(grid.require_image)
    families = _families(grid, pool_size, full_pool)
    cells: list[Cell] = []
    origins: dict[str, str] = {}
    for label, budget, row_subset in families:
        draws = {seed: _draw(grid, row_subset, seed) for seed in grid.seeds}
        for seed, subset in draws.items():
            drawn = f", seed {seed}" if subset is not row_subset else ""
            add_subset(subset, f"{label} at budget {budget.label}{drawn}")
        for compute in _computes(grid, budget):
            for llm in grid.llms:
                for seed in grid.seeds:
                    cell = _cell(grid, label, budget, draws[seed], llm, seed, compute)
                    origin = f"({label}, {budget.label}, {llm}, seed {seed}, steps {compute})"
                    if cell.run in origins:
                        raise UserError(
                            f"grid: cells {origins[cell.run]} and {origin} collide on run name {cell.run!r}"
                        )
                    origins[cell.run] = origin
                    cells.append(cell)
    if not grid.stage1.skip and grid.stage1.projector is None and grid.stage1.subset == FULL:
        add_subset(SubsetPlan(FULL, None, full_pool), "[stage1]")
    stage1_runs = {stage1_run_name(llm) for llm in grid.llms}
    for run in origins:
        if run in stage1_runs:
            raise UserError(f"grid: cell run name {run!r} collides with a stage-1 run")
    return Plan(tuple(subsets.values()), tuple(cells), full_pool)


def _families(
    grid: AblationGrid, pool_size: Callable[[bool], int], full_pool: int
) -> list[tuple[str, Budget, SubsetPlan]]:
    """(row label, budget, subset) of every table row family, in grid order."""
    families = []
    for budget in grid.budgets:
        if budget.full:
            families.append((FULL, budget, SubsetPlan(FULL, None, full_pool)))
            continue
        for spec in grid.strategies:
            if spec.budgets is not None and budget not in spec.budgets:
                continue
            require_image = bool(spec.options.get("require_image", grid.require_image))
            try:
                k = budget.resolve(pool_size(require_image))
            except UserError as exc:
                raise UserError(f"grid: [strategies.{spec.label}] {exc}") from None
            families.append((spec.label, budget, SubsetPlan(default_subset_name(spec.label, k), spec, k)))
    return families


def _draw(grid: AblationGrid, subset: SubsetPlan, seed: int) -> SubsetPlan:
    """The subset a seed's cells train on: the row's own, or with ``redraw_subsets`` that seed's draw (the
    whole pool is one subset whatever the seed)."""
    if not grid.redraw_subsets or subset.strategy is None:
        return subset
    return SubsetPlan(f"{subset.name}-s{seed}", subset.strategy, subset.k, seed_offset=seed)


def _computes(grid: AblationGrid, budget: Budget) -> list[str]:
    """The compute settings a row family trains at. The whole pool trains the same steps under
    ``epochs`` and ``pool``, so with both in the grid it is trained once (as ``epochs``)."""
    computes = [str(value) for value in grid.steps]
    if budget.full and EPOCHS in computes and POOL_STEPS in computes:
        computes.remove(POOL_STEPS)
    return computes


def _cell(
    grid: AblationGrid, label: str, budget: Budget, subset: SubsetPlan, llm: str, seed: int, compute: str
) -> Cell:
    fields = {
        "subset": subset.name,
        "strategy": label,
        "budget": budget.label,
        "k": subset.k,
        "llm": llm,
        "seed": seed,
        "vision": grid.vision,
        "compute": compute,
    }
    template = grid.run_name
    if template == DEFAULT_RUN_NAME and len(grid.steps) > 1:
        template = COMPUTE_RUN_NAME
    run = template.format(**fields)
    return Cell(label, budget.label, subset.k, subset.name, llm, seed, run, compute)


def stage1_run_name(llm: str) -> str:
    """Run directory of an LLM's stage-1 projector (shared by every cell of that LLM)."""
    return "stage1__" + "".join(c if c.isalnum() or c in "-_." else "_" for c in llm)


def build_config(
    grid: AblationGrid,
    *,
    llm: str,
    stage: str,
    seed: int,
    run: str,
    projector_path: Path | None,
    compute: str = EPOCHS,
    pool_size: int | None = None,
) -> TrainConfig:
    """The TrainConfig of one run: the stage's preset and overrides plus the grid's shared settings.

    Between-epoch evaluation is off unless the overrides ask for it: the ablation scores every run once,
    after training, on the grid's evaluation split. A stage-2 ``compute`` other than ``epochs`` fixes the
    optimiser steps (``min_steps = max_steps``): the whole pool's planned steps for ``pool`` (which needs
    ``pool_size``), the number itself otherwise.
    """
    spec = grid.stage1 if stage == "pretrain" else grid.train
    kwargs = {"eval_split": None, **spec.overrides}
    config = TrainConfig(
        llm=llm,
        vision=grid.vision,
        stage=stage,
        preset=spec.hparams,
        seed=seed,
        projector_path=None if projector_path is None else str(projector_path),
        run_name=run,
        **kwargs,
    )
    if stage == "pretrain" or compute == EPOCHS:
        return config
    steps = pool_steps(config, pool_size) if compute == POOL_STEPS else int(compute)
    return dataclasses.replace(config, min_steps=steps, max_steps=steps)


def finetune_steps(config: TrainConfig, samples: int) -> int:
    """Stage-2 optimiser steps ``samples`` training samples take under ``config`` (its epochs at its global
    batch, min/max steps applied): the whole pool's for ``steps = "pool"``, a cell's for scheduling."""
    batch = config.stage_hparams("finetune").global_batch_size
    return config.planned_steps("finetune", math.ceil(samples / batch))


def cell_config(
    grid: AblationGrid, cell: Cell, *, pool_size: int, projector_path: Path | None = None
) -> TrainConfig:
    """The stage-2 TrainConfig of ``cell``, starting from the stage-1 projector at ``projector_path``."""
    return build_config(
        grid,
        llm=cell.llm,
        stage="finetune",
        seed=cell.seed,
        run=cell.run,
        projector_path=projector_path,
        compute=cell.compute,
        pool_size=pool_size,
    )


def pool_steps(config: TrainConfig, pool_size: int | None) -> int:
    """Stage-2 optimiser steps the whole pool takes under ``config``."""
    if not pool_size:
        raise UserError('grid: steps = "pool" needs the pool size, and the pool is empty')
    return finetune_steps(config, pool_size)
