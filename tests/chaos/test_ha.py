"""Several instances (DESIGN.md, "Several instances"): bridge processes side by side on a
private RabbitMQ node (or a private 3-node cluster), the simulator in strict session mode.

What is counted, never assumed:
- owners: each instance's /status; terms of ownership from each instance's log (a term
  opens at ``consumer.started`` and closes at ``consumer.stopped``,
  ``ownership.suspended``/``ownership.lost`` or the SIGKILL), and no two terms overlap;
- OSCC sessions: the simulator's `max_live` (the most live sessions a title had at once);
- contacts: every accepted newContact at the simulator, with its time, so duplicates,
  per-source order and the stall after each stop come from what OSCC saw.

These tests kill bridges and stop brokers: they hold /tmp/oscc-chaos.lock and use only
the session's private nodes (`chaos_node`, and a 3-node cluster of `private_brokers`),
never the shared 127.0.0.1:5672::

    .venv/bin/python -m pytest -m chaos tests/chaos/test_ha.py -s
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import FB_TITLE, FB_TOKEN, established_event, new_contact
from tests.harness import (
    BridgeProcess,
    PrivateBrokers,
    RabbitNode,
    bridge_config,
    chaos_lock,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.chaos

C = "fb"
TITLE, TOKEN = FB_TITLE, FB_TOKEN
FENCE_AFTER = 3.0
PREFETCH = 16  # the in-flight window per instance: contacts sent, not yet acked
SESSION_TTL = 20.0  # strict sessions: gone 20 s after the last keepalive


# -- bridge processes ------------------------------------------------------------------------


def ha_config(
    *,
    prefix: str,
    urls: list[str],
    oscc_url: str,
    port: int,
    public_url: str,
    spool_dir: Path,
    instance: str,
) -> str:
    """TOML of one instance: same broker, exchange, connector and public_url (OSCC calls
    the one webhookURL, as a load balancer's) as the others."""
    return bridge_config(
        public_url=public_url,
        prefix=prefix,
        oscc_url=oscc_url,
        port=port,
        spool_dir=spool_dir,
        connectors=[(C, TITLE, TOKEN)],
        keepalive=1.0,
        request_timeout=5.0,
        prefetch=PREFETCH,
        confirm_timeout=3.0,
        listen_for_events=False,
        amqp_urls=urls,
        extra=f'[ha]\ninstance = "{instance}"\nfence_after = {FENCE_AFTER}\n',
    )


def _ts(line: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(line["timestamp"]).timestamp()


class Fleet:
    """`size` bridge processes with one configuration but their own port, spool and
    instance name; kills are remembered (wall clock) to close their terms."""

    def __init__(self, sim: Simulator, prefix: str, tmp: Path, urls: list[str], size: int):
        self.prefix = prefix
        self.urls = urls
        self.bridges: list[BridgeProcess] = []
        self.names = [f"i{n}" for n in range(size)]
        self.kills: dict[int, list[float]] = collections.defaultdict(list)
        ports = [free_port() for _ in self.names]
        for port, name in zip(ports, self.names, strict=True):
            text = ha_config(
                prefix=prefix,
                urls=urls,
                oscc_url=sim.url,
                port=port,
                public_url=f"http://127.0.0.1:{ports[0]}",  # no load balancer here
                spool_dir=tmp / name / "spool",
                instance=name,
            )
            self.bridges.append(BridgeProcess(text, port=port, workdir=tmp / name))

    async def __aenter__(self) -> Fleet:
        await asyncio.gather(*(b.start() for b in self.bridges))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for b in self.bridges:
            if b.running:
                await b.kill()

    async def status(self, n: int) -> dict[str, Any] | None:
        if not self.bridges[n].running:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            return await self.bridges[n].status()
        return None

    async def roles(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for n in range(len(self.bridges)):
            st = await self.status(n)
            if st is not None:
                out[n] = st["connectors"][C]["role"]
        return out

    async def sole_owner(self, within: float = 30.0) -> int:
        """The one running instance that owns the connector with a registered session,
        once every other running one is a standby."""
        deadline = time.monotonic() + within
        while True:
            states = {}
            for n in range(len(self.bridges)):
                st = await self.status(n)
                if st is not None:
                    fb = st["connectors"][C]
                    states[n] = (fb["role"], fb["state"])
            owners = [n for n, (role, _) in states.items() if role != "standby"]
            if len(owners) == 1 and states[owners[0]] == ("owner", "registered"):
                return owners[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sole owner within {within} s: {states}")
            await asyncio.sleep(0.1)

    async def kill(self, n: int, sig: int = signal.SIGKILL) -> int:
        if sig == signal.SIGKILL:
            self.kills[n].append(time.time())
        return await self.bridges[n].kill(sig)

    def log(self, n: int) -> list[dict[str, Any]]:
        lines = []
        text = self.bridges[n].log_path.read_text(errors="replace")
        for raw in text.splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and "event" in line and "timestamp" in line:
                    lines.append(line)
        return lines

    def events(self, n: int, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log(n) if line["event"] == event]

    def terms(self) -> list[tuple[float, float, str]]:
        """(start, end, instance) of every stretch an instance consumed contacts."""
        out: list[tuple[float, float, str]] = []
        ends = ("consumer.stopped", "ownership.suspended", "ownership.lost")
        for n, name in enumerate(self.names):
            kills = sorted(self.kills[n])
            opened: float | None = None
            for line in self.log(n):
                ts, event = _ts(line), line["event"]
                if event == "consumer.started" and opened is None:
                    opened = ts
                elif opened is not None and (event in ends or event == "bridge.started"):
                    end = ts
                    if event == "bridge.started":  # the previous run was killed meanwhile
                        end = max(k for k in kills if k <= ts)
                    out.append((opened, end, name))
                    opened = None
            if opened is not None:
                end = kills[-1] if not self.bridges[n].running else time.time()
                out.append((opened, end, name))
        return sorted(out)


def assert_never_two(fleet: Fleet, sim: Simulator) -> None:
    """No two instances consumed at once; OSCC never saw two live sessions of the title."""
    terms = fleet.terms()
    assert terms, "nobody ever consumed"
    for (_, end, a), (start, _, b) in itertools.pairwise(terms):
        assert start >= end, f"{b} began consuming {end - start:.3f} s before {a} stopped"
    assert sim.state.max_live.get(TITLE, 0) == 1, sim.state.max_live


# -- contacts --------------------------------------------------------------------------------


class Traffic:
    """Publishes numbered contacts from `sources` sources (with confirms) and reads back
    what OSCC accepted."""

    def __init__(self, sim: Simulator, url: str, prefix: str, sources: int = 50) -> None:
        self.sim, self.url, self.prefix, self.sources = sim, url, prefix, sources
        self.sent: list[tuple[str, str]] = []  # (source, publishedObject.id) in order
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> Traffic:
        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel()
        await Topology(self.prefix).declare(channel, [C])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def publish(self, count: int, rate: float) -> None:
        """`count` more contacts at about `rate` per second (each confirmed, retried
        while the broker is away)."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(self.prefix, ensure=False)
        started, first = time.monotonic(), len(self.sent)
        for n in range(first, first + count):
            source = f"src-{n % self.sources}"
            body = new_contact(n, source_id=source)
            body["publishedObject"]["id"] = f"p{n}"
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"m{n}",
            )
            while True:
                try:
                    await exchange.publish(message, f"{C}.contact.new", timeout=5)
                    break
                except Exception:  # the node went away: publish it again (at least once)
                    await asyncio.sleep(0.5)
            self.sent.append((source, f"p{n}"))
            if (wait := started + (n - first + 1) / rate - time.monotonic()) > 0:
                await asyncio.sleep(wait)

    def accepted(self) -> list[tuple[float, str, str]]:
        """(time, source, id) of every newContact OSCC accepted, in arrival order."""
        return [
            (r.at, r.body["source"]["id"], r.body["publishedObject"]["id"])
            for r in self.sim.records
            if r.endpoint == "newContact" and r.error_code == 0 and r.title == TITLE
        ]

    def ids(self) -> set[str]:
        return {i for _, _, i in self.accepted()}

    def check(self) -> list[tuple[float, str]]:
        """Every contact reached OSCC; per-source order holds (first arrivals); returns
        the duplicates as (time of the second arrival, id)."""
        accepted = self.accepted()
        assert {i for _, i in self.sent} == {i for _, _, i in accepted}, "contacts missing"
        seen: set[str] = set()
        firsts: dict[str, list[str]] = collections.defaultdict(list)
        duplicates = []
        for at, source, i in accepted:
            if i in seen:
                duplicates.append((at, i))
                continue
            seen.add(i)
            firsts[source].append(i)
        expected: dict[str, list[str]] = collections.defaultdict(list)
        for source, i in self.sent:
            expected[source].append(i)
        assert dict(firsts) == dict(expected), "per-source order broken"
        return duplicates

    def stall_after(self, t: float, horizon: float = 40.0) -> float:
        """The longest gap between accepted contacts from `t` (monotonic) on, `t` included."""
        times = [t] + [at for at, _, _ in self.accepted() if t < at <= t + horizon]
        return max((b - a for a, b in itertools.pairwise(times)), default=horizon)


@contextlib.asynccontextmanager
async def strict_simulator() -> AsyncIterator[Simulator]:
    async with Simulator(
        {TITLE: TOKEN}, agent=False, strict_sessions=True, session_ttl=SESSION_TTL, seed=12
    ) as sim:
        yield sim


@pytest.fixture
async def tidy(chaos_node: RabbitNode, prefix: str) -> AsyncIterator[None]:
    """Delete the test's queues and exchanges on the session's chaos node afterwards."""
    yield
    await delete_queues(chaos_node.url, prefix)


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.timeout(1200)  # mostly waiting for the chaos lock others hold
async def test_three_instances_one_owner_one_session_webhooks_published_once(
    chaos_node: RabbitNode, tidy: None, prefix: str, tmp_path: Path
) -> None:
    url = chaos_node.url
    async with chaos_lock(), strict_simulator() as sim:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            topology = Topology(prefix)
            await topology.declare(channel, [C])
            events = await channel.declare_queue(exclusive=True)
            await events.bind(prefix, f"{C}.event.#")
            async with Fleet(sim, prefix, tmp_path, [url], 3) as fleet:
                owner = await fleet.sole_owner()
                roles = await fleet.roles()
                assert sorted(roles.values()) == ["owner", "standby", "standby"], roles
                statuses = [await fleet.status(n) for n in range(3)]
                assert [s["instance"] for s in statuses if s] == fleet.names
                assert statuses[owner]["connectors"][C]["owner"] == fleet.names[owner]  # type: ignore[index]
                # OSCC: one registration, one session
                registered = [
                    r
                    for r in sim.records
                    if r.endpoint == "registerConnector" and r.error_code == 0
                ]
                assert len(registered) == 1

                # webhooks round-robin to all three: each answered 200, each published once
                sent = 60
                async with aiohttp.ClientSession() as http:
                    for n in range(sent + 1):  # the last one is the sentinel
                        body = established_event(f"contact-{n}")
                        bridge = fleet.bridges[n % 3]
                        async with http.post(f"{bridge.url}/webhook/{C}", json=body) as r:
                            assert r.status == 200, await r.text()
                got: list[str] = []
                async with events.iterator() as it:
                    async for message in it:
                        await message.ack()
                        got.append(json.loads(message.body)["contactID"])
                        if got[-1] == f"contact-{sent}":
                            break
                assert sorted(got) == sorted(f"contact-{n}" for n in range(sent + 1))
                # /status says owner and registered before the owner's consumer has
                # started (it loads the accepted log first); no contact was sent here, so
                # wait for its log line rather than assume it is written by now
                await wait_until(
                    lambda: fleet.events(owner, "consumer.started"), 30, "the owner consuming"
                )
                assert_never_two(fleet, sim)
        finally:
            await connection.close()


@pytest.mark.timeout(1200)  # mostly waiting for the chaos lock others hold
async def test_failover_under_load_sigkill_twice_sigterm_once(
    chaos_node: RabbitNode, tidy: None, prefix: str, tmp_path: Path
) -> None:
    """2,000 contacts from 50 sources while the owner is SIGKILLed, SIGTERMed, SIGKILLed
    (each time started again as a standby): every contact reaches OSCC, per-source order
    holds, no duplicate across the SIGTERM, at most the in-flight window per SIGKILL."""
    url = chaos_node.url
    total, rate = 2000, 60.0
    async with (
        chaos_lock(),
        strict_simulator() as sim,
        Traffic(sim, url, prefix) as traffic,
        Fleet(sim, prefix, tmp_path, [url], 3) as fleet,
    ):
        await fleet.sole_owner()
        publishing = asyncio.create_task(traffic.publish(total, rate))
        stops: list[tuple[str, float, str]] = []  # (how, monotonic time, instance)
        for how, at in (("SIGKILL", 300), ("SIGTERM", 900), ("SIGKILL", 1500)):
            await wait_until(lambda at=at: len(traffic.ids()) >= at, 120, f"{at} accepted")
            owner = await fleet.sole_owner()
            t = time.monotonic()
            if how == "SIGKILL":
                await fleet.kill(owner)
            else:
                assert await fleet.kill(owner, signal.SIGTERM) == 0
            stops.append((how, t, fleet.names[owner]))
            await fleet.sole_owner()
            await fleet.bridges[owner].start()  # back, as a standby
        await publishing
        await wait_until(lambda: len(traffic.ids()) == total, 120, "every contact at OSCC")
        duplicates = traffic.check()
        by_stop: dict[int, list[str]] = collections.defaultdict(list)
        for at, i in duplicates:
            k = max(k for k, (_, t, _) in enumerate(stops) if t <= at)
            by_stop[k].append(i)
        report = []
        for k, (how, t, name) in enumerate(stops):
            stall = traffic.stall_after(t)
            report.append(f"{how} of {name}: stall {stall:.2f} s, duplicates {len(by_stop[k])}")
        print("\n" + "\n".join(report))
        for k, (how, t, _) in enumerate(stops):
            if how == "SIGTERM":
                assert by_stop[k] == [], f"duplicates across SIGTERM: {by_stop[k]}"
                assert traffic.stall_after(t) <= 5.0, report
            else:
                assert len(by_stop[k]) <= PREFETCH, report
                assert traffic.stall_after(t) <= 15.0, report
        # one registration for the whole run: every new owner resumed the session
        registrations = [r.error_code for r in sim.records if r.endpoint == "registerConnector"]
        assert registrations == [0]
        assert_never_two(fleet, sim)


@pytest.mark.timeout(1200)  # mostly waiting for the chaos lock others hold
async def test_broker_closes_the_owners_connection_it_fences_another_owns(
    chaos_node: RabbitNode, tidy: None, prefix: str, tmp_path: Path
) -> None:
    node, url = chaos_node, chaos_node.url
    async with (
        chaos_lock(),
        strict_simulator() as sim,
        Traffic(sim, url, prefix) as traffic,
        Fleet(sim, prefix, tmp_path, [url], 2) as fleet,
    ):
        old = await fleet.sole_owner()
        publishing = asyncio.create_task(traffic.publish(400, 50.0))
        await wait_until(lambda: len(traffic.ids()) >= 100, 60, "100 accepted")
        t = time.monotonic()
        closed = await node.close_connections_named(f"oscc-bridge {prefix} {fleet.names[old]}")
        assert closed == 1
        new = await fleet.sole_owner(within=FENCE_AFTER + 10)
        assert new != old
        # the old owner gave up the role within fence_after (its link came back at once,
        # but the lease had gone to the other instance)
        await wait_until(lambda: fleet.events(old, "ownership.fenced"), FENCE_AFTER + 5, "fenced")
        suspended = fleet.events(old, "ownership.suspended")[-1]
        fenced = fleet.events(old, "ownership.fenced")[-1]
        took = _ts(fenced) - _ts(suspended)
        story = [(e["timestamp"], e["event"]) for e in fleet.log(old) if "ownership" in e["event"]]
        assert FENCE_AFTER - 0.5 <= took <= FENCE_AFTER + 1.0, (took, story)
        assert (await fleet.roles())[old] == "standby"
        await publishing
        await wait_until(lambda: len(traffic.ids()) == 400, 60, "every contact at OSCC")
        duplicates = traffic.check()
        print(f"\nfailover after close_connection: stall {traffic.stall_after(t):.2f} s, "
              f"duplicates {len(duplicates)}, fenced after {took:.2f} s")  # fmt: skip
        assert len(duplicates) <= PREFETCH
        assert_never_two(fleet, sim)


@pytest.mark.timeout(1200)  # mostly waiting for the chaos lock others hold
async def test_start_without_the_broker_and_a_broker_stop_while_running(
    chaos_node: RabbitNode, tidy: None, prefix: str, tmp_path: Path
) -> None:
    """Broker stopped before the bridge starts: it starts, answers webhooks 200 (spooled),
    /readyz 200; everything lands once the broker is back; the same for a stop while it
    runs; and SIGTERM while the broker is away exits 0. Counted on a durable queue bound
    to `<c>.event.#` before the broker stops."""
    node, url = chaos_node, chaos_node.url

    async def post(bridge: BridgeProcess, first: int, count: int) -> None:
        async with aiohttp.ClientSession() as http:
            for n in range(first, first + count):
                body = established_event(f"contact-{n}")
                async with http.post(f"{bridge.url}/webhook/{C}", json=body) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["errorCode"] == 0

    async def readyz(bridge: BridgeProcess) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(f"{bridge.url}/readyz") as r:
            return r.status, await r.json()

    events = f"{prefix}.events"
    async with chaos_lock(), strict_simulator() as sim:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await Topology(prefix).declare(channel, [C])
            queue = await channel.declare_queue(
                events, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(prefix, f"{C}.event.#")
        await node.stop_app()
        try:
            fleet = Fleet(sim, prefix, tmp_path, [url], 1)
            bridge = fleet.bridges[0]
            await fleet.__aenter__()  # /readyz answered 200 with the broker away
            status, body = await readyz(bridge)
            assert status == 200
            assert body["broker"] is False
            assert body["spool_room"] is True
            await post(bridge, 0, 20)
            assert (await fleet.status(0))["spool"]["messages"] == 20  # type: ignore[index]
        finally:
            await node.start_app()
        try:
            await wait_for_depth(node, events, 20)
            await fleet.sole_owner()
            # and a stop while it runs
            await node.stop_app()
            try:
                await wait_http_status(bridge, lambda b: b["broker"] is False)
                status, _ = await readyz(bridge)
                assert status == 200
                await post(bridge, 20, 20)
            finally:
                await node.start_app()
            await wait_for_depth(node, events, 40)
            await fleet.sole_owner(within=60)
            assert bridge.running
            assert sim.state.max_live.get(TITLE, 0) == 1
            # SIGTERM with the broker away: a clean, prompt exit (nothing to hand over)
            await node.stop_app()
            try:
                await wait_http_status(bridge, lambda b: b["broker"] is False)
                t = time.monotonic()
                assert await bridge.stop(within=60) == 0
                print(f"\nSIGTERM without the broker: exit 0 after {time.monotonic() - t:.2f} s")
            finally:
                await node.start_app()
        finally:
            await fleet.__aexit__()


async def wait_for_depth(node: RabbitNode, queue: str, want: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    depth: int | str = "?"
    while True:
        with contextlib.suppress(Exception):
            if (depth := await node.message_count(queue)) == want:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue}: {depth} messages, not {want}, within {within} s")
        await asyncio.sleep(0.2)


async def wait_http_status(bridge: BridgeProcess, check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        async with aiohttp.ClientSession() as http, http.get(f"{bridge.url}/readyz") as r:
            if check(await r.json()):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("readyz never said so")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(1200)  # mostly waiting for the chaos lock others hold
async def test_cluster_node_stopped_under_traffic_bridges_move_on(
    private_brokers: PrivateBrokers, prefix: str, tmp_path: Path
) -> None:
    """Three private nodes in one cluster; two bridges with broker.urls = all three,
    connected to the first. Its node stops under traffic: they reconnect to another node,
    nothing is lost, no contact is doubled beyond the in-flight window."""
    first, second, _ = nodes = private_brokers.cluster("ha", 3)
    urls = [n.url for n in nodes]
    on_first = f":{first.port}/"

    async def moved(fleet: Fleet) -> bool:
        for n in range(2):
            st = await fleet.status(n)
            if (
                st is None
                or not st["broker"]["connected"]
                or st["broker"]["url"].endswith(on_first)
            ):
                return False
        return True

    async with chaos_lock(), strict_simulator() as sim:
        async with (
            Traffic(sim, second.url, prefix) as traffic,
            Fleet(sim, prefix, tmp_path, urls, 2) as fleet,
        ):
            await fleet.sole_owner()
            for n in range(2):
                assert (await fleet.status(n))["broker"]["url"].endswith(on_first)  # type: ignore[index]
            publishing = asyncio.create_task(traffic.publish(600, 40.0))
            await wait_until(lambda: len(traffic.ids()) >= 150, 60, "150 accepted")
            t = time.monotonic()
            try:
                await first.stop_app()
                await wait_until_async(lambda: moved(fleet), 60, "both bridges on another node")
                await publishing
                await wait_until(lambda: len(traffic.ids()) == 600, 120, "every contact")
            finally:
                await first.start_app()
            duplicates = traffic.check()
            print(f"\nnode stop: stall {traffic.stall_after(t):.2f} s, "
                  f"duplicates {len(duplicates)}")  # fmt: skip
            assert len(duplicates) <= PREFETCH
            assert_never_two(fleet, sim)
        await delete_queues(second.url, prefix)


async def wait_until_async(cond: Any, within: float, what: str) -> None:
    """`wait_until` for a coroutine condition."""
    deadline = time.monotonic() + within
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {within:.0f} s")
        await asyncio.sleep(0.1)


async def delete_queues(url: str, prefix: str) -> None:
    """What the bridges and the test declared under `prefix` (the node outlives the test).
    Retried for a while: right after a ``start_app`` a stream may not be back yet."""
    topology = Topology(prefix)
    queues = [topology.owner_queue(C), topology.accepted_queue(C), f"{prefix}.events"]

    async def delete() -> bool:
        try:
            async with await aio_pika.connect(url) as connection:
                channel = await connection.channel()
                await topology.delete(channel, [C])
                for queue in queues:
                    await channel.queue_delete(queue)
        except aio_pika.exceptions.AMQPError:
            return False
        return True

    await wait_until_async(delete, 60, f"{prefix}: queues deleted")
