"""Keys of contacts OSCC accepted, shared through the broker, so dedupe survives failover.

The owner of a connector appends each accepted contact's key to the stream queue
``<p>.<c>.accepted`` (publisher confirm) before it acks the contact; a new owner reads
the stream from its first offset into its local DedupeStore *before* it consumes, so it
never resends what the previous owner recorded. The stream keeps the dedupe window
(``x-max-age``); the local store stays as the cache that answers per contact::

    async with AcceptedLog(connection, topology=t, connector="fb") as log:
        await log.load_into(store)     # on acquiring the connector
        ...
        await log.record(key)          # after OSCC accepted, before the ack

AMQP 0.9.1 has no "end of stream": `load_into` first appends a marker with a fresh id and
reads until that marker comes back, so it has seen everything recorded before it started.

Group commit: the keys recorded while one append awaits its confirm (and in the same
event-loop turn) go out together as one message (type ``accepted-batch``, a JSON array),
and each `record` returns once the message holding its key is confirmed, so a key is
never reported safe before the broker has it. One message and one confirm for many keys
costs the owner and the broker a fraction of one per key (docs/PERFORMANCE.md, Egress).
`load_into` reads both forms: single keys (type ``accepted``, earlier versions) and batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, Protocol

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bridge import logs
from bridge.dedupe import DEFAULT_MAX_AGE
from bridge.errors import BrokerUnavailable
from bridge.lifecycle import Service
from bridge.topology import APP_ID, Topology

# Retention drops whole segments: small ones let the age limit bite (keys are ~50 bytes).
SEGMENT_BYTES = 8 * 1024 * 1024
_KEY, _KEYS, _MARKER = "accepted", "accepted-batch", "marker"
_PREFETCH = 2000  # stream consumers need a prefetch; this many messages in flight per load
_BATCH = 1000  # keys added to the store at once (they share its fsync)
_MAX_KEYS = 500  # keys per appended message at most (~500 x a shortstr key < 128 KiB)
_encode_keys = msgspec.json.Encoder().encode
_decode_keys = msgspec.json.Decoder(list[str]).decode


class KeyStore(Protocol):
    """What `load_into` needs of a store (bridge.dedupe.DedupeStore is one)."""

    def __contains__(self, key: object) -> bool: ...

    async def add(self, key: str) -> None: ...


class AcceptedLog(Service):
    """The shared log of accepted keys of one connector (see the module docstring)."""

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        topology: Topology,
        connector: str,
        max_age: float = DEFAULT_MAX_AGE,
        load_timeout: float = 60.0,
        confirm_timeout: float = 5.0,
    ) -> None:
        self.connector = connector
        self.queue_name = topology.accepted_queue(connector)
        self.max_age = max_age
        self.load_timeout = load_timeout
        self.confirm_timeout = confirm_timeout
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._log = logs.get_logger("bridge.accepted", connector=connector)

    def arguments(self) -> dict[str, Any]:
        """The stream's arguments (a redeclaration must match them)."""
        return {
            "x-queue-type": "stream",
            "x-max-age": f"{max(1, int(self.max_age))}s",
            "x-stream-max-segment-size-bytes": SEGMENT_BYTES,
        }

    async def start(self) -> None:
        """Open the publishing channel and declare the stream (idempotent)."""
        if self._channel is not None:
            return
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.declare_queue(self.queue_name, durable=True, arguments=self.arguments())

    async def stop(self) -> None:
        """Close the channel (the stream and its keys stay); a `record` still waiting
        raises BrokerUnavailable."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
        self._fail(self._pending, BrokerUnavailable(f"{self.queue_name}: log stopped"))
        self._pending = []
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def record(self, key: str) -> None:
        """Append `key`; returns once the broker confirmed the message holding it
        (BrokerUnavailable if not, or not within `confirm_timeout`)."""
        if self._channel is None:
            raise RuntimeError("AcceptedLog is not started")
        waiter = asyncio.get_running_loop().create_future()
        self._pending.append((key, waiter))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="accepted-flush")
        # shield: a caller that gives up must not cancel the append others wait on
        await asyncio.shield(waiter)

    async def _flush(self) -> None:
        """Append what is pending, one message at a time, until nothing is."""
        while self._pending:
            # One loop turn's grace: records made by other tasks in this turn join.
            await asyncio.sleep(0)
            batch, self._pending = self._pending[:_MAX_KEYS], self._pending[_MAX_KEYS:]
            try:
                async with asyncio.timeout(self.confirm_timeout):
                    await self._append(_encode_keys([k for k, _ in batch]), _KEYS, message_id=None)
            except (BrokerUnavailable, RuntimeError, TimeoutError) as exc:
                error = (
                    exc
                    if isinstance(exc, BrokerUnavailable)
                    else BrokerUnavailable(f"{self.queue_name}: not confirmed: {exc!r}")
                )
                self._fail(batch, error)
            except BaseException:  # cancelled by `stop`: this batch is not confirmed
                self._fail(batch, BrokerUnavailable(f"{self.queue_name}: log stopped"))
                raise
            else:
                for _, w in batch:
                    if not w.done():
                        w.set_result(None)

    @staticmethod
    def _fail(batch: list[tuple[str, asyncio.Future[None]]], exc: BaseException) -> None:
        for _, w in batch:
            if not w.done():
                w.set_exception(exc)

    async def load_into(self, store: KeyStore) -> int:
        """Read every key the stream holds into `store`; the number of keys it did not
        have yet. BrokerUnavailable if the end is not reached within `load_timeout`."""
        marker = uuid.uuid4().hex
        await self._append(b"", _MARKER, message_id=marker)
        keys: list[str] = []
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            if message.type == _MARKER and message.message_id == marker:
                done.set()
            elif message.type == _KEYS:
                try:
                    keys.extend(_decode_keys(message.body))
                except msgspec.DecodeError:
                    self._log.warning("accepted.bad_batch", size=len(message.body))
            elif message.type == _KEY:  # one key per message, as earlier versions wrote
                keys.append(message.body.decode(errors="replace"))
            await message.ack()  # a stream consumer's credit comes back with acks

        channel = await self._connection.channel()
        try:
            await channel.set_qos(prefetch_count=_PREFETCH)
            queue = await channel.declare_queue(
                self.queue_name, durable=True, arguments=self.arguments()
            )
            await queue.consume(on_message, arguments={"x-stream-offset": "first"})
            await asyncio.wait_for(done.wait(), self.load_timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable(f"{self.queue_name}: end of stream not reached") from exc
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        fresh = [k for k in dict.fromkeys(keys) if k not in store]
        for i in range(0, len(fresh), _BATCH):
            await asyncio.gather(*(store.add(k) for k in fresh[i : i + _BATCH]))
        added = len(fresh)
        self._log.info("accepted.loaded", added=added)
        return added

    async def _append(self, body: bytes, kind: str, *, message_id: str | None) -> None:
        if self._channel is None:
            raise RuntimeError("AcceptedLog is not started")
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="text/plain",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message_id,
                    app_id=APP_ID,
                    type=kind,
                ),
                routing_key=self.queue_name,
            )
        except Exception as exc:
            raise BrokerUnavailable(f"{self.queue_name}: not confirmed: {exc}") from exc


__all__ = ["SEGMENT_BYTES", "AcceptedLog", "KeyStore"]
