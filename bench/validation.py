"""Declarative checks of what users write (study files, recipes, adapter options) with pydantic, and the one-line
errors they become: the file, the key (`evaluate[2].frozen`) and the fix.

pydantic costs a tenth of a second to import, so this module is imported only where such a file or option is
read, never at the command line's start-up (`bench --help` stays fast).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from bench.errors import BenchError

T = TypeVar("T")

# what each kind of pydantic failure asks of the user, in bench's words
MESSAGES = {
    "missing": "missing",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "dataclass_type": "must be a table",
}


class Table(BaseModel):
    """A table of a file: frozen, no unknown keys. Its scalars are declared Strict (a TOML "3" is not 3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def validate(kind: type[T], data: Any, where: str, context: dict | None = None) -> T:
    """`data` as `kind` (a pydantic model or a dataclass); its first failure as one BenchError `where: key: fix`."""
    try:
        return TypeAdapter(kind).validate_python(data, context=context)
    except ValidationError as exc:
        raise BenchError(f"{where}: {explain(exc, kind)}") from None


UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")  # a key the table does not take


def explain(exc: ValidationError, kind: type | None = None) -> str:
    """One failure as `key: what to do`: an unknown key first, since a misspelt key is also the cause of the
    `missing` one it was meant to be."""
    error = first(exc)
    return f"{location(error['loc']) or 'top level'}: {message(error, kind)}"


def first(exc: ValidationError) -> dict:
    """The failure to report: the first unknown key, else the first failure."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] in UNKNOWN), errors[0])


def location(loc: tuple) -> str:
    """pydantic's location as the file's key: ('evaluate', 2, 'frozen') -> `evaluate[2].frozen`."""
    key = ""
    for part in loc:
        if part == "[key]":  # a table's key was refused: the location names it already
            continue
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def message(error: dict, kind: type | None = None) -> str:
    """What the user is to do about one failure: a field's description is the fix for a missing one, and an
    unknown key is told the keys its table takes (and the one likely meant)."""
    problem, ctx, loc = error["type"], error.get("ctx", {}), error["loc"]
    if problem in ("value_error", "assertion_error"):
        return str(ctx["error"])
    if problem == "missing" and (field := _field(kind, loc)) is not None and field.description:
        return f"missing: {field.description}"
    if problem in UNKNOWN:
        return unknown_key(str(loc[-1]), _names(_type_at(kind, loc[:-1])))
    if problem == "greater_than":
        return "must be positive" if ctx["gt"] == 0 else f"must be more than {ctx['gt']}"
    if problem == "greater_than_equal":
        return "must be zero or more" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}"
    if problem == "literal_error":
        return f"must be one of {ctx['expected']}"
    return MESSAGES.get(problem, error["msg"])


def unknown_key(key: str, allowed: list[str]) -> str:
    """What to say of `key`, which a table taking `allowed` does not."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}" if allowed else f"unknown key{hint}"


def _type_at(kind: Any, loc: tuple) -> Any:
    """The type the value at `loc` inside a `kind` has (None where it cannot be told)."""
    for part in loc:
        kind = _bare(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part) if isinstance(part, str) else None
            kind = field.annotation if field else None
        else:  # a container's item: a table's value, a list's item
            inner = [a for a in get_args(kind) if a is not Ellipsis]
            kind = inner[-1] if inner else None
    return _bare(kind)


def _field(kind: Any, loc: tuple) -> Any:
    """The pydantic field at `loc` inside `kind`, if it is a model's field."""
    parent = _type_at(kind, loc[:-1])
    if isinstance(parent, type) and issubclass(parent, BaseModel) and isinstance(loc[-1], str):
        return parent.model_fields.get(loc[-1])
    return None


def _names(kind: Any) -> list[str]:
    """The keys a table of type `kind` takes."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    return [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []


def _bare(kind: Any) -> Any:
    """`kind` without Annotated's metadata and without `| None`."""
    while get_origin(kind) is Annotated or (get_args(kind) and type(None) in get_args(kind)):
        kind = get_args(kind)[0] if get_origin(kind) is Annotated else next(
            a for a in get_args(kind) if a is not type(None))
    return kind
