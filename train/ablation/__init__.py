"""Ablation grids: subsets (strategy x budget) x LLM backbones x seeds -> trained, evaluated runs and a table.

``grid`` reads and checks the TOML file, ``plan`` lists the subsets and cells it needs, ``run`` makes and
trains them (resuming finished cells) and writes ``reports/ablation.{csv,md}`` plus plots.
"""

from train.ablation.grid import (
    FULL,
    AblationGrid,
    Budget,
    EvalSpec,
    StageSpec,
    StrategySpec,
    check_names,
    grid_from_dict,
    load_grid,
    packaged_grid,
)
from train.ablation.plan import Cell, Plan, SubsetPlan, build_config, plan_ablation, stage1_run_name
from train.ablation.run import Backend, describe_plan, run_ablation

__all__ = [
    "FULL",
    "AblationGrid",
    "Backend",
    "Budget",
    "Cell",
    "EvalSpec",
    "Plan",
    "StageSpec",
    "StrategySpec",
    "SubsetPlan",
    "build_config",
    "check_names",
    "describe_plan",
    "grid_from_dict",
    "load_grid",
    "packaged_grid",
    "plan_ablation",
    "run_ablation",
    "stage1_run_name",
]
