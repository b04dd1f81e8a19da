"""The canonical sample (schema version 2): every source becomes rows of this Arrow schema.

Version 2 added ``task`` (the source task of a LLaVA-mix sample, see datasets_spec/llava_tasks.py; null for
sources that do not derive one). Columns added after version 1 are nullable and listed in
:data:`ADDED_COLUMNS`: parts written by version 1 read as if the column were null, and the content
fingerprint covers only :data:`FINGERPRINT_COLUMNS`, so a version-1 dataset keeps its fingerprint (and
the embeddings and subsets tied to it stay valid). ``task`` is a function of ``image`` and
``conversations``, which the fingerprint does cover; the rules' version is in dataset.json.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterable, Mapping

import pyarrow as pa

from datasets_spec.errors import UserError

SCHEMA_VERSION = 2

TURN_TYPE = pa.struct([("from", pa.string()), ("value", pa.string())])
CONVERSATIONS_TYPE = pa.list_(TURN_TYPE)
IMAGE_TOKEN = "<image>"

CANONICAL_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.string()),
        pa.field("conversations", CONVERSATIONS_TYPE, nullable=False),
        pa.field("question", pa.string()),
        pa.field("context", pa.string()),
        pa.field("lecture", pa.string()),
        pa.field("solution", pa.string()),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("answer", pa.int32()),
        pa.field("subject", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("category", pa.string()),
        pa.field("skill", pa.string()),
        pa.field("grade", pa.int8()),
        pa.field("difficulty", pa.float32(), nullable=False),
        pa.field("n_tokens_est", pa.int32(), nullable=False),
        pa.field("task", pa.string()),
    ]
)
COLUMNS = tuple(CANONICAL_SCHEMA.names)
# Column -> the schema version that added it; older parts lack it and read it as nulls.
ADDED_COLUMNS = {"task": 2}
FINGERPRINT_COLUMNS = tuple(c for c in COLUMNS if c not in ADDED_COLUMNS)
FINGERPRINT_SCHEMA = pa.schema([CANONICAL_SCHEMA.field(c) for c in FINGERPRINT_COLUMNS])
NON_NULL_COLUMNS = tuple(f.name for f in CANONICAL_SCHEMA if not f.nullable)


def rows_to_table(rows: Iterable[Mapping]) -> pa.Table:
    """Build a canonical table from row dicts; missing nullable fields become null."""
    rows = list(rows)
    columns = {name: [row.get(name) for row in rows] for name in COLUMNS}
    return pa.Table.from_pydict(columns, schema=CANONICAL_SCHEMA)


def with_added_columns(table: pa.Table, columns: list[str]) -> pa.Table:
    """``table``'s ``columns`` in that order, the :data:`ADDED_COLUMNS` it lacks (an older part) as nulls."""
    arrays = [
        table.column(name) if name in table.column_names
        else pa.nulls(table.num_rows, type=CANONICAL_SCHEMA.field(name).type)
        for name in columns
    ]
    return pa.Table.from_arrays(arrays, names=list(columns))


def validate_table(table: pa.Table, *, where: str = "table") -> None:
    """Raise :class:`UserError` (naming ``where`` and the sample) unless ``table`` is canonical.

    Checks: column names and types, non-null columns, unique sample ids, difficulty in [0, 1],
    grade in 1..12, answer inside choices, image paths relative and inside the root, and `<image>`
    exactly once in the first human turn of an image sample (and nowhere in a text-only one).
    """
    _check_columns(table, where)
    for name in NON_NULL_COLUMNS:
        if table.column(name).null_count:
            raise UserError(f"{where}: column {name!r} has null values")
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = _first_duplicate(ids)
        raise UserError(f"{where}: duplicate sample_id {dup!r}")
    for row in table.select(
        ["sample_id", "image", "conversations", "choices", "answer", "grade", "difficulty"]
    ).to_pylist():
        _check_row(row, where)


def _check_columns(table: pa.Table, where: str) -> None:
    if table.schema.names != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in table.schema.names]
        extra = [c for c in table.schema.names if c not in COLUMNS]
        raise UserError(
            f"{where}: columns differ from schema v{SCHEMA_VERSION} (missing {missing}, extra {extra})"
        )
    for field in CANONICAL_SCHEMA:
        got = table.schema.field(field.name).type
        if not got.equals(field.type):
            raise UserError(f"{where}: column {field.name!r} has type {got}, expected {field.type}")


def _first_duplicate(values: list) -> object:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def check_image_path(image: str, *, where: str) -> None:
    """Refuse absolute image paths, paths that escape the image root with `..`, and NUL bytes (no file
    system has such a name; the OS calls would fail on it)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if "\0" in image:
        raise UserError(f"{where}: image path {image!r} contains a NUL byte; not a file name")
    if PurePosixPath(image).is_absolute() or PureWindowsPath(image).is_absolute():
        raise UserError(f"{where}: image path {image!r} is absolute; it must be relative to the image root")
    if ".." in PurePosixPath(image.replace("\\", "/")).parts:
        raise UserError(f"{where}: image path {image!r} escapes the image root")


@functools.lru_cache(maxsize=65536)
def _real_dir(directory: str) -> str:
    return os.path.realpath(directory)


def image_file_status(image_root: str | os.PathLike, image: str) -> tuple[bool, str | None]:
    """(``image`` is a file under ``image_root``, its real path if that lies outside the real root).

    One ``lstat`` per image, the cost of the plain existence check it replaces: folders are resolved once
    each (cached), and the file itself only when it is a link.
    """
    path = os.path.join(image_root, image)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False, None
    if stat.S_ISLNK(mode):
        real = os.path.realpath(path)
        is_file = os.path.isfile(real)
    else:
        real = os.path.join(_real_dir(os.path.dirname(path)), os.path.basename(path))
        is_file = stat.S_ISREG(mode)
    root = _real_dir(os.fspath(image_root))
    return is_file, None if real.startswith(root.rstrip(os.sep) + os.sep) else real


def outside_root_error(image_root: str | os.PathLike, image: str, real: str, *, where: str) -> UserError:
    return UserError(
        f"{where}: image {image!r} resolves to {real}, outside the image root "
        f"{_real_dir(os.fspath(image_root))} (a symlink); pass --follow-symlinks if the image folders are "
        "linked on purpose"
    )


def check_resolves_inside(image_root: str | os.PathLike, image: str, *, where: str) -> None:
    """Refuse an image whose real path (symlinks resolved) lies outside the real image root."""
    _, outside = image_file_status(image_root, image)
    if outside is not None:
        raise outside_root_error(image_root, image, outside, where=where)


def _check_row(row: dict, where: str) -> None:
    sid = row["sample_id"]
    here = f"{where}: sample {sid!r}"
    if not 0.0 <= row["difficulty"] <= 1.0:
        raise UserError(f"{here}: difficulty {row['difficulty']} outside [0, 1]")
    if row["grade"] is not None and not 1 <= row["grade"] <= 12:
        raise UserError(f"{here}: grade {row['grade']} outside 1..12")
    if row["answer"] is not None and not (row["choices"] and 0 <= row["answer"] < len(row["choices"])):
        raise UserError(f"{here}: answer {row['answer']} is not an index into its choices")
    convs = row["conversations"]
    if not convs:
        raise UserError(f"{here}: empty conversations")
    n_tokens = sum(turn["value"].count(IMAGE_TOKEN) for turn in convs)
    if row["image"] is not None:
        check_image_path(row["image"], where=here)
        first_human = next((t for t in convs if t["from"] == "human"), None)
        if first_human is None or first_human["value"].count(IMAGE_TOKEN) != 1 or n_tokens != 1:
            raise UserError(
                f"{here}: an image sample needs {IMAGE_TOKEN} exactly once, in its first human turn"
            )
    elif n_tokens:
        raise UserError(f"{here}: text-only sample contains {IMAGE_TOKEN}")
