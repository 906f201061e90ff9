"""The project's user-facing error type.

A ``MemeError`` is raised for every mistake a user can make (a bad config value, a missing or corrupt
data file, a checkpoint of the wrong model). Its message is one line that names the bad value and what
is valid. The CLIs print it without a traceback.
"""
from __future__ import annotations


class MemeError(Exception):
    """A user mistake or an environment problem, with a one-line, actionable message."""


def check_choice(name: str, value, valid) -> None:
    """Raise ``MemeError`` unless ``value`` is one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise MemeError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def output_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as a Unix tool does, rather than with a traceback
    (stdout is pointed at /dev/null so that the interpreter's last flush raises nothing)."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
