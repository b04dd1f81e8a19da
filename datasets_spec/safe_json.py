"""Reading JSON a user supplied without letting its shape decide time or memory.

Parsers spend memory on nesting: ijson keeps one path prefix per open level (memory grows with the square
of the depth: a 200 KB file of 100,000 nested lists takes tens of GB), Python's ``json`` recurses (a
RecursionError traceback) and polars' NDJSON reader crashes the process. Every read of user JSON
therefore passes through :class:`JsonScanner` first, which walks the raw bytes once, linearly and with
constant memory, and refuses

- nesting deeper than :data:`MAX_JSON_DEPTH` (real files nest a handful of levels; LLaVA conversations
  nest 4), naming the file and the byte where the limit was crossed;
- a lone UTF-16 surrogate escape (``"\\ud800"`` without its pair), which is no character: ijson turns it
  into ``?`` and Python's json into a string that cannot be written as UTF-8 later.

Streaming readers wrap their file in :class:`GuardedJsonFile` (the scan happens chunk by chunk as the
parser reads, so the parser never sees a level past the limit); whole-file readers call
:func:`load_json_file`, line readers :func:`loads_json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datasets_spec.errors import UserError

# Far above any real dataset, manifest or config (they nest < 10 levels), far below where the parsers
# get into trouble (Python's json recurses ~1,000 levels deep; ijson's memory is depth squared).
MAX_JSON_DEPTH = 512
# Slice of bytes scanned at once: the scan's temporaries are a few times this, whatever the file size.
SCAN_BLOCK = 1 << 20

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))
# bytes.translate table marking the bytes the scan looks at (faster than a NumPy lookup).
_INTERESTING = bytes(int(c in (_QUOTE, _BACKSLASH, *_OPEN, *_CLOSE)) for c in range(256))
_STEP = np.zeros(256, dtype=np.int64)
_STEP[list(_OPEN)] = 1
_STEP[list(_CLOSE)] = -1
# Quotes and brackets: what decides depth once escapes are gone.
_STRUCTURAL = bytes(int(c in (_QUOTE, *_OPEN, *_CLOSE)) for c in range(256))
# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or a low half without its high half; the
# leading group makes the backslash a real escape (preceded by an even number of backslashes).
_LONE_SURROGATE = re.compile(
    rb"(?:^|[^\\])(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
# Bytes kept from one chunk to the next so a surrogate pair split across reads is seen whole.
_SURROGATE_TAIL = 12
_ESCAPE_WIDTH = 6


class JsonScanner:
    """Feed a JSON document's bytes in order; :meth:`feed` raises UserError at the first problem."""

    def __init__(self, source: str | Path, *, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.source = str(source)
        self.max_depth = max_depth
        self.offset = 0  # bytes fed so far
        self.depth = 0
        self.in_string = False
        self.escape_pending = False  # the previous byte was a backslash that escapes the next one
        self._tail = b""
        self._checked = 0  # bytes at the start of the tail already checked

    def feed(self, data: bytes) -> None:
        for start in range(0, len(data), SCAN_BLOCK):
            self._feed_block(data[start:start + SCAN_BLOCK])

    def finish(self) -> None:
        """Check what was held back at the end of the input."""
        self._check_surrogates(b"", final=True)

    def _feed_block(self, block: bytes) -> None:
        state = (self.depth, self.in_string, self.escape_pending)
        steps = self._steps(block)
        if len(steps):
            depths = self.depth + np.cumsum(steps, dtype=np.int64)
            if depths.max() > self.max_depth:
                self.depth, self.in_string, self.escape_pending = state
                self._locate(block)  # raises, naming the exact byte
            self.depth = int(depths[-1])
        self._check_surrogates(self._tail + block)
        self.offset += len(block)

    def _steps(self, block: bytes) -> np.ndarray:
        """+1/-1 for each bracket of ``block`` outside strings, in order; updates the string state.

        Escapes go first, with bytes.replace at C speed: removing every ``\\\\`` pair leaves one backslash
        of each odd run, and then every ``\\"`` left is an escaped quote. What remains has real quotes only,
        so the parity of the quotes before a bracket says whether it lies inside a string.
        """
        text = block[1:] if self.escape_pending else block  # an escaped first byte is never structure
        self.escape_pending = _open_escape_at_end(text)
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        kinds = np.frombuffer(text, dtype=np.uint8)[
            np.flatnonzero(np.frombuffer(text.translate(_STRUCTURAL), dtype=np.bool_))
        ]
        quotes = kinds == _QUOTE
        before = np.cumsum(quotes) - quotes + int(self.in_string)  # quotes before each entry
        if len(kinds):
            self.in_string = bool((before[-1] + quotes[-1]) % 2)
        return _STEP[kinds[(before % 2 == 0) & ~quotes]]

    def _locate(self, block: bytes) -> None:
        """Walk ``block`` byte-exactly (quotes, backslashes, brackets) to name where the limit is crossed."""
        where = np.flatnonzero(np.frombuffer(block.translate(_INTERESTING), dtype=np.bool_))
        if len(where):
            self._scan_structure(np.frombuffer(block, dtype=np.uint8)[where], where, len(block))
        raise UserError(f"{self.source}: JSON nested deeper than {self.max_depth} levels near byte "
                        f"{self.offset}; refused")

    def _scan_structure(self, kinds: np.ndarray, where: np.ndarray, size: int) -> None:
        """Track strings, escapes and depth over the block's quote, backslash and bracket bytes only."""
        backslash = kinds == _BACKSLASH
        if self.escape_pending or backslash.any():
            escaped, ends_escaping = self._escapes(backslash, where, size)
        else:
            escaped, ends_escaping = np.zeros(len(where), dtype=bool), False
        quotes = (kinds == _QUOTE) & ~escaped
        toggles = np.cumsum(quotes)
        inside = (toggles - quotes + int(self.in_string)) % 2 == 1  # inside a string before this byte
        depths = self.depth + np.cumsum(np.where(inside | quotes, 0, _STEP[kinds]))
        if depths.max() > self.max_depth:
            at = self.offset + int(where[int(np.argmax(depths > self.max_depth))])
            raise UserError(
                f"{self.source}: JSON nested deeper than {self.max_depth} levels at byte {at}; refused "
                "(no dataset, manifest or config nests this deep)"
            )
        self.depth = int(depths[-1])
        self.in_string = bool(inside[-1]) ^ bool(quotes[-1])
        self.escape_pending = ends_escaping

    def _escapes(self, backslash: np.ndarray, where: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
        """Which entries a backslash escapes, and whether the block ends with an escape still open."""
        index = np.arange(len(where))
        # Entry k continues a backslash run: the entry before it is a backslash on the byte before.
        continues = np.zeros(len(where), dtype=bool)
        continues[1:] = backslash[:-1] & (where[1:] == where[:-1] + 1)
        run_start = np.maximum.accumulate(np.where(backslash & ~continues, index, 0))
        run = index - run_start + 1
        carried = self.escape_pending and where[0] == 0  # the previous block ended with an open escape
        if carried:
            run = run + (run_start == 0)  # the first run continues the previous block's
        # A byte right after a run of backslashes of odd length is escaped.
        escaped = np.zeros(len(where), dtype=bool)
        escaped[1:] = continues[1:] & (run[:-1] % 2 == 1)
        escaped[0] = carried and not backslash[0]
        return escaped, bool(backslash[-1]) and int(where[-1]) == size - 1 and run[-1] % 2 == 1

    def _check_surrogates(self, new: bytes, *, final: bool = False) -> None:
        """Look for lone surrogates in the held-back tail plus ``new``. The last bytes are held back for
        next time (an escape near the end may be half of a pair that continues in the next chunk), with
        one escape's width before them as context for a low half."""
        text = new if new else self._tail
        begins = self.offset - len(self._tail)  # file offset of text[0]
        limit = len(text) if final else max(0, len(text) - _SURROGATE_TAIL)
        if _SURROGATE_HINT.search(text):
            for match in _LONE_SURROGATE.finditer(text):
                if match.start(1) < self._checked:
                    continue
                if match.start(1) >= limit:
                    break
                raise UserError(
                    f"{self.source}: lone UTF-16 surrogate {match.group(1).decode()} at byte "
                    f"{begins + match.start(1)}; not a character (the text is corrupt)"
                )
        keep = max(0, limit - _ESCAPE_WIDTH)
        self._tail = b"" if final else text[keep:]
        self._checked = limit - keep


def _open_escape_at_end(text: bytes) -> bool:
    """Whether the byte after ``text`` is escaped: an odd run of backslashes ends it."""
    return (len(text) - len(text.rstrip(b"\\"))) % 2 == 1


class GuardedJsonFile:
    """A binary file wrapper for streaming parsers: every chunk read is scanned before the parser sees it."""

    def __init__(self, fh, source: str | Path, *, max_depth: int = MAX_JSON_DEPTH) -> None:
        self._fh = fh
        self.scanner = JsonScanner(source, max_depth=max_depth)

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        if data:
            self.scanner.feed(data)
        else:
            self.scanner.finish()
        return data


def check_json_bytes(data: bytes, source: str | Path, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse ``data`` if it nests deeper than ``max_depth`` or holds a lone surrogate (see the module)."""
    scanner = JsonScanner(source, max_depth=max_depth)
    scanner.feed(data)
    scanner.finish()


def loads_json(data: bytes | str, source: str | Path, **kwargs) -> object:
    """``json.loads`` after :func:`check_json_bytes`; malformed text is a UserError naming ``source``.

    ``kwargs`` go to ``json.loads`` (e.g. ``object_pairs_hook``).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    check_json_bytes(raw, source)
    try:
        return json.loads(raw.decode("utf-8"), **kwargs)
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: not UTF-8 text (byte {exc.start}); expected JSON") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise UserError(f"{source}: malformed JSON at {where}: {exc.msg}") from None
    except RecursionError:  # unreachable below MAX_JSON_DEPTH; kept so no traceback can escape
        raise UserError(f"{source}: JSON nested too deeply") from None


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of each non-blank line of a JSON lines text: readers name the line they
    refuse by the number an editor shows."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line


def load_json_file(path: str | Path, **kwargs) -> object:
    """Read and parse the JSON file ``path`` with the guards of :func:`loads_json`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return loads_json(raw, path, **kwargs)
