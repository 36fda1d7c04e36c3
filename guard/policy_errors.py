"""Pydantic validation errors as lines a user can act on: the field's path, the bad value, what is allowed.

``Policy.from_mapping`` raises these (``AxisguardError``) before anything serves: an unknown field
lists the fields its model allows, a bad literal the values allowed.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of an error location."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        models = _models_in(info.annotation) if info else []
        model = models[0] if models else None
    return model


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(policy)"


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per error of validating ``root``: field path, the bad value and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _format_loc(loc)
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            model = _model_at(root, loc)
            allowed = ", ".join(model.model_fields) if model else "?"
            lines.append(f"{where}: unknown field (value {value!r}); allowed fields: {allowed}")
        elif kind == "missing":
            lines.append(f"{where}: required field is missing")
        elif kind == "literal_error":
            lines.append(f"{where}: {value!r} is not allowed; allowed values: {err['ctx']['expected']}")
        elif kind == "value_error":
            lines.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {err['msg']} (got {value!r})")
    return lines


