"""Pieces shared by the `curate` and `train` command lines (CLI-only: this module imports typer)."""

from __future__ import annotations

import sys

import typer

WorkspaceOption = typer.Option(
    None,
    "--workspace",
    "-w",
    envvar="CURATE_WORKSPACE",
    help="Workspace directory (default: current directory).",
)


def invoked_command(program: str) -> str:
    """The exact command line as typed, recorded in manifests and run configs."""
    return " ".join([program, *sys.argv[1:]])
