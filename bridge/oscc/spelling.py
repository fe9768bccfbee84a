"""Every spelling the guide uses in, one canonical spelling out (`normalize`).

The guide's examples disagree with its tables (``additionalInfo`` vs ``additionalInfos``,
``date`` vs ``dateTime``, ``url`` vs ``URL``, upper-case ``"POST"``, ``"true"`` as a
string, ...). `normalize` renames keys to the tables' names, canonicalizes enum case and
turns strings into the booleans and integers the tables ask for, from a plan compiled
once per Struct of `bridge.oscc.models`; codec.py then validates the result.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from bridge.oscc.models import Wire

Norm = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    names: dict[str, str]  # lower-cased or alias spelling -> canonical encoded name
    types: dict[str, msgspec.inspect.Type]  # canonical encoded name -> field type
    enums: dict[str, dict[str, Any]]  # lenient enum fields: lower-cased -> canonical value
    # canonical encoded name -> its normalizer, only for fields that may need one (a
    # field typed Any or `int | str` is kept as sent and has none)
    norms: dict[str, Norm]


@functools.cache
def _plan(cls: type[Wire]) -> _Plan:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    names: dict[str, str] = {}
    types: dict[str, msgspec.inspect.Type] = {}
    norms: dict[str, Norm] = {}
    for f in info.fields:
        names[f.encode_name.lower()] = f.encode_name
        types[f.encode_name] = f.type
        norm = _compile(f.type)
        if norm is not None:
            norms[f.encode_name] = norm
    for alias, canonical in cls.__aliases__.items():
        names[alias.lower()] = canonical
    enums = {name: enum_values(e) for name, e in cls.__enums__.items()}
    return _Plan(names, types, enums, norms)


@functools.cache
def enum_values(cls: type[enum.Enum]) -> dict[str, Any]:
    """The values of enum `cls` by their lower-cased spelling (case-blind lookup)."""
    return {str(m.value).lower(): m.value for m in cls}


INT = re.compile(r"[+-]?[0-9]{1,18}")  # an integer in a string; ASCII only: int("٣") would be 3
BOOLS = {"true": True, "false": False}


def _norm_str(value: Any) -> Any:
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _norm_bool(value: Any) -> Any:
    return BOOLS.get(value.lower(), value) if isinstance(value, str) else value


def _norm_int(value: Any) -> Any:
    return int(value) if isinstance(value, str) and INT.fullmatch(value) else value


def _compile(tp: msgspec.inspect.Type) -> Norm | None:
    """The normalizer for values of type `tp`, built once per field (see `normalize`);
    None when values of that type are kept as they are."""
    match tp:
        case msgspec.inspect.StructType(cls=struct_cls):
            return lambda v: _normalize_struct(v, struct_cls) if isinstance(v, dict) else v
        case msgspec.inspect.UnionType(types=types):
            members = [t for t in types if not isinstance(t, msgspec.inspect.NoneType)]
            # `int | str` fields keep what was sent; `X | None` normalizes as X (every
            # normalizer passes None through).
            return _compile(members[0]) if len(members) == 1 else None
        case msgspec.inspect.ListType(item_type=item_type):
            item = _compile(item_type)
            if item is None:
                return None
            return lambda v: [item(x) for x in v] if isinstance(v, list) else v
        case msgspec.inspect.EnumType(cls=enum_cls):
            values = enum_values(enum_cls)
            return lambda v: values.get(v.lower(), v) if isinstance(v, str) else v
        case msgspec.inspect.BoolType():
            return _norm_bool
        case msgspec.inspect.IntType():
            return _norm_int
        case msgspec.inspect.StrType():
            return _norm_str
    return None


def normalize(value: Any, tp: msgspec.inspect.Type | type[Wire]) -> Any:
    """Return `value` (decoded JSON) in canonical form for type `tp`.

    Renames alternative keys, canonicalizes enum case, turns ``"true"``/``"3"`` into
    booleans/integers where the table says so (and numbers into strings where it says
    String). Unknown keys are kept as they are. Values that cannot be made to fit are
    left alone for `msgspec.convert` to reject with a precise message.
    """
    if isinstance(tp, type):
        # Straight to the cached plan: msgspec.inspect.type_info re-evaluates every
        # annotation of the tree on each call (milliseconds per message).
        return _normalize_struct(value, tp) if isinstance(value, dict) else value
    norm = _compile(tp)
    return value if norm is None else norm(value)


def _normalize_struct(value: dict[str, Any], cls: type[msgspec.Struct]) -> dict[str, Any]:
    # On the webhook's hot path: per-field normalizers are compiled once in the plan.
    plan = _plan(cls)
    types, names, norms, enums = plan.types, plan.names, plan.norms, plan.enums
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in types:
            name = key  # already the canonical spelling (the usual case)
        elif isinstance(key, str):
            name = names.get(key.lower(), key)
            if name in out and name != key:
                continue  # the canonical spelling was already given; it wins
        else:
            name = key
        norm = norms.get(name)
        if norm is not None:
            item = norm(item)
        if name in enums and isinstance(item, str):
            item = enums[name].get(item.lower(), item)
        out[name] = item
    return out
