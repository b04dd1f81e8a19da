"""LLaVA conversation JSON: streaming loader, ingest, bad inputs through the CLI, export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from curate.cli import app
from curate.ingest_llava import ingest_llava
from datasets_spec.errors import UserError
from datasets_spec.fingerprint import table_fingerprint
from datasets_spec.llava_json import LlavaJsonReader
from datasets_spec.workspace import Workspace
from tests.cli_helpers import run_app

SAMPLES = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    },
    {
        "id": 17,
        "conversations": [
            {"from": "human", "value": "Write a haiku about rain."},
            {"from": "gpt", "value": "Soft rain on the roof"},
        ],
    },
    {
        "id": "GCC_train_002582585",
        "image": "00258/002582585.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nProvide a brief description of the given image."},
            {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."},
        ],
    },
]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def make_images(root: Path, samples: list[dict]) -> Path:
    for s in samples:
        if "image" in s:
            (root / s["image"]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(root / s["image"])
    return root


def many_samples(n: int) -> list[dict]:
    out = []
    for i in range(n):
        s = {
            "id": f"s{i:05d}",
            "conversations": [
                {"from": "human", "value": f"question {i} " + "x" * (i % 50)},
                {"from": "gpt", "value": f"answer {i}"},
            ],
        }
        if i % 3:
            s["image"] = f"img/{i}.jpg"
            s["conversations"][0]["value"] = "<image>\n" + s["conversations"][0]["value"]
        out.append(s)
    return out


def cli(args: list[str]) -> tuple[int, str]:
    """Run `curate ARGS` as the console script does; return (exit code, stderr)."""
    return run_app(app, args)


def test_streaming_batches_match_single_read(tmp_path):
    data = many_samples(1000)
    path = write_json(tmp_path / "big.json", data)
    reader = LlavaJsonReader(path, batch_size=128)
    batches = list(reader.batches())
    assert [b.num_rows for b in batches] == [128] * 7 + [104]
    whole = pa.concat_tables(batches)
    assert whole.column("sample_id").to_pylist() == [s["id"] for s in data]
    one = pa.concat_tables(list(LlavaJsonReader(path, batch_size=10_000).batches()))
    assert table_fingerprint(one) == table_fingerprint(whole)
    assert whole.column("image").null_count == 334


def test_streaming_writer_fingerprint_and_parts_equal_whole_table(tmp_path):
    from curate import dataset_store

    data = many_samples(700)
    path = write_json(tmp_path / "d.json", data)
    ws = Workspace(tmp_path / "ws")
    reader = LlavaJsonReader(path, batch_size=97)
    info = dataset_store.write_dataset_batches(
        ws, reader.batches(), source="llava", source_paths={}, image_root=None, where="x", rows_per_part=250
    )
    table = ws.read_dataset()
    assert (
        info["fingerprint"]
        == table_fingerprint(table)
        == table_fingerprint(table.take(list(range(699, -1, -1))))
    )
    assert sorted(p.name for p in ws.dataset_dir.glob("part-*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert info["rows"] == 700 and info["splits"] == {"train": 700}


def test_ingest_and_export_reproduce_input_exactly(tmp_path):
    src = write_json(tmp_path / "llava.json", SAMPLES)
    root = make_images(tmp_path / "images", SAMPLES)
    ws = Workspace(tmp_path / "ws")
    info = ingest_llava(ws, src, image_root=root)
    assert info["rows"] == 3 and info["image_rows"] == 2 and info["skipped_images"] == 0
    table = ws.read_dataset()
    assert table.column("sample_id").to_pylist() == ["000000033471", "17", "GCC_train_002582585"]
    assert all(0 <= d <= 1 for d in table.column("difficulty").to_pylist())
    assert ingest_llava(ws, src, image_root=root)["fingerprint"] == info["fingerprint"]  # idempotent
    code, err = cli(
        ["export", "--format", "llava-json", "--out", str(tmp_path / "out.json"), "-w", str(ws.root)]
    )
    assert code == 0, err
    exported = json.loads((tmp_path / "out.json").read_text())
    assert exported == SAMPLES
    assert [list(item) for item in exported] == [
        list(s) for s in SAMPLES
    ]  # key order id, image, conversations
    assert isinstance(exported[1]["id"], int)


def test_duplicate_ids_suffix_round_trip(tmp_path):
    data = [SAMPLES[1], {**SAMPLES[1], "conversations": [{"from": "human", "value": "again"}]}, SAMPLES[1]]
    src = write_json(tmp_path / "dup.json", data)
    ws = Workspace(tmp_path / "ws")
    ingest_llava(ws, src, duplicate_ids="suffix")
    assert ws.read_dataset().column("sample_id").to_pylist() == ["17", "17#2", "17#3"]
    code, err = cli(
        ["export", "--format", "llava-json", "--out", str(tmp_path / "o.json"), "-w", str(ws.root)]
    )
    assert code == 0, err
    assert json.loads((tmp_path / "o.json").read_text()) == data


def test_missing_image_skipped_and_counted(tmp_path):
    src = write_json(tmp_path / "llava.json", SAMPLES)
    root = make_images(tmp_path / "images", SAMPLES[:1])
    ws = Workspace(tmp_path / "ws")
    info = ingest_llava(ws, src, image_root=root, skip_bad_images=True)
    assert info["rows"] == 2 and info["skipped_images"] == 1
    assert json.loads((ws.dataset_dir / "dataset.json").read_text())["skipped_images"] == 1


def test_undecodable_image_only_checked_when_decoding(tmp_path):
    src = write_json(tmp_path / "llava.json", SAMPLES)
    root = make_images(tmp_path / "images", SAMPLES)
    (root / SAMPLES[2]["image"]).write_bytes(b"not a jpeg")
    ingest_llava(Workspace(tmp_path / "a"), src, image_root=root)
    with pytest.raises(UserError, match="GCC_train_002582585.*does not decode"):
        ingest_llava(Workspace(tmp_path / "b"), src, image_root=root, decode_images=True)
    assert not (tmp_path / "b" / "dataset").exists()


def bad_cases(tmp_path: Path) -> dict[str, tuple[object, str]]:
    """name -> (file content, expected message fragment)."""
    good = json.dumps(SAMPLES)
    bad_at = good.index('}, {"id": 17') + 2  # the '{' where a ',' should be
    img_twice = {
        "id": "x",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "y"}],
    }
    no_token = {"id": "x", "image": "a.jpg", "conversations": [{"from": "human", "value": "hi"}]}
    token_in_gpt = {
        "id": "x",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<image>"}],
    }
    text_token = {"id": "x", "conversations": [{"from": "human", "value": "<image> hi"}]}
    return {
        "truncated": (good[:150], "truncated JSON at byte 150"),
        "malformed": (good.replace('}, {"id": 17', '} {"id": 17'), f"malformed JSON at byte {bad_at}:"),
        "not a list": ('{"a": 1}', "expected a JSON list"),
        "empty list": ("[]", "empty (0 samples)"),
        "duplicate": (json.dumps([SAMPLES[0], SAMPLES[0]]), "duplicate id '000000033471' at item #1"),
        "missing id": (json.dumps([{"conversations": []}]), "item #0: missing 'id'"),
        "missing conversations": (json.dumps([{"id": "q"}]), "item #0 (id 'q'): missing 'conversations'"),
        "bad turn": (json.dumps([{"id": "q", "conversations": [{"from": "human"}]}]), "sample 'q': turn 0"),
        "image twice": (json.dumps([img_twice]), "sample 'x': an image sample needs <image> exactly once"),
        "no image token": (json.dumps([no_token]), "sample 'x': an image sample needs <image>"),
        "token in gpt turn": (json.dumps([token_in_gpt]), "sample 'x': an image sample needs <image>"),
        "token in text-only": (json.dumps([text_token]), "sample 'x': text-only sample"),
        "absolute image": (json.dumps([{**SAMPLES[2], "image": "/etc/x.jpg"}]), "is absolute"),
        "escaping image": (json.dumps([{**SAMPLES[2], "image": "../x.jpg"}]), "escapes the image root"),
    }


@pytest.mark.parametrize("case", list(bad_cases(Path("."))))
def test_bad_input_via_cli(tmp_path, case):
    content, fragment = bad_cases(tmp_path)[case]
    src = tmp_path / "bad.json"
    src.write_text(content)
    ws = tmp_path / "ws"
    code, err = cli(["ingest", "llava", str(src), "-w", str(ws)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0] and (str(src) in lines[0] or case == "empty list")
    assert not (ws / "dataset").exists()
    assert not list(ws.glob(".dataset*")) if ws.exists() else True


def test_missing_image_via_cli_names_sample(tmp_path):
    src = write_json(tmp_path / "llava.json", SAMPLES)
    root = make_images(tmp_path / "images", SAMPLES[:1])
    code, err = cli(["ingest", "llava", str(src), "--image-root", str(root), "-w", str(tmp_path / "ws")])
    assert code == 2
    assert "sample 'GCC_train_002582585': image '00258/002582585.jpg' not found" in err
    assert not (tmp_path / "ws" / "dataset").exists()


def test_existing_different_dataset_refused_unless_overwrite(tmp_path):
    ws = tmp_path / "ws"
    first = write_json(tmp_path / "a.json", SAMPLES[1:2])
    second = write_json(tmp_path / "b.json", SAMPLES[1:2] + [{**SAMPLES[1], "id": "other"}])
    assert cli(["ingest", "llava", str(first), "-w", str(ws)])[0] == 0
    before = (ws / "dataset" / "dataset.json").read_text()
    code, err = cli(["ingest", "llava", str(second), "-w", str(ws)])
    assert code == 2 and "already holds a different dataset" in err
    assert (ws / "dataset" / "dataset.json").read_text() == before
    assert cli(["ingest", "llava", str(second), "-w", str(ws), "--overwrite"])[0] == 0
    assert json.loads((ws / "dataset" / "dataset.json").read_text())["rows"] == 2


def varied_samples() -> list[dict]:
    """Valid samples exercising the per-item fast path and its hand-offs to the checked path."""
    data = many_samples(300)
    data[5]["id"] = 5  # integer id
    data[6]["model"] = "gpt-4"  # ignored key
    data[0] = {**data[0], "image": None}  # explicit null image = text-only
    data[8]["conversations"][0]["extra"] = 1  # extra turn key, dropped
    data[9]["conversations"][1]["value"] = 'quote " back \\ tab \t ctrl \x01 é 漢 😀 \u2028'
    data[10]["conversations"][0]["value"] = "  <image>\n  padded  "
    data[11]["image"] = "dir/a:b.jpg"  # ':' takes the checked path but is a valid relative path
    data[12]["conversations"] = [{"from": "gpt", "value": "no human"}] + data[12]["conversations"]
    data.append({**data[3]})  # repeated id, kept as <id>#2
    return data


def test_fast_path_matches_checked_path(tmp_path, monkeypatch):
    from datasets_spec.parts import hash_parts

    src = write_json(tmp_path / "v.json", varied_samples())
    fast = ingest_llava(Workspace(tmp_path / "fast"), src, duplicate_ids="suffix")
    monkeypatch.setattr(LlavaJsonReader, "_add_fast", LlavaJsonReader._add)
    slow = ingest_llava(Workspace(tmp_path / "slow"), src, duplicate_ids="suffix")
    for info in (fast, slow):
        info.pop("created_at")
    assert fast == slow and fast["ignored_keys"] == {"model": 1} and fast["rows"] == 301
    assert hash_parts(tmp_path / "fast" / "dataset") == hash_parts(tmp_path / "slow" / "dataset")
    side = [(tmp_path / d / "dataset" / "original_ids.parquet").read_bytes() for d in ("fast", "slow")]
    assert side[0] == side[1]
    # The whole file as one table, fingerprinted at once, agrees with the streamed fingerprint.
    whole = pa.concat_tables(list(LlavaJsonReader(src, duplicate_ids="suffix").batches()))
    assert table_fingerprint(whole) == fast["fingerprint"]


def test_row_digests_match_json_dumps_reference():
    from datasets_spec.fingerprint import row_digests, row_digests_reference
    from datasets_spec.schema import rows_to_table

    turns = [{"from": "human", "value": 'a "b" \\ \n\r\t\b\f \x00 \x1f é 😀'}, {"from": "gpt", "value": ""}]
    rows = [
        {"sample_id": "q\"1", "source": "sqa", "split": "train", "conversations": turns, "difficulty": 0.1,
         "n_tokens_est": 3, "choices": ["x", "", 'y"'], "answer": 2, "grade": 12, "context": "c\\"},
        {"sample_id": "2", "source": "s", "split": "val", "conversations": turns[1:], "difficulty": 1.0,
         "n_tokens_est": 0, "choices": [], "image": "i.png"},
        {"sample_id": "3", "source": "s", "split": "val", "conversations": turns, "difficulty": 0.0,
         "n_tokens_est": 7},
    ]
    table = rows_to_table(rows)
    for sliced in (table, table.slice(1), pa.concat_tables([table.slice(0, 1), table.slice(1)])):
        ids, digests = row_digests(sliced)
        ref_ids, ref_digests = row_digests_reference(sliced)
        assert ids.equals(ref_ids) and digests.equals(ref_digests)


def test_streaming_writer_reports_invalid_rows_like_validate_table(tmp_path):
    from curate import dataset_store
    from datasets_spec.schema import rows_to_table, validate_table

    bad = rows_to_table(
        [{"sample_id": "a", "source": "s", "split": "train", "image": "x.jpg", "difficulty": 0.5,
          "n_tokens_est": 1, "conversations": [{"from": "human", "value": "no token"}]}]
    )
    with pytest.raises(UserError) as expected:
        validate_table(bad, where="w")
    with pytest.raises(UserError) as got:
        dataset_store.write_dataset_batches(
            Workspace(tmp_path / "ws"), [bad], source="s", source_paths={}, image_root=None, where="w"
        )
    assert str(got.value) == str(expected.value)
