"""The consumer's channels: one with publisher confirms for dead letters, one per
consumed queue with the broker's prefetch; opened, cancelled and closed with every call
bounded, since on a connection that just died some aio-pika calls wait for ever.

Closing a channel is what returns its unacked messages to the head of their queue, in
order (consumer.py relies on it instead of nacking with requeue).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    ExchangeType,
)
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from bridge.broker import Broker
from bridge.delivery import Kind

Accept = Callable[[Kind, AbstractIncomingMessage], None]


class QueueChannels:
    """The channels and consumers of one Consumer on `broker`; `timeout` bounds each
    cancel and close (``broker.confirm_timeout``)."""

    def __init__(self, broker: Broker, *, prefetch: int, timeout: float) -> None:
        self._broker = broker
        self._prefetch = prefetch
        self._timeout = timeout
        self._channels: list[AbstractChannel] = []
        self._consumers: list[tuple[AbstractQueue, str]] = []

    async def dead_letters(self) -> AbstractExchange:
        """A channel with confirms and the dead-letter exchange declared on it (before
        `consume`: the first delivery may be dead-lettered at once)."""
        channel = await self._broker.channel(publisher_confirms=True)
        self._channels.append(channel)
        return await channel.declare_exchange(
            self._broker.topology.dead_exchange, ExchangeType.TOPIC, durable=True
        )

    async def consume(self, kinds: Iterable[Kind], accept: Accept) -> None:
        """Consume each kind's queue on a channel of its own, handing every delivery to
        `accept` synchronously, in delivery order."""
        topology = self._broker.topology
        for kind in kinds:
            channel = await self._broker.channel()
            self._channels.append(channel)
            await channel.set_qos(prefetch_count=self._prefetch)
            # Declared (not just looked up), so a reconnect re-declares it instead of
            # racing the publisher's topology declaration.
            queue = await channel.declare_queue(
                kind.queue, durable=True, arguments=topology.queue_arguments()
            )
            tag = await queue.consume(_callback(kind, accept))
            self._consumers.append((queue, tag))

    async def cancel(self) -> None:
        """Stop the deliveries (unacked messages stay with their channel)."""
        # With the broker away there is nothing to cancel: the connection took the
        # consumers with it, and aio-pika's cancel would wait for it to come back.
        if self._broker.connected:
            for queue, tag in self._consumers:
                with contextlib.suppress(
                    AMQPError, ChannelInvalidStateError, RuntimeError, TimeoutError
                ):
                    async with asyncio.timeout(self._timeout):
                        await queue.cancel(tag)
        self._consumers.clear()

    async def close(self) -> None:
        """Close every channel, the last opened first; the broker requeues what they held."""
        channels, self._channels = self._channels, []
        for channel in reversed(channels):
            # Bounded: on a connection that just died the close frame may never be written.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await channel.close()


def _callback(kind: Kind, accept: Accept) -> Callable[[AbstractIncomingMessage], object]:
    async def on_message(message: AbstractIncomingMessage) -> None:
        # No await before `accept`: aio-pika starts these callbacks in delivery order,
        # so whatever `accept` appends to receives messages in queue order.
        accept(kind, message)

    return on_message
