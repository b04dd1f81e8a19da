"""Shared by the safety tests: snapshots of what is on disk, and a CLI run that kills itself at one moment."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# Runs `curate ARGS...` in a child that SIGKILLs itself (a real kill -9: no cleanup, no finally blocks) at
# the os.replace that would rename a temporary name onto KILL_AT: the new output is written in full and not
# yet in place. With --overwrite the previous output has already been moved aside at that moment.
KILLER = """
import os, signal, sys
target = os.path.realpath(os.environ["KILL_AT"])
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.realpath(dst) == target and ".tmp-" in os.path.basename(str(src)):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["curate", *sys.argv[1:]]
from curate.cli import main
main()
"""


def tree_state(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and "dir" for directories) under ``root``."""
    state = {}
    for path in sorted(Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def temporaries(root: Path) -> list[str]:
    """Every leftover temporary name under ``root``."""
    found = (p for p in Path(root).rglob("*") if ".tmp-" in p.name or ".old-" in p.name)
    return sorted(str(p.relative_to(root)) for p in found)


def run_killed_at(kill_at: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KILL_AT": str(kill_at)}
    return subprocess.run(
        [sys.executable, "-c", KILLER, *args], capture_output=True, text=True, env=env, timeout=300
    )
