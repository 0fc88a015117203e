"""Turn pydantic validation errors into one sentence each, naming the key path and what is valid.

Used for models.toml (paths like `tiers.large.n_ctx`) and for tool arguments (`max_tokens`).
A field can state what it expects with `Field(json_schema_extra={"expect": "..."})`;
otherwise the expectation is derived from its type and bounds.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, Tag, ValidationError
from pydantic.fields import FieldInfo

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def key_path(loc: Sequence[str | int]) -> str:
    """`("tiers", "my tier", "n_ctx")` → `tiers."my tier".n_ctx` (TOML dotted-key spelling)."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _BARE_KEY.match(part):
            parts.append(("." if parts else "") + part)
        else:
            parts.append(("." if parts else "") + json.dumps(part))
    return "".join(parts)


def describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + '..."'
    if value is None:
        return "nothing"
    return type(value).__name__


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """`Annotated[int, Field(ge=1)] | None` → `(int, [Ge(1)])`."""
    metadata: list[Any] = []
    while True:
        if get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        elif get_origin(annotation) is Annotated:
            base, *extras = get_args(annotation)
            for extra in extras:
                metadata.extend([extra, *extra.metadata] if isinstance(extra, FieldInfo) else [extra])
            annotation = base
        else:
            return annotation, metadata


def _bounds(metadata: list[Any]) -> str:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt}"
    if low and high and low.startswith("≥") and high.startswith("≤"):
        return f"between {low[2:]} and {high[2:]}"
    return " and ".join(b for b in (low, high) if b)


def expectation(annotation: Any, field: FieldInfo | None = None) -> str:
    """What a value at this place must be, in words."""
    annotation, inner_metadata = _unwrap(annotation)
    for declared in (field, *inner_metadata):
        extra = declared.json_schema_extra if isinstance(declared, FieldInfo) else None
        if isinstance(extra, dict) and isinstance(extra.get("expect"), str):
            return extra["expect"]
    bounds = _bounds([*(field.metadata if field is not None else []), *inner_metadata])
    suffix = f" {bounds}" if bounds else ""
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + suffix
    if annotation is float:
        return "a number" + suffix
    if annotation is str:
        return "a string"
    if annotation is Path:
        return "a file path"
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(json.dumps(v) for v in get_args(annotation))
    if get_origin(annotation) is list:
        return "a list"
    return "a table"


def _tagged_member(annotation: Any, tag: str) -> Any:
    """The member of a tagged union (`Annotated[Model, Tag("x")] | ...`) whose tag is `tag`, or None."""
    if get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    for member in get_args(annotation):
        if get_origin(member) is Annotated:
            base, *extras = get_args(member)
            if any(isinstance(extra, Tag) and extra.tag == tag for extra in extras):
                return base
    return None


def _locate(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, FieldInfo | None, type[BaseModel] | None,
                                                                     list[str | int]]:
    """The type expected at `loc`, the field declaring it (None for a table entry), the model holding it,
    and `loc` without the tags pydantic puts in for the member of a tagged union it tried."""
    current: Any = model
    field: FieldInfo | None = None
    holder: type[BaseModel] | None = None
    path: list[str | int] = []
    for i, part in enumerate(loc):
        current, _ = _unwrap(current)
        if isinstance(part, str) and (member := _tagged_member(current, part)) is not None:
            current = member
            continue
        path.append(part)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None, None, current, [*path, *loc[i + 1:]]
            holder, field = current, current.model_fields[part]
            current = field.annotation
        elif get_origin(current) in (dict, list):
            current, field = get_args(current)[-1], None
        else:
            return current, field, holder, [*path, *loc[i + 1:]]
    return current, field, holder, path


def explain(exc: ValidationError, model: type[BaseModel], prefix: Sequence[str] = ()) -> list[str]:
    """One sentence per error in `exc`, raised while validating `model` at `prefix`."""
    sentences: list[str] = []
    for err in exc.errors():
        annotation, field, holder, loc = _locate(model, err["loc"])
        path = key_path([*prefix, *loc]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            elsewhere = getattr(holder, "key_of_another_kind", lambda key: None)(loc[-1])
            valid = ", ".join(holder.model_fields) if holder is not None else ""
            sentences.append(f"{path}: {elsewhere}" if elsewhere else f"{path}: unknown key; valid keys here are {valid}")
        elif kind == "missing":
            expect = f" ({expectation(annotation, field)})" if annotation is not None else ""
            sentences.append(f"{path}: is required{expect}")
        elif kind == "engine":  # a tagged union's discriminator (config.AnyTierConfig)
            given = err["input"].get("engine") if isinstance(err["input"], dict) else err["input"]
            sentences.append(f"{key_path([*prefix, *loc, 'engine'])}: {err['msg']}, got {describe_value(given)}")
        elif kind in ("value_error", "assertion_error"):
            sentences.append(f"{path}: {err['ctx']['error']}")
        else:
            expect = expectation(annotation, field) if annotation is not None else err["msg"].lower()
            sentences.append(f"{path}: must be {expect}, got {describe_value(err['input'])}")
    return sentences
