"""Broker against the real RabbitMQ: after a reconnect it reports itself connected only
once the topology is declared again (issue 10, defect 9).

The connection is taken away by the broker itself (``rabbitmqctl close_connection`` of
this test's own connection), so other tests on the broker are not disturbed.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractRobustConnection

from bridge.broker import Broker
from bridge.config import BrokerConfig
from bridge.metrics import Metrics
from bridge.topology import Topology
from tests.conftest import AMQP_URL
from tests.harness import close_connections_named, sample, wait_until

C = "facebook"


@pytest.fixture
async def topology(prefix: str, amqp: AbstractRobustConnection) -> AsyncIterator[Topology]:
    topology = Topology(prefix, "classic")
    yield topology
    channel = await amqp.channel()
    await topology.delete(channel, [C])
    await channel.close()


def events(logs: io.StringIO, name: str) -> list[dict[str, object]]:
    lines = (line for line in logs.getvalue().splitlines() if line.startswith("{"))
    return [doc for doc in map(json.loads, lines) if doc.get("event") == name]


async def test_not_connected_until_the_topology_is_declared_again(
    topology: Topology, amqp: AbstractRobustConnection, captured_logs: io.StringIO
) -> None:
    metrics = Metrics()
    config = BrokerConfig(exchange=topology.exchange, queue_type="classic")
    back = asyncio.Event()
    async with Broker(config, topology, connectors=[C], metrics=metrics) as broker:
        broker.redeclare_base, broker.redeclare_cap = 0.05, 0.2
        broker.add_listener(back.set)
        assert broker.connected
        # While the bridge is away, someone re-creates its queue with other arguments:
        # re-declaring it is refused.
        channel = await amqp.channel()
        await channel.queue_delete(topology.contact_queue(C))
        await channel.declare_queue(
            topology.contact_queue(C),
            durable=True,
            arguments={"x-queue-type": "classic", "x-max-length": 5},
        )
        assert await close_connections_named(f"oscc-bridge {topology.exchange}") == 1
        await wait_until(lambda: sample(metrics, "broker_reconnects_total") == 1, within=30)
        await wait_until(lambda: len(events(captured_logs, "broker.redeclare_failed")) >= 2)
        # The connection is back, the topology is not: not connected, not ready.
        assert not broker.connection.is_closed
        assert not broker.connected
        assert sample(metrics, "broker_connected") == 0
        assert not back.is_set()

        # The conflict goes: the next attempt declares everything, and only then up.
        await channel.queue_delete(topology.contact_queue(C))
        await asyncio.wait_for(back.wait(), 10)
        assert broker.connected
        assert sample(metrics, "broker_connected") == 1
        queue = await channel.declare_queue(topology.contact_queue(C), passive=True)
        assert queue.name == topology.contact_queue(C)
        await channel.close()
    assert sample(metrics, "broker_connected") == 0
    assert events(captured_logs, "broker.reconnected")


DEAD = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


async def test_the_first_node_that_answers_of_broker_urls(topology: Topology) -> None:
    """broker.urls: a node that does not answer is passed over, at start and on reconnect
    the next one is tried (ClusterConnection moves on whenever an attempt fails)."""
    config = BrokerConfig(urls=[DEAD, AMQP_URL], exchange=topology.exchange)
    async with Broker(config, topology, connectors=[C], metrics=Metrics()) as broker:
        assert broker.connected
        assert broker.url == AMQP_URL
        await close_connections_named(f"oscc-bridge {topology.exchange}")
        # the reconnect tries the dead node first (the next one in turn), then this one
        await wait_until(lambda: broker.connected, 30, "reconnected")
        assert broker.url == AMQP_URL


async def test_without_a_broker_start_returns_and_connects_later(topology: Topology) -> None:
    """background=True: no node answers, start returns at once, `up` is not set; the
    broker keeps trying (here until the test stops it, which is prompt)."""
    config = BrokerConfig(urls=[DEAD], exchange=topology.exchange)
    broker = Broker(config, topology, connectors=[C], metrics=Metrics(), background=True)
    broker.connect_base = broker.connect_cap = 0.05
    async with broker:
        assert not broker.connected
        assert not broker.up.is_set()
        with pytest.raises(RuntimeError, match="not connected yet"):
            broker.connection  # noqa: B018
        await wait_until(lambda: broker.attempts >= 4, 10, "attempts")  # retried, none fatal
        assert not broker.failed.done()
        assert not broker.connected
