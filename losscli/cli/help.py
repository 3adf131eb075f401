"""How ``--help`` reads: typer's command classes, tidied.

- A flag takes no value, so it shows no type (typer prints ``<bool>``); a repeatable
  option shows the type of one value (``<str>``, not ``<list[str]>``).
- Usage lines name arguments as ``RUN_DIR``, not ``{run_dir}``.
- Docstrings are hard-wrapped in the source; their single line breaks are joined, so the
  terminal wraps whole sentences (typer's rich mode keeps them and breaks mid-sentence).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from typer.core import TyperCommand, TyperGroup

__all__ = ["TASKS", "Command", "Group", "unwrap"]

# every standard job, for --task help (tests/test_cli.py keeps it in step with list_jobs)
TASKS = "mnist, fashion, reg, det, imbalanced, seg, denoise, images, masks, table"


def unwrap(text: str | None) -> str | None:
    """Paragraphs of ``text`` as single lines (blank lines between them kept)."""
    if not text:
        return text
    return re.sub(r"(?<!\n)\n(?!\n)", " ", inspect.cleandoc(text))


class _Tidy:
    help: str | None
    epilog: str | None

    def _tidy(self, ctx: Any) -> None:
        self.help, self.epilog = unwrap(self.help), unwrap(self.epilog)
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            if param.metavar is not None:
                continue
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif getattr(param, "multiple", False):  # repeatable: <list[str]> → <str>
                param.metavar = re.sub(r"list\[(.*)\]", r"\1", param.display_type_rich(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._tidy(ctx)
        return super().format_help(ctx, formatter)  # type: ignore[misc]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [re.sub(r"^\{(.*)\}$", r"\1", p) for p in pieces]


class Command(_Tidy, TyperCommand):
    """A losscli command (see the module docstring)."""


class Group(_Tidy, TyperGroup):
    """A losscli command group (see the module docstring)."""
