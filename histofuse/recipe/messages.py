"""Validation errors said the way a recipe author reads them: key path, what was expected, a close key name."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from histofuse.recipe.schema import Recipe


_EXPECTED = {
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "missing": "missing required key",
}


_UNION_TAG = re.compile(r"str|int|float|bool|(dict|list|literal|function-\w+)\[.*\]")


def _format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _UNION_TAG.fullmatch(str(part)):
            # Union branches add their type name to the location; the user never typed it.
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def show_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
        else:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_errors(error: ValidationError, model: type[BaseModel] = Recipe) -> list[str]:
    """Turn pydantic's errors into one line each: ``key.path: what was expected, got what``."""
    problems: list[str] = []
    seen_paths: set[str] = set()
    for err in error.errors():
        path = _format_path(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            known = _known_keys(model, err["loc"])
            hint = difflib.get_close_matches(key, known, n=1)
            msg = f"{path}: unknown key"
            if hint:
                msg += f"; did you mean '{hint[0]}'?"
            if known:
                msg += f" Known keys here: {', '.join(known)}"
            problems.append(msg)
            continue
        if kind in ("union_tag_invalid",) or path in seen_paths and kind in _EXPECTED:
            continue
        if kind in _EXPECTED:
            text = _EXPECTED[kind]
            if kind != "missing":
                text += f", got {show_value(err['input'])}"
        elif kind == "literal_error":
            text = f"expected {err['ctx']['expected']}, got {show_value(err['input'])}"
        elif kind == "value_error":
            text = str(err["msg"]).removeprefix("Value error, ")
        else:
            text = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {show_value(err['input'])}"
        seen_paths.add(path)
        problems.append(f"{path}: {text}")
    return problems
