"""Advisory locks that keep a dataset from changing under the commands reading it.

A command that reads the workspace's dataset (embed, score, select, rules, export, stats, check) holds a
*shared* lock on the workspace directory for its whole run; ingest, which replaces the dataset, needs the
*exclusive* lock. Either side that finds the other running refuses at once with one line naming the
holder's pid and command line, instead of waiting or, worse, recording one dataset's fingerprint next to
rows read from another. ``curate embed`` also takes an exclusive lock on ``dataset/`` (which exists
whenever an embed can run, so no folder is made for the lock), so two embeds never race for the same
temporary names under ``embeddings/``.

The locks are ``flock(2)`` locks on the directories themselves: nothing is written, and the kernel drops
a lock when its process dies (a killed run never leaves a stale lock behind). Holders are found in
``/proc/locks`` (Linux); elsewhere the message says only that another process holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from datasets_spec.errors import UserError

# What the message shows of a holder's command line: enough to recognise it, never a screenful.
COMMAND_CHARS = 160


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, *, exclusive: bool, purpose: str) -> Iterator[None]:
    """Hold a shared or exclusive lock on ``directory`` for the block.

    An exclusive lock creates ``directory`` if missing (its holder is about to write there); a shared
    one on a missing directory locks nothing (there is nothing to read; the command says so itself).
    ``purpose`` says what this process wants the lock for, e.g. "curate ingest (replaces the dataset)".
    A conflicting holder is a UserError naming its pid and command.
    """
    directory = Path(directory)
    if exclusive:
        directory.mkdir(parents=True, exist_ok=True)
    elif not directory.is_dir():
        yield
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{directory}: {purpose} cannot start: {describe_holders(fd)}") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def describe_holders(fd: int) -> str:
    """Who holds a flock on the file behind ``fd``, as "in use by pid N (command)"."""
    holders = [pid for pid in lock_holders(fd) if pid != os.getpid()]
    if not holders:
        return "another process is using it; wait for it to finish"
    shown = "; ".join(f"pid {pid} ({command_of(pid)})" for pid in holders[:3])
    more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
    return f"in use by {shown}{more}; wait for it to finish or stop it"


def lock_holders(fd: int) -> list[int]:
    """Pids holding a flock on the file behind ``fd``, from ``/proc/locks`` (empty where it is absent)."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; blocked waiters carry a "->" field first.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
            pids.append(int(fields[4]))
    return sorted(set(pids))


def command_of(pid: int) -> str:
    """The command line of process ``pid``, shortened (``?`` when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not args:
        return "?"
    if "-m" in args[:3] and args.index("-m") + 1 < len(args):  # python -m curate.cli ... -> curate ...
        at = args.index("-m")
        args = [args[at + 1].split(".")[0], *args[at + 2:]]
    else:
        args = [Path(args[0]).name, *("<script>" if "\n" in a else a for a in args[1:])]
    text = " ".join(args)
    return text if len(text) <= COMMAND_CHARS else text[: COMMAND_CHARS - 3] + "..."


def dataset_lock(root: str | os.PathLike, *, writes: bool, command: str) -> contextlib.AbstractContextManager:
    """The workspace-wide lock: ``writes`` (ingest) is exclusive, reading the dataset is shared."""
    purpose = f"{command} ({'replaces the dataset' if writes else 'reads the dataset'})"
    return directory_lock(root, exclusive=writes, purpose=purpose)


def output_lock(directory: str | os.PathLike, *, command: str) -> contextlib.AbstractContextManager:
    """Exclusive lock on ``directory`` (when it exists; nothing is created) for the one command of its kind
    that may run at a time, e.g. ``curate embed`` writing ``embeddings/``."""
    if not Path(directory).is_dir():
        return contextlib.nullcontext()
    return directory_lock(directory, exclusive=True, purpose=f"{command} (one at a time per workspace)")
