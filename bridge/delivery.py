"""What the consumer took from a queue: the kind of message, and one delivery decoded.

::

    Kind        contact | stream_response, with its queue and fallback routing key
    decode()    AMQP message ──► Work: the parsed body or why it is rejected (a body
                over broker.max_message_bytes is not read at all), the lane key (a
                contact's source.id, a stream response's id), the dedupe key, the ids an
                outcome names, and a logger bound to all of it

Pure functions and records; the consumer (`bridge.consumer`) acts on them, and
`bridge.outcomes` builds what it publishes about them.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from bridge import errors
from bridge.oscc import codec, codes
from bridge.topology import Topology


class Abandoned(Exception):
    """The message's channel is gone (it will be redelivered) or the consumer is stopping."""


class MessageKind(enum.StrEnum):
    """What a consumed queue carries: a metrics label, and the first part of dedupe keys."""

    CONTACT = "contact"
    STREAM_RESPONSE = "stream_response"


@dataclass(frozen=True, slots=True)
class Kind:
    """One consumed queue of a connector."""

    name: MessageKind
    queue: str
    routing_key: str  # dead-letter routing key when the original one is not ours

    @classmethod
    def both(cls, topology: Topology, connector: str) -> tuple[Kind, Kind]:
        """The contact and the stream-response queue of `connector`."""
        return (
            cls(
                MessageKind.CONTACT,
                topology.contact_queue(connector),
                topology.contact_new_key(connector),
            ),
            cls(
                MessageKind.STREAM_RESPONSE,
                topology.stream_response_queue(connector),
                topology.stream_response_key(connector),
            ),
        )


@dataclass(eq=False, slots=True)
class Work:
    """One delivered message, decoded, on its way through a lane (hashed by identity:
    the outage gate keys its strikes by it)."""

    kind: Kind
    message: AbstractIncomingMessage
    parsed: codec.Parsed[Any] | None
    error: errors.Rejected | None
    order_key: str | None
    dedupe_key: str | None
    ids: dict[str, str | None]  # publishedObjectId/sourceId or id, for outcome bodies
    base_log: Any
    _log: Any = None

    @property
    def log(self) -> Any:
        """The logger with this message's context, bound on first use (rarely needed)."""
        if self._log is None:
            m = self.message
            context = {"kind": self.kind.name, "routing_key": m.routing_key}
            context["message_id"] = m.message_id
            if self.ids.get("sourceId"):
                context["source_id"] = self.ids["sourceId"]
            self._log = self.base_log.bind(**context)
        return self._log


def decode(kind: Kind, message: AbstractIncomingMessage, log: Any, *, max_bytes: int) -> Work:
    """`message` decoded as `kind`; never raises (a bad message carries its `error`).

    A body over `max_bytes` is not decoded at all (see `too_big`)."""
    if (error := too_big(message.body, max_bytes)) is not None:
        return Work(
            kind, message, None, error, None, key_of(kind.name, message.message_id, None), {}, log
        )
    parsed: codec.Parsed[Any] | None = None
    try:
        if kind.name is MessageKind.CONTACT:
            parsed = codec.decode_new_contact(message.body)
        else:
            parsed = codec.decode_stream_response(message.body)
    except errors.Rejected as exc:
        error = detached(exc)
    except Exception as exc:
        # RecursionError (deep nesting), UnicodeDecodeError (lone surrogates), or a
        # decoder bug: the message is still wrong in itself, and must not sit in a
        # prefetch slot for ever (docs/SECURITY.md B3).
        error = errors.Rejected(
            f"not decodable: {type(exc).__name__}: {str(exc)[:200]}",
            code=codes.ErrorCode.WRONG_API_REQUEST,
        )
    ids = ids_of(kind.name, parsed.body if parsed else message.body)
    order_key = None
    if parsed is not None:
        order_key = ids.get("sourceId") if kind.name is MessageKind.CONTACT else ids.get("id")
    dedupe_key = key_of(kind.name, message.message_id, ids.get("publishedObjectId"))
    return Work(kind, message, parsed, error, order_key, dedupe_key, ids, log)


def too_big(body: bytes, max_bytes: int) -> errors.Rejected | None:
    """Why a body over `max_bytes` (``broker.max_message_bytes``) is rejected unread, or None.

    Decoding costs memory and time in proportion to the size, which is what the limit
    bounds; so is a copy for OSCC. The code is 12 STRING_OUT_OF_BOUND: the guide's code for
    a value longer than its limit, and like it never worth retrying.
    """
    size = len(body)
    if size <= max_bytes:
        return None
    return errors.Rejected(
        f"message of {size} bytes is larger than broker.max_message_bytes = {max_bytes}",
        code=codes.ErrorCode.STRING_OUT_OF_BOUND,
    )


def detached(exc: errors.Rejected) -> errors.Rejected:
    """A copy of `exc` without its traceback, cause or context.

    A Work keeps its error until it is dead-lettered. The raised exception's traceback
    holds the decoder's frames, whose locals hold the body, and `decode`'s own frame, whose
    locals hold the exception: a reference cycle that only the cyclic collector frees, and
    it counts objects, not bytes, so rejected bodies of megabytes piled up between its
    rare full collections.
    """
    return errors.Rejected(exc.text, code=exc.code, path=exc.path)


def untraced(exc: BaseException) -> None:
    """Cut `exc` loose from the frames it was raised through.

    An error raised from a local variable (``error = ...; raise error``, as the OSCC
    client does for HTTP statuses) is held by its own frame, and its traceback holds that
    frame and every frame between, ours included, whose locals hold the message and its
    body: a reference cycle that only the cyclic collector frees. That collector counts
    objects, not bytes, so megabytes of bodies piled up between its full collections
    (tests/test_poison.py checks that no message outlives its handling). The consumer
    calls it on every error it catches from the client.
    """
    exc.__traceback__ = None


def queue_wait(message: AbstractIncomingMessage) -> float | None:
    """Seconds since `message` was published (its timestamp), or None without one."""
    if message.timestamp is None:
        return None
    sent = message.timestamp
    sent = sent if sent.tzinfo else sent.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - sent).total_seconds())


def key_of(kind: str, message_id: str | None, published_id: str | None) -> str | None:
    """The dedupe key: the AMQP message_id, else (contacts only) publishedObject.id.

    aio-pika/aiormq give every message they publish a random message_id, so the
    fallback serves other clients (pika, Java, .NET, the management API). A stream
    response without message_id is not deduplicated: the same stream id and page can be
    a legitimate answer to a second Stream request.
    """
    if message_id:
        return f"{kind}:m:{message_id}"
    if kind == MessageKind.CONTACT and published_id:
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
    if kind == MessageKind.STREAM_RESPONSE:
        return {"id": _str(body.get("id"))}
    source, published = body.get("source"), body.get("publishedObject")
    return {
        "publishedObjectId": _str(published.get("id")) if isinstance(published, dict) else None,
        "sourceId": _str(source.get("id")) if isinstance(source, dict) else None,
    }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
