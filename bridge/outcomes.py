"""What the consumer tells RabbitMQ about a message it took: dead letters and outcomes.

Pure functions: the consumer (`bridge.consumer`) publishes what they build::

    dead letter   the original message (body, properties, headers) to ``<p>.dead`` under
                  its own ``<c>.*`` routing key, else ``<c>.contact.new`` /
                  ``<c>.stream.response`` (it came through the default exchange), plus
                  headers oscc-error-code, oscc-error-text, oscc-dead-reason
    outcome       {"messageId", "publishedObjectId", "sourceId", "errorCode", "errorText",
                  "reason"?} (a stream response names its "id" instead of the two ids) to
                  ``<c>.contact.accepted|rejected`` and to the message's reply_to;
                  correlation_id = the message's correlation_id, else its message_id

Reasons quote OSCC's errorText, which may quote a secret: each is masked (`logs.mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bridge import errors, logs
from bridge.oscc import codec, codes

CONTACT = "contact"
STREAM_RESPONSE = "stream_response"
MAX_REASON = 1000  # characters of oscc-dead-reason / the outcome's reason
# Original headers larger than this are not copied onto a dead letter: with ours added
# they could outgrow the broker's frame (131072 bytes by default).
MAX_COPIED_HEADERS = 65536


@dataclass(frozen=True, slots=True)
class Outcome:
    """An outcome message: body, headers and correlation id."""

    body: bytes
    headers: dict[str, Any]
    correlation_id: str | None
    accepted: bool


def key_of(kind: str, message_id: str | None, published_id: str | None) -> str | None:
    """The dedupe key: the AMQP message_id, else (contacts only) publishedObject.id.

    aio-pika/aiormq give every message they publish a random message_id, so the
    fallback serves other clients (pika, Java, .NET, the management API). A stream
    response without message_id is not deduplicated: the same stream id and page can be
    a legitimate answer to a second Stream request.
    """
    if message_id:
        return f"{kind}:m:{message_id}"
    if kind == CONTACT and published_id:
        return f"{kind}:p:{published_id}"
    return None


def ids_of(kind: str, body: Any) -> dict[str, str | None]:
    """The ids an outcome names, from the canonical body or, best effort, raw bytes."""
    if isinstance(body, bytes | str):
        try:
            body = codec.decode_json(body)
        except (errors.Rejected, RecursionError, UnicodeDecodeError):
            return {}
    if not isinstance(body, dict):
        return {}
    if kind == STREAM_RESPONSE:
        return {"id": _str(body.get("id"))}
    source, published = body.get("source"), body.get("publishedObject")
    return {
        "publishedObjectId": _str(published.get("id")) if isinstance(published, dict) else None,
        "sourceId": _str(source.get("id")) if isinstance(source, dict) else None,
    }


def rejection(exc: errors.Rejected, *, by_oscc: bool) -> tuple[int, str, str]:
    """(code, errorText, reason) of a rejected message; the reason names the field."""
    code = exc.code or codes.ErrorCode.WRONG_API_REQUEST
    text = codes.text_of(code)
    reason = f"OSCC answered {code} {text}: {exc.text}" if by_oscc else exc.text
    if exc.path and exc.path not in reason:
        reason = f"{reason} (at {exc.path})"
    return int(code), text, shorten(logs.mask(reason))


def shorten(text: str, limit: int = MAX_REASON) -> str:
    """`text` cut in the middle to `limit` characters: msgspec quotes a whole bad value
    (200 KB of it, if that is what was sent), and a header that outgrows the broker's
    frame closes the connection (docs/SECURITY.md B2). The end, which names the field,
    is kept."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[: limit - tail - 5]} ... {text[-tail:]}"


def outcome(
    message: AbstractIncomingMessage, ids: dict[str, Any], code: int, reason: str | None
) -> Outcome:
    """The outcome of `message`: OSCC's code (0 accepted) and, when there is more to say
    (the offending field, ``duplicate``), a reason."""
    text = codes.text_of(code)
    body: dict[str, Any] = {"messageId": message.message_id, **ids}
    body |= {"errorCode": int(code), "errorText": text}
    if reason is not None:
        body["reason"] = logs.mask(reason)
    return Outcome(
        codec.encode(body),
        {"oscc-error-code": int(code), "oscc-error-text": text},
        message.correlation_id or message.message_id,
        code == codes.ErrorCode.NO_ERROR,
    )


def dead_letter(
    message: AbstractIncomingMessage,
    connector: str,
    default_key: str,
    code: int,
    reason: str,
) -> tuple[aio_pika.Message, str]:
    """A copy of `message` for the dead exchange, and its routing key."""
    m = message
    key = m.routing_key or ""
    if not key.startswith(f"{connector}."):
        key = default_key  # came through the default exchange: the key was the queue name
    headers = dict(m.headers or {})
    size = sum(len(str(k)) + len(str(v)) for k, v in headers.items())
    if size > MAX_COPIED_HEADERS:
        headers = {"oscc-original-headers-dropped": size}
    headers |= {
        "oscc-connector": connector,
        "oscc-error-code": int(code),
        "oscc-error-text": codes.text_of(code),
        "oscc-dead-reason": logs.mask(reason),
        "oscc-original-exchange": m.exchange or "",
        "oscc-original-routing-key": m.routing_key or "",
    }
    copy = aio_pika.Message(
        m.body,
        headers=headers,
        content_type=m.content_type,
        content_encoding=m.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=m.priority,
        correlation_id=m.correlation_id,
        reply_to=m.reply_to,
        message_id=m.message_id,
        timestamp=m.timestamp,
        type=m.type,
        app_id=m.app_id,
        # no expiration (a dead letter must not vanish) and no user_id (the broker refuses
        # a user_id that is not the publishing connection's user)
    )
    return copy, key


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


__all__ = [
    "CONTACT",
    "STREAM_RESPONSE",
    "Outcome",
    "dead_letter",
    "ids_of",
    "key_of",
    "outcome",
    "rejection",
    "shorten",
]
