"""`train`: a thin typer wrapper over the plain functions in train/.

Errors a user can cause arrive as UserError and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from curate.workspace import Workspace, resolve_workspace
from datasets_spec.errors import exit_on_user_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

WorkspaceOption = typer.Option(
    None, "--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace directory (default: current directory)."
)


def command_line() -> str:
    return " ".join(["train", *sys.argv[1:]])


def _workspace(path: Optional[Path]) -> Workspace:
    return resolve_workspace(path)


# Commands are registered below, one block per concern.
# --- run / merge / dry-run ----------------------------------------------------------------------------


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


@app.command("eval")
def eval_command(
    run: Path = typer.Option(..., "--run", help="Run directory, e.g. runs/X."),
    split: str = typer.Option("test", "--split", help="Dataset split whose problems are evaluated."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N problems (sample_id order)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts generated together."),
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", min=1, help="Generation length cap; `The answer is X.` needs about 6."
    ),
    prompt_suffix: str | None = typer.Option(
        None, "--prompt-suffix", help="Text appended to each question, e.g. LLaVA-1.5's answer-directly line."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """Generate answers for the workspace's ScienceQA problems with a trained run and score them."""
    import json

    from train.evaluate import evaluate_run

    metrics = evaluate_run(
        _workspace(workspace), run, split=split, limit=limit, batch_size=batch_size,
        max_new_tokens=max_new_tokens, prompt_suffix=prompt_suffix,
    )
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        _print_metrics(metrics, f"ScienceQA {split}: {run.name}")
        typer.echo(f"wrote {run / 'predictions.jsonl'} and {run / 'metrics.json'}")



# --- ablate -------------------------------------------------------------------------------------------
@app.command("ablate")
def ablate_command(
    grid: Path = typer.Option(..., "--grid", help="Ablation grid TOML (see train/grids/)."),
    plan_only: bool = typer.Option(False, "--plan", help="List the subsets and runs the grid needs, train nothing."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Write the tables only."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train and evaluate every (strategy, budget, LLM, seed) cell of a grid; finished cells are skipped."""
    from train.ablation import describe_plan, load_grid, run_ablation

    ws = _workspace(workspace)
    spec = load_grid(grid)
    if plan_only:
        typer.echo(describe_plan(ws, spec))
        return
    report = run_ablation(ws, spec, command=command_line(), plots=not no_plots)
    typer.echo(report.read_text())




def main() -> None:
    exit_on_user_error(app)()


if __name__ == "__main__":
    main()
