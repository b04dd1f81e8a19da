"""Time and peak memory of streaming LLaVA-JSON ingest vs. a plain ``json.load`` of the same file.

Generates a mix665k-sized file (665,298 samples, ~6% text-only, multi-turn, about 1 GB) unless one is
given, then runs each side in its own child process so peak RSS (``ru_maxrss``) is not shared:

    python bench/ingest_bench.py                 # full size, in a temporary directory
    python bench/ingest_bench.py --n 20000       # quick run

The baseline only parses the file (what any non-streaming loader must do first); the streaming side does
the whole ingest (parse, validate, difficulty, fingerprint, Parquet parts).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIX665K_SAMPLES = 665_298
TEXT_ONLY_FRACTION = 40_688 / 665_298  # share of text-only samples in llava_v1_5_mix665k.json
WORDS = (
    "the a of to and in is on with what color how many image person left right table red blue green "
    "describe detail scene picture shows two three near behind front large small white black bus cat "
    "dog man woman street sign building window tree sky answer question why because there are"
).split()


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` LLaVA-format samples; sizes follow mix665k's shape (~1.5 KB per sample)."""
    rng = np.random.default_rng(seed)
    blob = " ".join(rng.choice(WORDS, size=2_000_000))
    with path.open("w") as fh:
        fh.write("[")
        for i in range(n):
            n_rounds = int(min(10, rng.geometric(0.45)))
            turns = []
            for _round in range(n_rounds):
                q = _text(rng, blob, 30, 260)
                a = _text(rng, blob, 5, 1800 if n_rounds == 1 else 420)
                turns.append({"from": "human", "value": q})
                turns.append({"from": "gpt", "value": a})
            sample: dict = {"id": i if i % 97 == 0 else f"{i:012d}"}
            if rng.random() >= TEXT_ONLY_FRACTION:
                sample["image"] = f"coco/train2017/{i:012d}.jpg"
                turns[0]["value"] = "<image>\n" + turns[0]["value"]
            sample["conversations"] = turns
            fh.write(("," if i else "") + "\n" + json.dumps(sample))
        fh.write("\n]\n")


def _text(rng: np.random.Generator, blob: str, lo: int, hi: int) -> str:
    length = int(rng.integers(lo, hi))
    start = int(rng.integers(0, len(blob) - length))
    return blob[start : start + length].strip() or "ok"


def child(kind: str, path: Path, workspace: Path) -> None:
    start = time.perf_counter()
    if kind == "json_load":
        with path.open() as fh:
            data = json.load(fh)
        rows = len(data)
    else:
        from curate.ingest_llava import ingest_llava
        from datasets_spec.workspace import Workspace

        rows = ingest_llava(Workspace(workspace), path, overwrite=True)["rows"]
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds too: wall time on a shared machine also counts other processes' load.
    cpu = usage.ru_utime + usage.ru_stime
    report = {"kind": kind, "rows": rows, "seconds": seconds, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(report))


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork+exec, so a child would report the (larger) generator's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(kind: str, path: Path, workspace: Path, script: str = __file__) -> dict:
    """Run ``script --child kind`` in its own process (its own peak RSS); the JSON report it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--child", kind, "--file", str(path), "--workspace", str(workspace)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=MIX665K_SAMPLES, help="samples to generate")
    parser.add_argument("--file", type=Path, help="use this LLaVA JSON instead of generating one")
    parser.add_argument("--workspace", type=Path, help="workspace for the streaming ingest")
    parser.add_argument("--child", choices=["json_load", "streaming"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.workspace)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "llava_bench.json"
        if args.file is None:
            t0 = time.perf_counter()
            generate(path, args.n)
            size_gb = path.stat().st_size / 1e9
            print(f"generated {args.n} samples, {size_gb:.2f} GB in {time.perf_counter() - t0:.0f} s")
        workspace = args.workspace or Path(tmp) / "ws"
        base = run_child("json_load", path, workspace)
        ours = run_child("streaming", path, workspace)
        for r in (base, ours):
            peak = r["peak_rss_mb"]
            print(
                f"{r['kind']:>10}: {r['rows']} rows, {r['seconds']:.1f} s ({r['cpu_s']:.1f} s CPU), "
                f"peak RSS {peak:.0f} MB"
            )
        print(
            f"streaming / json.load: time x{ours['seconds'] / base['seconds']:.2f} "
            f"(CPU x{ours['cpu_s'] / base['cpu_s']:.2f}), "
            f"peak memory x{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
