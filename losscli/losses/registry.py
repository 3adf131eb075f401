"""The loss registry: names → pure functions with declared inputs, and the spec grammar.

Spec grammar (what ``--loss`` takes)::

    spec  := term ("+" term)*
    term  := [number "*"] name [":" param ("," param)*]
    param := key "=" value          value: 2 | 0.25 | true | none | alex | [0.25,0.75]

``"focal:gamma=2"`` is one loss with a parameter; ``"dice+0.5*ce"`` is a weighted sum.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from losscli.errors import UnknownNameError, UsageError
from losscli.losses.kinds import Family, Pred, Target

__all__ = [
    "CALL_KWARGS",
    "Loss",
    "LossInfo",
    "LossSpecError",
    "LossTerm",
    "create_loss",
    "get_loss_info",
    "guard_registry",
    "list_losses",
    "load_plugin",
    "loading_plugin",
    "load_entry_point_plugins",
    "parse_spec",
    "parse_value",
    "format_value",
    "register_loss",
    "restorer",
]

ENTRY_POINT_GROUP = "losscli.losses"
# A plugin may register losses, jobs or both: both groups load through the same loader.
ENTRY_POINT_GROUPS = (ENTRY_POINT_GROUP, "losscli.jobs")
# Keywords every loss takes at call time; they are not spec parameters.
CALL_KWARGS = frozenset({"reduction", "weight", "avg_factor"})


class LossSpecError(UsageError):
    """A malformed loss spec or a bad parameter value."""


@dataclass(frozen=True)
class LossInfo:
    """Metadata of one registered loss (what ``losscli list losses`` shows)."""

    name: str
    fn: Callable[..., Tensor] = field(repr=False)
    family: Family
    pred: Pred
    target: Target
    description: str
    reference: str
    needs_weights: bool = False
    aliases: tuple[str, ...] = ()
    differentiable: bool = True
    source: str = "losscli"
    # Inputs the job must supply, each passed as the keyword of that name (e.g. "class_counts").
    needs: frozenset[str] = frozenset()

    @property
    def params(self) -> dict[str, Any]:
        """Spec parameters and their defaults (keyword-only, minus the call keywords)."""
        sig = inspect.signature(self.fn)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in CALL_KWARGS
        }


_REGISTRY: dict[str, LossInfo] = {}
_ALIASES: dict[str, str] = {}


def register_loss(
    name: str,
    *,
    family: Family | str,
    pred: Pred | str,
    target: Target | str,
    description: str,
    reference: str,
    needs_weights: bool = False,
    aliases: Sequence[str] = (),
    differentiable: bool = True,
    replace: bool = False,
    needs: Sequence[str] = (),
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering ``fn(pred, target, *, <params>, reduction="mean")``.

    A name (or alias) that is already taken is refused unless ``replace=True``.
    """

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        sig = inspect.signature(fn)
        if "reduction" not in sig.parameters:
            raise TypeError(f"loss {name!r}: {fn.__name__} must take a 'reduction' keyword")
        info = LossInfo(
            name=name,
            fn=fn,
            family=Family(family),
            pred=Pred(pred),
            target=Target(target),
            description=description,
            reference=reference,
            needs_weights=needs_weights,
            aliases=tuple(aliases),
            differentiable=differentiable,
            source=fn.__module__ if not fn.__module__.startswith("losscli.") else "losscli",
            needs=frozenset(needs),
        )
        _add(info, replace)
        return fn

    return decorator


def _add(info: LossInfo, replace: bool) -> None:
    for key in (info.name, *info.aliases):
        owner = _ALIASES.get(key, key if key in _REGISTRY else None)
        if owner is not None and not (replace and owner == info.name):
            raise ValueError(
                f"loss name {key!r} is already registered (by {_REGISTRY[owner].source}); "
                "pass replace=True to override it deliberately"
            )
    _REGISTRY[info.name] = info
    for alias in info.aliases:
        _ALIASES[alias] = info.name


def list_losses() -> list[LossInfo]:
    return sorted(_REGISTRY.values(), key=lambda i: (i.family.value, i.name))


def get_loss_info(name: str) -> LossInfo:
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise UnknownNameError("loss", name, [*_REGISTRY, *_ALIASES])
    return _REGISTRY[key]


# --------------------------------------------------------------------------- specs


def _fp32(x: Any) -> Any:
    """Half-precision inputs are computed in fp32 (losses are never run in bf16/fp16)."""
    if isinstance(x, Tensor) and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if isinstance(x, tuple):
        return tuple(_fp32(v) for v in x)
    return x


@dataclass(frozen=True)
class LossTerm:
    """``coef * name(pred, target, **params)``."""

    coef: float
    info: LossInfo
    params: tuple[tuple[str, Any], ...]

    def __call__(self, pred: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        return self.info.fn(_fp32(pred), _fp32(target), **dict(self.params), **kwargs)

    @property
    def key(self) -> str:
        """Canonical text: canonical name, parameters sorted, values as parsed."""
        body = self.info.name
        if self.params:
            body += ":" + ",".join(f"{k}={format_value(v)}" for k, v in sorted(self.params))
        return body if self.coef == 1.0 else f"{format_value(self.coef)}*{body}"


@dataclass(frozen=True)
class Loss:
    """A compiled spec: a callable ``(pred, target) -> Tensor`` summing its terms."""

    spec: str
    terms: tuple[LossTerm, ...]

    @property
    def key(self) -> str:
        return "+".join(t.key for t in self.terms)

    @property
    def needs_weights(self) -> bool:
        return any(t.info.needs_weights for t in self.terms)

    def __call__(self, pred: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        total = None
        for term in self.terms:
            value = term(pred, target, **kwargs)
            value = value if term.coef == 1.0 else term.coef * value
            total = value if total is None else total + value
        return total

    def __iter__(self) -> Iterator[LossTerm]:
        return iter(self.terms)


def create_loss(spec: str) -> Loss:
    """Compile ``spec`` (e.g. ``"focal:gamma=2"`` or ``"dice+0.5*ce"``) into a ``Loss``.

    Raises:
        LossSpecError / UnknownNameError: malformed specs, unknown names or parameters
            (with close matches), values of the wrong type.
    """
    load_entry_point_plugins()
    terms = tuple(_compile_term(coef, name, params) for coef, name, params in parse_spec(spec))
    return Loss(spec=spec.strip(), terms=terms)


# Bounds on a spec: the longest in the repository's tasks and tests is 64 characters and
# nests lists once; the bounds only stop hostile input (and RecursionError) early.
_MAX_SPEC_CHARS = 1000
_MAX_LIST_DEPTH = 4
_INT64_MAX = 2**63 - 1  # integer parameters reach torch's C++ as int64


def _clip(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _check_text(text: str, what: str) -> None:
    """Refuse text that is too long or holds control characters (before any parsing)."""
    if len(text) > _MAX_SPEC_CHARS:
        raise LossSpecError(f"{what} {_clip(text)} is {len(text)} characters long; at most "
                            f"{_MAX_SPEC_CHARS}")
    if not text.isprintable():
        bad = next(i for i, ch in enumerate(text) if not ch.isprintable())
        raise LossSpecError(f"{what} {_clip(text)} holds a control character ({text[bad]!r}) at "
                            f"position {bad}")


def parse_spec(spec: str) -> list[tuple[float, str, dict[str, Any]]]:
    """Split a spec into ``(coef, name, raw params)`` triples without resolving names.

    Refused with a ``LossSpecError`` naming the rule: a spec over 1,000 characters,
    control characters, empty terms, non-finite coefficients and the value errors of
    :func:`parse_value`.
    """
    if not isinstance(spec, str):
        raise LossSpecError(f"a loss spec is text, got {type(spec).__name__} {_clip(str(spec))}")
    if not spec.strip():
        raise LossSpecError("empty loss spec")
    _check_text(spec, "loss spec")
    return [_parse_term(t.strip(), spec) for t in _split_top(spec.strip(), "+")]


def _parse_term(text: str, spec: str) -> tuple[float, str, dict[str, Any]]:
    if not text:
        raise LossSpecError(f"empty term in loss spec {_clip(spec)}; terms are joined by one '+'")
    coef = 1.0
    head, _, tail = text.partition(":")
    if "*" in head:
        coef_text, _, head = head.partition("*")
        try:
            coef = float(coef_text)
        except ValueError:
            raise LossSpecError(
                f"bad coefficient {_clip(coef_text)} in {_clip(text)}; write e.g. '0.5*ce'"
            ) from None
        if not math.isfinite(coef):
            raise LossSpecError(f"coefficient must be finite in {_clip(text)}")
    name = head.strip()
    if not name:
        raise LossSpecError(f"missing loss name in {_clip(text)} of loss spec {_clip(spec)}")
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise LossSpecError(f"bad loss name {_clip(name)} in loss spec {_clip(spec)}")
    params: dict[str, Any] = {}
    if tail.strip():
        for item in _split_top(tail, ","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key or not value.strip():
                raise LossSpecError(f"bad parameter {_clip(item.strip())} in {_clip(text)}; "
                                    "write key=value")
            if key in params:
                raise LossSpecError(f"parameter {key!r} given twice in {_clip(text)}")
            try:
                params[key] = parse_value(value.strip())
            except LossSpecError as exc:
                raise LossSpecError(f"parameter {key!r} of {name!r}: {exc}") from None
    elif ":" in text:
        raise LossSpecError(f"missing parameters after ':' in {_clip(text)}")
    return coef, name, params


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets; a '+' inside a number's exponent (1e+3) stays."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LossSpecError(f"unbalanced ']' in {_clip(text)}")
        elif ch == sep and depth == 0:
            if sep == "+" and i >= 2 and text[i - 1] in "eE" and text[i - 2].isdigit():
                continue
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise LossSpecError(f"unbalanced '[' in {_clip(text)}")
    parts.append(text[start:])
    return parts


def parse_value(text: str) -> Any:
    """A parameter value: ``[a,b]`` → tuple, true/false, none, int, float, else the text.

    Refused with a ``LossSpecError``: text over 1,000 characters or with control
    characters, lists nested more than 4 deep, stray brackets, empty list elements,
    integers outside int64 and non-finite numbers (``inf``, ``nan``, ``1e999``).
    """
    _check_text(text, "value")
    depth = deepest = 0
    for ch in text:  # checked before the recursive descent, which never goes deeper
        depth += (ch == "[") - (ch == "]")
        deepest = max(deepest, depth)
    if deepest > _MAX_LIST_DEPTH:
        raise LossSpecError(f"value {_clip(text)} nests lists {deepest} deep; at most "
                            f"{_MAX_LIST_DEPTH}")
    return _parse_value(text)


def _parse_value(text: str) -> Any:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        items = [v.strip() for v in _split_top(inner, ",")] if inner else []
        if "" in items:
            raise LossSpecError(f"empty element in list {_clip(text)}")
        return tuple(_parse_value(v) for v in items)
    if "[" in text or "]" in text:
        raise LossSpecError(f"stray bracket in value {_clip(text)}; a list is written [a,b]")
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            number = cast(text)
        except ValueError:
            continue
        if isinstance(number, int) and abs(number) > _INT64_MAX:
            raise LossSpecError(f"integer {_clip(text)} is out of range; integers must fit in "
                                "int64 (|x| < 2**63)")
        if not math.isfinite(number):
            raise LossSpecError(f"value {_clip(text)} is not a finite number; parameters must "
                                "be finite")
        return number
    return text


def _compile_term(coef: float, name: str, raw: Mapping[str, Any]) -> LossTerm:
    info = get_loss_info(name)
    allowed = info.params
    params = {}
    for key, value in raw.items():
        if key not in allowed and not allowed:
            raise LossSpecError(f"loss {info.name!r} takes no parameters, got {key!r}")
        if key not in allowed:
            raise UnknownNameError("parameter", key, allowed, where=f" for loss {info.name!r}")
        params[key] = _coerce(info.name, key, value, allowed[key])
    return LossTerm(coef=coef, info=info, params=tuple(params.items()))


def _coerce(loss: str, key: str, value: Any, default: Any) -> Any:
    def bad(expected: str) -> LossSpecError:
        return LossSpecError(f"{loss}: parameter {key!r} expects {expected}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        return str(value)
    return value


def format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------- plugins

_ENTRY_POINTS_LOADED = False
_ENTRY_POINTS_ERROR: UsageError | None = None  # a broken entry point fails every call


def load_entry_point_plugins() -> None:
    """Import every plugin declared under the ``losscli.losses`` and ``losscli.jobs``
    entry-point groups, once.

    An entry point names a module (which registers losses or jobs on import) or a callable
    that takes no arguments and registers them. One that fails is a ``UsageError`` naming
    it and the cause, raised again on every later call; its registrations are undone.
    """
    global _ENTRY_POINTS_LOADED, _ENTRY_POINTS_ERROR
    if _ENTRY_POINTS_ERROR is not None:
        raise _ENTRY_POINTS_ERROR
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in (ep for group in ENTRY_POINT_GROUPS for ep in entry_points(group=group)):
        label = f"entry point {getattr(ep, 'name', '?')} = {getattr(ep, 'value', ep)!r}"
        try:
            with _plugin_guard(label, getattr(ep, "module", "")):
                obj = ep.load()
                if callable(obj) and not inspect.ismodule(obj):
                    obj()
        except UsageError as exc:
            _ENTRY_POINTS_ERROR = exc
            raise


def load_plugin(target: str) -> None:
    """Load a ``--plugin``: a path to a ``.py`` file or an importable module name.

    Whatever goes wrong while it loads (an exception, a syntax error, ``sys.exit``, a name
    clash, a bad ``register_loss`` or ``register_job`` declaration) is a ``UsageError``
    naming the plugin, its line and the first line of the cause; the losses and jobs it
    registered before failing are removed again.
    """
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            what = "is not a file" if path.exists() else "not found"
            raise UsageError(f"plugin file {target} {what}")
        if path.suffix != ".py":
            raise UsageError(f"plugin file {target} is not a .py file")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        mod_name = f"losscli_plugin_{path.stem}_{digest}"  # one module per file, loaded once
        if mod_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            with _plugin_guard(target, mod_name, path):
                spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return
    if not all(part.isidentifier() for part in target.split(".")):
        raise UsageError(f"plugin {target!r} is neither a .py file nor a module name")
    with _plugin_guard(target, target):
        importlib.import_module(target)


def restorer(*registries: dict) -> Callable[[], None]:
    """A function that puts ``registries`` back as they are now (a failed plugin's
    registrations are removed again)."""
    saved = [dict(r) for r in registries]

    def restore() -> None:
        for live, before in zip(registries, saved, strict=True):
            live.clear()
            live.update(before)

    return restore


# The registries a plugin may add to, each a function that calls ``restorer`` on them (at
# call time: a test may have swapped the dicts); the job registry adds itself.
_SNAPSHOTS: list[Callable[[], Callable[[], None]]] = [lambda: restorer(_REGISTRY, _ALIASES)]
_LOADING: list[str] = []  # the plugins being loaded, innermost last


def guard_registry(snapshot: Callable[[], Callable[[], None]]) -> None:
    """Have a failed plugin's registrations in another registry undone too."""
    _SNAPSHOTS.append(snapshot)


def loading_plugin() -> str | None:
    """The plugin being loaded now (``--plugin`` as given, or ``entry point NAME = ...``),
    or None: what a registry records as where an entry came from."""
    return _LOADING[-1] if _LOADING else None


@contextmanager
def _plugin_guard(origin: str, module: str, path: Path | None = None) -> Iterator[None]:
    """Run a plugin's loading; on failure undo its registrations and raise a UsageError."""
    restores = [snapshot() for snapshot in _SNAPSHOTS]
    _LOADING.append(origin)
    try:
        yield
    except BaseException as exc:
        for restore in restores:
            restore()
        if isinstance(exc, (Exception, SystemExit)):  # KeyboardInterrupt stays itself
            raise _plugin_error(origin, module, path, exc) from exc
        raise
    finally:
        _LOADING.pop()


def _plugin_error(origin: str, module: str, path: Path | None,
                  exc: BaseException) -> UsageError:
    """``plugin <origin> failed at line <n>: <Type>: <first line of the message>``."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and f"{module}.".startswith(
            f"{exc.name}."):
        return UsageError(f"plugin {origin} is neither a .py file nor importable: {exc}")
    if isinstance(exc, SystemExit):
        cause = f"it called sys.exit({exc.code!r}); a plugin only registers losses and jobs"
    else:
        message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        first = next((line.strip() for line in str(message).splitlines() if line.strip()), "")
        cause = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    file, line = _plugin_line(module, exc)
    if line is None:
        where = ""
    elif path is not None and file and Path(file).resolve() == path.resolve():
        where = f" at line {line}"
    else:
        where = f" at {file} line {line}"
    return UsageError(f"plugin {origin} failed{where}: {cause}")


def _plugin_line(module: str, exc: BaseException) -> tuple[str | None, int | None]:
    """The file and line in the plugin's own code that ``exc`` came from, if known."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.filename, exc.lineno
    where: tuple[str | None, int | None] = (None, None)
    for frame, line in traceback.walk_tb(exc.__traceback__):
        name = frame.f_globals.get("__name__", "")
        if module and (name == module or name.startswith(f"{module}.")):
            where = frame.f_code.co_filename, line  # the innermost one wins
    return where
