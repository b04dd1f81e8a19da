"""`train`: a thin typer wrapper over the plain functions in train/.

Errors a user can cause arrive as UserError and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

import typer

from datasets_spec.cli_common import WorkspaceOption, invoked_command
from datasets_spec.distributed import rank
from datasets_spec.errors import exit_on_user_error
from datasets_spec.workspace import Workspace, resolve_workspace
from train.config import TrainConfig
from train.evaluate import EvalSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def command_line() -> str:
    return invoked_command("train")


def _workspace(path: Path | None) -> Workspace:
    return resolve_workspace(path)


# Commands are registered below, one block per concern.
# --- run / merge / dry-run ----------------------------------------------------------------------------
# `train run` has one flag per TrainConfig field (--lora-r sets lora_r), with the field's default and its
# docstring as help, so a default lives in one place. Two flags keep their established names:
FLAG_NAMES = {"global_batch_size": "--batch-size", "projector_path": "--projector"}


def _cli_type(hint: object) -> object:
    """The type typer parses a field as: ``X | None`` -> Optional[X]; bf16's ``str | bool`` -> str."""
    args = typing.get_args(hint)
    if not args:
        return hint
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) > 1:
        return str
    return typing.Optional[kinds[0]]  # noqa: UP045 - typer needs a runtime Optional, not a string


def _dataclass_parameters(cls: type, flag_names: dict[str, str]) -> list[inspect.Parameter]:
    """One keyword option per field of the config dataclass ``cls``: its default, its docstring as help."""
    from train.config import field_docs

    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in getattr(cls, "CLI_EXCLUDED", ()):
            continue
        flag = flag_names.get(f.name, "--" + f.name.replace("_", "-"))
        option = typer.Option(f.default, flag, help=docs[f.name])
        kind = inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(f.name, kind, default=option, annotation=_cli_type(hints[f.name])))
    return params


def _with_dataclass_options(
    command: Callable[..., None], cls: type, flag_names: dict[str, str] | None = None
) -> Callable[..., None]:
    """``command`` whose ``**fields`` are the options of ``cls``'s fields (typer reads ``__signature__``)."""
    own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = inspect.Signature([*own, *_dataclass_parameters(cls, flag_names or {})])
    return command


def _config_from_flags(values: dict) -> object:
    """The TrainConfig the flags ask for: '' means None for an optional text field (``--eval-split ''``
    turns the between-epoch evaluation off); ``--bf16 true/false`` are booleans."""
    hints = typing.get_type_hints(TrainConfig)
    for name, value in values.items():
        if value == "" and type(None) in typing.get_args(hints[name]):
            values[name] = None
    if isinstance(values.get("bf16"), str) and values["bf16"].lower() in ("true", "false"):
        values["bf16"] = values["bf16"].lower() == "true"
    return TrainConfig(**values)


def run_command(
    subset: Path = typer.Option(..., "--subset", help="A subset dir, or a dir of them."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Estimate only; train nothing."),
    workspace: Path | None = WorkspaceOption,
    **fields: object,
) -> None:
    """Train one run per subset (stage 1, 2 or both); several GPUs: `torchrun ... -m train.cli run`."""
    from train.runner import run_subsets

    config = _config_from_flags(dict(fields))
    if dry_run:
        from curate.shards import find_subsets
        from train.dryrun import dry_run as estimate
        from train.dryrun import format_dry_run

        for path in find_subsets(subset):
            typer.echo(format_dry_run(estimate(config, path, _workspace(workspace))))
        return
    for run in run_subsets(_workspace(workspace), subset, config, command=command_line()):
        if rank() == 0:
            typer.echo(f"wrote {run}")


app.command("run")(_with_dataclass_options(run_command, TrainConfig, FLAG_NAMES))


@app.command("merge")
def merge_command(
    run: Path = typer.Option(..., "--run", help="A finished run directory (runs/X)."),
    out: Path = typer.Option(..., "--out", help="Directory for the standalone checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Write a run's model (LoRA merged) where LlavaForConditionalGeneration/AutoProcessor load it as is."""
    from train.runner import merge_run

    typer.echo(f"wrote {merge_run(run, out, overwrite=overwrite)}")


# --- eval / score -------------------------------------------------------------------------------------
def _print_metrics(metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from train.scoring import metrics_rows

    table = Table(title=title)
    for name in ("category", "meaning"):
        table.add_column(name)
    for name in ("accuracy %", "correct"):
        table.add_column(name, justify="right")
    for row in metrics_rows(metrics):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"unparsed: {metrics['unparsed']}  missing (counted wrong): {metrics['missing']}"
        f"  outside the split (ignored): {metrics.get('extra', 0)}"
    )


@app.command("score")
def score_command(
    predictions: Path = typer.Option(..., "--predictions", help="LLaVA answer JSONL or {pid: text}."),
    problems: Path = typer.Option(..., "--problems", help="ScienceQA problems.json."),
    split: str = typer.Option("test", "--split", help="Split to score; every problem of it counts."),
    pid_splits: Path | None = typer.Option(
        None, "--pid-splits", help="pid_splits.json (default: beside problems.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
) -> None:
    """Score an existing predictions file with LLaVA's ScienceQA rules (NAT ... Avg)."""
    import json

    from train.scoring import score_files

    metrics = score_files(predictions, problems, split=split, pid_splits=pid_splits)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        _print_metrics(metrics, f"ScienceQA {split}: {predictions.name}")


def eval_command(
    run: Path = typer.Option(..., "--run", help="Run directory, e.g. runs/X."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
    workspace: Path | None = WorkspaceOption,
    **fields: object,
) -> None:
    """Generate answers for the workspace's ScienceQA problems with a trained run and score them."""
    import json

    from train.evaluate import evaluate_run
    from train.rundir import METRICS_FILE, PREDICTIONS_FILE

    spec = EvalSpec(**fields)
    metrics = evaluate_run(_workspace(workspace), run, spec)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        _print_metrics(metrics, f"ScienceQA {spec.split}: {run.name}")
        typer.echo(f"wrote {run / PREDICTIONS_FILE} and {run / METRICS_FILE}")


# `train eval` has one option per EvalSpec field, as `train run` has one per TrainConfig field.
app.command("eval")(_with_dataclass_options(eval_command, EvalSpec))


@app.command("report")
def report_command(
    lmms_eval: Path = typer.Option(
        ..., "--lmms-eval", help="Folder holding one lmms-eval --output_path folder per run, named so."
    ),
    row: list[str] = typer.Option(
        [], "--row", help="LABEL=RUN, in table order (repeat); default: every run folder, labelled by subset."
    ),
    full: str = typer.Option("full", "--full", help="Label of the whole-data row Rel divides by."),
    versus: str = typer.Option("random", "--versus", help="Row the paired differences are taken to."),
    method: str | None = typer.Option(None, "--method", help="Label of the proposed method's row (last)."),
    name: str = typer.Option("protocol", "--name", help="Report name: reports/<name>.md and .json."),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """The data-selection protocol's table (benchmarks, Rel, paired CIs, cost) from lmms-eval results."""
    from train.protocol_table import (
        ProtocolTableConfig,
        build_protocol_table,
        parse_row,
        render_markdown,
        write_protocol_report,
    )

    ws = _workspace(workspace)
    config = ProtocolTableConfig(results_dir=lmms_eval, rows=tuple(parse_row(r) for r in row), full=full,
                                 versus=versus, method=method, name=name)
    payload = build_protocol_table(ws, config)
    path = write_protocol_report(ws, payload, name)
    typer.echo(render_markdown(payload))
    typer.echo(f"wrote {path} and {path.with_suffix('.json')}")


# --- ablate -------------------------------------------------------------------------------------------
@app.command("ablate")
def ablate_command(
    grid: Path = typer.Option(..., "--grid", help="Ablation grid TOML (see train/grids/)."),
    plan_only: bool = typer.Option(False, "--plan", help="List the needed subsets and runs only."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Write the tables only."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Cells trained at once, in separate processes."),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """Train and evaluate every (strategy, budget, LLM, seed) cell of a grid; finished cells are skipped."""
    from train.ablation import describe_plan, load_grid, run_ablation

    ws = _workspace(workspace)
    spec = load_grid(grid)
    if plan_only:
        typer.echo(describe_plan(ws, spec))
        return
    report = run_ablation(ws, spec, command=command_line(), plots=not no_plots, jobs=jobs)
    typer.echo(report.read_text())


def main() -> None:
    exit_on_user_error(app)()


if __name__ == "__main__":
    main()
