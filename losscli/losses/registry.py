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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "list_losses",
    "load_plugin",
    "load_entry_point_plugins",
    "parse_spec",
    "parse_value",
    "format_value",
    "register_loss",
]

ENTRY_POINT_GROUP = "losscli.losses"
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


def parse_spec(spec: str) -> list[tuple[float, str, dict[str, Any]]]:
    """Split a spec into ``(coef, name, raw params)`` triples without resolving names."""
    if not isinstance(spec, str) or not spec.strip():
        raise LossSpecError("empty loss spec")
    return [_parse_term(t.strip(), spec) for t in _split_top(spec.strip(), "+")]


def _parse_term(text: str, spec: str) -> tuple[float, str, dict[str, Any]]:
    if not text:
        raise LossSpecError(f"empty term in loss spec {spec!r}")
    coef = 1.0
    head, _, tail = text.partition(":")
    if "*" in head:
        coef_text, _, head = head.partition("*")
        try:
            coef = float(coef_text)
        except ValueError:
            raise LossSpecError(
                f"bad coefficient {coef_text!r} in {text!r}; write e.g. '0.5*ce'"
            ) from None
        if not math.isfinite(coef):
            raise LossSpecError(f"coefficient must be finite in {text!r}")
    name = head.strip()
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise LossSpecError(f"bad loss name {name!r} in loss spec {spec!r}")
    params: dict[str, Any] = {}
    if tail.strip():
        for item in _split_top(tail, ","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key or not value.strip():
                raise LossSpecError(f"bad parameter {item.strip()!r} in {text!r}; write key=value")
            if key in params:
                raise LossSpecError(f"parameter {key!r} given twice in {text!r}")
            params[key] = parse_value(value.strip())
    elif ":" in text:
        raise LossSpecError(f"missing parameters after ':' in {text!r}")
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
                raise LossSpecError(f"unbalanced ']' in {text!r}")
        elif ch == sep and depth == 0:
            if sep == "+" and i >= 2 and text[i - 1] in "eE" and text[i - 2].isdigit():
                continue
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise LossSpecError(f"unbalanced '[' in {text!r}")
    parts.append(text[start:])
    return parts


def parse_value(text: str) -> Any:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return tuple(parse_value(v.strip()) for v in _split_top(inner, ",")) if inner else ()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
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


def load_entry_point_plugins() -> None:
    """Import every plugin declared under the ``losscli.losses`` entry-point group, once.

    An entry point names a module (which registers losses on import) or a callable that
    takes no arguments and registers them.
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if callable(obj) and not inspect.ismodule(obj):
            obj()


def load_plugin(target: str) -> None:
    """Load a ``--plugin``: a path to a ``.py`` file or an importable module name."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UsageError(f"plugin file not found: {target}")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        mod_name = f"losscli_plugin_{path.stem}_{digest}"  # one module per file, loaded once
        if mod_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[mod_name]
            raise
        return
    try:
        importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise UsageError(f"plugin {target!r} is neither a .py file nor importable: {exc}") from None
