"""LLaVA conversation JSON (LLaVA-Instruct-150K, llava_v1_5_mix665k, LCS-558K, ...) as canonical rows.

The file is a JSON list of ``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``; a sample
without ``image`` is text-only. mix665k is about 1 GB, so the list is parsed incrementally with ijson and
rows leave as Arrow tables of ``batch_size`` rows: memory is bounded by one batch plus the set of ids
seen, never the whole file.

Image checks, when an image root is given, are cheap by default: the file must exist. Decoding every
image (``decode_images=True``) catches truncated or corrupt files too, at the cost of reading all image
bytes (hours for mix665k's ~620K images on a slow disk), so it is opt-in.

Ids: LLaVA files mix string and integer ids, and LLaVA-Instruct-150K repeats ids (one COCO image id for
its conversation, detail and reasoning samples). ``sample_id`` is always the id as a string; an id that
was an integer, or that had to be renamed because it repeated (``duplicate_ids="suffix"`` gives the
second occurrence ``<id>#2``, the third ``<id>#3``, ...), is remembered in :attr:`LlavaJsonReader.
original_ids` so that export writes the file's own ids back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import ijson
import pyarrow as pa

from datasets_spec.difficulty import (
    conversation_difficulty,
    difficulty_from_counts,
    estimate_tokens,
    tokens_from_counts,
)
from datasets_spec.errors import UserError
from datasets_spec.llava_tasks import sample_tasks
from datasets_spec.parts import DATASET_ROWS_PER_PART
from datasets_spec.safe_json import GuardedJsonFile
from datasets_spec.schema import (
    CANONICAL_SCHEMA,
    IMAGE_TOKEN,
    check_image_path,
    image_file_status,
    outside_root_error,
)

# One batch is one Parquet part of the dataset by default.
DEFAULT_BATCH_SIZE = DATASET_ROWS_PER_PART
DUPLICATE_ID_POLICIES = ("error", "suffix")
SAMPLE_KEYS = ("id", "image", "conversations")
# Turn roles LLaVA's training code understands; a `system` turn is accepted only as the first turn.
ROLES = ("human", "gpt")
SYSTEM_ROLE = "system"
FILLED_COLUMNS = ("sample_id", "image", "conversations", "difficulty", "n_tokens_est")


class _TrackedFile:
    """File wrapper remembering which byte range the parser read last, to place parse errors."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self.start = 0
        self.end = 0
        self.chunk = b""

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        if data:
            self.start, self.end, self.chunk = self.end, self.end + len(data), data
        return data


def json_error_position(message: str, tracked: _TrackedFile, size: int) -> str:
    """Describe where yajl stopped: an exact byte offset when its context snippet is unambiguous."""
    first = message.strip().splitlines()[0] if message.strip() else "parse error"
    if "premature EOF" in message:
        return f"truncated JSON at byte {size} (end of file): {first}"
    lines = message.split("\n")
    if len(lines) >= 3 and "^" in lines[2]:
        caret = lines[2].index("^")
        snippet = lines[1].encode()
        norm = tracked.chunk.replace(b"\n", b" ").replace(b"\r", b" ")
        lead = len(snippet) - len(snippet.lstrip(b" "))
        # yajl indents the snippet by 10 spaces, or by 40 - offset near the start of a buffer.
        for indent in sorted(range(lead + 1), key=lambda i: i != 10):
            text = snippet[indent:]
            if not text or caret < indent:
                continue
            found = norm.find(text)
            if found >= 0 and norm.find(text, found + 1) < 0:
                # For a parse (not lexical) error yajl's caret sits one past the token it rejected.
                back = 1 if first.startswith("parse error") else 0
                return f"malformed JSON at byte {tracked.start + found + caret - indent - back}: {first}"
    return f"malformed JSON between bytes {tracked.start} and {tracked.end}: {first}"


class ImageSourceReader:
    """What the streaming readers of an image dataset share: the image options, the count of skipped
    images, and the checks of the image root and of each image against it."""

    def __init__(
        self,
        *,
        image_root: Path | None,
        split: str,
        skip_bad_images: bool,
        decode_images: bool,
        batch_size: int,
        follow_symlinks: bool,
    ) -> None:
        self.image_root = Path(image_root) if image_root is not None else None
        self.split = split
        self.skip_bad_images = skip_bad_images
        self.decode_images = decode_images
        self.batch_size = batch_size
        self.follow_symlinks = follow_symlinks
        self.skipped_images = 0

    def _check_image_root(self) -> None:
        if self.image_root is not None and not self.image_root.is_dir():
            raise UserError(f"{self.image_root}: image root is not a directory")

    def _image_ok(self, image: str, here: str) -> bool:
        return image_usable(
            self.image_root, image, here, decode=self.decode_images, skip=self.skip_bad_images,
            follow_symlinks=self.follow_symlinks,
        )


class LlavaJsonReader(ImageSourceReader):
    """Stream one LLaVA conversation JSON file as canonical Arrow tables (see the module docstring).

    After :meth:`batches` is exhausted, :attr:`skipped_images` (and the list positions of the skipped
    items, :attr:`skipped_positions`), :attr:`original_ids` (sample_id -> the
    id's JSON text, only where it differs from the plain string) and :attr:`ignored_keys` describe what
    the read did.
    """

    def __init__(
        self,
        path: Path,
        *,
        image_root: Path | None = None,
        split: str = "train",
        skip_bad_images: bool = False,
        decode_images: bool = False,
        duplicate_ids: str = "error",
        batch_size: int = DEFAULT_BATCH_SIZE,
        source: str = "llava",
        follow_symlinks: bool = False,
    ) -> None:
        if duplicate_ids not in DUPLICATE_ID_POLICIES:
            valid = ", ".join(DUPLICATE_ID_POLICIES)
            raise UserError(f"unknown duplicate-id policy {duplicate_ids!r}; valid: {valid}")
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        super().__init__(
            image_root=image_root, split=split, skip_bad_images=skip_bad_images, decode_images=decode_images,
            batch_size=batch_size, follow_symlinks=follow_symlinks,
        )
        self.path = Path(path)
        self.duplicate_ids = duplicate_ids
        self.source = source
        self.skipped_positions: list[int] = []
        self.original_ids: dict[str, str] = {}
        self.ignored_keys: Counter = Counter()
        self._seen: set[str] = set()

    def batches(self) -> Iterator[pa.Table]:
        if not self.path.is_file():
            raise UserError(f"{self.path}: not found")
        self._check_image_root()
        size = self.path.stat().st_size
        with self.path.open("rb") as fh:
            self._expect_list(fh)
            tracked = _TrackedFile(GuardedJsonFile(fh, self.path))
            columns = _empty_columns()
            items = ijson.items(tracked, "item", use_float=True)
            index = 0
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except ijson.JSONError as exc:
                    raise UserError(f"{self.path}: {json_error_position(str(exc), tracked, size)}") from None
                self._add_fast(item, index, columns)
                index += 1
                if len(columns["sample_id"]) >= self.batch_size:
                    yield self._table(columns)
                    columns = _empty_columns()
            if columns["sample_id"]:
                yield self._table(columns)

    def _expect_list(self, fh) -> None:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        fh.seek(0)
        if not head:
            raise UserError(f"{self.path}: empty file, expected a JSON list of samples")
        if not head.startswith(b"["):
            raise UserError(f"{self.path}: expected a JSON list of samples at byte 0 (LLaVA format)")

    def _add_fast(self, item: object, index: int, columns: dict[str, list]) -> None:
        """:meth:`_add` for the common, valid item in one pass without building paths or new dicts.

        Anything unusual (a wrong type, a repeated id, a suspicious image path, misplaced image tokens)
        goes to :meth:`_add` before any state changes, so its checks and messages stay the only ones.
        """
        if type(item) is not dict:
            return self._add(item, index, columns)
        raw = item.get("id")
        convs = item.get("conversations")
        image = item.get("image")
        if type(raw) is str:
            sample_id = raw
        elif type(raw) is int:
            sample_id = str(raw)
        else:
            return self._add(item, index, columns)
        if sample_id in self._seen or type(convs) is not list or not convs:
            return self._add(item, index, columns)
        # Only a path starting with a separator or holding ':' or '..' can be absolute or escape the root.
        if image is not None and (
            type(image) is not str or not image or image[0] in "/\\" or ":" in image or ".." in image
            or "\0" in image
        ):
            return self._add(item, index, columns)
        chars = stripped = humans = images = first_human_images = 0
        first_human = True
        for turn in convs:
            if type(turn) is not dict:
                return self._add(item, index, columns)
            speaker, value = turn.get("from"), turn.get("value")
            if type(speaker) is not str or type(value) is not str or speaker not in ROLES:
                return self._add(item, index, columns)  # a `system` turn too: _add checks its place
            if IMAGE_TOKEN in value:
                found = value.count(IMAGE_TOKEN)
                images += found
                value = value.replace(IMAGE_TOKEN, "")
            else:
                found = 0
            if speaker == "human":
                humans += 1
                if first_human:
                    first_human, first_human_images = False, found
            chars += len(value)
            stripped += len(value.strip())
        if images != (0 if image is None else 1) or (image is not None and first_human_images != 1):
            return self._add(item, index, columns)
        if len(item) != (2 if image is None else 3):
            for key in item:
                if key not in SAMPLE_KEYS:
                    self.ignored_keys[key] += 1
        if image is not None and self.image_root is not None:
            if not self._image_ok(image, f"{self.path}: sample {sample_id!r}"):
                self.skipped_images += 1
                self.skipped_positions.append(index)
                return None
        self._remember_id(raw, sample_id)
        columns["sample_id"].append(sample_id)
        columns["image"].append(image)
        columns["conversations"].append(convs)
        columns["difficulty"].append(difficulty_from_counts(stripped, humans))
        columns["n_tokens_est"].append(tokens_from_counts(chars, images))
        return None

    def _add(self, item: object, index: int, columns: dict[str, list]) -> None:
        where = f"{self.path}: item #{index}"
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise UserError(f"{where}: expected an object with id and conversations, got {kind}")
        sample_id = self._sample_id(item, where)
        here = f"{self.path}: sample {sample_id!r}"
        conversations = _conversations(item.get("conversations"), here)
        image = item.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise UserError(f"{here}: image must be a non-empty relative path string")
            check_image_path(image, where=here)
        _check_image_tokens(conversations, image is not None, here)
        for key in item:
            if key not in SAMPLE_KEYS:
                self.ignored_keys[key] += 1
        if image is not None and self.image_root is not None and not self._image_ok(image, here):
            self.skipped_images += 1
            self.skipped_positions.append(index)
            return
        self._remember_id(item["id"], sample_id)
        columns["sample_id"].append(sample_id)
        columns["image"].append(image)
        columns["conversations"].append(conversations)
        columns["difficulty"].append(conversation_difficulty(conversations))
        columns["n_tokens_est"].append(estimate_tokens(conversations))

    def _sample_id(self, item: dict, where: str) -> str:
        if "id" not in item:
            raise UserError(f"{where}: missing 'id'")
        if "conversations" not in item:
            raise UserError(f"{where} (id {item['id']!r}): missing 'conversations'")
        raw = item["id"]
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise UserError(f"{where}: id must be a string or an integer, got {raw!r}")
        sample_id = str(raw)
        if sample_id in self._seen:
            if self.duplicate_ids == "error":
                raise UserError(
                    f"{self.path}: duplicate id {sample_id!r} at {where.rsplit(': ', 1)[-1]} "
                    "(pass --duplicate-ids suffix to keep both as <id>#2, ...)"
                )
            n = 2
            while f"{sample_id}#{n}" in self._seen:
                n += 1
            sample_id = f"{sample_id}#{n}"
        return sample_id

    def _remember_id(self, raw: str | int, sample_id: str) -> None:
        self._seen.add(sample_id)
        if isinstance(raw, int) or sample_id != raw:
            self.original_ids[sample_id] = json.dumps(raw, ensure_ascii=False)


    def _table(self, columns: dict[str, list]) -> pa.Table:
        n = len(columns["sample_id"])
        tasks = sample_tasks(columns["image"], columns["conversations"])
        return _columns_to_table(
            {**columns, "split": [self.split] * n, "source": [self.source] * n, "task": tasks}
        )


def image_usable(
    image_root: Path, image: str, here: str, *, decode: bool, skip: bool, follow_symlinks: bool = False
) -> bool:
    """True if ``image`` exists under ``image_root`` (and decodes, when ``decode``); False to skip it when
    ``skip``; otherwise a UserError naming the sample (``here``) and the file. Unless ``follow_symlinks``,
    an image whose real path leaves the image root is refused (not skipped: it is a setup problem)."""
    path = image_root / image
    problem = None
    is_file, outside = image_file_status(image_root, image)
    if not is_file:
        problem = f"image {image!r} not found under {image_root}"
    elif outside is not None and not follow_symlinks:
        raise outside_root_error(image_root, image, outside, where=here)
    if problem is None and decode:
        reason = image_decode_problem(path)
        problem = f"image {image!r} does not decode ({reason})" if reason else None
    if problem is None:
        return True
    if skip:
        return False
    raise UserError(f"{here}: {problem} (pass --skip-bad-images to skip and count such samples)")


def image_decode_problem(path: Path) -> str | None:
    """None if ``path`` decodes as an image, else a short reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except Exception as exc:  # PIL raises many types for corrupt files; all mean "does not decode"
        return type(exc).__name__
    return None


def _conversations(value: object, here: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{here}: 'conversations' must be a non-empty list of {{from, value}} turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(
            turn.get("value"), str
        ):
            raise UserError(f"{here}: turn {i} must be an object with string 'from' and 'value'")
        _check_role(turn["from"], i, here)
        turns.append({"from": turn["from"], "value": turn["value"]})
    return turns


def _check_role(role: str, i: int, here: str) -> None:
    if role in ROLES or (role == SYSTEM_ROLE and i == 0):
        return
    if role == SYSTEM_ROLE:
        raise UserError(f"{here}: turn {i} is a 'system' turn; 'system' is allowed only as the first turn")
    raise UserError(
        f"{here}: turn {i} has role {role!r}; turns must be 'human' or 'gpt' ('system' only as the first "
        "turn)"
    )


def _check_image_tokens(conversations: list[dict[str, str]], has_image: bool, here: str) -> None:
    total = sum(t["value"].count(IMAGE_TOKEN) for t in conversations)
    if not has_image:
        if total:
            raise UserError(f"{here}: text-only sample (no 'image') contains {IMAGE_TOKEN}")
        return
    first_human = next((t for t in conversations if t["from"] == "human"), None)
    if first_human is None or first_human["value"].count(IMAGE_TOKEN) != 1 or total != 1:
        found = [f"turn {i} ({t['from']})" for i, t in enumerate(conversations) if IMAGE_TOKEN in t["value"]]
        raise UserError(
            f"{here}: an image sample needs {IMAGE_TOKEN} exactly once, in its first human turn "
            f"(found {total}{': ' + ', '.join(found) if found else ''})"
        )


def _empty_columns() -> dict[str, list]:
    return {name: [] for name in FILLED_COLUMNS}




def _columns_to_table(columns: dict[str, list]) -> pa.Table:
    """Canonical table from column lists (absent columns are null); turn dicts may carry extra keys,
    which the struct conversion drops."""
    n = len(columns["sample_id"])
    arrays = [
        pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, type=f.type)
        for f in CANONICAL_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=CANONICAL_SCHEMA)
