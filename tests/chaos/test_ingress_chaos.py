"""Chaos: the broker goes away under webhook traffic, and nothing OSCC sent is lost.

These tests stop RabbitMQ (``stop_app``; ``start_app`` always runs in a finally) or
SIGKILL the bridge. The broker they stop is a private node of the session's own (the
`broker` fixture, see tests/chaos/conftest.py), never the machine's shared one; they still
take /tmp/oscc-chaos.lock, so their timing is not disturbed by other chaos runs::

    flock /tmp/oscc-chaos.lock .venv/bin/python -m pytest -m chaos tests/chaos/test_ingress_chaos.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterable
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
    RabbitNode,
    bridge_config,
    chaos_lock,
    free_port,
    sample,
    wait_until,
)

pytestmark = pytest.mark.chaos

C = "facebook"


@pytest.fixture(autouse=True)
async def _broker_to_ourselves() -> AsyncIterator[None]:
    """Each test here takes a broker away: never at the same time as another chaos test."""
    async with chaos_lock():
        yield


def config_for(prefix: str, spool_dir: Path, amqp_url: str) -> Config:
    return parse(
        f"""
[broker]
url = "{amqp_url}"
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
            await asyncio.sleep(delay)  # the pace of the traffic: part of the scenario
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


SENTINEL = -1  # the seq of the sentinel event `fenced` posts


async def fenced(
    http: aiohttp.ClientSession,
    webhook_url: str,
    amqp_url: str,
    queue_name: str,
    within: float = 120.0,
) -> list[tuple[int, str]]:
    """Post a sentinel event, wait until it is in `queue_name`, and take everything there:
    (seq, message_id) in queue order, the sentinel left out. The bridge publishes in the
    order it answered, spool replay included, so whatever the calls answered before the
    sentinel published (a duplicate too) is queued ahead of it."""
    await post_events(http, webhook_url, [SENTINEL], [])
    connection = await aio_pika.connect(amqp_url)
    try:
        queue = await (await connection.channel()).declare_queue(queue_name, passive=True)
        got: list[tuple[int, str]] = []

        async def sentinel_taken() -> bool:
            while (m := await queue.get(no_ack=True, fail=False)) is not None:
                got.append((json.loads(m.body)["seq"], m.message_id or ""))
            return any(seq == SENTINEL for seq, _ in got)

        await wait_until(sentinel_taken, within, f"the sentinel in {queue_name}")
        return [(seq, mid) for seq, mid in got if seq != SENTINEL]
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
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    total, lanes, rate = 2000, 4, 150.0  # 150 webhooks/s in all, 4 contacts in parallel
    config = config_for(prefix, tmp_path / "spool", broker.url)
    metrics = Metrics()
    topology = Topology(prefix, config.broker.queue_type)
    sink = f"{prefix}.chaos-sink"
    traffic = Traffic()
    setup = await aio_pika.connect(broker.url)
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
                    await wait_until(lambda: traffic.done >= total * 0.25, 60, "a quarter sent")
                    await broker.stop_app()
                    stopped = True
                    during = traffic.done
                    # The webhook keeps answering while the broker is away (some 2 s).
                    await wait_until(
                        lambda: traffic.done > during + 300, 30, "answers without a broker"
                    )
                    await broker.start_app()
                    stopped = False
                    await asyncio.gather(*senders)
                finally:
                    if stopped:
                        await broker.start_app()
                    for s in senders:
                        s.cancel()
                await wait_until(lambda: spool.messages == 0, 60, "the spool replayed")
                got = await fenced(http, url, broker.url, sink)
            assert per_lane * lanes == total
    finally:
        with contextlib.suppress(Exception):
            await setup.close()
        cleanup = await aio_pika.connect(broker.url)
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


def new_bridge(tmp_path: Path, prefix: str, oscc_url: str, amqp_url: str) -> BridgeProcess:
    """A bridge subprocess for connector C; started again after a kill, it runs on the
    same port and spool directory (so it resumes its session and replays its spool)."""
    port = free_port()
    config = bridge_config(
        prefix=prefix,
        oscc_url=oscc_url,
        port=port,
        spool_dir=tmp_path / "spool",
        connectors=[(C, "facebook", TOKEN)],
        amqp_url=amqp_url,
    )
    return BridgeProcess(config, port=port, workdir=tmp_path / "bridge")


@contextlib.asynccontextmanager
async def event_sink(prefix: str, url: str) -> AsyncIterator[tuple[Topology, str]]:
    """The topology of `prefix` and a durable queue bound to C's events (it keeps what it
    got across stop_app/start_app); all deleted afterwards."""
    topology = Topology(prefix, "quorum")
    sink = f"{prefix}.chaos-sink"
    connection = await aio_pika.connect(url)
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
        cleanup = await aio_pika.connect(url)  # the first one did not live through
        channel = await cleanup.channel()
        await channel.queue_delete(sink)
        await topology.delete(channel, [C])
        await cleanup.close()


async def post_events(
    http: aiohttp.ClientSession, url: str, seqs: Iterable[int], answered: list[int]
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
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    answered: list[int] = []
    async with (
        Simulator({"facebook": TOKEN}, agent=False) as sim,
        event_sink(prefix, broker.url) as (_, sink),
        new_bridge(tmp_path, prefix, sim.url, broker.url) as bridge,
    ):
        stopped = False
        try:
            await bridge.start()
            url = f"{bridge.url}/webhook/{C}"
            async with aiohttp.ClientSession() as http:
                await post_events(http, url, range(0, 100), answered)  # published
                assert answered == list(range(100))
                await broker.stop_app()
                stopped = True
                await post_events(http, url, range(100, 400), answered)  # spooled
                assert answered == list(range(400)), "the webhook refused while spooling"
                # Killed mid-traffic: whatever was answered 200 before must survive.
                sender = asyncio.create_task(post_events(http, url, range(400, 1000), answered))
                await wait_until(lambda: len(answered) >= 450, 60, "450 answered")
                await bridge.kill()
                await sender
                await broker.start_app()
                stopped = False
                await bridge.start()  # same port and spool
                last_answered = answered[-1]
                await post_events(http, url, range(1000, 1100), answered)
                assert answered[-100:] == list(range(1000, 1100))
                got = await fenced(http, url, broker.url, sink)
        finally:
            if stopped:
                await broker.start_app()

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
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    """An operator restarts the bridge during a RabbitMQ outage (a rollout, a node drain):
    SIGTERM ends it promptly with exit 0, and what it spooled goes out after the next
    start, in order, once."""
    answered: list[int] = []
    async with (
        Simulator({"facebook": TOKEN}, agent=False) as sim,
        event_sink(prefix, broker.url) as (_, sink),
        new_bridge(tmp_path, prefix, sim.url, broker.url) as bridge,
    ):
        await bridge.start()
        url = f"{bridge.url}/webhook/{C}"
        async with aiohttp.ClientSession() as http:
            await post_events(http, url, range(0, 50), answered)
            async with broker.outage():
                await post_events(http, url, range(50, 250), answered)
                assert answered == list(range(250)), "the webhook refused while spooling"
                started = time.monotonic()
                code = await bridge.kill(signal.SIGTERM, within=60)
                took = time.monotonic() - started
            await bridge.start()
            got = await fenced(http, url, broker.url, sink)

    assert code == 0, bridge.log_tail(10)
    # Nothing to wait for: no contact is in flight, and a bounded wait on a dead broker
    # must not turn into a hang (Kubernetes kills after 30 s by default).
    assert took < 10, f"SIGTERM took {took:.1f} s"
    arrived = [seq for seq, _ in got]
    assert arrived == list(range(250)), "lost, doubled or reordered"
    print(f"\nSIGTERM with the broker away: exit {code} in {took:.2f} s; 200 were spooled")
