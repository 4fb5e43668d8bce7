"""One line for each way a configuration value can be wrong, built from pydantic's error and
the field's own declaration: where the value came from, the value as the user wrote it, what is
wrong, and the fix the field declares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

#: The phrase for each kind of value pydantic could not use (the rest of the line names it).
PHRASES = {
    "float_parsing": "is not a number; use a decimal such as 1e-4",
    "float_type": "is not a number; use a decimal such as 1e-4",
    "finite_number": "is not a finite number; use a decimal such as 1e-4",
    "int_parsing": "is not an integer; use a whole number such as 2",
    "int_type": "is not an integer; use a whole number such as 2",
    "int_from_float": "is not an integer; use a whole number such as 2",
    "bool_parsing": "is not a boolean; use true or false",
    "bool_type": "is not a boolean; use true or false",
    "string_type": "is not text",
    "string_too_short": "is empty",
}
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _field_fix(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The ``fix`` a field declares (``json_schema_extra={"fix": ...}``; for an item of a list: its
    item type's)."""
    model: Any = root
    info = None
    for part in (p for p in loc if isinstance(p, str)):
        info = model.model_fields.get(part) if model is not None else None
        model = info.annotation if info is not None and isinstance(info.annotation, type) else None
    if info is None:
        return ""
    extras = [info.json_schema_extra] + [getattr(meta, "json_schema_extra", None)
                                         for arg in getattr(info.annotation, "__args__", ())
                                         for meta in getattr(arg, "__metadata__", ())]
    return next((e["fix"] for e in extras if isinstance(e, dict) and "fix" in e), "")


def message(error: Mapping[str, Any], root: type[BaseModel], *, origins: Mapping[str, str],
            given: Mapping[str, Any], known: list[str]) -> str:
    """One line for one pydantic error of model ``root``: where the value came from (``origins``:
    key -> the name the user set it by), the value as given (``given``), what is wrong, the fix."""
    if error["type"] == "cross_field":
        return error["msg"]
    names = [part for part in error["loc"] if isinstance(part, str)]
    key = ".".join(names)
    origin = origins.get(key, key)
    raw = given.get(key, error.get("input"))
    ctx = error.get("ctx") or {}
    hint = _field_fix(root, tuple(error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"{origin}: unknown key {key!r}; known keys: {', '.join(known)}"
    if error["type"] == "literal_error":
        return f"{origin}={raw!r} is not allowed; use {str(ctx.get('expected', '')).replace(chr(39), '')}"
    item = len(names) < len(error["loc"])  # one value of a list, e.g. the 0 of BS_CHOICES="0 2"
    prefix = f"{origin}={raw!r}" + (f" has {error['input']!r}, which" if item else "")
    if error["type"] in BOUNDS:
        (limit,) = [v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")]
        return f"{prefix} must be {BOUNDS[error['type']]} {limit:g}" + (f": {hint}" if hint else "")
    if error["type"] in ("empty", "duplicates"):
        return f"{prefix} {error['msg']}"
    if error["type"] == "string_too_short" and hint:
        return f"{prefix} is empty; {hint}"
    return f"{prefix} {PHRASES.get(error['type'], error['msg'])}"
