"""The end-to-end CPU demo: ``python -m train.demo --workspace demo-workspace`` (what ``make demo`` runs).

Planted synthetic ScienceQA-format data (duplicated and rare families, balanced test split) -> canonical
dataset -> WordLlama text + tiny-clip image features -> random subsets of 150 and 300 problems, the whole
600-problem pool, k-center at 150 (positive control) and random at 150 with another seed (negative
control) -> stage 1 and stage 2 of two tiny random backbones, every cell at the whole pool's compute ->
ScienceQA scoring -> table with paired statistics, control verdicts and plots. Every step is the library
function the CLI calls, and every step resumes: running the demo again reuses what exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from datasets_spec.errors import exit_on_user_error
from datasets_spec.workspace import resolve_workspace

# Sizes of the synthetic dataset: a 600-problem pool, so that every cell at the pool's compute (13 epochs of
# it, 1,950 steps) fits 11 trainings + 10 evaluations of all 300 test problems in about 15 minutes on 2
# CPU cores.
N_TRAIN = 600
N_VAL = 60
N_TEST = 300
# The planted layout: a pool in which a selector must help for a known reason (the positive control).
LAYOUT = "planted"
# QCM-EA: the reply states the solution in words, then the letter ("The big shape is red. The answer is A.").
# A tiny character-level model from random weights stays at chance with bare letters (QCM-A: 27% on the
# test split after 10 epochs of 1,200 problems), but learns copy-the-keyword-then-its-letter in a few epochs.
PROMPT_FORMAT = "QCM-EA"
EMBED_MODEL = "tiny-clip"
# Real text features (WordLlama ships its weights in its wheel) concatenated with the random tiny-clip image
# vectors: text alone cannot tell two pictures of one image family apart (their questions are the same).
TEXT_MODEL = "wordllama"
FEATURES_TAG = "wordllama-concat"


def run_demo(
    workspace: Path,
    *,
    grid_path: Path | None = None,
    seed: int = 0,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
    verbose: bool = False,
) -> dict:
    """Run every step of the demo in ``workspace``; return paths, the summary table and the wall time."""
    from curate.embed import embed_workspace
    from curate.embed_text import embed_text
    from curate.ingest import ingest_synthetic
    from train.ablation import load_grid, packaged_grid, run_ablation

    started = time.perf_counter()
    ws = resolve_workspace(workspace)
    ws.root.mkdir(parents=True, exist_ok=True)
    grid = load_grid(grid_path or packaged_grid("demo"))
    _step(
        "1/4 ingest: synthetic ScienceQA-format problems "
        f"({n_train} train / {n_val} val / {n_test} test, {PROMPT_FORMAT})"
    )
    ingest_synthetic(ws, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, prompt_format=PROMPT_FORMAT,
                     layout=LAYOUT)
    _step(f"2/4 embed: a random {EMBED_MODEL} (open_clip) set, and {TEXT_MODEL} text + {EMBED_MODEL} images")
    embed_workspace(ws, model=EMBED_MODEL, pretrained="none", batch_size=64, show_progress=False)
    embed_text(ws, model=TEXT_MODEL, fuse="concat", image_model=EMBED_MODEL, pretrained="none",
               tag=FEATURES_TAG, show_progress=False)
    _step("3/4 ablation: subsets -> stage 1 -> stage 2 -> ScienceQA evaluation, per backbone")
    # One cell per core: the tiny models use one thread each, so two cores train two cells at once.
    jobs = max(1, min(2, os.cpu_count() or 1))
    report = run_ablation(ws, grid, command=" ".join(["python -m train.demo", *sys.argv[1:]]), jobs=jobs,
                          verbose=verbose)
    _step("4/4 results")
    return {"workspace": ws.root, "report": report, "elapsed": time.perf_counter() - started}


def _step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def _signal_check(report_dir: Path) -> list[str]:
    """Lines saying whether each backbone's `full` row clears twice chance, whether `random` rises with the
    budget, and what the verdicts found."""
    import json

    import polars as pl

    from train.ablation import FULL

    info = json.loads((report_dir / "ablation.json").read_text())
    chance = info.get("chance")
    summary = pl.read_csv(report_dir / "ablation.csv")
    full = summary.filter(pl.col("strategy") == FULL)
    if chance is None or full.height == 0:
        return ["signal check: no full-data row or no chance estimate"]
    parts = [
        f"{r['llm']} {r['acc_mean']:.2f}% ({r['acc_mean'] / chance:.2f}x)" for r in full.iter_rows(named=True)
    ]
    ok = all(r["acc_mean"] >= 2 * chance for r in full.iter_rows(named=True))
    verdict = "clears" if ok else "does NOT clear"
    lines = [f"signal check: full data {', '.join(parts)} vs chance {chance:.2f}%: {verdict} twice chance"]
    for llm in summary["llm"].unique(maintain_order=True):
        # the budget curve: random at each k, then the whole pool, at equal compute
        curve = summary.filter(((pl.col("strategy") == "random") | (pl.col("strategy") == FULL))
                               & (pl.col("llm") == llm)).sort("k")
        if curve.height > 1:
            accs = curve["acc_mean"].to_list()
            rises = all(b > a for a, b in zip(accs, accs[1:], strict=False))
            points = " -> ".join(f"{a:.2f}% (k={k})" for a, k in zip(accs, curve["k"], strict=True))
            verdict = "rises" if rises else "does NOT rise"
            lines.append(f"budget check: random then full, {llm}: {points}: {verdict}")
    md = (report_dir / "ablation.md").read_text().rstrip().splitlines()
    lines += [line[2:] for line in md if line.startswith(("- positive control:", "- negative control:"))]
    if md and ("significant" in md[-1] or md[-1].startswith("No comparisons")):
        lines.append(f"verdicts: {md[-1]}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", "-w", type=Path, default=Path("demo-workspace"))
    parser.add_argument(
        "--grid", type=Path, default=None, help="Grid TOML (default: the packaged demo grid)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data.")
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--n-val", type=int, default=N_VAL)
    parser.add_argument("--n-test", type=int, default=N_TEST)
    parser.add_argument("--verbose", action="store_true",
                        help="Each cell's training and evaluation messages and the trainer's log lines.")
    args = parser.parse_args(argv)
    # The demo never downloads anything: tiny models are built from configs.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        from train.trainer import CONSOLE_LOGS_ENV

        os.environ.setdefault(CONSOLE_LOGS_ENV, "0")  # reaches the spawned cell workers
        import torch

        if not torch.cuda.is_available():
            # DeepSpeed (imported by transformers) warns that it found no GPU unless told the device.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not os.environ.get("OMP_NUM_THREADS"):  # unset or empty: choose for the user
        import torch

        # One intra-op thread: the tiny models are too small to gain from two, and on a 2-core machine a
        # second busy process (DataLoader workers, anything else) makes two spinning OpenMP threads up to
        # 25x slower (measured: 256x256 matmuls, 0.8 s with one thread vs 21 s with two next to a busy core).
        torch.set_num_threads(1)
    result = run_demo(
        args.workspace,
        grid_path=args.grid,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        verbose=args.verbose,
    )
    reports = result["report"].parent
    print(result["report"].read_text())
    print("\n".join(_signal_check(reports)))
    print(f"\ntable:     {result['report']}\n           {reports / 'ablation.csv'}")
    for png in sorted(reports.glob("*.png")):
        print(f"plot:      {png}")
    print(
        f"runs:      {result['workspace'] / 'runs'}  (config, checkpoints, metrics.json, predictions.jsonl)"
    )
    print(f"subsets:   {result['workspace'] / 'shards'}  (Parquet parts + manifest.json)")
    print(f"notebook:  ABLATION_WORKSPACE={result['workspace']} jupyter notebook notebooks/ablation.ipynb")
    print(f"wall time: {result['elapsed'] / 60:.1f} min")


if __name__ == "__main__":
    exit_on_user_error(main)()
