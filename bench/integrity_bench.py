"""Cost of the integrity guards, each against the unguarded read in the same run.

1. Verified reads: ``read_verified_parts`` (read every part, then sha256 every file against the hashes
   its record holds) vs plain ``read_parts``, on a synthetic canonical dataset written as Parquet parts.
2. Bounded JSON: ijson over a LLaVA-style file through ``GuardedJsonFile`` vs ijson on the raw file.
3. The hostile file: ``'[' * 100000 + ']' * 100000`` (200 KB) refused by the guard; time and peak
   traced memory (goal: < 1 s, < 100 MB; unguarded, ijson needs tens of GB for it).

Run: `.venv/bin/python bench/integrity_bench.py [--rows 200000]`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ijson  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from datasets_spec.errors import UserError  # noqa: E402
from datasets_spec.parts import part_hashes, read_parts, read_verified_parts, write_parts  # noqa: E402
from datasets_spec.safe_json import GuardedJsonFile, check_json_bytes  # noqa: E402
from datasets_spec.synthetic import generate_synthetic_scienceqa  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_parts(rows: int, root: Path) -> None:
    from datasets_spec.scienceqa import load_scienceqa

    source = root / "src"
    # A 2,000-row synthetic dataset repeated: the bytes, not the uniqueness of ids, decide read costs.
    generate_synthetic_scienceqa(source, seed=0, n_train=2000, n_val=0, n_test=0)
    base = load_scienceqa(source, prompt_format="QCM-A", source="synthetic").table
    table = pa.concat_tables([base] * max(1, rows // base.num_rows))
    # Distinct ids and a random word per question, so the parts do not compress to nothing.
    rng = np.random.default_rng(0)
    noise = pa.array([f" {word:016x}" for word in rng.integers(0, 2**63, table.num_rows)])
    question = pc.binary_join_element_wise(pc.fill_null(table.column("question"), ""), noise, "")
    table = table.set_column(table.schema.get_field_index("question"), "question", question)
    ids = pa.array([f"s{i}" for i in range(table.num_rows)])
    table = table.set_column(table.schema.get_field_index("sample_id"), "sample_id", ids)
    out = root / "parts"
    write_parts(table, out, rows_per_part=max(1, rows // 8))
    record = {"part_hashes": part_hashes(out)}
    size = sum(p.stat().st_size for p in out.glob("*.parquet")) / 1e6
    plain = best_of(lambda: read_parts(out))
    verified = best_of(lambda: read_verified_parts(out, record, "dataset.json"))
    print(f"parts: {table.num_rows} rows, {size:.1f} MB in {len(record['part_hashes'])} files: read "
          f"{plain:.3f} s, verified read {verified:.3f} s (x{verified / plain:.2f})")


def bench_json(samples: int) -> None:
    turns = [{"from": "human", "value": "<image>\nWhat is shown in the picture? " * 4},
             {"from": "gpt", "value": "A cat sitting on a mat, next to a \"red\" ball.\n" * 6}]
    data = json.dumps([{"id": str(i), "image": f"coco/{i:012d}.jpg", "conversations": turns}
                       for i in range(samples)]).encode()

    def parse(guarded: bool) -> None:
        fh = io.BytesIO(data)
        for _ in ijson.items(GuardedJsonFile(fh, "x") if guarded else fh, "item", use_float=True):
            pass

    plain = best_of(lambda: parse(False))
    guarded = best_of(lambda: parse(True))
    print(f"json: {len(data) / 1e6:.1f} MB LLaVA-style: ijson {plain:.3f} s, guarded {guarded:.3f} s "
          f"(x{guarded / plain:.2f}; {len(data) / 1e6 / max(guarded - plain, 1e-9):.0f} MB/s of scanning)")


def bench_deep() -> None:
    data = ("[" * 100_000 + "]" * 100_000).encode()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        check_json_bytes(data, "deep.json")
        refused = False
    except UserError:
        refused = True
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    print(f"deep file (200 KB, 100,000 levels): refused={refused} in {seconds:.4f} s, peak {peak:.1f} MB "
          "traced (goal < 1 s, < 100 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_parts(args.rows, Path(tmp))
    bench_json(args.samples)
    bench_deep()


if __name__ == "__main__":
    main()
