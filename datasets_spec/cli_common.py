"""Pieces shared by the `curate` and `train` command lines.

CLI-only: this module imports typer, and only the ``cli.py`` wrappers import it; the library never does.
"""

from __future__ import annotations

import sys

import typer

from datasets_spec.workspace import WORKSPACE_ENV

WorkspaceOption = typer.Option(
    None,
    "--workspace",
    "-w",
    envvar=WORKSPACE_ENV,
    help="Workspace directory (default: current directory).",
)


def invoked_command(program: str) -> str:
    """The exact command line as typed, recorded in manifests and run configs."""
    return " ".join([program, *sys.argv[1:]])
