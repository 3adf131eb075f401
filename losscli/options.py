"""Job options as data: each job declares its knobs once, as a tuple of ``Option``.

Everything a user sees about an option comes from its declaration: the flag ``train``
accepts (``--fg-fraction 0.3``, ``--binary``/``--no-binary``), ``--opt key=value``, a suite's
``options = {...}``, the validation error, ``losscli list tasks JOB`` and the README table.
One validator (``Option.coerce``) turns a string from the command line or a typed TOML value
into the declared type and checks its range, so every job refuses bad values the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from losscli.errors import UnknownNameError, UsageError

__all__ = ["Option", "parse_flags", "validate_options"]

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Option:
    """One job option: its name, type, default, help and the rule its values follow.

    ``low``/``high`` bound numbers (``open_low``/``open_high`` exclude the bound);
    ``choices`` lists the allowed texts; ``multiple_of`` constrains integers; ``flag`` is
    the command-line spelling when it differs from the name (``--target`` for
    ``target_column``). A ``None`` default means "not set" (the help says what applies).
    A text with a grammar (``--label-noise sym:0.4``) gives ``check``, which raises
    ``ValueError`` on a bad value, and ``allowed``, the rule in words.
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    multiple_of: int | None = None
    flag: str | None = None
    check: Callable[[Any], object] | None = None
    allowed: str | None = None

    @property
    def cli(self) -> str:
        """How a user spells it on the command line: ``--fg-fraction``."""
        return "--" + (self.flag or self.name).replace("_", "-")

    @property
    def type_name(self) -> str:
        return "choice" if self.choices else self.type.__name__

    def rule(self) -> str:
        """The allowed values in words: ``a number in (0, 1)``, ``one of a, b``."""
        if self.allowed:
            return self.allowed
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number"}.get(self.type, "a text")
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.open_low else "[", ")" if self.open_high else "]"
            kind += f" in {lo}{self.low:g}, {self.high:g}{hi}"
        elif self.low is not None:
            kind += f" {'>' if self.open_low else '>='} {self.low:g}"
        elif self.high is not None:
            kind += f" {'<' if self.open_high else '<='} {self.high:g}"
        if self.multiple_of:
            kind += f", a multiple of {self.multiple_of}"
        return kind

    def coerce(self, value: Any, job: str) -> Any:
        """``value`` (a command-line string or a typed suite value) as the declared type.

        Raises:
            UsageError: naming the flag, the job, the rule and the bad value.
        """
        converted = self._convert(value)
        if converted is None or not self._in_range(converted):
            raise UsageError(f"{self.cli} (option {self.name} of {job}) must be {self.rule()}, "
                             f"got {value!r}")
        return converted

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return True if text in _TRUE else False if text in _FALSE else None
        if isinstance(value, bool):  # True is an int in Python, never a number here
            return None
        if self.type is int:
            if isinstance(value, int):
                return value
            try:
                return int(str(value).strip())
            except ValueError:
                return None
        if self.type is float:
            try:
                number = float(value) if isinstance(value, (int, float, str)) else None
            except ValueError:
                return None
            return number if number is not None and math.isfinite(number) else None
        if isinstance(value, (list, dict)) or value is None:
            return None
        return str(value)

    def _in_range(self, v: Any) -> bool:
        if self.check is not None:
            try:
                self.check(v)
            except ValueError:
                return False
        if self.choices:
            return v in self.choices
        if self.type not in (int, float):
            return True
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.open_high else v > self.high):
            return False
        return not self.multiple_of or v % self.multiple_of == 0


def validate_options(declared: Sequence[Option], given: Mapping[str, Any], job: str
                     ) -> dict[str, Any]:
    """The given options (``None`` values dropped) converted and checked, in declared order.

    Raises:
        UsageError: every unknown name (with close matches) and bad value at once.
    """
    by_name = {o.name: o for o in declared}
    problems, values = [], {}
    for key, value in given.items():
        if value is None:
            continue
        option = by_name.get(key)
        if option is None:
            problems.append(str(UnknownNameError("option", key, by_name,
                                                 where=f" for task {job!r}")) + _takes(declared))
            continue
        try:
            values[key] = option.coerce(value, job)
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))
    return {o.name: values[o.name] for o in declared if o.name in values}


def _takes(declared: Sequence[Option]) -> str:
    return f" ({'it takes: ' + ', '.join(o.name for o in declared) if declared else 'none'})"


def parse_flags(tokens: Iterable[str], declared: Sequence[Option], job: str,
                shared: Iterable[str] = ()) -> dict[str, Any]:
    """Job options from leftover command-line tokens: ``--fg-fraction 0.3``,
    ``--fg-fraction=0.3``, ``--binary``, ``--no-binary``. Values stay strings (bools
    excepted); ``validate_options`` converts them.

    Raises:
        UsageError: a token that is no option of ``job``, naming close matches among the
            job's flags and ``shared`` (the command's own flags).
    """
    flags = {o.cli: o for o in declared}
    tokens, parsed = list(tokens), {}
    while tokens:
        token = tokens.pop(0)
        name, eq, value = token.partition("=")
        option = flags.get(name)
        negated = option is None and name.startswith("--no-") and \
            flags.get("--" + name[5:]) is not None and flags["--" + name[5:]].type is bool
        if negated:
            parsed[flags["--" + name[5:]].name] = False
            continue
        if option is None:
            known = [*flags, *shared]
            unknown = UnknownNameError("option", name, known, where=f" for task {job!r}")
            raise UsageError(str(unknown)
                             + f"; `losscli list tasks {job}` lists its options")
        if option.type is bool and not eq:
            bool_word = tokens and tokens[0].lower() in _TRUE | _FALSE
            parsed[option.name] = tokens.pop(0) if bool_word else True
        elif eq:
            parsed[option.name] = value
        elif tokens and not (tokens[0].startswith("--") and tokens[0][2:3].isalpha()):
            parsed[option.name] = tokens.pop(0)
        else:
            raise UsageError(f"{option.cli} (option {option.name} of {job}) needs a value: "
                             f"{option.rule()}")
    return parsed
