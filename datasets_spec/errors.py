"""Errors a user can cause, and the one place that turns them into a clean exit.

Library code raises :class:`UserError` with one line naming the file or sample at fault. The CLIs wrap
their commands with :func:`exit_on_user_error`, which prints that line to stderr and exits with code 2,
never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem with the user's input (path, file content, option); the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


def exit_on_user_error(fn: F) -> F:
    """Run ``fn``; on :class:`UserError` print ``error: <message>`` and exit with code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None

    return wrapper  # type: ignore[return-value]
