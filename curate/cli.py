"""`curate`: a thin typer wrapper over the plain functions in curate/ and datasets_spec/.

Each command resolves the workspace, calls one library function and prints its result. Errors a user can
cause arrive as UserError and leave as one line on stderr with exit code 2 (see datasets_spec.errors).
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
    """The exact command line, recorded in manifests."""
    return " ".join(["curate", *sys.argv[1:]])


def _workspace(path: Optional[Path]) -> Workspace:
    return resolve_workspace(path)


# Commands are registered below, one block per concern: ingest/stats/export, then embed/select/rules.
# --- ingest / stats / export ------------------------------------------------------------------------


# --- embed / select / rules -------------------------------------------------------------------------


def main() -> None:
    exit_on_user_error(app)()


if __name__ == "__main__":
    main()
