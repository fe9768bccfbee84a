"""Ownership of a connector through the lease queue, on the real RabbitMQ: several
Ownership objects, each on its own connection, as several bridge instances would be."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import aio_pika
import pytest

from bridge.metrics import Metrics
from bridge.ownership import Ownership
from bridge.sealing import Sealer
from bridge.topology import Topology
from tests.conftest import AMQP_URL
from tests.harness import close_connections_named, sample, wait_until

CONNECTOR = "fb"


def sealer(token: str = "connector-token") -> Sealer:
    return Sealer(connector=CONNECTOR, title="FB", token=token, oscc_url="http://oscc")


class Instance:
    """One contender: its own connection, Ownership, metrics and what its callbacks saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metrics = Metrics()
        self.acquired: list[str | None] = []
        self.suspended = 0
        self.lost: list[str] = []
        self.connection: aio_pika.abc.AbstractConnection
        self.ownership: Ownership

    async def on_acquired(self, session: str | None) -> None:
        self.acquired.append(session)

    async def on_suspended(self) -> None:
        self.suspended += 1

    async def on_lost(self, reason: str) -> None:
        self.lost.append(reason)

    def changes(self, reason: str) -> float:
        return sample(
            self.metrics,
            "ownership_changes_total",
            connector=CONNECTOR,
            reason=reason,
        )

    def gauge(self) -> float:
        return sample(self.metrics, "connector_owner", connector=CONNECTOR)


@pytest.fixture
async def contenders(prefix: str) -> AsyncIterator[Callable[..., object]]:
    """`make(name, **ownership_kwargs)` -> a started Instance; all stopped and the lease
    queue deleted afterwards."""
    topology = Topology(prefix)
    async with AsyncExitStack() as stack:

        async def make(
            name: str, *, robust: bool = False, token: str = "connector-token", **kw: object
        ) -> Instance:
            inst = Instance(name)
            connect = aio_pika.connect_robust if robust else aio_pika.connect
            inst.connection = await connect(
                AMQP_URL, client_properties={"connection_name": f"{prefix}-{name}"}
            )
            stack.push_async_callback(inst.connection.close)
            kw.setdefault("fence_after", 10.0)
            inst.ownership = Ownership(
                inst.connection,
                topology=topology,
                connector=CONNECTOR,
                instance=name,
                sealer=sealer(token),
                metrics=inst.metrics,
                on_acquired=inst.on_acquired,
                on_suspended=inst.on_suspended,
                on_lost=inst.on_lost,
                **kw,  # type: ignore[arg-type]
            )
            await inst.ownership.start()
            stack.push_async_callback(inst.ownership.stop)
            return inst

        yield make
    async with await aio_pika.connect(AMQP_URL) as conn:
        channel = await conn.channel()
        await channel.queue_delete(topology.owner_queue(CONNECTOR))


async def ready_leases(prefix: str) -> int:
    """Lease messages waiting in the queue (not held by a consumer)."""
    async with await aio_pika.connect(AMQP_URL) as conn:
        channel = await conn.channel()
        raw = await channel.get_underlay_channel()
        ok = await raw.queue_declare(Topology(prefix).owner_queue(CONNECTOR), passive=True)
        return int(ok.message_count or 0)


def owners(instances: list[Instance]) -> list[str]:
    return [i.name for i in instances if i.ownership.owner]


async def test_three_contenders_at_once_one_owner_one_lease(contenders, prefix) -> None:  # type: ignore[no-untyped-def]
    instances = list(await asyncio.gather(*(contenders(n) for n in ("a", "b", "c"))))
    await wait_until(lambda: len(owners(instances)) == 1, 5, "one owner")
    owner = next(i for i in instances if i.ownership.owner)
    seeded = sum(i.ownership.seeded for i in instances)
    assert seeded >= 1
    # every extra seed reaches the owner (the active consumer) and is acked away
    await wait_until(lambda: seeded - owner.ownership.dropped == 1, 5, "extra leases dropped")
    assert owners(instances) == [owner.name]
    # owner turns true as the lease arrives; on_acquired runs after, in its own task
    await wait_until(lambda: owner.acquired, 5, "the owner told")
    assert [i.acquired for i in instances if i is not owner] == [[], []]
    assert owner.acquired == [None]
    assert owner.gauge() == 1
    assert owner.changes("acquired") == 1
    for i in instances:
        await i.ownership.stop()
    # all gone: exactly the one lease is left, for whoever comes next
    assert await ready_leases(prefix) == 1


async def test_owner_connection_closed_next_acquires_fast_old_one_fenced(contenders) -> None:  # type: ignore[no-untyped-def]
    a = await contenders("a", fence_after=0.5)
    await wait_until(lambda: a.ownership.owner, 5, "a owns")
    await a.ownership.update_session("session-1")
    b = await contenders("b", fence_after=0.5)
    assert not b.ownership.owner
    t0 = time.monotonic()
    await a.connection.close()  # a crash, as the broker sees it
    await wait_until(lambda: b.ownership.owner, 5, "b owns")
    took = time.monotonic() - t0
    assert took < 1.0, f"failover took {took:.2f} s"
    await wait_until(lambda: b.acquired, 5, "b told")  # callbacks run in their own task
    assert b.acquired == ["session-1"]  # the sealed session came with the lease
    # a no longer holds the lease but keeps its session until fenced. a learns of its own
    # closed channel in a close callback, which may run after b got the lease: wait for it
    await wait_until(lambda: a.suspended, 5, "a suspended")
    assert a.ownership.role == "suspended"
    assert a.suspended == 1
    assert a.lost == []
    await wait_until(lambda: a.lost == ["fenced"], 3, "a fenced")
    fenced_after = time.monotonic() - t0
    assert 0.5 <= fenced_after < 2.0
    assert a.ownership.role == "standby"
    assert a.gauge() == 0
    assert a.changes("fenced") == 1


async def test_a_session_given_while_a_replacement_is_in_flight_reaches_the_next_owner(  # type: ignore[no-untyped-def]
    contenders,
) -> None:
    """update_session right after acquiring (the duty registers while the lease naming
    its holder is still on its way) must not be dropped: the next owner resumes that
    session instead of registering beside a live one."""
    a = await contenders("a", fence_after=0.5)
    await wait_until(lambda: a.ownership.owner, 5, "a owns")
    for n in range(5):
        # the first publishes; the second finds it in flight
        await asyncio.gather(
            a.ownership.update_session(f"older-{n}"), a.ownership.update_session(f"newest-{n}")
        )
    await wait_until(lambda: not a.ownership.replacing, 5, "replacements landed")
    b = await contenders("b", fence_after=0.5)
    await a.connection.close()
    await wait_until(lambda: b.acquired, 5, "b owns and is told")
    assert b.acquired == ["newest-4"]


async def test_release_hands_over_with_the_session(contenders, prefix) -> None:  # type: ignore[no-untyped-def]
    a = await contenders("a")
    await wait_until(lambda: a.ownership.owner, 5, "a owns")
    b = await contenders("b")
    c = await contenders("c", token="another-connector-token")
    t0 = time.monotonic()
    assert await a.ownership.release("session-9")
    await wait_until(lambda: b.ownership.owner or c.ownership.owner, 5, "handover")
    took = time.monotonic() - t0
    new = b if b.ownership.owner else c
    assert a.lost == ["released"]
    assert a.changes("released") == 1
    assert a.gauge() == 0
    # the next in line (b subscribed first) gets it, with the session sealed for the
    # connector; c, configured with another token, could not have opened it
    assert new is b, (b.acquired, c.acquired)
    await wait_until(lambda: b.acquired, 5, "b told")
    assert b.acquired == ["session-9"]
    assert took < 1.0
    await b.ownership.release()
    await wait_until(lambda: c.acquired, 5, "c owns and is told")
    assert c.acquired == [None]  # sealed with another key: register as usual
    await c.ownership.stop()
    assert c.lost == ["released"]
    assert await ready_leases(prefix) == 1


async def test_renewal_keeps_one_lease_and_the_latest_session(contenders, prefix) -> None:  # type: ignore[no-untyped-def]
    a = await contenders("a", renew_every=0.05)
    b = await contenders("b")
    await wait_until(lambda: a.ownership.owner, 5, "a owns")
    await a.ownership.update_session("s-1")
    await a.ownership.update_session("s-2")
    # twenty renewals: the lease is replaced publish-first, the old one acked
    start, renewed = a.ownership.dropped, a.ownership.renewed
    await wait_until(lambda: a.ownership.renewed >= renewed + 20, 10, "20 renewals")
    assert a.ownership.owner
    assert not b.ownership.owner
    assert a.ownership.dropped == start  # never an extra lease
    assert await ready_leases(prefix) == 0  # the one lease is held
    await a.connection.close()
    # owner turns true as the lease arrives; on_acquired runs right after
    await wait_until(lambda: b.acquired, 5, "b acquired")
    assert b.acquired == ["s-2"]


async def test_broker_closes_robust_connection_owner_gets_lease_back(contenders, prefix) -> None:  # type: ignore[no-untyped-def]
    a = await contenders("a", robust=True, fence_after=30.0)
    await wait_until(lambda: a.ownership.owner, 5, "a owns")
    await a.ownership.update_session("s-7")
    assert await close_connections_named(f"{prefix}-a") == 1
    await wait_until(lambda: a.suspended == 1, 10, "a suspended")
    # the robust connection comes back, the consumer is restored, the lease returns
    await wait_until(lambda: a.ownership.owner, 20, "a owns again")
    # on_acquired runs after the role turned, in its own task
    await wait_until(lambda: len(a.acquired) >= 2, 5, "a told again")
    assert a.acquired == [None, "s-7"]
    assert a.lost == []
    assert a.changes("acquired") == 1
    assert a.changes("fenced") == 0
    assert a.gauge() == 1


async def test_stop_of_the_owner_hands_on(contenders) -> None:  # type: ignore[no-untyped-def]
    a = await contenders("a")
    await wait_until(lambda: a.ownership.owner, 5, "a owns")
    b = await contenders("b")
    await a.ownership.stop()
    await wait_until(lambda: b.ownership.owner, 5, "b owns")
    assert a.lost == ["released"]
    assert a.changes("released") == 1
    assert a.ownership.status() == {"role": "standby", "owner": None}
    assert b.ownership.status() == {"role": "owner", "owner": "b"}
