"""Errors the CLI turns into exit codes: a ``UsageError`` is the user's to fix (exit 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["Interrupted", "UsageError", "UnknownNameError", "close_matches"]


class UsageError(ValueError):
    """Bad input from the user: an unknown name, a malformed spec, an incompatible pair."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, sorted(set(choices)), n=n, cutoff=0.5)


class UnknownNameError(UsageError):
    """An unknown loss, job or parameter name; the message names close matches."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], *, where: str = ""):
        choices = sorted(set(choices))
        self.name = name
        self.suggestions = close_matches(name, choices)
        msg = f"unknown {kind} {name!r}{where}"
        if self.suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        elif len(choices) <= 40:
            msg += "; choose from: " + ", ".join(choices)
        super().__init__(msg)


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM; ``root`` is the run directory whose
    finished runs are kept (None before anything was written). The CLI exits 128 + signal."""

    def __init__(self, signum: int = 2, root: object = None):
        super().__init__(signum)
        self.signum, self.root = int(signum), root
