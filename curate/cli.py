"""`curate`: a thin typer wrapper over the plain functions in curate/ and datasets_spec/.

Each command resolves the workspace, calls one library function and prints its result. Errors a user can
cause arrive as UserError and leave as one line on stderr with exit code 2 (see datasets_spec.errors).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import typer

from curate.clip_model import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from curate.embed import CLIP_BATCH_SIZE
from curate.embed_parts import EMBEDDING_ROWS_PER_PART
from curate.embed_reference import REFERENCE_BATCH_SIZE
from curate.embed_text import ST_PREFIX, TEXT_BATCH_SIZE, WORDLLAMA
from datasets_spec.cli_common import WorkspaceOption, invoked_command
from datasets_spec.distributed import rank
from datasets_spec.errors import exit_on_user_error
from datasets_spec.locks import dataset_lock, output_lock
from datasets_spec.workspace import Workspace, resolve_workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])



def command_line() -> str:
    return invoked_command("curate")


def _workspace(path: Path | None) -> Workspace:
    return resolve_workspace(path)


def _locked(name: str, *, replaces_dataset: bool = False, writes_embeddings: bool = False):
    """Run the command holding the workspace's dataset lock (exclusive for ingest, shared for readers) and,
    for embed, the embed writers' lock (see datasets_spec.locks); a conflict is one line naming the holder."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            ws = _workspace(kwargs.get("workspace"))
            # Rank 0 speaks for a torchrun job; its other ranks share the work.
            writer = writes_embeddings and rank() == 0
            outputs = output_lock(ws.dataset_dir, command=f"curate {name}") if writer else None
            with dataset_lock(ws.root, writes=replaces_dataset, command=f"curate {name}"), (
                outputs or contextlib.nullcontext()
            ):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


# Commands are registered below, one block per concern: ingest/stats/export, then embed/select/rules.
# --- ingest / stats / export ------------------------------------------------------------------------

INGEST_SOURCES = ("scienceqa", "llava", "vqa", "synthetic")


@app.command()
@_locked("ingest", replaces_dataset=True)
def ingest(
    source: str = typer.Argument(..., help="scienceqa | llava | vqa | synthetic"),
    path: Path | None = typer.Argument(
        None, help="scienceqa: the folder with problems.json; llava: the JSON file; unused otherwise."
    ),
    prompt_format: str = typer.Option("QCM-LEA", "--prompt-format", help="ScienceQA/synthetic prompt format"),
    splits: str | None = typer.Option(
        None, "--splits", help="ScienceQA: comma-separated pid_splits lists (default train,val,test)."
    ),
    skip_bad_images: bool = typer.Option(
        False, "--skip-bad-images", help="Skip (and count) samples whose image is missing or undecodable."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different existing dataset."),
    seed: int = typer.Option(0, "--seed", help="synthetic: generator seed."),
    n_train: int = typer.Option(1200, "--n-train", help="synthetic: train problems."),
    n_val: int = typer.Option(200, "--n-val", help="synthetic: val problems."),
    n_test: int = typer.Option(300, "--n-test", help="synthetic: test problems."),
    layout: str = typer.Option(
        "uniform", "--layout",
        help="synthetic: uniform, or planted (duplicated and rare families, balanced test).",
    ),
    questions: Path | None = typer.Option(None, "--questions", help="vqa: the questions JSON."),
    annotations: Path | None = typer.Option(None, "--annotations", help="vqa: the annotations JSON."),
    image_root: Path | None = typer.Option(None, "--image-root", help="llava/vqa: the images' folder."),
    split: str = typer.Option("train", "--split", help="llava/vqa: split label of every sample."),
    decode_images: bool = typer.Option(
        False, "--decode-images", help="llava/vqa: decode every image, not only check it exists (slow)."
    ),
    follow_symlinks: bool = typer.Option(
        False, "--follow-symlinks",
        help="Accept images whose real path leaves --image-root (folders linked on purpose); recorded.",
    ),
    duplicate_ids: str = typer.Option(
        "error", "--duplicate-ids",
        help="llava: `error` refuses repeated ids; `suffix` renames them id#2, id#3.",
    ),
    image_pattern: str | None = typer.Option(
        None, "--image-pattern", help="vqa: image file name pattern, e.g. COCO_val2014_{image_id:012d}.jpg"
    ),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """Turn a source dataset into the workspace's canonical dataset/ (Parquet parts + dataset.json)."""
    ws = _workspace(workspace)
    info = _run_ingest(
        ws, source, path, prompt_format=prompt_format, splits=splits, skip_bad_images=skip_bad_images,
        overwrite=overwrite, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, layout=layout,
        questions=questions, annotations=annotations, image_root=image_root, split=split,
        decode_images=decode_images,
        duplicate_ids=duplicate_ids, image_pattern=image_pattern, follow_symlinks=follow_symlinks,
    )
    _print_ingest_summary(ws, info)


def _run_ingest(ws: Workspace, source: str, path: Path | None, **opt) -> dict:
    from datasets_spec.errors import UserError

    if source not in INGEST_SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of {', '.join(INGEST_SOURCES)}")
    needs_path = {"scienceqa": "the ScienceQA folder", "llava": "the LLaVA JSON file"}
    if source in needs_path and path is None:
        raise UserError(f"curate ingest {source}: give PATH ({needs_path[source]})")
    if source == "scienceqa":
        from curate.ingest import ingest_scienceqa

        split_list = [s.strip() for s in opt["splits"].split(",") if s.strip()] if opt["splits"] else None
        return ingest_scienceqa(ws, path, prompt_format=opt["prompt_format"], splits=split_list,
                                skip_bad_images=opt["skip_bad_images"], overwrite=opt["overwrite"],
                                follow_symlinks=opt["follow_symlinks"])
    if source == "synthetic":
        from curate.ingest import ingest_synthetic

        sizes = {k: opt[k] for k in ("n_train", "n_val", "n_test")}
        return ingest_synthetic(ws, seed=opt["seed"], **sizes, prompt_format=opt["prompt_format"],
                                layout=opt["layout"], overwrite=opt["overwrite"])
    if source == "llava":
        from curate.ingest_llava import ingest_llava

        return ingest_llava(ws, path, image_root=opt["image_root"], split=opt["split"],
                            skip_bad_images=opt["skip_bad_images"], overwrite=opt["overwrite"],
                            decode_images=opt["decode_images"], duplicate_ids=opt["duplicate_ids"],
                            follow_symlinks=opt["follow_symlinks"])
    from curate.ingest_vqa import ingest_vqa

    if opt["questions"] is None or opt["annotations"] is None:
        raise UserError("curate ingest vqa: give --questions and --annotations")
    return ingest_vqa(ws, opt["questions"], opt["annotations"], image_root=opt["image_root"],
                      split=opt["split"], skip_bad_images=opt["skip_bad_images"], overwrite=opt["overwrite"],
                      decode_images=opt["decode_images"], image_pattern=opt["image_pattern"],
                      follow_symlinks=opt["follow_symlinks"])


def _print_ingest_summary(ws: Workspace, info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dataset: {ws.dataset_dir}", show_header=False)
    splits = ", ".join(f"{k} {v}" for k, v in info.get("splits", {}).items())
    for key, value in (
        ("source", info.get("source")),
        ("rows", info.get("rows")),
        ("splits", splits),
        ("with image", info.get("image_rows")),
        ("skipped images", info.get("skipped_images", 0)),
        ("prompt format", info.get("prompt_format", "-")),
        ("fingerprint", str(info.get("fingerprint", ""))[:16]),
    ):
        table.add_row(key, str(value))
    Console().print(table)


@app.command()
@_locked("stats")
def stats(
    target: Path | None = typer.Argument(None, help="A subset directory (default: the workspace dataset)"),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON on stdout."),
    verify: bool = typer.Option(
        False, "--verify", help="First check every part against the hashes recorded when it was written."
    ),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """Counts by split/task/subject/topic/grade, image fraction, difficulty histogram, token lengths."""
    import json

    from curate.stats import resolve_target, stats_target

    ws = _workspace(workspace)
    if verify:
        from curate.check import verify_output

        checked = verify_output(resolve_target(ws, target)[1])
        typer.echo(f"verified {checked['files']} files ({checked['method']}): {checked['path']}", err=True)
    result = stats_target(ws, target)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        _print_stats(result)


def _print_stats(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(title=f"{result['kind']}: {result['target']}", show_header=False)
    tokens = result["n_tokens_est"]
    for key, value in (
        ("rows", result["rows"]),
        ("image fraction", f"{result['image_fraction']:.3f} ({result['image_rows']} rows)"),
        ("difficulty mean", f"{result['difficulty_mean']:.3f}"),
        ("tokens (est.)", f"min {tokens['min']}  median {tokens['median']:.0f}  p95 {tokens['p95']:.0f}  "
                          f"max {tokens['max']}  total {tokens['total']}"),
        ("fingerprint", str(result.get("fingerprint") or "")[:16]),
    ):
        head.add_row(key, str(value))
    console.print(head)
    for title in ("splits", "tasks", "subjects", "grades", "topics"):
        table = Table(title=title)
        table.add_column(title.rstrip("s"))
        table.add_column("rows", justify="right")
        for name, count in result[title].items():
            table.add_row(name, str(count))
        console.print(table)
    hist = Table(title="difficulty histogram")
    hist.add_column("bin")
    hist.add_column("rows", justify="right")
    edges = result["difficulty_histogram"]["edges"]
    for i, count in enumerate(result["difficulty_histogram"]["counts"]):
        hist.add_row(f"[{edges[i]:.1f}, {edges[i + 1]:.1f})", str(count))
    console.print(hist)


@app.command()
@_locked("export")
def export(
    target: Path | None = typer.Argument(None, help="A subset directory (default: the workspace dataset)"),
    fmt: str = typer.Option(..., "--format", help="llava-json | scienceqa"),
    out: Path = typer.Option(..., "--out", help="Output file (llava-json) or folder (scienceqa)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    workspace: Path | None = WorkspaceOption,
) -> None:
    """Write the dataset or a subset as LLaVA conversation JSON or as a ScienceQA folder."""
    from curate.export import export_target

    summary = export_target(_workspace(workspace), target, fmt=fmt, out=out, overwrite=overwrite)
    typer.echo(f"exported {summary['rows']} samples ({summary['format']}) to {summary['out']}")
    if summary.get("index"):
        typer.echo(f"index (ids, source positions, sha256): {summary['index']}")


@app.command()
@_locked("check")
def check(workspace: Path | None = WorkspaceOption) -> None:
    """Verify the dataset, embedding sets and subsets against the hashes recorded when they were written."""
    from curate.check import verify_workspace

    for item in verify_workspace(_workspace(workspace)):
        typer.echo(f"ok  {item['path']}  ({item['files']} files, {item['method']})")


# --- embed / select / rules -------------------------------------------------------------------------


@app.command()
@_locked("embed", writes_embeddings=True)
def embed(
    workspace: Path | None = WorkspaceOption,
    model: str = typer.Option(
        DEFAULT_CLIP_MODEL, help="open_clip model name (tiny-clip: bundled tiny test config); a text model: "
        "wordllama or st:<sentence-transformers directory>; a reference model: llava:runs/<run> (a run "
        "of this project / merged model) or lm:<dir or LLM preset> (text only); or grad:runs/<warm-up run> "
        "(per-sample LoRA gradients; docs/gradient-influence.md).",
    ),
    pretrained: str | None = typer.Option(
        None, show_default=False, help=f"open_clip weights (also --image-model's): a tag, a local checkpoint "
        f"file, or `none` for random weights (default: {DEFAULT_CLIP_PRETRAINED}).",
    ),
    fuse: str | None = typer.Option(
        None, show_default=False, help="Image+text -> one vector. open_clip: mean (default), image, text, "
        "concat; wordllama / st: text (default, no image model) or concat with --image-model's images.",
    ),
    image_model: str | None = typer.Option(
        None, show_default=False, help=f"wordllama / st: with --fuse concat, the open_clip model of the "
        f"images (default: {DEFAULT_CLIP_MODEL}).",
    ),
    batch_size: int | None = typer.Option(
        None, show_default=False, help=f"Samples per forward pass (default: open_clip {CLIP_BATCH_SIZE}, "
        f"wordllama {TEXT_BATCH_SIZE[WORDLLAMA]}, st: {TEXT_BATCH_SIZE[ST_PREFIX]}, llava:/lm: "
        f"{REFERENCE_BATCH_SIZE}).",
    ),
    device: str = typer.Option("auto", help="auto (cuda when present, fp16 there), cpu, cuda, cuda:N."),
    num_workers: int = typer.Option(2, help="DataLoader workers decoding images."),
    tag: str | None = typer.Option(None, help="Set name under embeddings/ (default: <model>_<pretrained>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing set with the same tag."),
    rows_per_part: int = typer.Option(
        EMBEDDING_ROWS_PER_PART, help="Rows per Parquet part (unit of resume and of torchrun)."
    ),
    seed: int = typer.Option(0, help="Seed for random weights (--pretrained none)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    dtype: str = typer.Option("float32", help="Stored vectors: float32 or float16 (half the bytes)."),
    layers: str = typer.Option("-1", help="llava:/lm: hidden-state layers to mean-pool, e.g. -1 or 4,8,-1."),
    max_length: int = typer.Option(4096, help="llava:/lm: a longer sample is an error."),
    grad: str = typer.Option("adam", help="grad: adam (saved-moment normalised, LESS) or sgd (targets)."),
    proj_dim: int = typer.Option(8192, help="grad: Rademacher projection dimension per checkpoint."),
) -> None:
    """Embed every sample (open_clip image + text, a text model, a reference model's hidden states, or a
    warm-up run's per-sample LoRA gradients with grad:runs/<run>) into embeddings/<tag>/; resumable,
    torchrun-sharded."""
    from curate.clip_model import check_embed_options
    from curate.embed_reference import embed_any

    check_embed_options(device=device, num_workers=num_workers)

    out = embed_any(
        _workspace(workspace), model=model, pretrained=pretrained, fuse=fuse, image_model=image_model,
        batch_size=batch_size, device=device, num_workers=num_workers, tag=tag, overwrite=overwrite,
        rows_per_part=rows_per_part, seed=seed, threads=threads, dtype=dtype, layers=layers,
        max_length=max_length, grad=grad, proj_dim=proj_dim,
    )
    typer.echo(str(out))


def _select(
    workspace: Path | None = WorkspaceOption,
    strategy: str = typer.Option(..., help="Strategy name (listed above with what each needs)."),
    k: int | None = typer.Option(None, "--k", help="Subset size."),
    fraction: float | None = typer.Option(None, help="Subset size as a fraction of the pool."),
    seed: int = typer.Option(0, help="Seed for every random choice."),
    split: str = typer.Option("train", help="Pool split (`all` for every split)."),
    require_image: bool = typer.Option(False, help="Pool only image-bearing samples."),
    dedup_eps: float | None = typer.Option(None, help="Drop near-duplicates (L2 below this) first."),
    min_score: list[str] = typer.Option([], "--min-score", help="NAME=X: pool only scores >= X (repeat)."),
    max_score: list[str] = typer.Option([], "--max-score", help="NAME=Y: pool only scores <= Y (repeat)."),
    name: str | None = typer.Option(None, help="Subset directory name (default: <strategy>-k<k>)."),
    embeddings: str | None = typer.Option(None, "--embeddings", help="Embedding set tag (default set)."),
    overwrite: bool = typer.Option(False, help="Replace an existing subset directory."),
    device: str = typer.Option("auto", help="l2-maxdiverse: auto (cuda, else cpu), cpu, cuda[:N], numpy."),
    memory_budget: float | None = typer.Option(
        None, "--memory-budget", help="l2-maxdiverse: GB one process may use (default: free RAM/GPU memory)."
    ),
    checkpoint_every: int = typer.Option(1000, help="l2-maxdiverse: picks between resumable checkpoints."),
    progress: bool = typer.Option(True, help="l2-maxdiverse: progress bar (picks/s, ETA) on stderr."),
    group_by: str | None = typer.Option(None, help="Run the strategy in each group of this column: subject, "
                                        "topic, category, skill, task, source (name gets -by-<col>)."),
    per_group: str | None = typer.Option(None, help="--group-by: proportional (default), equal or a JSON "
                                         "file {group: count}."),
    min_per_group: int | None = typer.Option(None, help="--group-by: at least min(N, size) from each group."),
    **strategy_options: object,
) -> None:
    from curate.diagnostics import diagnostics_line
    from curate.kcenter.select import KCenterOptions
    from curate.pool import parse_score_bounds
    from curate.select import select_subset

    given = {key: v for key, v in strategy_options.items() if v is not None and v is not False}
    out = select_subset(
        _workspace(workspace), strategy, k=k, fraction=fraction, seed=seed, split=split,
        require_image=require_image, dedup_eps=dedup_eps,
        min_scores=parse_score_bounds(min_score, "--min-score"),
        max_scores=parse_score_bounds(max_score, "--max-score"), name=name, embeddings_tag=embeddings,
        overwrite=overwrite, command=command_line(),
        kcenter=KCenterOptions(device=device, memory_budget_gb=memory_budget,
                               checkpoint_every=checkpoint_every, show_progress=progress),
        group_by=group_by, per_group=per_group, min_per_group=min_per_group, **given,
    )
    if rank() == 0:  # under torchrun rank 0 wrote the subset
        typer.echo(str(out))
        typer.echo(diagnostics_line(out), err=True)


def _with_strategy_options(fn):
    """``fn`` with one CLI option per registry option (curate/registry.py), so `--help` lists them."""
    import functools
    import inspect

    from curate.registry import REGISTRY, all_options

    base = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra, hints = [], {}
    for opt in all_options().values():
        users = ", ".join(r.name for r in REGISTRY.values() if opt.name in r.option_names)
        help_text = f"{opt.help} (strategies: {users})"
        if opt.type is bool:
            default, hint = typer.Option(False, opt.flag, help=help_text), bool
        else:
            default, hint = typer.Option(None, opt.flag, help=help_text), opt.type | None
        extra.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                       annotation=hint))
        hints[opt.name] = hint

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return fn(**kwargs)

    wrapper.__signature__ = inspect.Signature(
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in base] + extra
    )
    wrapper.__annotations__ = {**typing_hints(fn), **hints}
    wrapper.__doc__ = ("Select a subset with a strategy and write shards/<strategy>-k<k>/. l2-maxdiverse "
                       "shards over processes under `torchrun --nproc-per-node N -m curate.cli select ...` "
                       "and resumes from its checkpoints when rerun after a kill. Strategies: "
                       + _strategies_help())
    return wrapper


def typing_hints(fn) -> dict:
    import typing

    return {k: v for k, v in typing.get_type_hints(fn).items() if k != "strategy_options"}


def _strategies_help() -> str:
    from curate.registry import strategies_help

    return strategies_help()


app.command("select")(_locked("select")(_with_strategy_options(_select)))


@app.command()
@_locked("score")
def score(
    workspace: Path | None = WorkspaceOption,
    by: str = typer.Option(..., "--by", help="length | clip-sim | loss | ppl"),
    name: str | None = typer.Option(None, help="Set name under scores/ (default: <by>[_<source>])."),
    run: Path | None = typer.Option(None, help="loss/ppl: the run directory whose model scores the samples."),
    model: str = typer.Option(DEFAULT_CLIP_MODEL, help="clip-sim: open_clip model."),
    pretrained: str = typer.Option(
        DEFAULT_CLIP_PRETRAINED, help="clip-sim: open_clip tag, checkpoint, `none`."
    ),
    batch_size: int = typer.Option(8, help="Samples per forward pass."),
    max_length: int = typer.Option(2048, help="loss/ppl: longer samples get no score."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    overwrite: bool = typer.Option(False, help="Replace an existing score set."),
) -> None:
    """Score every sample (length, CLIP similarity, loss or perplexity of a run) into scores/<name>/."""
    from curate.clip_model import check_device
    from curate.scores import score_workspace

    check_device(device)

    out = score_workspace(_workspace(workspace), by, name=name, run=run, model=model, pretrained=pretrained,
                          batch_size=batch_size, max_length=max_length, device=device, overwrite=overwrite,
                          command=command_line())
    typer.echo(str(out))


@app.command()
@_locked("rules")
def rules(
    workspace: Path | None = WorkspaceOption,
    k: int = typer.Option(..., "--k", help="Subset size."),
    min_per_subject: int = typer.Option(0, help="At least this many samples from every group in the pool."),
    group_by: str = typer.Option("subject", help="Group column: subject, topic, category or skill."),
    prefer: str = typer.Option("hard", help="Order by difficulty: hard, easy or none."),
    require_image: bool = typer.Option(False, help="Image-bearing samples first."),
    seed: int = typer.Option(0, help="Seed for tie-breaking."),
    split: str = typer.Option("train", help="Pool split (`all` for every split)."),
    name: str | None = typer.Option(None, help="Subset directory name (default: rules-k<k>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing subset directory."),
    min_score: list[str] = typer.Option([], "--min-score", help="NAME=X: keep scores >= X (repeatable)."),
    max_score: list[str] = typer.Option([], "--max-score", help="NAME=Y: keep scores <= Y (repeatable)."),
) -> None:
    """Select a subset by the curator's rules and write shards/rules-k<k>/: the same as `curate select
    --strategy rules` (--group-by here names the minimums' column, --require-image orders images first)."""
    from curate.diagnostics import diagnostics_line
    from curate.pool import parse_score_bounds
    from curate.select import rules_subset

    out = rules_subset(
        _workspace(workspace), k=k, min_per_group=min_per_subject, group_by=group_by, prefer=prefer,
        require_image=require_image, seed=seed, split=split, name=name, overwrite=overwrite,
        command=command_line(), min_scores=parse_score_bounds(min_score, "--min-score"),
        max_scores=parse_score_bounds(max_score, "--max-score"),
    )
    typer.echo(str(out))
    typer.echo(diagnostics_line(out), err=True)


def main() -> None:
    exit_on_user_error(app)()


if __name__ == "__main__":
    main()
