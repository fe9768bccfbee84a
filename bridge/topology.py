"""Every exchange, queue, binding and routing key of the AMQP interface, in one place.

All names derive from one prefix, ``broker.exchange`` (default ``oscc``), so DESIGN.md's
names come out with the default and a test can isolate itself with a unique prefix::

    exchange  <p>            topic, durable, alternate-exchange <p>.unrouted
    exchange  <p>.unrouted   fanout -> queue <p>.unrouted (nothing published is dropped)
    exchange  <p>.dead       topic  -> queue <p>.<c>.dead bound "<c>.#"
    queue     <p>.<c>.contact.new       bound "<c>.contact.new"       (consumed)
    queue     <p>.<c>.stream.response   bound "<c>.stream.response"   (consumed)
    queue     <p>.<c>.owner             quorum, single active consumer: the ownership lease
    queue     <p>.<c>.accepted          stream: keys of contacts OSCC accepted (dedupe)

The last two are declared by ownership.py and accepted.py, not by `declare`: they are
the instances' coordination, not part of the public interface.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import aiormq
import pamqp.encode
from aio_pika.abc import AbstractChannel, ExchangeType

QueueType = Literal["quorum", "classic"]
SessionChange = Literal["registered", "lost", "failed"]
APP_ID = "oscc-bridge"


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of the AMQP interface for one prefix, and their declaration."""

    prefix: str = "oscc"
    queue_type: QueueType = "quorum"

    # -- exchanges and queues ----------------------------------------------------------
    @property
    def exchange(self) -> str:
        return self.prefix

    @property
    def unrouted(self) -> str:
        """Name of both the alternate exchange and the queue behind it."""
        return f"{self.prefix}.unrouted"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    def contact_queue(self, c: str) -> str:
        return f"{self.prefix}.{c}.contact.new"

    def stream_response_queue(self, c: str) -> str:
        return f"{self.prefix}.{c}.stream.response"

    def dead_queue(self, c: str) -> str:
        return f"{self.prefix}.{c}.dead"

    def owner_queue(self, c: str) -> str:
        """The lease queue of `c` (ownership.py)."""
        return f"{self.prefix}.{c}.owner"

    def accepted_queue(self, c: str) -> str:
        """The stream of keys of `c`'s accepted contacts (accepted.py)."""
        return f"{self.prefix}.{c}.accepted"

    # -- routing keys -------------------------------------------------------------------
    @staticmethod
    def event_key(c: str, kind: str) -> str:
        return f"{c}.event.{kind}"

    @staticmethod
    def publication_key(c: str, publication_type: str) -> str:
        return f"{c}.publication.{publication_type.lower()}"

    @staticmethod
    def stream_request_key(c: str) -> str:
        return f"{c}.stream.request"

    @staticmethod
    def contact_new_key(c: str) -> str:
        return f"{c}.contact.new"

    @staticmethod
    def stream_response_key(c: str) -> str:
        return f"{c}.stream.response"

    @staticmethod
    def contact_outcome_key(c: str, accepted: bool) -> str:
        return f"{c}.contact.{'accepted' if accepted else 'rejected'}"

    @staticmethod
    def session_key(c: str, change: SessionChange) -> str:
        return f"{c}.session.{change}"

    @staticmethod
    def message_type(c: str, routing_key: str) -> str:
        """The AMQP `type` property: the routing key without ``<c>.``."""
        return routing_key.removeprefix(f"{c}.")

    # -- declaration --------------------------------------------------------------------
    def queue_arguments(self) -> dict[str, Any]:
        """Arguments of every queue the bridge declares (a redeclaration must match)."""
        return {"x-queue-type": self.queue_type}

    async def declare(self, channel: AbstractChannel, connectors: Iterable[str]) -> None:
        """Declare everything (idempotent); called at start and after every reconnect."""
        unrouted_x = await channel.declare_exchange(
            self.unrouted, ExchangeType.FANOUT, durable=True
        )
        unrouted_q = await channel.declare_queue(
            self.unrouted, arguments=self.queue_arguments(), durable=True
        )
        await unrouted_q.bind(unrouted_x)
        main = await channel.declare_exchange(
            self.exchange,
            ExchangeType.TOPIC,
            arguments={"alternate-exchange": self.unrouted},
            durable=True,
        )
        dead = await channel.declare_exchange(self.dead_exchange, ExchangeType.TOPIC, durable=True)
        for c in connectors:
            dq = await channel.declare_queue(
                self.dead_queue(c), arguments=self.queue_arguments(), durable=True
            )
            await dq.bind(dead, f"{c}.#")
            for name, key in (
                (self.contact_queue(c), self.contact_new_key(c)),
                (self.stream_response_queue(c), self.stream_response_key(c)),
            ):
                q = await channel.declare_queue(
                    name, arguments=self.queue_arguments(), durable=True
                )
                await q.bind(main, key)

    async def delete(self, channel: AbstractChannel, connectors: Iterable[str]) -> None:
        """Remove everything `declare` made, and the lease and accepted-keys queues that
        ownership.py and accepted.py declare (tests and the demo clean up with this)."""
        for c in connectors:
            for q in (
                self.contact_queue(c),
                self.stream_response_queue(c),
                self.dead_queue(c),
                self.owner_queue(c),
                self.accepted_queue(c),
            ):
                await channel.queue_delete(q)
        await channel.queue_delete(self.unrouted)
        for x in (self.exchange, self.dead_exchange, self.unrouted):
            await channel.exchange_delete(x)


# Header values come from what OSCC sent (ids, event types). RabbitMQ closes the whole
# connection when a header table does not fit in one frame (128 KiB), and a spooled
# message would close it again on every replay; the body keeps the full value.
HEADER_VALUE_MAX_BYTES = 1024
SHORT_STRING_MAX_BYTES = 255  # AMQP shortstr: correlation_id, message_id, reply_to...


def _cut(value: str, limit: int) -> str:
    data = value.encode()
    return value if len(data) <= limit else data[:limit].decode(errors="ignore")


def header_table(connector: str, headers: dict[str, Any] | None) -> dict[str, Any]:
    """The headers of a bridge message: `oscc-connector` plus `headers`, every string
    value cut to HEADER_VALUE_MAX_BYTES of UTF-8."""
    table: dict[str, Any] = {"oscc-connector": connector}
    for key, value in (headers or {}).items():
        table[key] = _cut(value, HEADER_VALUE_MAX_BYTES) if isinstance(value, str) else value
    return table


def short_string(value: str | None) -> str | None:
    """`value` when it fits an AMQP short string, else None: a cut correlation id would
    correlate with nothing, and the full id is in the body anyway."""
    if value is None or len(value.encode()) <= SHORT_STRING_MAX_BYTES:
        return value
    return None


class _Properties(aiormq.spec.Basic.Properties):
    """Basic.Properties that marshal as pamqp's do, byte for byte, with each property's
    encoder looked up once instead of per property per message (pamqp dispatches on the
    type's name each time: ~8 us of a ~190 us webhook, issue 15)."""

    # No __slots__ of its own: pamqp reads the attribute list from `__slots__` (len(),
    # iteration, and so truthiness: an empty one made aiormq publish default properties).

    def marshal(self) -> bytes:
        flags = 0
        parts: list[bytes] = []
        for name, flag, encoder in _ENCODERS:
            value = getattr(self, name)
            if value is not None and value != "":
                flags |= flag
                parts.append(encoder(value))
        # 14 properties: the flags fit in one 16-bit word, no continuation bit.
        return _FLAGS.pack(flags) + b"".join(parts)


def _table(table: dict[str, Any]) -> bytes:
    """A header table as pamqp's ``field_table`` encodes it (keys sorted, strings as long
    strings), directly when every value is a string (the bridge's headers are), else by
    pamqp itself."""
    parts: list[bytes] = []
    for key, value in sorted(table.items()):
        if type(value) is not str or type(key) is not str:
            return pamqp.encode.field_table(table)
        k = key.encode()
        if len(k) > 128:  # pamqp cuts (and warns): let it
            return pamqp.encode.field_table(table)
        v = value.encode()
        parts += (_BYTE.pack(len(k)), k, b"S", _LONG.pack(len(v)), v)
    if not parts:
        return _LONG.pack(0)
    data = b"".join(parts)
    return _LONG.pack(len(data)) + data


_FLAGS = struct.Struct(">H")
_BYTE = struct.Struct(">B")
_LONG = struct.Struct(">I")
_ENCODERS = tuple(
    (
        name,
        _Properties.flags[name],
        _table if name == "headers" else pamqp.encode.METHODS[_Properties.amqp_type(name)],
    )
    for name in _Properties.__slots__  # pamqp's order is the wire's
)
assert all(flag <= 0xFFFE for _, flag, _ in _ENCODERS)


def properties(
    *,
    connector: str,
    routing_key: str,
    message_id: str,
    headers: dict[str, Any] | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    timestamp: dt.datetime | None = None,
) -> aiormq.spec.Basic.Properties:
    """The AMQP properties every bridge message carries: persistent JSON, `message_id`,
    `timestamp`, `app_id`, `type` (the routing key without ``<c>.``) and header
    `oscc-connector`. The publisher's hot path sends these straight through aiormq."""
    return _Properties(
        content_type="application/json",
        delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
        message_id=message_id,
        correlation_id=short_string(correlation_id),
        reply_to=reply_to,
        timestamp=timestamp or dt.datetime.now(dt.UTC),
        app_id=APP_ID,
        message_type=Topology.message_type(connector, routing_key),
        headers=header_table(connector, headers),
    )
