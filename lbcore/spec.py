"""Component spec strings: ``NAME`` or ``NAME:key=value,key=value``.

Values are checked against the factory's signature: unknown keys and ill-typed values are
one-line :class:`~lbcore.errors.SpecError` messages listing what is valid.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from lbcore.errors import SpecError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"mifgsm:steps=20,alpha=1"`` into ``("mifgsm", {"steps": "20", "alpha": "1"})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty component spec {spec!r}")
    spec = spec.strip()
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not name or any(c in name for c in "=, "):
        raise SpecError(f"bad component spec {spec!r}: expected NAME or NAME:key=value,...")
    params: dict[str, str] = {}
    if sep and rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise SpecError(f"bad parameter {item!r} in spec {spec!r}: expected key=value")
            if key in params:
                raise SpecError(f"parameter {key!r} given twice in spec {spec!r}")
            params[key] = value.strip()
    return name, params


def format_spec(name: str, params: dict[str, Any]) -> str:
    """Inverse of :func:`parse_spec` (for reports)."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={v}" for k, v in params.items())


def _signature_params(factory: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (type, default)}`` of the factory's keyword parameters."""
    sig = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    out: dict[str, tuple[Any, Any]] = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(p.name, p.annotation)
        if ann is inspect.Parameter.empty and p.default is not inspect.Parameter.empty and p.default is not None:
            ann = type(p.default)
        out[p.name] = (ann, p.default)
    return out


def describe_params(factory: Callable[..., Any]) -> str:
    """``"steps: int = 20, alpha: float = 1.0"`` for error messages and ``lb list``."""
    parts = []
    for name, (ann, default) in _signature_params(factory).items():
        tname = _type_name(ann)
        d = "" if default is inspect.Parameter.empty else f"={default!r}"
        parts.append(f"{name}: {tname}{d}" if tname else f"{name}{d}")
    return ", ".join(parts)


def _type_name(ann: Any) -> str:
    if ann is inspect.Parameter.empty:
        return ""
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _coerce(value: str, ann: Any, key: str, spec_name: str) -> Any:
    if ann is inspect.Parameter.empty or ann is Any:
        return value
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, spec_name)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(f"{spec_name}: bad value {value!r} for {key!r} (expected {_type_name(ann)})")
    if origin is typing.Literal:
        choices = typing.get_args(ann)
        if value in choices:
            return value
        raise SpecError(f"{spec_name}: {key}={value!r} is not one of {', '.join(map(str, choices))}")
    try:
        if ann is bool:
            low = value.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(value)
        if ann is int:
            return int(value)
        if ann is float:
            f = float(value)
            if not math.isfinite(f):
                raise SpecError(f"{spec_name}: {key}={value!r} must be a finite number")
            return f
        if ann is str:
            return value
    except ValueError:
        raise SpecError(
            f"{spec_name}: bad value {value!r} for {key!r} (expected {_type_name(ann)})"
        ) from None
    return value


def bind_params(
    factory: Callable[..., Any], params: dict[str, str], spec_name: str
) -> dict[str, Any]:
    """Check ``params`` against the factory's signature and convert the values."""
    # error messages are one line: show control characters of the spec escaped, as repr does
    spec_name = "".join(c if c.isprintable() else repr(c)[1:-1] for c in spec_name)
    sig = _signature_params(factory)
    accepts_any = any(
        p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()
    )
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in sig:
            if accepts_any:
                out[key] = value
                continue
            valid = ", ".join(sig) or "none"
            raise SpecError(f"{spec_name}: unknown parameter {key!r} (valid: {valid})")
        out[key] = _coerce(value, sig[key][0], key, spec_name)
    return out
