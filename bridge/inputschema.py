"""The lenient JSON Schema of what the bridge accepts: ``oscc-bridge schema --input``.

`bridge.schema` describes the canonical spelling (the tables' names), which is what the
bridge *emits*. On input the decoder (`bridge.oscc.spelling.normalize`) accepts more, and a
producer validating against the canonical schema would reject input the bridge takes —
the guide's own JavaScript sample among it. This module derives, from the same models,
a schema that accepts every spelling the decoder accepts::

    property names   any case (``dateTIme``), plus each model's ``__aliases__`` (``date``)
    enum values      any case (``"POST"``, ``"PERSON"``)
    booleans         also the strings "true"/"false" in any case
    integers         also strings of digits ("3")
    strings          also numbers and booleans (the JavaScript sample sends numbers)
    extra fields     allowed: the bridge carries them through

Patterns use ASCII character classes (``[dD][aA]...``), not flags, so every JSON Schema
validator reads them alike. The schema is a little more lenient than the decoder where
JSON Schema cannot say what the decoder checks (a dateTime that is no date is refused
with 13, a number turned string may outgrow its limit); it never refuses what the
decoder accepts (tests/test_inputschema.py checks that over the models' generator).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from bridge.oscc import models

# the decoder's own patterns, so the schema cannot drift from what it takes
from bridge.oscc.spelling import BOOLS, INT
from bridge.schema import C, add_limits, structs
from bridge.topology import Topology

# The AMQP messages the bridge consumes, by routing key, and their body's model.
INPUTS: dict[str, type[models.Wire]] = {
    Topology.contact_new_key(C): models.NewContact,
    Topology.stream_response_key(C): models.StreamResponse,
}
# str.lower() maps the Kelvin sign to "k": the decoder matches it, so does the schema.
_EXTRA_CASES = {"k": "\u212a"}


def any_case(text: str) -> str:
    """A regex (no anchors) matching `text` in any letter case, as ``str.lower`` does."""
    out = []
    for ch in text:
        low = ch.lower()
        if low.isascii() and low.isalpha():
            out.append(f"[{low}{low.upper()}{_EXTRA_CASES.get(low, '')}]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _one_of(words: list[str]) -> str:
    return "^(?:" + "|".join(any_case(w) for w in words) + ")$"


_INT_STRING = {"type": "string", "pattern": f"^{INT.pattern}$"}
_BOOL_STRING = {"type": "string", "pattern": _one_of(list(BOOLS))}


def lenient(node: Any) -> Any:
    """The lenient form of one schema node (not a Struct's object schema: see `_struct`)."""
    if not isinstance(node, dict) or "$ref" in node:
        return node
    if "anyOf" in node:
        return {**node, "anyOf": [lenient(n) for n in node["anyOf"]]}
    if "enum" in node and all(isinstance(v, str) for v in node["enum"]):
        rest = {k: v for k, v in node.items() if k not in ("enum", "type")}
        return {**rest, "type": "string", "pattern": _one_of(node["enum"])}
    match node.get("type"):
        case "array":
            return {**node, "items": lenient(node.get("items", {}))}
        case "object":
            return {
                **node,
                "additionalProperties": lenient(node.get("additionalProperties", True)),
            }
        case "string":
            return {"anyOf": [node, {"type": ["number", "boolean"]}]}
        case "integer":
            return {"anyOf": [node, _INT_STRING]}
        case "boolean":
            return {"anyOf": [node, _BOOL_STRING]}
    return node


def _present(pattern: str) -> dict[str, Any]:
    """Some property name matches `pattern` (JSON Schema's `required` wants exact names)."""
    return {"not": {"propertyNames": {"not": {"pattern": pattern}}}}


def _struct(cls: type[msgspec.Struct], comp: dict[str, Any]) -> dict[str, Any]:
    """A Struct's object schema with every spelling of each field name."""
    patterns: dict[str, Any] = {}
    by_name: dict[str, str] = {}
    for name, sub in comp.get("properties", {}).items():
        spellings = [name, *(a for a, c in getattr(cls, "__aliases__", {}).items() if c == name)]
        by_name[name] = _one_of(spellings)
        patterns[by_name[name]] = lenient(sub)
    out = {k: v for k, v in comp.items() if k not in ("properties", "required")}
    out |= {"type": "object", "patternProperties": patterns, "additionalProperties": True}
    required = [n for n in comp.get("required", []) if n in by_name]
    if required:
        out["allOf"] = [{"title": f"{n} is present", **_present(by_name[n])} for n in required]
    return out


def input_schema() -> dict[str, Any]:
    """One JSON Schema (2020-12) document of every body the bridge consumes, lenient."""
    types = list(INPUTS.values())
    refs, comps = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    add_limits(comps, types)
    classes = {cls.__name__: cls for cls in structs(types)}
    defs = {
        name: _struct(classes[name], comp) if name in classes else lenient(comp)
        for name, comp in comps.items()
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "oscc-bridge AMQP input (lenient)",
        "description": (
            "Bodies the bridge accepts on the queues it consumes, in every spelling of the "
            "guide and its samples (any key case, the guide's alternative names, upper-case "
            'enum values, "true" and "3" as strings); <c> is the connector\'s name. The '
            "bridge emits the canonical spelling: see `oscc-bridge schema`."
        ),
        "messages": {key: ref for key, ref in zip(INPUTS, refs, strict=True)},
        "$defs": defs,
    }
