"""`train`: a thin typer wrapper over the plain functions in train/.

Errors a user can cause arrive as UserError and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from curate.workspace import Workspace, resolve_workspace
from datasets_spec.errors import exit_on_user_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

WorkspaceOption = typer.Option(
    None, "--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace directory (default: current directory)."
)


def command_line() -> str:
    return " ".join(["train", *sys.argv[1:]])


def _workspace(path: Optional[Path]) -> Workspace:
    return resolve_workspace(path)


# Commands are registered below, one block per concern.
# --- run / merge / dry-run ----------------------------------------------------------------------------


# --- eval / score -------------------------------------------------------------------------------------


# --- ablate -------------------------------------------------------------------------------------------


def main() -> None:
    exit_on_user_error(app)()


if __name__ == "__main__":
    main()
