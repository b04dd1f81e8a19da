"""Run a typer app the way its console script does (exit_on_user_error), for exit-code assertions."""

from __future__ import annotations

import contextlib
import io

from datasets_spec.errors import exit_on_user_error


def run_app(app, args: list[str]) -> tuple[int, str]:
    """Invoke ``app`` with ``args``; return (exit code, what it wrote to stderr)."""
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            exit_on_user_error(lambda: app(args, standalone_mode=False))()
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()
