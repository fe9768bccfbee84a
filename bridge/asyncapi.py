"""The AsyncAPI 3.0 document of the AMQP interface (deploy/asyncapi.yaml).

Built from `bridge.schema.catalogue` and `bridge.schema.components`, names from
`bridge.topology`, so it cannot describe other messages than the bridge sends and takes::

    oscc-bridge schema --asyncapi > deploy/asyncapi.yaml

tests/test_schema.py fails when the file and the models drift apart.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bridge import __version__
from bridge.oscc import models
from bridge.schema import PUBLICATION_TYPES, C, Message, catalogue, components
from bridge.topology import Topology

_AMQP = "0.3.0"  # AMQP bindings version
_VHOST = "/"


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": _VHOST}


def _queue(name: str) -> dict[str, Any]:
    return {"name": name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": _VHOST}


def _address(routing_key: str) -> str:
    return routing_key.replace(C, "{connector}").replace("<type>", "{type}")


_DEAD_HEADERS = (
    ("oscc-connector", "string", "the connector's name"),
    ("oscc-error-code", "integer", "the guide's error code: 11, 12 or 13"),
    ("oscc-error-text", "string", "the code's name, e.g. STRING_OUT_OF_BOUND"),
    ("oscc-dead-reason", "string", "what is wrong: OSCC's answer or the offending field"),
    ("oscc-original-exchange", "string", "the exchange it was published to ('' = default)"),
    ("oscc-original-routing-key", "string", "its routing key (or queue name)"),
    ("oscc-dead-at", "string", "when it was dead-lettered (ISO 8601, UTC)"),
    ("oscc-replay-count", "integer", "times `oscc-bridge dead replay` sent it back before"),
)
_CONNECTOR_PARAM = {"description": "The connector's name: connectors[].name, [a-z0-9_-]."}
_COMMON_HEADERS = (("oscc-connector", "string", "the connector's name"),)


def _headers(m: Message) -> dict[str, Any]:
    headers = _COMMON_HEADERS + m.headers
    return {
        "type": "object",
        "properties": {name: {"type": kind, "description": text} for name, kind, text in headers},
        "required": ["oscc-connector"],
    }


def _message(m: Message, refs: dict[str, Any]) -> dict[str, Any]:
    kind = Topology.message_type(C, m.routing_key)
    if m.consumed:
        props = (
            "Properties the bridge reads: message_id (the key that keeps a redelivered "
            "contact from being created twice), correlation_id and reply_to (the outcome "
            "is also sent to reply_to)."
        )
    else:
        props = (
            "AMQP properties: content_type application/json, delivery_mode 2 (persistent), "
            f"message_id, timestamp, app_id oscc-bridge, type {kind!r}."
        )
    out: dict[str, Any] = {
        "name": m.name,
        "title": m.routing_key,
        "summary": m.summary,
        "description": props,
        "contentType": "application/json",
        "payload": refs[m.routing_key],
        "bindings": {"amqp": {"messageType": kind, "bindingVersion": _AMQP}},
    }
    if not m.consumed:
        out["headers"] = _headers(m)
    if m.body is models.StreamRequest:
        out["correlationId"] = {
            "description": "correlation_id of the request and of its Stream Response",
            "location": "$message.payload#/id",
        }
    return out


def asyncapi(prefix: str = "oscc") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the AMQP interface, names built with `prefix`."""
    top = Topology(prefix)
    refs, comps = components("#/components/schemas/{name}")
    main_x = _exchange(top.exchange, "topic")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for m in catalogue():
        messages[m.name] = _message(m, refs)
        ref = {"$ref": f"#/components/messages/{m.name}"}
        params: dict[str, Any] = {"connector": _CONNECTOR_PARAM}
        if "<type>" in m.routing_key:
            params["type"] = {"enum": list(PUBLICATION_TYPES), "description": "publication type"}
        channels[m.name] = {
            "address": _address(m.routing_key),
            "title": m.routing_key,
            "description": (
                f"Routing key on the durable topic exchange {top.exchange!r} (alternate "
                f"exchange {top.unrouted!r})."
            ),
            "parameters": params,
            "messages": {m.name: ref},
            "bindings": {"amqp": {"is": "routingKey", "exchange": main_x, "bindingVersion": _AMQP}},
        }
        channel_ref = {"$ref": f"#/channels/{m.name}"}
        if m.consumed:
            queue = (
                top.contact_queue(C)
                if m.body is models.NewContact
                else (top.stream_response_queue(C))
            )
            qname = f"{m.name}Queue"
            channels[qname] = {
                "address": _address(queue),
                "title": queue,
                "description": (
                    f"Durable queue (broker.queue_type) bound to {top.exchange!r} with "
                    f"{m.routing_key!r}; may also be published to directly through the "
                    "default exchange."
                ),
                "parameters": {"connector": _CONNECTOR_PARAM},
                "messages": {m.name: ref},
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": _queue(_address(queue)),
                        "bindingVersion": _AMQP,
                    }
                },
            }
            operations[f"publish{m.name[0].upper()}{m.name[1:]}"] = {
                "action": "send",
                "summary": f"A channel back-end publishes {m.routing_key}.",
                "channel": channel_ref,
                "messages": [{"$ref": f"#/channels/{m.name}/messages/{m.name}"}],
                "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": _AMQP}},
            }
            operations[f"consume{m.name[0].upper()}{m.name[1:]}"] = {
                "action": "receive",
                "summary": (
                    f"The bridge consumes {queue}, forwards to OSCC and acks after OSCC answered."
                ),
                "channel": {"$ref": f"#/channels/{qname}"},
                "messages": [{"$ref": f"#/channels/{qname}/messages/{m.name}"}],
                "bindings": {"amqp": {"ack": True, "bindingVersion": _AMQP}},
            }
        else:
            operations[f"publish{m.name[0].upper()}{m.name[1:]}"] = {
                "action": "send",
                "summary": f"The bridge publishes {m.routing_key} with publisher confirms.",
                "channel": channel_ref,
                "messages": [{"$ref": f"#/channels/{m.name}/messages/{m.name}"}],
                "bindings": {
                    "amqp": {"deliveryMode": 2, "timestamp": True, "bindingVersion": _AMQP}
                },
            }
    _add_dead_and_unrouted(top, channels, messages)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "oscc-bridge AMQP interface",
            "version": __version__,
            "description": (
                "Messages between channel back-ends and OpenScape Contact Center's "
                "OpenMedia Framework, through oscc-bridge and RabbitMQ. {connector} is a "
                f"connector's name; {prefix!r} is broker.exchange. Generated by "
                "`oscc-bridge schema --asyncapi`; do not edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker of broker.url (or AMQP_URL).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": comps},
    }


def _add_dead_and_unrouted(
    top: Topology, channels: dict[str, Any], messages: dict[str, Any]
) -> None:
    dead = top.dead_queue(C)
    messages["deadLetter"] = {
        "name": "deadLetter",
        "title": "dead letter",
        "summary": (
            "A consumed message OSCC or the bridge refused (11, 12, 13, undecodable): the "
            "original body and properties, with the error in headers. Routing key: the "
            "original one, or <c>.contact.new / <c>.stream.response when it came through "
            "the default exchange."
        ),
        "payload": {"description": "the original body, unchanged"},
        "headers": {
            "type": "object",
            "properties": {
                name: {"type": kind, "description": text} for name, kind, text in _DEAD_HEADERS
            },
            "required": [name for name, _, _ in _DEAD_HEADERS],
        },
    }
    channels["deadLetterQueue"] = {
        "address": _address(dead),
        "title": dead,
        "description": (
            f"Dead letters of {{connector}}: the topic exchange {top.dead_exchange!r} "
            "routes them here by their original routing key (bound '{connector}.#'). "
            "Never consumed by the bridge: for an operator to inspect and re-publish."
        ),
        "parameters": {"connector": _CONNECTOR_PARAM},
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        "bindings": {
            "amqp": {"is": "queue", "queue": _queue(_address(dead)), "bindingVersion": _AMQP}
        },
    }
    messages["unrouted"] = {
        "name": "unrouted",
        "title": "unrouted",
        "summary": "Any message published to the main exchange that no queue was bound for.",
        "payload": {"description": "any message the bridge published, unchanged"},
    }
    channels["unroutedQueue"] = {
        "address": top.unrouted,
        "title": top.unrouted,
        "description": (
            f"The alternate exchange of {top.exchange!r} is the fanout exchange "
            f"{top.unrouted!r}, bound to this queue, so nothing published is dropped."
        ),
        "messages": {"unrouted": {"$ref": "#/components/messages/unrouted"}},
        "bindings": {
            "amqp": {"is": "queue", "queue": _queue(top.unrouted), "bindingVersion": _AMQP}
        },
    }


# ---------------------------------------------------------------------------------------
# Output

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
# plain words a YAML 1.1 reader (PyYAML) turns into booleans or null
_YAML11_WORDS = frozenset(("y", "n", "yes", "no", "on", "off", "true", "false", "null"))
# what YAML readers refuse raw or read as line breaks even inside quotes; JSON leaves them
_UNSAFE = re.compile("[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def to_yaml(value: Any, indent: int = 0) -> str:
    """YAML of JSON-like data (dicts, lists, str, int, float, bool, None).

    Strings are written JSON-quoted (a JSON string is a YAML double-quoted scalar), so the
    runtime needs no YAML library and a reader gets exactly the JSON value back.
    """
    pad = "  " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML11_WORDS
            name = key if plain else _quote(key)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{name}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{name}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                body = to_yaml(item, indent + 1)
                lines.append(f"{pad}- {body[len(pad) + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _quote(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    return _UNSAFE.sub(
        lambda m: (
            f"\\u{ord(m.group()):04x}" if ord(m.group()) < 0x10000 else f"\\U{ord(m.group()):08x}"
        ),
        out,
    )


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, float) and not isinstance(value, bool):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 floats need a dot: 1e+20 would come back as a string
        return text if "." in text or "e" not in text else text.replace("e", ".0e", 1)
    return json.dumps(value)
