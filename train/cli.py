"""`train`: a thin typer wrapper over the plain functions in train/.

Errors a user can cause arrive as UserError and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from curate.cli_common import WorkspaceOption, invoked_command
from curate.workspace import Workspace, resolve_workspace
from datasets_spec.errors import exit_on_user_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])



def command_line() -> str:
    return invoked_command("train")


def _workspace(path: Path | None) -> Workspace:
    return resolve_workspace(path)


# Commands are registered below, one block per concern.
# --- run / merge / dry-run ----------------------------------------------------------------------------
@app.command("run")
def run_command(
    subset: Path = typer.Option(..., "--subset", help="A subset dir, or a dir of them."),
    llm: str = typer.Option("tiny-llama", "--llm", help="LLM preset, hub id or local directory."),
    vision: str = typer.Option("tiny-clip", "--vision", help="Vision preset, hub id or local directory."),
    stage: str = typer.Option("finetune", "--stage", help="pretrain | finetune | both."),
    preset: str = typer.Option("llava-1.5", "--preset", help="llava-1.5 | scienceqa | tiny-cpu."),
    lora_r: int | None = typer.Option(None, "--lora-r", help="LoRA rank (stage 2); omit for full tuning."),
    lora_alpha: int | None = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2 x rank)."),
    qlora: bool = typer.Option(False, "--qlora", help="Stage 2 on a 4-bit NF4 base (LoRA r 128 default)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate override."),
    projector_lr: float | None = typer.Option(None, "--projector-lr", help="Stage-2 projector lr."),
    epochs: float | None = typer.Option(None, "--epochs", help="Epochs override."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size override."),
    per_device_batch_size: int | None = typer.Option(None, "--per-device-batch-size"),
    max_length: int = typer.Option(2048, "--max-length", help="Token limit per sample."),
    max_mismatch: int = typer.Option(0, "--max-mismatch", help="Tolerated tokenization mismatches."),
    drop_overlong: bool = typer.Option(False, "--drop-overlong", help="Drop samples over --max-length."),
    image_aspect: str = typer.Option("pad", "--image-aspect", help="pad | resize | crop."),
    template: str | None = typer.Option(None, "--template", help="Stage-2 template (default: the LLM's)."),
    image_placement: str = typer.Option("front", "--image-placement", help="front (LLaVA) | keep."),
    deepspeed: str | None = typer.Option(None, "--deepspeed", help="zero2|zero3|zero3-offload|PATH."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    resume: str | None = typer.Option(None, "--resume", help="Unfinished run to continue."),
    eval_split: str = typer.Option("val", "--eval-split", help="Split evaluated between epochs ('' = none)."),
    eval_limit: int = typer.Option(64, "--eval-limit", help="Problems evaluated between epochs (0 = none)."),
    projector: str | None = typer.Option(None, "--projector", help="Stage-1 projector file or run dir."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Estimate only; train nothing."),
    seed: int = typer.Option(0, "--seed"),
    run_name: str | None = typer.Option(None, "--run-name", help="Run directory name (one subset only)."),
    gpus: int | None = typer.Option(None, "--gpus", help="GPU count for --dry-run estimates."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop each stage after N steps."),
    min_steps: int | None = typer.Option(
        None, "--min-steps", help="Train each stage at least N steps (more epochs for small subsets)."
    ),
    save_steps: int | None = typer.Option(None, "--save-steps", help="Checkpoint every N steps."),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """Train one run per subset (stage 1, 2 or both); several GPUs: `torchrun ... -m train.cli run`."""
    from train.config import TrainConfig
    from train.runner import run_subsets

    config = TrainConfig(
        llm=llm, vision=vision, stage=stage, preset=preset, lora_r=lora_r, lora_alpha=lora_alpha, lr=lr,
        qlora=qlora,
        projector_lr=projector_lr, epochs=epochs, global_batch_size=batch_size,
        per_device_batch_size=per_device_batch_size, max_length=max_length, max_mismatch=max_mismatch,
        drop_overlong=drop_overlong, image_aspect=image_aspect, template=template, deepspeed=deepspeed,
        image_placement=image_placement,
        gradient_checkpointing=gradient_checkpointing, resume=resume, eval_split=eval_split or None,
        eval_limit=eval_limit, projector_path=projector, seed=seed, run_name=run_name, gpus=gpus,
        max_steps=max_steps, min_steps=min_steps, save_steps=save_steps,
    )
    if dry_run:
        from curate.shards import find_subsets
        from train.dryrun import dry_run as estimate
        from train.dryrun import format_dry_run

        for path in find_subsets(subset):
            typer.echo(format_dry_run(estimate(config, path)))
        return
    for run in run_subsets(_workspace(workspace), subset, config, command=command_line()):
        if int(os_environ().get("RANK", "0")) == 0:
            typer.echo(f"wrote {run}")


@app.command("merge")
def merge_command(
    run: Path = typer.Option(..., "--run", help="A finished run directory (runs/X)."),
    out: Path = typer.Option(..., "--out", help="Directory for the standalone checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Write a run's model (LoRA merged) where LlavaForConditionalGeneration/AutoProcessor load it as is."""
    from train.runner import merge_run

    typer.echo(f"wrote {merge_run(run, out, overwrite=overwrite)}")


def os_environ() -> dict:
    import os

    return dict(os.environ)



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
        64, "--max-new-tokens", min=1, help="Generation length cap; raise it for lecture-first (LEA) models."
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
