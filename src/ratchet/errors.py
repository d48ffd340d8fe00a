"""Errors a user can act on: the command line prints their message as one line, never a traceback."""

from __future__ import annotations


class RatchetError(Exception):
    """A failure caused by input or state the user controls; `exit_code` is what the CLI returns."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(RatchetError):
    """Bad input (a batch, a params file, an argument): refused whole, nothing written."""

    exit_code = 2


class BatchRefused(InputError):
    """A batch refused whole (structurally wrong, or nothing in it usable): nothing written. Not a
    workspace's problem: the inbox sets such a batch aside and goes on."""
