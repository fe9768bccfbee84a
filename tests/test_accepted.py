"""The shared log of accepted keys, on the real RabbitMQ: what one owner recorded, the
next one loads into its local dedupe store before it consumes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aio_pika
import pytest

from bridge.accepted import AcceptedLog
from bridge.dedupe import DedupeStore
from bridge.topology import Topology
from tests.conftest import AMQP_URL

CONNECTOR = "fb"


@pytest.fixture
async def owners(prefix: str) -> AsyncIterator[Callable[..., object]]:
    """`make()` -> a started AcceptedLog on its own connection (one "owner")."""
    topology = Topology(prefix)
    async with AsyncExitStack() as stack:

        async def make() -> AcceptedLog:
            connection = await aio_pika.connect(AMQP_URL)
            stack.push_async_callback(connection.close)
            log = AcceptedLog(connection, topology=topology, connector=CONNECTOR, max_age=3600)
            await log.start()
            stack.push_async_callback(log.stop)
            return log

        yield make
    async with await aio_pika.connect(AMQP_URL) as conn:
        channel = await conn.channel()
        await channel.queue_delete(topology.accepted_queue(CONNECTOR))


async def test_next_owner_sees_the_keys_of_the_previous_ones(owners, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = await owners()
    async with DedupeStore(tmp_path / "a") as store:
        assert await first.load_into(store) == 0  # a new stream: nothing yet
    for key in ("k1", "k2", "k3"):
        await first.record(key)
    await first.stop()

    second = await owners()
    async with DedupeStore(tmp_path / "b") as store:
        await store.add("k2")  # already in the local cache: not counted again
        assert await second.load_into(store) == 2
        assert {"k1", "k2", "k3"} <= {k for k in ("k1", "k2", "k3", "k4") if k in store}
        assert "k4" not in store
        await second.record("k4")
    await second.stop()

    third = await owners()
    async with DedupeStore(tmp_path / "c") as store:
        assert await third.load_into(store) == 4
        assert all(k in store for k in ("k1", "k2", "k3", "k4"))
        # a second load reads the same stream (markers and all) and adds nothing
        assert await third.load_into(store) == 0


async def test_load_of_a_thousand_keys_is_quick(owners, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    writer = await owners()
    keys = [f"message-{i:05d}" for i in range(1000)]
    for i in range(0, 1000, 100):
        await asyncio.gather(*(writer.record(k) for k in keys[i : i + 100]))
    reader = await owners()
    async with DedupeStore(tmp_path) as store:
        t0 = time.monotonic()
        assert await reader.load_into(store) == 1000
        took = time.monotonic() - t0
        assert all(k in store for k in keys)
    print(f"loaded 1000 keys in {took:.3f} s")
    assert took < 5.0


async def test_record_before_start_is_an_error(prefix: str) -> None:
    async with await aio_pika.connect(AMQP_URL) as connection:
        log = AcceptedLog(connection, topology=Topology(prefix), connector=CONNECTOR)
        with pytest.raises(RuntimeError):
            await log.record("k")


async def test_keys_recorded_together_share_one_message(
    owners, prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Group commit: 200 concurrent records make far fewer stream messages than keys,
    every record returns only once its key is confirmed, and a reader gets them all."""
    writer = await owners()
    keys = [f"g-{i}" for i in range(200)]
    await asyncio.gather(*(writer.record(k) for k in keys))
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            Topology(prefix).accepted_queue(CONNECTOR), durable=True, arguments=writer.arguments()
        )
        messages = queue.declaration_result.message_count
    assert messages is not None
    assert messages < 20, messages
    reader = await owners()
    async with DedupeStore(tmp_path) as store:
        assert await reader.load_into(store) == 200
        assert all(k in store for k in keys)


async def test_single_key_messages_of_earlier_versions_still_load(
    owners, prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A stream written one key per message (type "accepted") loads beside batches."""
    writer = await owners()
    await writer.record("new-1")
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel(publisher_confirms=True)
        for key in ("old-1", "old\\n2"):
            await channel.default_exchange.publish(
                aio_pika.Message(key.encode(), type="accepted", delivery_mode=2),
                routing_key=Topology(prefix).accepted_queue(CONNECTOR),
            )
    reader = await owners()
    async with DedupeStore(tmp_path) as store:
        assert await reader.load_into(store) == 3
        assert all(k in store for k in ("new-1", "old-1", "old\\n2"))


async def test_a_record_waiting_when_the_log_stops_fails(owners) -> None:  # type: ignore[no-untyped-def]
    """Stopping the log fails what it has not confirmed: never a silent success."""
    from bridge.errors import BrokerUnavailable

    log = await owners()
    pending = asyncio.ensure_future(log.record("late"))
    await asyncio.sleep(0)  # the record is queued; its flusher has not run yet
    await log.stop()
    with pytest.raises(BrokerUnavailable):
        await pending


async def test_a_record_in_flight_when_the_log_stops_fails(owners) -> None:  # type: ignore[no-untyped-def]
    """Stopped while its message awaits the confirm: the record fails, it does not hang."""
    from bridge.errors import BrokerUnavailable

    log = await owners()
    pending = asyncio.ensure_future(log.record("in-flight"))
    await asyncio.sleep(0)  # queued
    await asyncio.sleep(0)  # the flusher's first turn: it takes the batch
    await asyncio.sleep(0)  # and publishes it, awaiting the confirm
    await log.stop()
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pending, 5)
