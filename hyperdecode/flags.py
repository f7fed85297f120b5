"""Checks of command-line values, run before any slow work; each message names the flag (`--max-requests`), not the
Python parameter behind it."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["flag", "check_at_least", "check_positive", "check_output_file", "check_output_dir"]


def flag(name: str) -> str:
    """The flag of an argparse destination.

    >>> flag("max_requests")
    '--max-requests'
    """
    return "--" + name.replace("_", "-")


def finite(value: float) -> bool:
    """Not nan or inf (ints of any size are finite).

    >>> finite(10 ** 400), finite(float("nan"))
    (True, False)
    """
    return not isinstance(value, float) or math.isfinite(value)


def check_at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Each named value that the command has and that is set must be a number >= its minimum (a comma-separated
    list, a string, is checked where it is parsed)."""
    for name, low in minimums.items():
        value = getattr(args, name, None)
        if value is not None and not isinstance(value, str) and not (finite(value) and value >= low):
            raise ValueError(f"{flag(name)} must be at least {low}, got {value}")


def check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Each named value that the command has and that is set must be a finite number > 0."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not (finite(value) and value > 0):
            raise ValueError(f"{flag(name)} must be a positive number, got {value}")


def check_output_file(path: str | None, name: str) -> None:
    """A file the command will write once its work is done: fail now if it cannot be a file there."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag(name)} {path}: is a directory (give a file name)")
    if not p.parent.is_dir():
        raise ValueError(f"{flag(name)} {path}: directory {p.parent} does not exist")


def check_output_dir(path: str, what: str) -> Path:
    """Creates the output directory `path` (with parents); `what` names it in the message (a flag or argument)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {path}: exists and is not a directory")
    p.mkdir(parents=True, exist_ok=True)
    return p
