"""Ingest with task labelling of a LLaVA-1.5-mix-shaped JSON vs. a plain ``json.load`` of the same file.

Generates a file with every source of the 665K mix in its real proportions (the counts LLaVA published for
its mix, see datasets_spec/llava_tasks.py) and each source's instruction form, then runs, each in its own
child process so peak RSS is not shared:

* ``json_load``: parse the file (what any non-streaming loader must do first);
* ``label_only``: ``json.load`` + :func:`sample_task` over every record (the labelling's own cost);
* ``ingest``: ``curate ingest llava`` (parse, validate, difficulty, task, fingerprint, Parquet parts);
* ``ingest_no_task``: the same ingest with the labelling replaced by nulls (what labelling adds to it).

    python bench/llava_tasks_bench.py                 # 665,298 records
    python bench/llava_tasks_bench.py --n 100000      # scaled down, same proportions

It also checks that the labels counted after ingest equal the generated composition.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_bench  # noqa: E402
from ingest_bench import MIX665K_SAMPLES, WORDS, _text, peak_rss_mb  # noqa: E402

# Generated task -> count in the real mix; LLaVA-Instruct's 157,712 split 58:23:77 as its file names
# (conversation_58k, detail_23k, complex_reasoning_77k) say, since the mix does not mark them.
COMPOSITION = {
    "text_only": 40_688, "vqav2_okvqa": 82_783 + 8_998, "aokvqa": 66_160, "refcoco": 48_447,
    "vg_region": 86_417, "gqa": 72_140, "ocr_vqa": 80_000, "textcaps": 21_953,
    "llava_conversation": 57_894, "llava_detail": 22_958, "llava_reasoning": 76_860,
}
KINDS = ["json_load", "label_only", "ingest", "ingest_no_task"]
SHORT = "Answer the question using a single word or phrase."


def _record(task: str, i: int, rng: np.random.Generator, blob: str) -> dict:
    def q() -> str:
        return _text(rng, blob, 20, 120)

    def a(hi: int = 60) -> str:
        return _text(rng, blob, 2, hi)

    rounds = int(min(8, rng.geometric(0.3)))
    if task == "text_only":
        return {"id": f"sg{i}", "conversations": _pairs([(q(), a(1500)) for _ in range(rounds)])}
    if task in ("vqav2_okvqa", "gqa", "ocr_vqa"):
        folder = {"vqav2_okvqa": "coco/train2017", "gqa": "gqa/images", "ocr_vqa": "ocr_vqa/images"}[task]
        turns = [(f"{q()}\n{SHORT}", a(12)) for _ in range(rounds)]
    elif task == "aokvqa":
        folder, turns = "coco/train2017", [(f"{q()}\nA. x\nB. y\nC. z\nD. w\nAnswer with the option's "
                                            "letter from the given choices directly.", "B")]
    elif task in ("refcoco", "vg_region"):
        folder = "coco/train2017" if task == "refcoco" else "vg/VG_100K"
        turns = [("Please provide a short description for this region: [0.12, 0.3, 0.55, 0.91]", a(30))
                 if r % 2 else ("Please provide the bounding box coordinate of the region this sentence "
                                f"describes: {a(30)}", "[0.1, 0.22, 0.5, 0.7]") for r in range(rounds)]
    elif task == "textcaps":
        folder, turns = "textvqa/train_images", [("Provide a one-sentence caption for the provided image.",
                                                  a(80))]
    elif task == "llava_detail":
        folder, turns = "coco/train2017", [("Describe the following image in detail", a(1200))]
    elif task == "llava_conversation":
        folder, turns = "coco/train2017", [(q(), a(400)) for _ in range(max(2, rounds))]
    else:
        folder, turns = "coco/train2017", [(q(), a(1200))]
    conversations = _pairs(turns)
    conversations[0]["value"] = "<image>\n" + conversations[0]["value"]
    return {"id": f"{i:012d}", "image": f"{folder}/{i:012d}.jpg", "conversations": conversations}


def _pairs(turns: list[tuple[str, str]]) -> list[dict]:
    out = []
    for question, answer in turns:
        out += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return out


def composition(n: int) -> dict[str, int]:
    """The real mix's composition scaled to ``n`` records (largest remainders)."""
    total = sum(COMPOSITION.values())
    exact = {t: c * n / total for t, c in COMPOSITION.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(exact, key=lambda t: counts[t] - exact[t])[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def generate(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    blob = " ".join(rng.choice(WORDS, size=2_000_000))
    counts = composition(n)
    order = np.concatenate([np.full(c, k) for k, c in enumerate(counts.values())])
    rng.shuffle(order)
    names = list(counts)
    with path.open("w") as fh:
        fh.write("[")
        for i, k in enumerate(order):
            fh.write(("," if i else "") + "\n" + json.dumps(_record(names[k], i, rng, blob)))
        fh.write("\n]\n")
    return counts


def child(kind: str, path: Path, workspace: Path) -> None:
    start = time.perf_counter()
    tasks: dict[str, int] = {}
    if kind in ("json_load", "label_only"):
        with path.open() as fh:
            data = json.load(fh)
        rows = len(data)
        if kind == "label_only":
            from collections import Counter

            from datasets_spec.llava_tasks import sample_task

            label_start = time.perf_counter()
            tasks = dict(Counter(sample_task(r.get("image"), r["conversations"]) for r in data))
            tasks["(labelling seconds)"] = round(time.perf_counter() - label_start, 2)
    else:
        from curate.ingest_llava import ingest_llava
        from curate.stats import stats_target
        from datasets_spec.workspace import Workspace

        if kind == "ingest_no_task":
            import datasets_spec.llava_json as reader

            reader.sample_tasks = lambda images, _conversations: [None] * len(images)
        rows = ingest_llava(Workspace(workspace), path, overwrite=True)["rows"]
        seconds = time.perf_counter() - start
        tasks = stats_target(Workspace(workspace))["tasks"]
    seconds = seconds if kind.startswith("ingest") else time.perf_counter() - start
    print(json.dumps({"kind": kind, "rows": rows, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                      "tasks": tasks}))


def run_child(kind: str, path: Path, workspace: Path) -> dict:
    return ingest_bench.run_child(kind, path, workspace, script=__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=MIX665K_SAMPLES, help="records to generate")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.workspace)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path, workspace = Path(tmp) / "mix.json", Path(tmp) / "ws"
        t0 = time.perf_counter()
        expected = generate(path, args.n)
        print(f"generated {args.n} records, {path.stat().st_size / 1e9:.2f} GB in "
              f"{time.perf_counter() - t0:.0f} s")
        results = {kind: run_child(kind, path, workspace) for kind in KINDS}
        base = results["json_load"]
        for r in results.values():
            time_ratio, rss_ratio = r["seconds"] / base["seconds"], r["peak_rss_mb"] / base["peak_rss_mb"]
            print(f"{r['kind']:>14}: {r['rows']} rows, {r['seconds']:.1f} s (x{time_ratio:.2f} json.load), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (x{rss_ratio:.2f})")
        seconds = results["label_only"]["tasks"].pop("(labelling seconds)")
        share = results["ingest"]["seconds"] / results["ingest_no_task"]["seconds"]
        print(f"labelling alone: {seconds:.1f} s ({seconds / args.n * 1e6:.1f} us/record); ingest with "
              f"labelling / without: x{share:.2f}")
        for kind in ("label_only", "ingest"):
            same = results[kind]["tasks"] == expected
            print(f"{kind} task counts {'equal' if same else 'DIFFER FROM'} the generated composition")
            if not same:
                print(json.dumps({"expected": expected, "got": results[kind]["tasks"]}, sort_keys=True))


if __name__ == "__main__":
    main()
