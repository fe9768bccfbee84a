"""Dead letters of a connector: list, show, replay and purge ``<p>.<c>.dead``.

The consumer dead-letters a message it must never retry (`bridge.outcomes.dead_letter`):
the original body and properties, plus headers saying why. These functions are what
``oscc-bridge dead`` runs; the CLI only parses and prints.

Every verb walks the queue with ``basic.get`` *without* auto-ack and holds what it took
until it is done, so it sees each message once, and whatever it does not remove goes back
when its channel closes::

    list / show   get ... get, then close: everything returns to the queue, in order
    replay        get -> publish to its queue, confirmed -> ack (removes it from dead)
    purge         get -> ack

A crash of `replay` loses nothing: a message is acked only after the broker confirmed its
copy. Between the confirm and the ack a crash leaves it in both queues; the next replay
sends it again with the *same* message_id (and the same replay count), and the
consumer's dedupe store, keyed on message_id, drops the second copy once OSCC accepted the
first, so OSCC sees it once. (Without a message_id the dedupe falls back to
publishedObject.id.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bridge.delivery import MessageKind, ids_of
from bridge.oscc import codec
from bridge.topology import Topology

REPLAY_COUNT = "oscc-replay-count"
RETURN_WAIT = 2.0  # seconds: at most this long for put-back messages to show as ready
DEAD_AT = "oscc-dead-at"
# Headers the consumer adds when it dead-letters; a replayed message leaves them behind
# so that, should it die again, it says why it died that time.
DEAD_HEADERS = (
    "oscc-error-code",
    "oscc-error-text",
    "oscc-dead-reason",
    "oscc-original-exchange",
    "oscc-original-routing-key",
    DEAD_AT,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead-letter queue, as read (not removed)."""

    connector: str
    message_id: str | None
    routing_key: str
    code: int | None
    text: str
    reason: str
    when: dt.datetime | None  # when it was dead-lettered, else when it was published
    source_id: str | None  # the contact's source.id, or the stream response's id
    replays: int
    body: bytes = field(repr=False)
    headers: dict[str, Any] = field(repr=False)
    properties: dict[str, Any] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """What `list --json` prints for it."""
        return {
            "connector": self.connector,
            "message_id": self.message_id,
            "routing_key": self.routing_key,
            "code": self.code,
            "text": self.text,
            "reason": self.reason,
            "when": self.when.isoformat() if self.when else None,
            "source_id": self.source_id,
            "replays": self.replays,
        }

    def detail(self) -> dict[str, Any]:
        """What `show` prints: the summary, every header and property, and the body."""
        try:
            body: Any = codec.decode_json(self.body)
        except Exception:  # not JSON: show it as text
            body = self.body.decode(errors="replace")
        return {
            **self.summary(),
            "headers": self.headers,
            "properties": self.properties,
            "body": body,
        }


@dataclass(slots=True)
class Result:
    """What `replay` / `purge` did."""

    done: list[str | None] = field(default_factory=list)  # message ids moved or removed
    kept: int = 0  # looked at, not selected: still in the dead queue
    skipped: list[str] = field(default_factory=list)  # selected but not replayable: why


Select = Callable[[DeadLetter], bool]


def select(ids: Sequence[str] = (), reason: str | None = None, every: bool = False) -> Select:
    """Which dead letters a replay or purge takes: `every`, those whose message_id is in
    `ids`, or those whose reason contains `reason` (case-insensitive)."""
    wanted, needle = set(ids), (reason or "").lower()

    def chosen(d: DeadLetter) -> bool:
        if every:
            return True
        if wanted and d.message_id in wanted:
            return True
        return bool(needle) and needle in f"{d.text} {d.reason}".lower()

    return chosen


def _parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def read(message: AbstractIncomingMessage, connector: str) -> DeadLetter:
    """A DeadLetter from a message of the dead queue."""
    headers = dict(message.headers or {})
    kind = (
        MessageKind.STREAM_RESPONSE
        if (message.routing_key or "").endswith(".stream.response")
        else MessageKind.CONTACT
    )
    ids = ids_of(kind, message.body)
    props = {
        name: value
        for name, value in (
            ("content_type", message.content_type),
            ("correlation_id", message.correlation_id),
            ("reply_to", message.reply_to),
            ("type", message.type),
            ("app_id", message.app_id),
            ("timestamp", message.timestamp.isoformat() if message.timestamp else None),
        )
        if value is not None
    }
    return DeadLetter(
        connector=connector,
        message_id=message.message_id,
        routing_key=message.routing_key or "",
        code=_as_int(headers.get("oscc-error-code")),
        text=str(headers.get("oscc-error-text", "")),
        reason=str(headers.get("oscc-dead-reason", "")),
        when=_parse_time(headers.get(DEAD_AT)) or _parse_time(message.timestamp),
        source_id=ids.get("sourceId") or ids.get("id"),
        replays=_as_int(headers.get(REPLAY_COUNT)) or 0,
        body=message.body,
        headers={
            k: v if isinstance(v, int | str | float | bool) else str(v) for k, v in headers.items()
        },
        properties=props,
    )


@asynccontextmanager
async def _held(
    connection: AbstractConnection, topology: Topology, connector: str
) -> AsyncIterator[tuple[AbstractChannel, list[AbstractIncomingMessage]]]:
    """A confirming channel and every message now in the dead queue, taken (unacked).

    Taken messages stay invisible to others until acked; those not acked are put back
    at the end. Only as many as the queue held at the start are taken, so messages
    dead-lettered meanwhile wait for the next run.
    """
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    name = topology.dead_queue(connector)
    taken: list[AbstractIncomingMessage] = []
    try:
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count or 0
        for _ in range(count):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            taken.append(message)
        yield channel, taken
    finally:
        if not channel.is_closed:
            await _put_back(channel, name, [m for m in taken if not m.processed])
            await channel.close()


async def _put_back(
    channel: AbstractChannel, queue: str, messages: list[AbstractIncomingMessage]
) -> None:
    """Requeue `messages` (in order) and wait, briefly, until the broker shows them ready.

    The broker requeues asynchronously (a quorum queue through its log): without the wait,
    a `list` run right after another could find the queue emptier than it is.
    """
    for message in messages:
        await message.nack(requeue=True)
    if not messages:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETURN_WAIT
    while loop.time() < deadline:
        declared = await channel.declare_queue(queue, passive=True)
        if (declared.declaration_result.message_count or 0) >= len(messages):
            return
        await asyncio.sleep(0.02)


async def browse(
    connection: AbstractConnection, topology: Topology, connector: str
) -> list[DeadLetter]:
    """Every dead letter of `connector`, oldest first; the queue is left as it was."""
    async with _held(connection, topology, connector) as (_, taken):
        return [read(m, connector) for m in taken]


def target_queue(topology: Topology, connector: str, routing_key: str) -> str | None:
    """The queue a dead letter goes back to: by its original routing key."""
    if routing_key == topology.contact_new_key(connector):
        return topology.contact_queue(connector)
    if routing_key == topology.stream_response_key(connector):
        return topology.stream_response_queue(connector)
    return None


def replay_message(dead: DeadLetter) -> aio_pika.Message:
    """The message a replay publishes: the original body and properties, the same
    message_id (the consumer's dedupe key), the dead-letter headers gone, the replay
    count one up."""
    headers = {k: v for k, v in dead.headers.items() if k not in DEAD_HEADERS}
    headers[REPLAY_COUNT] = dead.replays + 1
    props = dead.properties
    return aio_pika.Message(
        dead.body,
        headers=headers,
        content_type=props.get("content_type"),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=props.get("correlation_id"),
        reply_to=props.get("reply_to"),
        message_id=dead.message_id,
        timestamp=_parse_time(props.get("timestamp")),
        type=props.get("type"),
        app_id=props.get("app_id"),
    )


async def replay(
    connection: AbstractConnection,
    topology: Topology,
    connector: str,
    chosen: Select,
    on_done: Callable[[DeadLetter], None] | None = None,
) -> Result:
    """Move the chosen dead letters back to their queues, each confirmed before it is
    removed from the dead queue."""
    result = Result()
    async with _held(connection, topology, connector) as (channel, taken):
        for message in taken:
            dead = read(message, connector)
            if not chosen(dead):
                result.kept += 1
                continue
            queue = target_queue(topology, connector, dead.routing_key)
            if queue is None:
                result.kept += 1
                result.skipped.append(
                    f"{dead.message_id}: routing key {dead.routing_key!r} is neither "
                    f"{topology.contact_new_key(connector)} nor "
                    f"{topology.stream_response_key(connector)}"
                )
                continue
            # The default exchange reaches exactly that queue; mandatory: a queue that
            # is gone is an error, not a silent drop.
            await channel.default_exchange.publish(
                replay_message(dead), routing_key=queue, mandatory=True
            )
            await message.ack()
            result.done.append(dead.message_id)
            if on_done is not None:
                on_done(dead)
    return result


async def purge(
    connection: AbstractConnection, topology: Topology, connector: str, chosen: Select
) -> Result:
    """Remove the chosen dead letters for good."""
    result = Result()
    async with _held(connection, topology, connector) as (_, taken):
        for message in taken:
            dead = read(message, connector)
            if chosen(dead):
                await message.ack()
                result.done.append(dead.message_id)
            else:
                result.kept += 1
    return result
