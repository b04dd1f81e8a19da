"""The synthetic ScienceQA generator: determinism, exact layout, and answers that follow the content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from datasets_spec.synthetic import family_of, generate_synthetic_scienceqa
from datasets_spec.synthetic_families import BAR, COLOR_NAMES, COLORS, FAMILIES, SEA

SCIENCEQA_FIELDS = {
    "question", "choices", "answer", "hint", "image", "task", "grade", "subject", "topic", "category",
    "skill", "lecture", "solution", "split",
}
SIZES = {"n_train": 120, "n_val": 30, "n_test": 40}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_synthetic_scienceqa(tmp_path_factory.mktemp("syn") / "sqa", seed=0, **SIZES)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(generated: Path, tmp_path: Path) -> None:
    again = generate_synthetic_scienceqa(tmp_path / "again", seed=0, **SIZES)
    assert _files(generated) == _files(again)


def test_other_seed_gives_other_problems(generated: Path, tmp_path: Path) -> None:
    other = generate_synthetic_scienceqa(tmp_path / "other", seed=1, **SIZES)
    assert (other / "problems.json").read_bytes() != (generated / "problems.json").read_bytes()


def test_layout_is_scienceqa(generated: Path) -> None:
    problems = json.loads((generated / "problems.json").read_text())
    splits = json.loads((generated / "pid_splits.json").read_text())
    assert set(splits) == {"train", "val", "test", "trainval", "minitrain", "minival", "minitest"}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [120, 30, 40]
    assert splits["trainval"] == splits["train"] + splits["val"]
    for s in ("train", "val", "test"):
        assert set(splits[f"mini{s}"]) <= set(splits[s]) and splits[f"mini{s}"]
        assert all(problems[pid]["split"] == s for pid in splits[s])
    assert len(problems) == 190
    image_paths = {str(p.relative_to(generated)) for p in (generated / "images").rglob("*.png")}
    for pid, p in problems.items():
        assert set(p) == SCIENCEQA_FIELDS
        assert p["grade"] in {f"grade{g}" for g in range(1, 13)}
        assert p["subject"] in {"natural science", "social science", "language science"}
        assert 0 <= p["answer"] < len(p["choices"]) and 3 <= len(p["choices"]) <= 5
        has = f"images/{p['split']}/{pid}/image.png" in image_paths
        assert has == (p["image"] == "image.png")
        # Short text: the language model reads characters.
        assert len(p["question"]) + len(p["hint"]) + len(" ".join(p["choices"])) < 150
    assert len(image_paths) == sum(p["image"] is not None for p in problems.values())
    assert 0.35 < len(image_paths) / len(problems) < 0.65
    assert {family_of(p) for p in problems.values()} == {f.name for f in FAMILIES}
    # JSON written with sorted keys, so the bytes do not depend on dict insertion order.
    text = (generated / "problems.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_option_order_is_canonical_per_family(generated: Path) -> None:
    problems = json.loads((generated / "problems.json").read_text())
    by_family: dict[str, set[tuple[str, ...]]] = {}
    for p in problems.values():
        by_family.setdefault(family_of(p), set()).add(tuple(p["choices"]))
    assert all(len(orders) == 1 for orders in by_family.values()), by_family


def _pixels(root: Path, pid: str, p: dict) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / p["split"] / pid / "image.png").convert("RGB")).astype(int)


def _mask(img: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(img - np.array(rgb)).sum(axis=-1) < 30)


def test_image_answers_follow_the_picture(generated: Path) -> None:
    """Recompute each image family's answer from the pixels alone (a brute-force reference)."""
    problems = json.loads((generated / "problems.json").read_text())
    checked = set()
    for pid, p in problems.items():
        if p["image"] is None:
            continue
        fam, img = family_of(p), _pixels(generated, pid, p)
        if fam == "color":
            got = int(np.argmax([_mask(img, COLORS[c]).sum() for c in COLOR_NAMES]))
        elif fam == "count":
            got = ndimage.label(_mask(img, (0, 0, 0)))[1] - 1
        elif fam == "position":
            ys, xs = np.nonzero(_mask(img, COLORS["red"]))
            dx, dy = xs.mean() / img.shape[1] - 0.5, ys.mean() / img.shape[0] - 0.5
            got = (0 if dx < 0 else 1) if abs(dx) > abs(dy) else (2 if dy < 0 else 3)
        elif fam == "bars":
            cols = _mask(img, BAR).sum(axis=0)
            got = int(np.argmax([cols[i * 16:(i + 1) * 16].max() for i in range(4)]))
        elif fam == "map_north":
            tops = [np.nonzero(_mask(img, COLORS[c]).any(axis=1))[0].min() for c in COLOR_NAMES]
            got = int(np.argmin(tops))
            assert not _mask(img, SEA).all()
        else:
            continue
        assert got == p["answer"], (pid, fam)
        checked.add(fam)
    assert checked == {"color", "count", "position", "bars", "map_north"}


def test_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_scienceqa(tmp_path / "x", n_train=-1)
    with pytest.raises(ValueError):
        generate_synthetic_scienceqa(tmp_path / "y", image_size=8)


def test_shared_fixture_holds_an_ingested_dataset(synthetic_workspace) -> None:
    info = synthetic_workspace.dataset_info()
    assert info["source"] == "synthetic" and info["rows"] == 190
    assert info["splits"] == {"test": 40, "train": 120, "val": 30}
    table = synthetic_workspace.read_dataset(columns=["image", "conversations"])
    row = next(r for r in table.to_pylist() if r["image"])
    assert (synthetic_workspace.image_root() / row["image"]).is_file()
    assert row["conversations"][1]["value"].startswith("The answer is ")
