"""Chaos: the bridge (``python -m bridge run``) is SIGKILLed while it forwards contacts to
OSCC, then restarted on the same spool directory. Nothing may be lost; nothing may reach
OSCC twice, except what no connector can protect: a contact OSCC accepted whose key had not
reached the dedupe file when the process died (the answer was on its way back). The tests
name that set exactly, from the dedupe file left behind, and check every duplicate is in it.

Every test here runs against a private RabbitMQ node of the session's own (the `broker`
fixture, see tests/chaos/conftest.py), never the machine's shared one. The SIGKILL tests
leave it alone; the broker-restart tests take it away (``stop_app``) under
/tmp/oscc-chaos.lock, so their timing never overlaps another chaos test, and always
restart it::

    flock /tmp/oscc-chaos.lock .venv/bin/python -m pytest -m chaos tests/chaos/test_egress_chaos.py
"""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.broker import Broker
from bridge.config import parse
from bridge.consumer import Consumer
from bridge.dedupe import FILE_NAME
from bridge.errors import BrokerUnavailable
from bridge.metrics import Metrics
from bridge.oscc.client import OsccClient
from bridge.publisher import Publisher
from bridge.session import SessionSupervisor
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import FB_TITLE, FB_TOKEN
from tests.harness import (
    BridgeProcess,
    RabbitNode,
    bridge_config,
    chaos_lock,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.chaos

C = "fb"
TITLE, TOKEN = FB_TITLE, FB_TOKEN


class Run:
    """One test's world: simulator, prefix, published contacts, bridge process."""

    def __init__(self, sim: Simulator, prefix: str, tmp_path: Path, broker: RabbitNode) -> None:
        self.sim = sim
        self.broker = broker
        self.topology = Topology(prefix)
        self.spool = tmp_path / "spool"
        self.port = free_port()
        config = bridge_config(
            prefix=prefix,
            oscc_url=sim.url,
            port=self.port,
            spool_dir=self.spool,
            connectors=[(C, TITLE, TOKEN)],
            keepalive=0.5,
            request_timeout=5.0,
            listen_for_events=False,
            amqp_url=broker.url,
        )
        self.bridge = BridgeProcess(config, port=self.port, workdir=tmp_path / "bridge")
        self.message_ids: dict[str, str] = {}  # publishedObject.id -> message_id
        self.order: list[str] = []

    async def publish(self, channel: aio_pika.abc.AbstractChannel, n: int, sources: int) -> None:
        # declared by us first, so the contacts wait in the queue before any bridge runs
        await self.topology.declare(channel, [C])
        exchange = await channel.get_exchange(self.topology.exchange, ensure=False)
        for i in range(n):
            po = f"po-{i % sources}-{i // sources}"
            body = {
                "type": "Post",
                "source": {"id": f"src-{i % sources}", "type": "Person", "name": "P"},
                "publishedObject": {"id": po, "content": f"message {i}"},
                "destination": {"id": "page", "type": "Page", "name": "Page"},
            }
            mid = uuid.uuid4().hex
            self.message_ids[po] = mid
            self.order.append(po)
            await exchange.publish(
                aio_pika.Message(json.dumps(body).encode(), message_id=mid, delivery_mode=2),
                self.topology.contact_new_key(C),
            )

    async def wait(self, condition: Callable[[], object], what: str, within: float) -> None:
        """`sim.wait_for`, failing with what was awaited and the bridge's last log lines."""
        try:
            await self.sim.wait_for(condition, timeout=within)
        except TimeoutError:
            pytest.fail(
                f"no {what} within {within} s; OSCC has {self.unique()} unique\n"
                f"{self.bridge.log_tail(60)}"
            )

    async def duplicates(self) -> float:
        """The running bridge's count of redelivered contacts it acked without calling
        OSCC (``forwards_total{outcome="duplicate"}``); 0 until it answers."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        try:
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                text = await r.text()
        except aiohttp.ClientError:
            return 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "oscc_bridge_forwards_total"
                    and labels.get("kind") == "contact"
                    and labels.get("outcome") == "duplicate"
                ):
                    return float(sample.value)
        return 0.0

    async def broker_lost(self) -> bool:
        """The running bridge reports its broker connection lost (/status)."""
        try:
            return not (await self.bridge.status())["broker"]["connected"]
        except aiohttp.ClientError:
            return False

    def accepted(self) -> list[str]:
        return [b["publishedObject"]["id"] for b in self.sim.contacts(TITLE)]

    def unique(self) -> int:
        return len(set(self.accepted()))

    def remembered(self) -> set[str]:
        """Keys in the dedupe file the killed process left behind."""
        path = self.spool / "dedupe" / C / FILE_NAME
        keys = set()
        for line in path.read_bytes().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                keys.add(json.loads(line)[1])
        return keys

    async def kill_at(self, unique: int) -> set[str]:
        """Start the bridge, SIGKILL it once OSCC has `unique` contacts; return the crash
        window: contacts OSCC accepted whose key is not in the dedupe file."""
        await self.bridge.start()
        await self.sim.wait_for(lambda: self.unique() >= unique, timeout=60)
        assert await self.bridge.kill() == -signal.SIGKILL
        # requests that reached the simulator before the kill are still answered (to
        # nobody): wait for their records
        await all_answered(self.sim)
        keys = self.remembered()
        return {
            po for po in set(self.accepted()) if f"contact:m:{self.message_ids[po]}" not in keys
        }

    def check(self, window: set[str]) -> tuple[int, int]:
        """No contact lost; duplicates only from `window`; first sends in source order."""
        got = self.accepted()
        counts = collections.Counter(got)
        lost = [po for po in self.order if po not in counts]
        doubled = {po for po, k in counts.items() if k > 1}
        assert lost == [], f"lost {len(lost)}: {lost[:10]}\n{self.bridge.log_tail()}"
        assert doubled <= window, f"duplicates outside the crash window: {doubled - window}"
        first: dict[str, list[int]] = collections.defaultdict(list)
        for po in dict.fromkeys(got):  # first occurrences, in arrival order
            src, seq = po.split("-")[1:]
            first[src].append(int(seq))
        for src, seqs in first.items():
            assert seqs == sorted(seqs), f"source {src} reordered: {seqs}"
        return len(window), len(doubled)


def answered(sim: Simulator) -> bool:
    """Every REST call that reached the simulator has its record (made on answering)."""
    return sum(sim.state.arrived.values()) == len(sim.records)


async def all_answered(sim: Simulator) -> None:
    """Wait until every call that reached the simulator was answered and recorded. Once
    the bridge is stopped or killed, nothing else arrives: the records are final."""
    await wait_until(lambda: answered(sim), 10, "every call at OSCC answered")


@contextlib.asynccontextmanager
async def world(prefix: str, tmp_path: Path, broker: RabbitNode) -> AsyncIterator[tuple[Run, Any]]:
    # A killed bridge's session holds the connector (2 ALREADY_REGISTERED_ON) until it
    # expires, as in OSCC: a short session_ttl keeps the restart quick.
    sim = Simulator(connectors={TITLE: TOKEN}, port=0, agent=False, seed=0, session_ttl=2.0)
    async with sim:
        connection = await aio_pika.connect_robust(broker.url)
        run = Run(sim, prefix, tmp_path, broker)
        try:
            channel = await connection.channel()
            yield run, channel
        finally:
            if run.bridge.running:
                await run.bridge.kill()
            await connection.close()
            # On a connection of its own: the robust one may still be reconnecting after a
            # broker restart, and a failed delete would leave the queues behind.
            cleanup = await aio_pika.connect(broker.url)
            await run.topology.delete(await cleanup.channel(), [C])
            await cleanup.close()


async def test_sigkill_mid_stream_twice_nothing_lost_duplicates_only_in_the_crash_window(
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    n, sources = 2000, 50
    async with world(prefix, tmp_path, broker) as (run, channel):
        await run.publish(channel, n, sources)
        window: set[str] = set()
        for at in (400, 1200):
            window |= await run.kill_at(at)
        await run.bridge.start()
        await run.sim.wait_for(lambda: run.unique() == n, timeout=90)
        assert await run.bridge.stop() == 0, run.bridge.log_tail()
        await all_answered(run.sim)
        in_window, doubled = run.check(window)
        # the window is bounded by what can be in flight at once (prefetch 64 per kill)
        assert in_window <= 2 * 64
        print(f"\n2 SIGKILLs: crash window {in_window} contacts, {doubled} sent twice")
        assert await run.broker.message_count(run.topology.contact_queue(C)) == 0
        assert await run.broker.message_count(run.topology.dead_queue(C)) == 0


async def test_sigkill_while_paused_then_restart_delivers_each_contact_exactly_once(
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    """Killed while OSCC answers NOT_READY: 64 contacts are in flight (unacked) and none is
    between OSCC's answer and the dedupe file, so the restart must send each exactly once."""
    n, sources = 800, 20
    async with world(prefix, tmp_path, broker) as (run, channel):
        await run.publish(channel, n, sources)
        await run.bridge.start()
        await run.sim.wait_for(lambda: run.unique() >= 300, timeout=60)
        run.sim.faults.not_ready(3600)

        def paused() -> bool:
            """Only the prober's refused calls now: every call answered, the last with 7,
            and every contact OSCC accepted before the pause remembered."""
            keys = run.remembered()
            return (
                answered(run.sim)
                and run.sim.records[-1].error_code == 7
                and all(f"contact:m:{run.message_ids[po]}" in keys for po in run.accepted())
            )

        await wait_until(paused, 10, "the consumer paused")
        assert await run.bridge.kill() == -signal.SIGKILL
        accepted = set(run.accepted())
        keys = run.remembered()
        assert all(f"contact:m:{run.message_ids[po]}" in keys for po in accepted)
        run.sim.faults.not_ready(0)
        await run.bridge.start()
        await run.sim.wait_for(lambda: run.unique() == n, timeout=60)
        assert await run.bridge.stop() == 0, run.bridge.log_tail()
        await all_answered(run.sim)
        assert run.check(set()) == (0, 0)
        assert len(run.accepted()) == n
        got = run.accepted()
        for s in range(sources):
            mine = [po for po in got if po.startswith(f"po-{s}-")]
            assert mine == [f"po-{s}-{k}" for k in range(n // sources)]
        assert await run.broker.message_count(run.topology.contact_queue(C)) == 0


@pytest.mark.timeout(300)  # a broker stop and start can take a minute on a busy machine
async def test_broker_restart_mid_stream_sends_each_contact_exactly_once(
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    """RabbitMQ stops under the running bridge: acks are lost, in-flight contacts come back
    after the restart, and the dedupe store turns every one OSCC already has into an ack
    without a call. The process never dies, so there is no crash window: exactly once."""
    n, sources = 1500, 50
    # The lock is held from the start: waiting for it mid-stream (another chaos test has
    # the broker) would let the stream finish before the outage.
    async with chaos_lock(), world(prefix, tmp_path, broker) as (run, channel):
        await run.publish(channel, n, sources)
        await run.bridge.start()
        await run.sim.wait_for(lambda: run.unique() >= 400, timeout=60)
        async with broker.outage():
            at_stop = run.unique()
            await wait_until(run.broker_lost, 30, "the bridge noticed the broker gone")
        await run.wait(lambda: run.unique() == n, "every contact at OSCC", within=120)
        assert at_stop < n, "the outage came too late to matter"
        assert await run.bridge.stop() == 0, run.bridge.log_tail()
        await all_answered(run.sim)
        # What the bridge had not acked when it stopped is back in the queue: contacts OSCC
        # already has. Counted with no consumer attached, every one must come back as a
        # duplicate on the next run, and not one may reach OSCC again.
        left = await run.broker.message_count(run.topology.contact_queue(C))
        await run.bridge.start()

        async def acked_all() -> bool:
            return await run.duplicates() >= left

        try:
            await wait_until(acked_all, 60, f"all {left} redelivered contacts acked")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{run.bridge.log_tail(60)}")
        assert await run.duplicates() == left
        assert await run.bridge.stop() == 0, run.bridge.log_tail()
        await all_answered(run.sim)
        print(f"\nbroker restart: {left} contacts still queued at the stop, all duplicates")
        assert run.check(set()) == (0, 0)
        assert len(run.accepted()) == n  # not one contact twice
        assert await run.broker.message_count(run.topology.contact_queue(C)) == 0
        assert await run.broker.message_count(run.topology.dead_queue(C)) == 0


async def test_consumer_start_gives_up_when_the_broker_went_away_first(
    prefix: str, tmp_path: Path, broker: RabbitNode
) -> None:
    """RabbitMQ gone between the publisher's connect and the consumer's start (a broker
    restart during a deploy). start() raises BrokerUnavailable, at once or after
    start_timeout where aio-pika would wait for the connection for ever, rather than a
    bare RuntimeError or a hang; the CLI logs it, exits 1, and is restarted."""
    topology = Topology(prefix)
    metrics = Metrics()
    async with (
        chaos_lock(),
        Simulator(connectors={TITLE: TOKEN}, port=0, agent=False) as sim,
    ):
        config = parse(
            bridge_config(
                prefix=prefix,
                oscc_url=sim.url,
                port=free_port(),
                spool_dir=tmp_path,
                connectors=[(C, TITLE, TOKEN)],
                listen_for_events=False,
                amqp_url=broker.url,
            ),
            env={},
        )
        try:
            async with (
                Broker(config.broker, topology, connectors=[C], metrics=metrics) as link,
                Publisher(link) as pub,
                OsccClient(config.oscc, connector=C, metrics=metrics) as client,
            ):
                supervisor = SessionSupervisor(config, config.connectors[0], client, metrics)
                consumer = Consumer(
                    config, config.connectors[0], link, pub, supervisor, client, metrics,
                    start_timeout=2.0,
                )  # fmt: skip
                async with broker.outage():
                    started = time.monotonic()
                    with pytest.raises(BrokerUnavailable, match="consumer of 'fb' started"):
                        await consumer.start()
                    took = time.monotonic() - started
        finally:
            connection = await aio_pika.connect(broker.url)
            await topology.delete(await connection.channel(), [C])
            await connection.close()
    assert took < 10.0, took
