"""Publishing to RabbitMQ with publisher confirms, and the disk spool behind it.

One robust connection and one confirming channel for every publish (no channel per
message). The topology is declared at start and again after every reconnect.
`publish` waits for the broker's confirm; `publish_or_spool` falls back to the disk spool
when the broker is down or slow, so an answered webhook is never lost::

    publish_or_spool(m)
      ├─ spool empty and broker connected ── publish ── confirmed ──────► "published"
      │                                          └─ not confirmed ─┐
      └─ otherwise ───────────────────────────────────────────────┴─► spool ► "spooled"

    replay task: oldest spooled records ── publish ── confirmed ──► drop from the spool

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
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from bridge import deadline, logs
from bridge.config import BrokerConfig, mask_url
from bridge.errors import BrokerUnavailable, ConfigError
from bridge.metrics import Metrics
from bridge.spool import Entry, Spool, SpoolRecord
from bridge.topology import Topology, properties

log = logs.get_logger("bridge.publisher")

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 2.0
REPLAY_BATCH = 256
REPLAY_BACKOFF = 1.0
REPLAY_RECHECK = 5.0

Outcome = Literal["published", "spooled"]

# aiormq >= 7.2.4 can skip waiting for each frame to be written before the next publish
# may take the channel lock; older ones always wait.
_NO_DRAIN_WAIT: dict[str, Any] = (
    {"wait": False} if "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters else {}
)

# Everything aio-pika/aiormq raise when the connection or channel is gone.
_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)


class Publisher:
    """Publishes with confirms on one robust connection; spools what it cannot publish.

    Use as an async context manager. Entering connects (failing fast with
    BrokerUnavailable when the broker is unreachable), declares the topology and starts
    replaying whatever the spool holds.
    """

    def __init__(
        self,
        config: BrokerConfig,
        topology: Topology,
        *,
        connectors: Iterable[str],
        metrics: Metrics,
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.topology = topology
        self.connectors = list(connectors)
        self.metrics = metrics
        self.spool = spool
        self._timeout = config.confirm_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._up = False
        self._replayer: asyncio.Task[None] | None = None
        self._redeclaring: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Arrival order: every publish_or_spool call holds a future here until it was
        # confirmed or appended to the spool; later appends wait for earlier ones.
        self._arrivals = itertools.count()
        self._unsettled: dict[int, asyncio.Future[None]] = {}
        self._diverting = 0  # calls on their way into the spool, not yet appended
        self._published = metrics.publishes.labels("confirmed")
        self._returned = metrics.publishes.labels("returned")
        self._failed = metrics.publishes.labels("failed")

    # -- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Publisher:
        url = self.config.url
        try:
            connection = await aio_pika.connect_robust(
                url,
                timeout=CONNECT_TIMEOUT,
                reconnect_interval=RECONNECT_INTERVAL,
                # Named after the exchange, so an operator (or a test) can tell bridges apart.
                client_properties={"connection_name": f"oscc-bridge {self.topology.exchange}"},
            )
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {mask_url(url)}: {exc or type(exc).__name__}"
            ) from exc
        self._connection = connection
        try:
            self._channel = await connection.channel(publisher_confirms=True)
            await self._declare()
        except (
            aiormq.exceptions.ChannelPreconditionFailed,
            aiormq.exceptions.ChannelAccessRefused,
        ) as exc:
            await connection.close()
            raise ConfigError(
                f"RabbitMQ refused the topology of exchange {self.topology.exchange!r}: {exc}"
                " (a queue or exchange exists with other arguments, e.g. broker.queue_type,"
                " or the user may not declare it)",
                key="broker",
            ) from exc
        except BaseException:
            await connection.close()
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self._set_up(True)
        if self.spool is not None:
            self.spool.on_commit = self._wake.set
            self._replayer = asyncio.create_task(self._replay(), name="spool-replay")
            self._wake.set()  # replay what a previous run left
        log.info("connected to RabbitMQ", url=mask_url(url), exchange=self.topology.exchange)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._redeclaring is not None:
            self._redeclaring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redeclaring
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        if self.spool is not None:
            self.spool.on_commit = None
        if self._connection is not None:
            self._connection.reconnect_callbacks.discard(self._on_reconnect)
            self._connection.close_callbacks.discard(self._on_close)
            await self._connection.close()
        self._set_up(False)

    @property
    def connected(self) -> bool:
        """True while the connection and the publishing channel are usable."""
        return self._up and self._channel is not None and not self._channel.is_closed

    @property
    def connection(self) -> AbstractRobustConnection:
        """The robust connection (consumers open their own channels on it)."""
        if self._connection is None:
            raise RuntimeError("publisher is not started")
        return self._connection

    def _set_up(self, up: bool) -> None:
        self._up = up
        self.metrics.broker_connected.set(1 if up else 0)

    def _on_close(self, _: Any, exc: BaseException | None = None) -> None:
        if self._up:
            log.warning("lost the connection to RabbitMQ", error=str(exc) if exc else None)
        self._set_up(False)

    async def _declare(self) -> None:
        """Declare the topology on a channel of its own: a refused declaration closes
        that channel, never the one we publish on."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await self.topology.declare(channel, self.connectors)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _on_reconnect(self, _: Any) -> None:
        # Not inline: this runs inside aio-pika's reconnect; a slow declaration must not
        # hold it up.
        self._redeclaring = asyncio.create_task(self._after_reconnect(), name="redeclare")

    async def _after_reconnect(self) -> None:
        self.metrics.broker_reconnects.inc()
        try:
            # Brings back anything deleted while we were away, or a broker that lost its
            # state, before publishing resumes.
            async with asyncio.timeout(30):
                await self._declare()
        except Exception:
            log.exception("declaring the topology after a reconnect failed")
        self._set_up(True)
        log.info("reconnected to RabbitMQ")
        self._wake.set()

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
        record = SpoolRecord(
            connector=connector,
            routing_key=routing_key,
            body=body,
            message_id=message_id or uuid.uuid4().hex,
            timestamp=dt.datetime.now(dt.UTC),
            exchange=exchange,
            headers=headers,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        await self._send(record)

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
        except _BROKER_ERRORS as exc:
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
            log.warning(
                "RabbitMQ returned an unroutable message",
                exchange=exchange,
                routing_key=record.routing_key,
            )
        else:
            self._published.inc()

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
        record = SpoolRecord(
            connector=connector,
            routing_key=routing_key,
            body=body,
            message_id=message_id or uuid.uuid4().hex,
            timestamp=dt.datetime.now(dt.UTC),
            exchange=exchange,
            headers=headers,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        spool = self.spool
        if spool is None:
            await self._send(record)
            return "published"
        seq = next(self._arrivals)
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsettled[seq] = settled
        try:
            if not spool.messages and not self._diverting and self.connected:
                try:
                    await self._send(record)
                    return "published"
                except BrokerUnavailable as exc:
                    log.warning("publish failed, spooling", routing_key=routing_key, error=exc.text)
            self._diverting += 1
            try:
                await self._after_earlier(seq)
                written = spool.enqueue(record)
            finally:
                self._diverting -= 1
            settled.set_result(None)
            await asyncio.shield(written)
            return "spooled"
        finally:
            del self._unsettled[seq]
            if not settled.done():
                settled.set_result(None)

    async def _after_earlier(self, seq: int) -> None:
        """Wait until every call that arrived before `seq` was confirmed or spooled."""
        for earlier, future in list(self._unsettled.items()):
            if earlier >= seq:
                break
            if not future.done():
                await asyncio.wait((future,))

    # -- replay -------------------------------------------------------------------------
    async def _replay(self) -> None:
        """Drain the spool, oldest first, whenever there is something and a broker."""
        assert self.spool is not None
        spool = self.spool
        while True:
            if spool.messages:
                # Woken by commits and reconnects; the timer is a safety net for a
                # channel that came back without a reconnect.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPLAY_RECHECK):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            replayed = 0
            try:
                while spool.committed and self.connected:
                    entries = spool.read(REPLAY_BATCH)
                    if not entries:
                        break
                    confirmed = await self._replay_batch(entries)
                    if confirmed:
                        spool.ack(entries[:confirmed])
                        self.metrics.spool_replayed.inc(confirmed)
                        replayed += confirmed
                    if confirmed < len(entries):
                        # The broker is there but not confirming: try again in a moment,
                        # or as soon as it reconnects.
                        await self._pause()
            except Exception:
                log.exception("spool replay failed; retrying")
                await self._pause()
                self._wake.set()
            if replayed:
                log.info("replayed spooled messages", messages=replayed, left=spool.messages)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPLAY_BACKOFF):
                await self._wake.wait()
        self._wake.clear()

    async def _replay_batch(self, entries: list[Entry]) -> int:
        """Publish `entries` in order on the one channel; return how many, from the
        first, the broker confirmed."""
        results = await asyncio.gather(
            *(self._send(e.record) for e in entries), return_exceptions=True
        )
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if not isinstance(result, BrokerUnavailable):
                    log.error("replaying a spooled message failed", exc_info=result)
                else:
                    log.warning("replay paused", error=result.text, confirmed=i)
                return i
        return len(entries)
