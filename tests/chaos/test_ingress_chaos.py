"""Chaos: the broker goes away under webhook traffic, and nothing OSCC sent is lost.

These tests stop RabbitMQ (``rabbitmqctl stop_app``; ``start_app`` always runs in a
finally) or SIGKILL the bridge. They disturb everything else on the broker, so run them
alone and serialized::

    flock /tmp/oscc-chaos.lock .venv/bin/python -m pytest -m chaos tests/chaos/test_ingress_chaos.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from bridge.broker import Broker
from bridge.config import Config, parse
from bridge.metrics import Metrics
from bridge.publisher import Publisher
from bridge.simulator import Simulator
from bridge.spool import Spool
from bridge.topology import Topology
from bridge.webhook import add_routes, server_options
from tests.harness import (
    BridgeProcess,
    bridge_config,
    broker_outage,
    broker_up,
    chaos_lock,
    free_port,
    message_count,
    rabbitmqctl,
)

pytestmark = pytest.mark.chaos

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
C = "facebook"


@pytest.fixture(autouse=True)
async def _broker_to_ourselves() -> AsyncIterator[None]:
    """Each test here takes RabbitMQ away: never at the same time as another chaos test."""
    async with chaos_lock():
        yield


async def wait_for(cond: Callable[[], bool], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"oscc_bridge_{name}", labels) or 0.0


def config_for(prefix: str, spool_dir: Path) -> Config:
    return parse(
        f"""
[broker]
exchange = "{prefix}"
confirm_timeout = 5
[spool]
dir = "{spool_dir}"
[[connectors]]
name = "{C}"
title = "facebook"
token = "tok-facebook"
""",
        {},
    )


@dataclass
class Sent:
    """One webhook call: when it was sent and answered, and how."""

    lane: int
    seq: int
    sent: float
    answered: float = 0.0
    status: int = 0


@dataclass
class Traffic:
    calls: list[Sent] = field(default_factory=list)
    done: int = 0


async def lane(
    http: aiohttp.ClientSession, url: str, lane_no: int, seqs: range, rate: float, t: Traffic
) -> None:
    """One contact's events: each sent after the previous one was answered, paced."""
    start = time.monotonic()
    for k, seq in enumerate(seqs):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        body = {
            "type": "OpenMediaEvent",
            "openMediaEventType": "EstablishedEvent",
            "contactID": f"lane-{lane_no}",
            "agentID": "100",
            "seq": seq,
        }
        call = Sent(lane_no, seq, time.monotonic())
        t.calls.append(call)
        async with http.post(url, json=body) as r:
            await r.read()
            call.status = r.status
        call.answered = time.monotonic()
        t.done += 1


@contextlib.asynccontextmanager
async def webhook_bridge(config: Config, metrics: Metrics) -> AsyncIterator[tuple[str, Spool]]:
    topology = Topology(config.broker.exchange, config.broker.queue_type)
    async with (
        Spool(config.spool.dir, max_bytes=config.spool.max_bytes, metrics=metrics) as spool,
        Broker(config.broker, topology, connectors=[C], metrics=metrics) as broker,
        Publisher(broker, spool=spool) as pub,
    ):
        app = web.Application()
        add_routes(app, config, pub, metrics)
        runner = web.AppRunner(app, **server_options(config))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/webhook/{C}", spool
        finally:
            await runner.cleanup()


async def drain(queue_name: str, expected: int, within: float = 120.0) -> list[tuple[int, str]]:
    """Wait until `queue_name` holds `expected` messages (or more), then take them all:
    (seq, message_id) in queue order."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        deadline = time.monotonic() + within
        while True:
            count = await message_count(queue_name)
            if count >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # a duplicate would be right behind
        bodies = []
        queue = await channel.declare_queue(queue_name, passive=True)
        while (m := await queue.get(no_ack=True, fail=False)) is not None:
            bodies.append((json.loads(m.body)["seq"], m.message_id or ""))
        return bodies
    finally:
        await connection.close()


def check_order(calls: list[Sent], arrived: list[int]) -> None:
    """Every call answered before another was sent arrived before it (and each lane's
    calls arrived in lane order, which follows from that)."""
    by_seq = {c.seq: c for c in calls}
    suffix_min_answer = float("inf")
    for seq in reversed(arrived):
        call = by_seq[seq]
        assert suffix_min_answer >= call.sent, (
            f"seq {seq} (sent {call.sent:.3f}) arrived before a call answered earlier"
        )
        suffix_min_answer = min(suffix_min_answer, call.answered)


async def test_broker_stop_and_start_under_webhook_traffic_loses_nothing(
    prefix: str, tmp_path: Path
) -> None:
    total, lanes, rate = 2000, 4, 150.0  # 150 webhooks/s in all, 4 contacts in parallel
    config = config_for(prefix, tmp_path / "spool")
    metrics = Metrics()
    topology = Topology(prefix, config.broker.queue_type)
    sink = f"{prefix}.chaos-sink"
    traffic = Traffic()
    setup = await aio_pika.connect(AMQP_URL)
    try:
        async with webhook_bridge(config, metrics) as (url, spool):
            # A durable classic queue keeps what it got across stop_app/start_app.
            channel = await setup.channel()
            queue = await channel.declare_queue(sink, durable=True)
            await queue.bind(topology.exchange, f"{C}.event.*")
            await setup.close()
            async with aiohttp.ClientSession() as http:
                per_lane = total // lanes
                senders = [
                    asyncio.create_task(
                        lane(http, url, i, range(i, total, lanes), rate / lanes, traffic)
                    )
                    for i in range(lanes)
                ]
                stopped = False
                try:
                    await wait_for(lambda: traffic.done >= total * 0.25)
                    await rabbitmqctl("stop_app")
                    stopped = True
                    during = traffic.done
                    await asyncio.sleep(4)  # webhooks keep coming while the broker is away
                    assert traffic.done > during + 100, "the webhook stalled without a broker"
                    await broker_up()
                    stopped = False
                    await asyncio.gather(*senders)
                finally:
                    if stopped:
                        await broker_up()
                    for s in senders:
                        s.cancel()
            assert per_lane * lanes == total
            got = await drain(sink, total)
            await wait_for(lambda: spool.messages == 0)
    finally:
        with contextlib.suppress(Exception):
            await setup.close()
        cleanup = await aio_pika.connect(AMQP_URL)
        ch = await cleanup.channel()
        await ch.queue_delete(sink)
        await topology.delete(ch, [C])
        await cleanup.close()

    statuses = {c.status for c in traffic.calls}
    assert statuses == {200}, f"answers other than 200: {statuses}"
    assert len(traffic.calls) == total
    arrived = [seq for seq, _ in got]
    assert sorted(set(arrived)) == list(range(total)), "lost messages"
    # At least once: a publish whose confirm was cut off by the broker's shutdown may have
    # been enqueued before it went to the spool, so it can arrive twice. Only those, and
    # as the same message (same message_id) for consumers to dedupe.
    ids: dict[int, str] = {}
    first: list[int] = []
    for seq, message_id in got:
        if seq in ids:
            assert ids[seq] == message_id, f"seq {seq} arrived twice as different messages"
        else:
            ids[seq] = message_id
            first.append(seq)
    cut_off = sample(metrics, "publishes_total", outcome="failed")
    duplicates = len(arrived) - total
    assert duplicates <= cut_off, f"{duplicates} duplicates, {cut_off} confirms lost"
    check_order(traffic.calls, first)
    spooled = sample(metrics, "webhook_requests_total", connector=C, kind="event",
                     outcome="spooled")  # fmt: skip
    assert spooled > 100  # the outage really went through the spool
    assert sample(metrics, "spool_replayed_total") >= spooled
    assert sample(metrics, "broker_reconnects_total") >= 1
    print(
        f"\nchaos: {total} sent, {spooled:.0f} spooled, {duplicates} duplicates "
        f"({cut_off:.0f} confirms lost)"
    )


# -- SIGKILL: the bridge dies while its spool holds messages ------------------------------

TOKEN = "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"


def new_bridge(tmp_path: Path, prefix: str, oscc_url: str) -> BridgeProcess:
    """A bridge subprocess for connector C; started again after a kill, it runs on the
    same port and spool directory (so it resumes its session and replays its spool)."""
    port = free_port()
    config = bridge_config(
        prefix=prefix,
        oscc_url=oscc_url,
        port=port,
        spool_dir=tmp_path / "spool",
        connectors=[(C, "facebook", TOKEN)],
    )
    return BridgeProcess(config, port=port, workdir=tmp_path / "bridge")


@contextlib.asynccontextmanager
async def event_sink(prefix: str) -> AsyncIterator[tuple[Topology, str]]:
    """The topology of `prefix` and a durable queue bound to C's events (it keeps what it
    got across stop_app/start_app); all deleted afterwards."""
    topology = Topology(prefix, "quorum")
    sink = f"{prefix}.chaos-sink"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await topology.declare(channel, [C])
        queue = await channel.declare_queue(sink, durable=True)
        await queue.bind(topology.exchange, f"{C}.event.*")
    finally:
        await connection.close()
    try:
        yield topology, sink
    finally:
        cleanup = await aio_pika.connect(AMQP_URL)  # the first one did not live through
        channel = await cleanup.channel()
        await channel.queue_delete(sink)
        await topology.delete(channel, [C])
        await cleanup.close()


async def post_events(
    http: aiohttp.ClientSession, url: str, seqs: range, answered: list[int]
) -> None:
    """Post one after the other; record the seqs answered 200 (stop at the first error)."""
    for seq in seqs:
        body = {"type": "OpenMediaEvent", "openMediaEventType": "EstablishedEvent", "seq": seq}
        try:
            async with http.post(url, json=body) as r:
                await r.read()
                status = r.status
        except aiohttp.ClientError:
            return
        assert status == 200, f"seq {seq}: {status}"
        answered.append(seq)


async def test_sigkill_with_a_full_spool_then_restart_delivers_everything(
    prefix: str, tmp_path: Path
) -> None:
    answered: list[int] = []
    async with (
        Simulator({"facebook": TOKEN}, agent=False) as sim,
        event_sink(prefix) as (_, sink),
        new_bridge(tmp_path, prefix, sim.url) as bridge,
    ):
        stopped = False
        try:
            await bridge.start()
            url = f"{bridge.url}/webhook/{C}"
            async with aiohttp.ClientSession() as http:
                await post_events(http, url, range(0, 100), answered)  # published
                assert answered == list(range(100))
                await rabbitmqctl("stop_app")
                stopped = True
                await post_events(http, url, range(100, 400), answered)  # spooled
                assert answered == list(range(400)), "the webhook refused while spooling"
                # Killed mid-traffic: whatever was answered 200 before must survive.
                sender = asyncio.create_task(post_events(http, url, range(400, 1000), answered))
                await wait_for(lambda: len(answered) >= 450)
                await bridge.kill()
                await sender
                await broker_up()
                stopped = False
                await bridge.start()  # same port and spool
                last_answered = answered[-1]
                await post_events(http, url, range(1000, 1100), answered)
                assert answered[-100:] == list(range(1000, 1100))
            got = await drain(sink, len(answered))
        finally:
            if stopped:
                await broker_up()

    arrived = [seq for seq, _ in got]
    missing = sorted(set(answered) - set(arrived))
    assert not missing, f"answered but lost: {missing[:20]}"
    # Extra: at most the one call in flight when the bridge died (spooled, not answered).
    extra = set(arrived) - set(answered)
    assert extra <= {last_answered + 1}, extra
    assert len(arrived) == len(set(arrived)), "duplicates"
    assert arrived == sorted(arrived), "out of order"
    print(
        f"\nsigkill: {len(answered)} answered, {len(arrived)} arrived, killed after "
        f"seq {last_answered}"
    )


async def test_sigterm_while_the_broker_is_down_exits_promptly_and_keeps_the_spool(
    prefix: str, tmp_path: Path
) -> None:
    """An operator restarts the bridge during a RabbitMQ outage (a rollout, a node drain):
    SIGTERM ends it promptly with exit 0, and what it spooled goes out after the next
    start, in order, once."""
    answered: list[int] = []
    async with (
        Simulator({"facebook": TOKEN}, agent=False) as sim,
        event_sink(prefix) as (_, sink),
        new_bridge(tmp_path, prefix, sim.url) as bridge,
    ):
        await bridge.start()
        url = f"{bridge.url}/webhook/{C}"
        async with aiohttp.ClientSession() as http:
            await post_events(http, url, range(0, 50), answered)
            async with broker_outage():
                await post_events(http, url, range(50, 250), answered)
                assert answered == list(range(250)), "the webhook refused while spooling"
                started = time.monotonic()
                code = await bridge.kill(signal.SIGTERM, within=60)
                took = time.monotonic() - started
            await bridge.start()
        got = await drain(sink, len(answered))

    assert code == 0, bridge.log_tail(10)
    # Nothing to wait for: no contact is in flight, and a bounded wait on a dead broker
    # must not turn into a hang (Kubernetes kills after 30 s by default).
    assert took < 10, f"SIGTERM took {took:.1f} s"
    arrived = [seq for seq, _ in got]
    assert arrived == list(range(250)), "lost, doubled or reordered"
    print(f"\nSIGTERM with the broker away: exit {code} in {took:.2f} s; 200 were spooled")
