"""Publisher against the real RabbitMQ: confirms, properties, topology, returns, fail-fast
connect, spool fallback while disconnected, replay in order, re-declaration on reconnect.

A lost connection is made by the broker itself (``rabbitmqctl close_connection`` of this
test's own connection), so other tests on the broker are not disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from bridge.broker import Broker
from bridge.config import BrokerConfig
from bridge.errors import BrokerUnavailable, ConfigError
from bridge.metrics import Metrics
from bridge.publisher import Publisher
from bridge.spool import Spool, SpoolRecord
from bridge.topology import Topology, properties
from tests.harness import close_connections_named, message_count, sample, wait_until

C = "facebook"


def segment_files(path: Path) -> list[Path]:
    return list(path.glob("*.seg"))


class Collector:
    """Every message of a queue, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[AbstractIncomingMessage] = []

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    async def wait(self, n: int, within: float = 20.0) -> list[AbstractIncomingMessage]:
        await wait_until(lambda: len(self.messages) >= n, within)
        return self.messages

    def numbers(self) -> list[int]:
        return [json.loads(m.body)["n"] for m in self.messages]


@pytest.fixture
async def topology(prefix: str, amqp: AbstractRobustConnection) -> AsyncIterator[Topology]:
    topology = Topology(prefix, "quorum")
    yield topology
    channel = await amqp.channel()
    await topology.delete(channel, [C])
    await channel.close()


async def listen(
    amqp: AbstractRobustConnection, topology: Topology, pattern: str
) -> tuple[AbstractQueue, Collector]:
    """A private queue bound to the main exchange (declared by a started Publisher)."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.exchange, pattern)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    return queue, collector


def broker(topology: Topology, **kw: Any) -> BrokerConfig:
    return BrokerConfig(exchange=topology.exchange, **kw)


@contextlib.asynccontextmanager
async def publishing(
    topology: Topology, metrics: Metrics, spool: Spool | None = None
) -> AsyncIterator[Publisher]:
    """A started Broker and a Publisher on it."""
    async with (
        Broker(broker(topology), topology, connectors=[C], metrics=metrics) as link,
        Publisher(link, spool=spool) as pub,
    ):
        yield pub


async def test_first_connect_fails_fast_with_a_clear_message(topology: Topology) -> None:
    config = BrokerConfig(url="amqp://guest:hunter2pw@127.0.0.1:1/", exchange=topology.exchange)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot connect to RabbitMQ") as info:
        async with Broker(config, topology, connectors=[C], metrics=Metrics()):
            pass
    assert time.monotonic() - started < 10
    assert "hunter2pw" not in info.value.text
    assert "guest:***@127.0.0.1:1" in info.value.text


async def test_publish_is_confirmed_with_every_property(
    topology: Topology, amqp: AbstractRobustConnection
) -> None:
    metrics = Metrics()
    async with publishing(topology, metrics) as pub:
        assert pub.connected
        assert sample(metrics, "broker_connected") == 1
        _, got = await listen(amqp, topology, f"{C}.#")
        await pub.publish(
            f"{C}.stream.request",
            b'{"n": 1}',
            connector=C,
            headers={"oscc-contact-id": "abc"},
            correlation_id="corr-1",
            reply_to=topology.stream_response_queue(C),
            message_id="mid-1",
        )
        [m] = await got.wait(1)
        assert sample(metrics, "publishes_total", outcome="confirmed") == 1
        assert sample(metrics, "publish_confirm_seconds_count") == 1
    assert sample(metrics, "broker_connected") == 0
    assert m.routing_key == f"{C}.stream.request"
    assert m.body == b'{"n": 1}'
    assert m.message_id == "mid-1"
    assert m.correlation_id == "corr-1"
    assert m.reply_to == topology.stream_response_queue(C)
    assert m.app_id == "oscc-bridge"
    assert m.type == "stream.request"
    assert m.content_type == "application/json"
    assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert m.headers == {"oscc-connector": C, "oscc-contact-id": "abc"}
    assert m.timestamp is not None
    assert abs((dt.datetime.now(dt.UTC) - m.timestamp).total_seconds()) < 60


async def test_topology_is_declared_and_unrouted_messages_are_kept(
    topology: Topology, amqp: AbstractRobustConnection
) -> None:
    metrics = Metrics()
    async with publishing(topology, metrics) as pub:
        channel = await amqp.channel()
        for name in (
            topology.unrouted,
            topology.contact_queue(C),
            topology.stream_response_queue(C),
            topology.dead_queue(C),
        ):
            await message_count(name)
        await pub.publish(f"{C}.event.nobody-listens", b'{"n": 7}', connector=C)
        unrouted = await channel.declare_queue(topology.unrouted, passive=True)
        m = await unrouted.get(no_ack=True, timeout=5)
        assert m.routing_key == f"{C}.event.nobody-listens"
        # The alternate exchange took it: confirmed, not returned.
        assert sample(metrics, "publishes_total", outcome="confirmed") == 1
        assert sample(metrics, "publishes_total", outcome="returned") == 0


async def test_default_and_dead_exchanges_and_a_returned_message(
    topology: Topology, amqp: AbstractRobustConnection
) -> None:
    metrics = Metrics()
    async with publishing(topology, metrics) as pub:
        await pub.publish(topology.contact_queue(C), b'{"n": 1}', connector=C, exchange="")
        await pub.publish(
            f"{C}.contact.new", b'{"n": 2}', connector=C, exchange=topology.dead_exchange
        )
        # A queue that does not exist: the broker returns it; counted, no exception.
        await pub.publish(f"{topology.prefix}.no-such-queue", b"{}", connector=C, exchange="")
        assert sample(metrics, "publishes_total", outcome="returned") == 1
        assert sample(metrics, "publishes_total", outcome="confirmed") == 2
        channel = await amqp.channel()
        contact = await channel.declare_queue(topology.contact_queue(C), passive=True)
        dead = await channel.declare_queue(topology.dead_queue(C), passive=True)
        assert (await contact.get(no_ack=True, timeout=5)).body == b'{"n": 1}'
        assert (await dead.get(no_ack=True, timeout=5)).body == b'{"n": 2}'


async def test_lost_connection_spools_then_redeclares_and_replays_in_order(
    topology: Topology, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    metrics = Metrics()
    async with (
        Spool(tmp_path, max_bytes=1 << 20, metrics=metrics) as spool,
        publishing(topology, metrics, spool) as pub,
    ):
        _, got = await listen(amqp, topology, f"{C}.event.#")
        assert await pub.publish_or_spool(f"{C}.event.x", b'{"n": 0}', connector=C) == "published"
        channel = await amqp.channel()
        await channel.queue_delete(topology.contact_queue(C))  # an operator's mistake

        assert await close_connections_named(f"oscc-bridge {topology.exchange}") == 1
        await wait_until(lambda: not pub.connected, 20, "the publisher disconnected")
        # The gauge follows in the connection's close callback, which may run a moment
        # after the channel shows closed.
        await wait_until(lambda: sample(metrics, "broker_connected") == 0, 5, "gauge at 0")
        with pytest.raises(BrokerUnavailable):
            await pub.publish(f"{C}.event.x", b'{"n": -1}', connector=C)
        outcomes = [
            await pub.publish_or_spool(f"{C}.event.x", b'{"n": %d}' % i, connector=C)
            for i in range(1, 21)
        ]
        # Reconnect: after RECONNECT_INTERVAL the spool drains; nothing was confirmed in
        # between, so at least the first ones went to the spool.
        assert outcomes[0] == "spooled"
        await got.wait(21)
        await wait_until(lambda: spool.messages == 0)
        assert got.numbers() == list(range(21))
        assert sample(metrics, "broker_reconnects_total") == 1
        assert sample(metrics, "broker_connected") == 1
        assert sample(metrics, "spool_replayed_total") == outcomes.count("spooled")
        assert sample(metrics, "spool_messages") == 0
        # Declared again after the reconnect.
        await message_count(topology.contact_queue(C))
        assert pub.connected


async def test_replay_at_start_and_new_messages_queue_behind_it(
    topology: Topology, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    # What a previous run left behind: 600 messages in the spool.
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        await asyncio.gather(
            *(
                spool.enqueue(
                    SpoolRecord(
                        connector=C,
                        routing_key=f"{C}.event.delivered",
                        body=b'{"n": %d}' % i,
                        message_id=f"old-{i}",
                        timestamp=dt.datetime.now(dt.UTC),
                        headers={"oscc-contact-id": f"c{i}"},
                    )
                )
                for i in range(600)
            )
        )
    metrics = Metrics()
    # Listen before the publisher starts replaying: declare the exchange the same way.
    channel = await amqp.channel()
    await channel.declare_exchange(topology.unrouted, aio_pika.ExchangeType.FANOUT, durable=True)
    await channel.declare_exchange(
        topology.exchange,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.unrouted},
    )
    _, got = await listen(amqp, topology, f"{C}.event.#")
    async with (
        Spool(tmp_path, max_bytes=1 << 24, metrics=metrics) as spool,
        publishing(topology, metrics, spool) as pub,
    ):
        assert spool.messages == 600
        new = [
            asyncio.create_task(
                pub.publish_or_spool(f"{C}.event.delivered", b'{"n": %d}' % i, connector=C)
            )
            for i in range(600, 700)
        ]
        outcomes = await asyncio.gather(*new)
        assert outcomes[0] == "spooled"  # the spool was not empty: behind it, not past it
        await got.wait(700)
        await wait_until(lambda: spool.messages == 0)
        # The count drops before the replayed segments are deleted (in a thread); a stop
        # meanwhile cancels the replayer's wait on that: wait for the files themselves.
        await wait_until(lambda: not segment_files(tmp_path), 10, "replayed segments deleted")
    assert got.numbers() == list(range(700))
    first = got.messages[0]
    assert first.message_id == "old-0"
    assert first.headers == {"oscc-connector": C, "oscc-contact-id": "c0"}
    assert first.type == "event.delivered"
    assert sample(metrics, "spool_replayed_total") == 600 + outcomes.count("spooled")
    assert not segment_files(tmp_path)


async def test_full_spool_while_disconnected_raises(
    topology: Topology, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    metrics = Metrics()
    async with (
        Spool(tmp_path, max_bytes=2048, metrics=metrics) as spool,
        publishing(topology, metrics, spool) as pub,
    ):
        _, got = await listen(amqp, topology, f"{C}.#")
        await close_connections_named(f"oscc-bridge {topology.exchange}")
        await wait_until(lambda: not pub.connected)
        body = b'{"n": %d, "pad": "' + b"x" * 300 + b'"}'
        spooled = 0
        refused: BrokerUnavailable | None = None
        for i in range(100):
            try:
                assert await pub.publish_or_spool(f"{C}.x", body % i, connector=C) == "spooled"
            except BrokerUnavailable as exc:
                refused = exc
                break
            spooled += 1
        assert refused is not None
        assert "spool full" in refused.text
        assert 0 < spooled < 10
        await got.wait(spooled)
        assert got.numbers() == list(range(spooled))


async def test_publish_or_spool_without_a_spool_raises_when_disconnected(
    topology: Topology,
) -> None:
    async with publishing(topology, Metrics()) as pub:
        await close_connections_named(f"oscc-bridge {topology.exchange}")
        await wait_until(lambda: not pub.connected)
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await pub.publish_or_spool(f"{C}.x", b"{}", connector=C)


async def test_a_conflicting_queue_is_a_config_error_naming_the_exchange(
    topology: Topology, amqp: AbstractRobustConnection
) -> None:
    channel = await amqp.channel()
    # An operator's queue of the wrong type where the bridge expects a quorum queue.
    await channel.declare_queue(topology.unrouted, durable=True)
    with pytest.raises(ConfigError, match=topology.exchange) as info:
        async with Broker(broker(topology), topology, connectors=[C], metrics=Metrics()):
            pass
    assert info.value.key == "broker"


def test_properties_carry_what_design_requires() -> None:
    stamp = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    kw: dict[str, Any] = {
        "connector": C,
        "routing_key": f"{C}.publication.post",
        "message_id": "m1",
        "headers": {"oscc-published-id": "p1"},
        "correlation_id": "c1",
        "reply_to": "r1",
        "timestamp": stamp,
    }
    ours = properties(**kw)
    assert ours.content_type == "application/json"
    assert ours.delivery_mode == 2
    assert (ours.message_id, ours.correlation_id, ours.reply_to) == ("m1", "c1", "r1")
    assert ours.timestamp == stamp
    assert ours.app_id == "oscc-bridge"
    assert ours.message_type == "publication.post"
    assert ours.headers == {"oscc-connector": C, "oscc-published-id": "p1"}
