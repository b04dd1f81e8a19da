"""Shared by the curation tests: run the `curate` CLI in a subprocess and copy workspaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from datasets_spec.workspace import Workspace


def run_curate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "curate.cli", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 with exactly one `error: ...` line on stderr containing every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def copy_workspace(ws: Workspace, tmp_path: Path) -> Workspace:
    target = tmp_path / "ws"
    shutil.copytree(ws.root, target)
    return Workspace(target)
