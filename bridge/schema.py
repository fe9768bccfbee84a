"""JSON Schema of every message on the AMQP interface, and the AsyncAPI document of it.

`schemas()` is what ``oscc-bridge schema`` prints (`bridge.cli` owns the command): one
JSON Schema document whose ``messages`` maps each routing key (as DESIGN.md writes it,
``<c>.event.delivered``) to the schema of its body, with the bodies' components under
``$defs``. The bodies are the models of `bridge.oscc.models` (canonical spelling; the
bridge accepts the guide's other spellings on input, see `bridge.inputschema`) plus the
two bodies only the bridge makes, `ContactOutcome` and `SessionChange`. `bridge.asyncapi`
describes the same messages with their exchanges, queues, headers and properties as an
AsyncAPI 3.0 document.
"""

from __future__ import annotations

import datetime as dt
import inspect
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from bridge.oscc import models
from bridge.topology import SessionChange as SessionChangeName
from bridge.topology import Topology

# ---------------------------------------------------------------------------------------
# Bodies the bridge makes itself


class ContactOutcome(msgspec.Struct, kw_only=True, rename="camel"):
    """What became of one new contact: body of ``<c>.contact.accepted`` and
    ``<c>.contact.rejected`` (and of the copy sent to the contact's `reply_to`).

    `errorCode`/`errorText` are OSCC's answer, or the code OSCC would have given when the
    bridge rejected the contact itself (11, 12, 13); `reason` says more when there is more
    to say (the offending field, ``duplicate``, ...).
    """

    message_id: str | None = None
    published_object_id: str | None = None
    source_id: str | None = None
    error_code: int = 0
    error_text: str = "NO_ERROR"
    reason: str | None = None


class SessionChange(msgspec.Struct, kw_only=True, rename="camel"):
    """A connector's session changed: body of ``<c>.session.registered``, ``.lost`` and
    ``.failed``. `userCredentials` (from OSCC's registration answer) is present only when
    the connector has ``publish_credentials = true``."""

    connector: str
    title: str
    state: str
    at: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    error_code: int | None = None
    error_text: str | None = None
    user_credentials: models.UserCredentials | None = None


# ---------------------------------------------------------------------------------------
# The catalogue: every message family, once

C = "<c>"  # how DESIGN.md writes the connector part of a name
PUBLICATION_TYPES: tuple[str, ...] = tuple(t.value.lower() for t in models.ContactType)
SESSION_CHANGES: tuple[SessionChangeName, ...] = typing.get_args(SessionChangeName)


@dataclass(frozen=True, slots=True)
class Message:
    """One message family: who sends it, its routing key, body type and headers."""

    name: str  # AsyncAPI message/channel id
    routing_key: str  # with "<c>" for the connector (and "<type>" for publications)
    body: type
    consumed: bool  # True: the bridge consumes it; False: the bridge publishes it
    summary: str
    headers: tuple[tuple[str, str, str], ...] = ()  # (name, JSON type, description)


# absent when OSCC did not send the field
EVENT_HEADERS = (
    ("oscc-contact-id", "string", "the event's contactID"),
    ("oscc-agent-id", "string", "the event's agentID"),
    ("oscc-event", "string", "the event's openMediaEventType"),
)
OUTCOME_HEADERS = (
    ("oscc-error-code", "integer", "errorCode of the outcome (0 = accepted)"),
    ("oscc-error-text", "string", "errorText of the outcome"),
)


def catalogue() -> list[Message]:
    """Every message family of the AMQP interface (DESIGN.md § Broker side)."""
    t = Topology
    events = {cls.kind: cls for cls in models.EVENT_CLASSES.values()}
    events["unknown"] = models.OpenMediaEvent
    out = [
        Message(
            "contactNew",
            t.contact_new_key(C),
            models.NewContact,
            True,
            "A New Contact (guide §3) for OSCC; dateTime is filled with the current UTC "
            "time when absent; every spelling of the guide's examples is accepted.",
        ),
        Message(
            "streamResponse",
            t.stream_response_key(C),
            models.StreamResponse,
            True,
            "A Stream Response (guide §4): the answer to a <c>.stream.request.",
        ),
    ]
    out += [
        Message(
            f"event{kind.capitalize()}",
            t.event_key(C, kind),
            cls,
            False,
            f"OSCC reported the OpenMediaEvent {kind!r} (guide §5)"
            + (" of a type the guide does not list" if kind == "unknown" else "")
            + ".",
            EVENT_HEADERS,
        )
        for kind, cls in ((k, events[k]) for k in models.EVENT_KINDS)
    ]
    out += [
        Message(
            "publication",
            t.publication_key(C, "<type>"),
            models.OutgoingPublication,
            False,
            "An agent's reply to post (Outgoing Publication, guide §4); <type> is the "
            f"lower-cased type: {', '.join(PUBLICATION_TYPES)}.",
            (
                ("oscc-published-id", "string", "objectToBePublished.id"),
                ("oscc-in-reply-to", "string", "objectToBePublished.inReplyTo.id"),
            ),
        ),
        Message(
            "streamRequest",
            t.stream_request_key(C),
            models.StreamRequest,
            False,
            "OSCC asks for a contact's history (Stream Request, guide §4). reply_to names "
            "the queue for the Stream Response; correlation_id is the request's id.",
        ),
    ]
    out += [
        Message(
            f"contact{'Accepted' if accepted else 'Rejected'}",
            t.contact_outcome_key(C, accepted),
            ContactOutcome,
            False,
            f"A new contact was {'accepted' if accepted else 'rejected'}; correlation_id "
            "is the contact message's correlation_id, else its message_id.",
            OUTCOME_HEADERS,
        )
        for accepted in (True, False)
    ]
    out += [
        Message(
            f"session{change.capitalize()}",
            t.session_key(C, change),
            SessionChange,
            False,
            f"The connector's OSCC session is {change}.",
        )
        for change in SESSION_CHANGES
    ]
    return out


# ---------------------------------------------------------------------------------------
# JSON Schema


def structs(types: Sequence[type]) -> Iterator[type[msgspec.Struct]]:
    """Every Struct class reachable from `types`, each once."""
    seen: set[type] = set()
    todo: list[msgspec.inspect.Type] = list(msgspec.inspect.multi_type_info(types))
    while todo:
        match todo.pop():
            case msgspec.inspect.StructType(cls=cls, fields=fields) if cls not in seen:
                seen.add(cls)
                yield cls
                todo += [f.type for f in fields]
            case msgspec.inspect.UnionType(types=members):
                todo += members
            case msgspec.inspect.ListType(item_type=item):
                todo.append(item)
            case msgspec.inspect.DictType(key_type=k, value_type=v):
                todo += [k, v]


def add_limits(components: dict[str, Any], types: Sequence[type]) -> None:
    """Write each model's `__limits__` (the guide's maxima) into its schema as maxLength."""
    for cls in structs(types):
        limits: dict[str, int] = getattr(cls, "__limits__", {})
        props = components.get(cls.__name__, {}).get("properties", {})
        for field, limit in limits.items():
            prop = props.get(field)
            if prop is None:
                continue
            branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") == "string"]
            for branch in branches:
                branch["maxLength"] = limit


def components(ref_template: str = "#/$defs/{name}") -> tuple[dict[str, Any], dict[str, Any]]:
    """(refs, components): the schema of each catalogue body (a `$ref`, keyed by routing
    key) and the component schemas they refer to, limits included."""
    messages = catalogue()
    types = [m.body for m in messages]
    refs, comps = msgspec.json.schema_components(types, ref_template=ref_template)
    add_limits(comps, types)
    for comp in comps.values():
        if "description" in comp:  # docstrings, as msgspec took them: indented
            comp["description"] = inspect.cleandoc(comp["description"])
    return {m.routing_key: ref for m, ref in zip(messages, refs, strict=True)}, comps


def schemas() -> dict[str, Any]:
    """One JSON Schema (2020-12) document of every message body on the AMQP interface."""
    refs, comps = components()
    messages = {}
    for m in catalogue():
        direction = "consumed" if m.consumed else "published"
        messages[m.routing_key] = {
            **refs[m.routing_key],
            "description": f"{direction}: " + m.summary,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "oscc-bridge AMQP messages",
        "description": (
            "Bodies (JSON, content_type application/json) of every message on oscc-bridge's "
            "AMQP interface, keyed by routing key; <c> is the connector's name."
        ),
        "messages": messages,
        "$defs": comps,
    }
