"""Publishing to RabbitMQ with publisher confirms, and the disk spool behind it.

One confirming channel on the broker's connection (`bridge.broker`) for every publish (no
channel per message). `publish` waits for the broker's confirm; `publish_or_spool` falls
back to the disk spool when the broker is down or slow, so an answered webhook is never
lost::

    publish_or_spool(m)
      ├─ spool empty and broker connected ── publish ── confirmed ──────► "published"
      │                                          └─ not confirmed ─┐
      └─ otherwise ───────────────────────────────────────────────┴─► spool ► "spooled"

    SpoolReplayer (bridge.replay): oldest spooled records ── publish ── confirmed ──► drop

Order: while the spool holds anything, new messages are spooled behind it, and a message
is only appended after every message that arrived before it was confirmed or appended.
So messages reach the broker in arrival order, except that a message whose confirm was
lost may arrive twice (at least once, never lost); consumers dedupe on `message_id`,
which stays the same through the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import itertools
import time
from random import getrandbits
from typing import Any, Literal

import aiormq
from aio_pika.abc import AbstractRobustChannel

from bridge import deadline, logs, tracing
from bridge.broker import BROKER_ERRORS, Broker
from bridge.errors import BrokerUnavailable
from bridge.lifecycle import Service
from bridge.replay import SpoolReplayer
from bridge.segment import SpoolRecord
from bridge.spool import Spool
from bridge.topology import Topology, properties

log = logs.get_logger("bridge.publisher")

Outcome = Literal["published", "spooled"]

# aiormq >= 7.2.4 can skip waiting for each frame to be written before the next publish
# may take the channel lock; older ones always wait.
_NO_DRAIN_WAIT: dict[str, Any] = (
    {"wait": False} if "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters else {}
)


class Publisher(Service):
    """Publishes with confirms on one channel of `broker`; spools what it cannot publish.

    ``async with Publisher(broker, spool=spool):`` opens the confirming channel and, with a
    spool, starts its `SpoolReplayer` (which first replays what a previous run left).
    """

    def __init__(self, broker: Broker, *, spool: Spool | None = None) -> None:
        self.broker = broker
        self.metrics = broker.metrics
        self.spool = spool
        self._timeout = broker.config.confirm_timeout
        self._channel: AbstractRobustChannel | None = None
        self._replayer: SpoolReplayer | None = None
        # Arrival order: every publish_or_spool call has an entry here until it was
        # confirmed or appended to the spool; later appends wait for earlier ones. The
        # future is made only when one has to wait (rarely: the spool path), not for
        # every webhook.
        self._arrivals = itertools.count()
        self._unsettled: dict[int, asyncio.Future[None] | None] = {}
        self._diverting = 0  # calls on their way into the spool, not yet appended
        self._published = self.metrics.publishes.labels("confirmed")
        self._returned = self.metrics.publishes.labels("returned")
        self._failed = self.metrics.publishes.labels("failed")
        # In a PRODUCER span each, their context in the headers, when tracing is on (else
        # the plain methods: tracing decides once, here).
        exchange = broker.topology.exchange
        self._publish = tracing.producer(self._send, exchange)
        self._publish_or_spool = tracing.producer(self._send_or_spool, exchange)

    @property
    def topology(self) -> Topology:
        """The broker's topology (names of exchanges, queues and routing keys)."""
        return self.broker.topology

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open the confirming channel; start replaying the spool."""
        if self._channel is not None:
            return
        self._channel = await self.broker.channel(publisher_confirms=True)
        if self.spool is not None:
            self._replayer = SpoolReplayer(
                self.spool,
                self.broker,
                send=tracing.replayer(self._send, self.topology.exchange),
                ready=lambda: self.connected,
                metrics=self.metrics,
            )
            await self._replayer.start()

    async def stop(self) -> None:
        """Stop replaying and close the channel (the spool keeps what is left)."""
        if self._replayer is not None:
            await self._replayer.stop()
            self._replayer = None
        channel, self._channel = self._channel, None
        if channel is not None:
            # Bounded: on a connection that just died the close frame may never be written.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await channel.close()

    @property
    def connected(self) -> bool:
        """True while the broker is up and the publishing channel is usable."""
        return self.broker.connected and self._channel is not None and not self._channel.is_closed

    # -- publishing ---------------------------------------------------------------------
    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        connector: str,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        exchange: str | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm.

        `exchange` None is the main topic exchange, "" the default exchange (routing_key
        is then a queue name). Raises BrokerUnavailable when the broker does not confirm
        within ``broker.confirm_timeout``.
        """
        await self._publish(
            _record(
                routing_key,
                body,
                connector=connector,
                headers=headers,
                correlation_id=correlation_id,
                reply_to=reply_to,
                message_id=message_id,
                exchange=exchange,
            )
        )

    async def publish_or_spool(
        self,
        routing_key: str,
        body: bytes,
        *,
        connector: str,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        exchange: str | None = None,
    ) -> Outcome:
        """Publish with confirm, or append to the disk spool when that is not possible.

        Returns "published" or "spooled"; either way the message is safe. Raises
        BrokerUnavailable only when the spool is full (or there is no spool).
        """
        return await self._publish_or_spool(
            _record(
                routing_key,
                body,
                connector=connector,
                headers=headers,
                correlation_id=correlation_id,
                reply_to=reply_to,
                message_id=message_id,
                exchange=exchange,
            )
        )

    async def _send_or_spool(self, record: SpoolRecord) -> Outcome:
        spool = self.spool
        if spool is None:
            await self._send(record)
            return "published"
        seq = next(self._arrivals)
        self._unsettled[seq] = None  # a future only once a later call waits for it
        try:
            if not spool.messages and not self._diverting and self.connected:
                try:
                    await self._send(record)
                    return "published"
                except BrokerUnavailable as exc:
                    log.warning("publisher.spooling", error=exc.text, **_about(record))
            self._diverting += 1
            try:
                await self._after_earlier(seq)
                written = spool.enqueue(record)
            finally:
                self._diverting -= 1
            self._settle(seq)
            await asyncio.shield(written)
            return "spooled"
        finally:
            self._settle(seq)

    def _settle(self, seq: int) -> None:
        """Call `seq` was confirmed or appended: later appends need not wait for it."""
        future = self._unsettled.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def _send(self, record: SpoolRecord) -> None:
        if not self.connected:
            # Not counted as a failed publish: nothing went to the broker.
            raise BrokerUnavailable("not connected to RabbitMQ")
        assert self._channel is not None
        props = properties(
            connector=record.connector,
            routing_key=record.routing_key,
            message_id=record.message_id,
            headers=record.headers,
            correlation_id=record.correlation_id,
            reply_to=record.reply_to,
            timestamp=record.timestamp,
        )
        exchange = self.topology.exchange if record.exchange is None else record.exchange
        started = time.perf_counter()
        try:
            async with deadline.timeout(self._timeout):
                # The robust channel's current aiormq channel (it changes on reconnect).
                # Straight through aiormq, without waiting for each frame to be drained
                # before the next publish may go: the confirm is what we wait for.
                channel = await self._channel.get_underlay_channel()
                result = await channel.basic_publish(
                    record.body,
                    exchange=exchange,
                    routing_key=record.routing_key,
                    properties=props,
                    mandatory=True,
                    **_NO_DRAIN_WAIT,
                )
        except TimeoutError as exc:
            self._failed.inc()
            raise BrokerUnavailable(f"no confirm from RabbitMQ within {self._timeout}s") from exc
        except aiormq.exceptions.DeliveryError as exc:
            self._failed.inc()
            raise BrokerUnavailable("RabbitMQ refused the message (nack)") from exc
        except BROKER_ERRORS as exc:
            self._failed.inc()
            raise BrokerUnavailable(f"publish failed: {exc!r}") from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels pending confirms when the connection drops under them.
            self._failed.inc()
            raise BrokerUnavailable("connection to RabbitMQ lost before the confirm") from exc
        self.metrics.confirm_latency.observe(time.perf_counter() - started)
        if isinstance(result, aiormq.abc.DeliveredMessage):
            # The main exchange has an alternate exchange, so this means a publish to a
            # queue that does not exist (default exchange) or to another exchange.
            self._returned.inc()
            log.warning("publisher.returned", exchange=exchange, **_about(record))
        else:
            self._published.inc()

    async def _after_earlier(self, seq: int) -> None:
        """Wait until every call that arrived before `seq` was confirmed or spooled."""
        loop = asyncio.get_running_loop()
        for earlier in list(self._unsettled):
            if earlier >= seq:
                break
            if earlier not in self._unsettled:
                continue  # settled while we waited for an earlier one
            future = self._unsettled[earlier]
            if future is None:
                future = self._unsettled[earlier] = loop.create_future()
            if not future.done():
                await asyncio.wait((future,))


def _about(record: SpoolRecord) -> dict[str, Any]:
    """What a log line about `record` names (the webhook no longer binds it as context)."""
    about = {"connector": record.connector, "routing_key": record.routing_key}
    contact_id = (record.headers or {}).get("oscc-contact-id")
    if contact_id is not None:
        about["contact_id"] = contact_id
    return about


# The version and variant bits of a version 4 UUID (RFC 4122), as uuid.UUID sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def new_message_id() -> str:
    """A random version 4 UUID in hex, as ``uuid.uuid4().hex`` gives, in a sixth of the
    time: from the random module's generator (seeded from os.urandom, reseeded after a
    fork) instead of 16 bytes asked of the kernel each time. A message id has to be
    unique, not unguessable."""
    return f"{getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


def _record(
    routing_key: str,
    body: bytes,
    *,
    connector: str,
    headers: dict[str, Any] | None,
    correlation_id: str | None,
    reply_to: str | None,
    message_id: str | None,
    exchange: str | None,
) -> SpoolRecord:
    """What is published, or spooled to be published later: one shape for both."""
    return SpoolRecord(
        connector=connector,
        routing_key=routing_key,
        body=body,
        message_id=message_id or new_message_id(),
        timestamp=dt.datetime.now(dt.UTC),
        exchange=exchange,
        headers=headers,
        correlation_id=correlation_id,
        reply_to=reply_to,
    )
