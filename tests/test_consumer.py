"""Consumer: RabbitMQ -> OSCC against the real broker and the simulator over real HTTP.

Every count comes from what the simulator recorded (`sim.records`, `sim.contacts`) and
what the broker holds, not from the consumer's own account of itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bridge.app import Bridge as App
from bridge.broker import Broker
from bridge.config import BrokerConfig, Config, ConnectorConfig, HttpConfig, OsccConfig, SpoolConfig
from bridge.consumer import Consumer
from bridge.dedupe import DedupeStore
from bridge.delivery import key_of
from bridge.metrics import Metrics
from bridge.oscc.client import OsccClient
from bridge.publisher import Publisher
from bridge.session import SessionSupervisor
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.conftest import AMQP_URL
from tests.harness import message_count, wait_until

C = "fb"
TITLE, TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
GUIDE = Path(__file__).parent / "data" / "guide"


# -- harness -------------------------------------------------------------------------------


def make_config(
    url: str,
    prefix: str,
    spool: Path,
    *,
    prefetch: int = 64,
    queue_type: str = "quorum",
    confirm_timeout: float = 5.0,
) -> Config:
    return Config(
        broker=BrokerConfig(
            exchange=prefix,
            prefetch=prefetch,
            queue_type=queue_type,  # type: ignore[arg-type]
            confirm_timeout=confirm_timeout,
        ),
        http=HttpConfig(public_url="http://127.0.0.1:9"),
        oscc=OsccConfig(url=url, keepalive_interval=5.0, request_timeout=5.0),
        spool=SpoolConfig(dir=str(spool)),
        connectors=[ConnectorConfig(name=C, title=TITLE, token=TOKEN, listen_for_events=False)],
    )


@dataclass
class Bridge:
    sim: Simulator
    config: Config
    topology: Topology
    consumer: Consumer
    supervisor: SessionSupervisor
    metrics: Metrics
    dedupe: DedupeStore
    channel: AbstractChannel  # the test's own channel, for publishing and inspecting

    async def publish(
        self,
        body: bytes | dict[str, Any],
        *,
        message_id: str | None = "auto",
        routing_key: str | None = None,
        exchange: str | None = None,
        **props: Any,
    ) -> str | None:
        """Publish like a back-end would; returns the message_id."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        mid = uuid.uuid4().hex if message_id == "auto" else message_id
        message = aio_pika.Message(
            data, message_id=mid, content_type="application/json", delivery_mode=2, **props
        )
        if exchange == "":
            await self.channel.default_exchange.publish(
                message, routing_key or self.topology.contact_queue(C)
            )
        else:
            ex = await self.channel.get_exchange(self.topology.exchange, ensure=False)
            await ex.publish(message, routing_key or self.topology.contact_new_key(C))
        return mid

    async def listen(self, routing_key: str) -> aio_pika.abc.AbstractQueue:
        """An exclusive queue bound to `routing_key` on the main exchange."""
        q = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await q.bind(self.topology.exchange, routing_key)
        return q

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"oscc_bridge_{name}", labels)
        return value or 0.0


@asynccontextmanager
async def bridge(
    prefix: str,
    tmp_path: Path,
    *,
    prefetch: int = 64,
    queue_type: str = "quorum",
    confirm_timeout: float = 5.0,
    sim: Simulator | None = None,
    configure: Callable[[Config], Config] | None = None,
    **consumer_kw: Any,
) -> AsyncIterator[Bridge]:
    """Simulator + supervisor + client + publisher + consumer, all real, one prefix;
    `configure` changes the configuration first."""
    async with contextlib.AsyncExitStack() as stack:
        if sim is None:
            sim = await stack.enter_async_context(
                Simulator(connectors={TITLE: TOKEN}, port=0, agent=False, seed=0)
            )
        config = make_config(
            sim.url,
            prefix,
            tmp_path,
            prefetch=prefetch,
            queue_type=queue_type,
            confirm_timeout=confirm_timeout,
        )
        if configure is not None:
            config = configure(config)
        topology = Topology(prefix, config.broker.queue_type)
        metrics = Metrics()
        connection = await aio_pika.connect_robust(AMQP_URL)
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        stack.push_async_callback(topology.delete, channel, [C])
        broker = await stack.enter_async_context(
            Broker(config.broker, topology, connectors=[C], metrics=metrics)
        )
        publisher = await stack.enter_async_context(Publisher(broker))
        client = await stack.enter_async_context(
            OsccClient(config.oscc, connector=C, metrics=metrics)
        )
        supervisor = SessionSupervisor(
            config, config.connectors[0], client, metrics, rng=random.Random(0)
        )
        supervisor.backoff_base, supervisor.backoff_cap = 0.05, 0.5
        await stack.enter_async_context(supervisor)
        dedupe = await stack.enter_async_context(DedupeStore.for_connector(tmp_path, C))
        consumer_kw.setdefault("retry_base", 0.02)
        consumer_kw.setdefault("retry_cap", 0.3)
        consumer_kw.setdefault("drain_timeout", 5.0)
        consumer = Consumer(
            config,
            config.connectors[0],
            broker,
            publisher,
            supervisor,
            client,
            metrics,
            dedupe,
            rng=random.Random(0),
            **consumer_kw,
        )
        await stack.enter_async_context(consumer)
        yield Bridge(sim, config, topology, consumer, supervisor, metrics, dedupe, channel)


def contact(src: int | str, seq: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Post",
        "source": {"id": f"src-{src}", "type": "Person", "name": f"Person {src}"},
        "publishedObject": {"id": f"po-{src}-{seq}", "content": f"message {seq}"},
        "destination": {"id": "page-1", "type": "Page", "name": "Page"},
    }
    for path, value in changes.items():
        node = body
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return body


async def drain_queue(channel: AbstractChannel, name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(name, ensure=False)
    out = []
    while (m := await queue.get(no_ack=True, fail=False)) is not None:
        out.append(m)
    return out


async def wait_queue(
    channel: AbstractChannel, name: str, count: int, within: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Take messages off `name` until there are `count` (or more)."""
    got: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        got.extend(await drain_queue(channel, name))
        return len(got) >= count

    await wait_until(enough, within, f"{count} messages in {name}")
    return got


async def fence(b: Bridge, sources: list[int | str], within: float = 20.0) -> list[str]:
    """The published ids OSCC accepted before a sentinel contact per source, published
    now, was accepted (sentinels left out). A source's contacts go one after the other, so
    anything its earlier contacts would still send (a late duplicate) comes before its
    sentinel."""
    ids = {f"po-{src}-fence" for src in sources}
    for src in sources:
        await b.publish(contact(src, 0, publishedObject__id=f"po-{src}-fence"))
    await wait_until(
        lambda: ids <= set(published_ids(b.sim.contacts(TITLE))), within, "the sentinels"
    )
    return [i for i in published_ids(b.sim.contacts(TITLE)) if i not in ids]


def new_contacts(sim: Simulator) -> list[Any]:
    return [r for r in sim.records if r.endpoint == "newContact"]


def published_ids(bodies: list[Any]) -> list[str]:
    return [b["publishedObject"]["id"] for b in bodies]


# -- the big one: many sources, faults, exactly once, in order -----------------------------


async def test_1000_contacts_from_50_sources_arrive_once_in_order_through_faults(
    prefix: str, tmp_path: Path
) -> None:
    n, sources = 1000, 50
    async with bridge(prefix, tmp_path) as b:
        sim = b.sim
        faults_done = asyncio.Event()

        async def inject() -> None:
            # Two NOT_READY windows and two forced session losses, while contacts flow.
            plan = [(150, "not_ready"), (350, "drop"), (550, "not_ready"), (750, "drop")]
            for at, what in plan:
                await sim.wait_for(lambda at=at: len(sim.contacts(TITLE)) >= at, timeout=30)
                if what == "not_ready":
                    sim.faults.not_ready(0.4)
                else:
                    sim.faults.drop_sessions()
            faults_done.set()

        injector = asyncio.create_task(inject())
        order: list[str] = []
        for i in range(n):
            body = contact(i % sources, i // sources)
            order.append(body["publishedObject"]["id"])
            await b.publish(body)
        await sim.wait_for(lambda: len(sim.contacts(TITLE)) >= n, timeout=45)
        await asyncio.wait_for(injector, 5)
        assert faults_done.is_set()
        got = await fence(b, list(range(sources)))
        counts = collections.Counter(got)
        lost = [i for i in order if i not in counts]
        duplicated = {i: k for i, k in counts.items() if k > 1}
        assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated)
        for s in range(sources):
            mine = [i for i in got if i.startswith(f"po-{s}-")]
            assert mine == [f"po-{s}-{k}" for k in range(n // sources)], f"source {s} reordered"

        codes = collections.Counter(r.error_code for r in new_contacts(sim))
        assert codes[7] >= 1, "no NOT_READY answer was seen: the fault did not bite"
        assert codes[10] >= 2, "no session-loss answer was seen"
        registrations = [r for r in sim.records if r.endpoint == "registerConnector"]
        assert len(registrations) == 3  # the first, plus one per drop: single-flight
        # OSCC records a contact before it answers; it is counted once the answer is in
        await wait_until(
            lambda: (
                b.counter("forwards_total", connector=C, kind="contact", outcome="accepted")
                >= n + sources
            ),
            10,
            "the sentinels counted",
        )
        accepted = b.counter("forwards_total", connector=C, kind="contact", outcome="accepted")
        assert accepted == n + sources  # and the sentinels
        # every message acked: nothing left in the queue, nothing unacked
        assert await message_count(b.topology.contact_queue(C)) == 0


async def test_not_ready_pauses_instead_of_hammering(prefix: str, tmp_path: Path) -> None:
    async with bridge(prefix, tmp_path, retry_base=0.05, retry_cap=0.2) as b:
        sim = b.sim
        await b.supervisor.token(timeout=5)
        sim.faults.not_ready(1.0)
        for i in range(40):
            await b.publish(contact(i, 0))
        await sim.wait_for(lambda: len(sim.contacts(TITLE)) == 40, timeout=15)
        refused = [r for r in new_contacts(sim) if r.error_code == 7]
        # One prober backs off (0.025 .. 0.2 s) through a 1 s window: a dozen calls at
        # most, not 40 messages x retries.
        assert 1 <= len(refused) <= 20, len(refused)
        assert sorted(published_ids(sim.contacts(TITLE))) == sorted(f"po-{i}-0" for i in range(40))


async def test_session_loss_reregisters_once_and_resends_the_same_message(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        sim = b.sim
        first = await b.supervisor.token(timeout=5)
        sim.faults.drop_sessions()
        await b.publish(contact(1, 0))
        await sim.wait_for(lambda: len(sim.contacts(TITLE)) == 1, timeout=10)
        calls = new_contacts(sim)
        assert [r.error_code for r in calls] == [10, 0]
        assert calls[0].authorization == first
        assert calls[1].authorization != first
        assert calls[0].body == calls[1].body
        assert len([r for r in sim.records if r.endpoint == "registerConnector"]) == 2


async def test_5xx_answers_are_retried_and_nothing_is_lost_or_doubled(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        sim = b.sim
        sim.faults.error_5xx_rate = 0.3
        for i in range(100):
            await b.publish(contact(i % 10, i // 10))
        await sim.wait_for(lambda: len(sim.contacts(TITLE)) >= 100, timeout=30)
        ids = published_ids(sim.contacts(TITLE))
        assert sorted(ids) == sorted(f"po-{i % 10}-{i // 10}" for i in range(100))
        assert any(r.status == 503 for r in sim.records)


# -- outcomes, reply_to, spellings ---------------------------------------------------------


async def test_accepted_outcome_with_correlation_id_and_reply_to(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        accepted = await b.listen(b.topology.contact_outcome_key(C, True))
        reply = await b.channel.declare_queue(exclusive=True, auto_delete=True)
        mid = await b.publish(contact(7, 1), correlation_id="corr-7", reply_to=reply.name)
        mid2 = await b.publish(contact(8, 1))  # no correlation_id: message_id stands in
        outcomes = await wait_queue(b.channel, accepted.name, 2)
        by_corr = {m.correlation_id: m for m in outcomes}
        assert set(by_corr) == {"corr-7", mid2}
        m = by_corr["corr-7"]
        assert m.headers["oscc-error-code"] == 0
        assert m.headers["oscc-error-text"] == "NO_ERROR"
        assert m.headers["oscc-connector"] == C
        assert m.app_id == "oscc-bridge"
        assert json.loads(m.body) == {
            "messageId": mid,
            "publishedObjectId": "po-7-1",
            "sourceId": "src-7",
            "errorCode": 0,
            "errorText": "NO_ERROR",
        }
        replies = await wait_queue(b.channel, reply.name, 1)
        assert replies[0].correlation_id == "corr-7"
        assert json.loads(replies[0].body)["publishedObjectId"] == "po-7-1"
        assert len(b.sim.contacts(TITLE)) == 2


async def test_js_sample_spelling_and_missing_datetime_are_sent_canonical(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        await b.publish((GUIDE / "js_new_contact.json").read_bytes())
        no_date = contact(1, 1)
        await b.publish(no_date)
        await b.sim.wait_for(lambda: len(b.sim.contacts(TITLE)) == 2, timeout=10)
        js, plain = b.sim.contacts(TITLE)
        assert js["type"] == "Post"
        assert js["source"]["type"] == "Person"
        assert js["destination"]["type"] == "Page"
        assert js["isRealTimeHandling"] is True
        assert js["dateTime"] == "Sat, 10 Sep 2016 15:04:55 GMT"
        assert "dateTIme" not in js
        assert plain["dateTime"].endswith("Z")  # filled with the current UTC time


# -- rejected messages: dead letters -------------------------------------------------------

LONG = "x" * 257
BAD = [
    pytest.param(contact(1, 1, source__id=LONG), 12, "$.source.id", id="source.id>256"),
    pytest.param(contact(1, 2, source__name=LONG), 12, "$.source.name", id="source.name>256"),
    pytest.param(contact(1, 3, source__location=LONG), 12, "$.source.location", id="location"),
    pytest.param(contact(1, 4, source__language=LONG), 12, "$.source.language", id="language"),
    pytest.param(contact(1, 5, publishedObject__id=LONG), 12, "$.publishedObject.id", id="po.id"),
    pytest.param(
        contact(1, 6, publishedObject__fatherId=LONG), 12, "$.publishedObject.fatherId", id="father"
    ),
    pytest.param(
        contact(1, 7, publishedObject__title=LONG), 12, "$.publishedObject.title", id="title"
    ),
    pytest.param(
        contact(1, 8, publishedObject__content="y" * 5001),
        12,
        "$.publishedObject.content",
        id="content>5000",
    ),
    pytest.param(
        contact(1, 9, publishedObject__inReplyTo={"id": LONG}),
        12,
        "$.publishedObject.inReplyTo.id",
        id="inReplyTo",
    ),
    pytest.param(contact(1, 10, destination__id=LONG), 12, "$.destination.id", id="dest.id"),
    pytest.param(contact(1, 11, destination__name=LONG), 12, "$.destination.name", id="dest.name"),
    pytest.param(contact(1, 12, dateTime="yesterday-ish"), 13, "$.dateTime", id="bad-date"),
    pytest.param(contact(1, 13, type="Tweet"), 11, "$.type", id="wrong-enum-type"),
    pytest.param(contact(1, 14, source__type="Robot"), 11, "$.source.type", id="wrong-enum-source"),
    pytest.param(contact(1, 15, source="nope"), 11, "$.source", id="source-not-object"),
    pytest.param(b"this is { not json", 11, None, id="not-json"),
    # docs/SECURITY.md B2/B3: decoder crashes and 200 KB error texts
    pytest.param(b"[" * 100_000 + b"]" * 100_000, 11, None, id="deep-nesting"),
    pytest.param(b'{"type":"Post","source":"\xed\xa0\x80"}', 11, None, id="bad-utf8"),
    pytest.param(contact(1, 16, type="x" * 200_000), 11, "$.type", id="200KB-enum"),
    pytest.param(b"[1, 2, 3]", 11, None, id="json-array"),
    pytest.param({"type": "Post"}, 11, None, id="missing-fields"),
]


@pytest.mark.parametrize(("body", "code", "path"), BAD)
async def test_bad_message_is_dead_lettered_never_sent(
    prefix: str, tmp_path: Path, body: Any, code: int, path: str | None
) -> None:
    async with bridge(prefix, tmp_path) as b:
        rejected = await b.listen(b.topology.contact_outcome_key(C, False))
        reply = await b.channel.declare_queue(exclusive=True, auto_delete=True)
        mid = await b.publish(
            body, correlation_id="bad-1", reply_to=reply.name, headers={"x-mine": "kept"}
        )
        await b.publish(contact(2, 1))  # a good one after it still goes through
        dead = await wait_queue(b.channel, b.topology.dead_queue(C), 1)
        await b.sim.wait_for(lambda: len(b.sim.contacts(TITLE)) == 1, timeout=10)
        d = dead[0]
        sent = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert d.body == sent  # the original body, untouched
        assert d.message_id == mid
        assert d.correlation_id == "bad-1"
        assert d.reply_to == reply.name
        assert d.routing_key == b.topology.contact_new_key(C)
        assert d.headers["x-mine"] == "kept"
        assert d.headers["oscc-error-code"] == code
        assert d.headers["oscc-error-text"] in (
            "WRONG_API_REQUEST",
            "STRING_OUT_OF_BOUND",
            "WRONG_DATE_FORMAT",
        )
        reason = d.headers["oscc-dead-reason"]
        assert isinstance(reason, str)
        assert reason
        assert len(reason) <= 1000
        assert sum(len(str(v)) for v in d.headers.values()) < 16_384
        if path is not None:
            assert path in reason
        outcome = (await wait_queue(b.channel, rejected.name, 1))[0]
        assert outcome.correlation_id == "bad-1"
        assert outcome.headers["oscc-error-code"] == code
        out_body = json.loads(outcome.body)
        assert out_body["errorCode"] == code
        assert out_body["messageId"] == mid
        assert out_body["reason"] == reason
        assert (await wait_queue(b.channel, reply.name, 1))[0].correlation_id == "bad-1"
        # OSCC never saw it: the only newContact is the good one
        assert published_ids([r.body for r in new_contacts(b.sim)]) == ["po-2-1"]
        text = d.headers["oscc-error-text"]
        assert b.counter("dead_letters_total", connector=C, reason=text) == 1


async def test_rejection_by_oscc_is_dead_lettered_not_retried(prefix: str, tmp_path: Path) -> None:
    async with bridge(prefix, tmp_path) as b:
        await b.supervisor.token(timeout=5)
        b.sim.faults.fail_next("newContact", 12)
        mid = await b.publish(contact(3, 1))
        dead = await wait_queue(b.channel, b.topology.dead_queue(C), 1)
        assert dead[0].message_id == mid
        assert dead[0].headers["oscc-error-code"] == 12
        assert "OSCC answered 12" in dead[0].headers["oscc-dead-reason"]
        assert await fence(b, [3]) == []
        assert len(new_contacts(b.sim)) == 2  # tried once, never again; then the sentinel


async def test_straight_to_the_queue_dead_letters_under_the_connector_key(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        await b.publish(b"nope", exchange="")
        await b.publish(b"nope too", exchange="", routing_key=b.topology.stream_response_queue(C))
        dead = await wait_queue(b.channel, b.topology.dead_queue(C), 2)
        keys = sorted(d.routing_key for d in dead)
        assert keys == sorted([b.topology.contact_new_key(C), b.topology.stream_response_key(C)])
        assert {d.headers["oscc-original-exchange"] for d in dead} == {""}


# -- dedupe --------------------------------------------------------------------------------


async def test_a_redelivered_known_message_is_acked_without_calling_oscc(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        accepted = await b.listen(b.topology.contact_outcome_key(C, True))
        mid = await b.publish(contact(4, 1), correlation_id="c1")
        await b.sim.wait_for(lambda: len(b.sim.contacts(TITLE)) == 1, timeout=10)
        # OSCC records the contact before it answers; the key is added once the answer is in
        await wait_until(lambda: f"contact:m:{mid}" in b.dedupe, 10, "the key remembered")
        # the same message again, as the broker redelivers it after a crash
        await b.publish(contact(4, 1), message_id=mid, correlation_id="c1")
        await b.publish(contact(4, 2), correlation_id="c2")
        outcomes = await wait_queue(b.channel, accepted.name, 3)
        assert [(m.correlation_id, json.loads(m.body).get("reason")) for m in outcomes] == [
            ("c1", None),
            ("c1", "duplicate"),  # the outcome is published again, then acked
            ("c2", None),
        ]
        assert published_ids(b.sim.contacts(TITLE)) == ["po-4-1", "po-4-2"]
        assert len(new_contacts(b.sim)) == 2
        assert b.counter("forwards_total", connector=C, kind="contact", outcome="duplicate") == 1
        assert await drain_queue(b.channel, b.topology.contact_queue(C)) == []
    # a new consumer on the same spool directory knows it too
    async with bridge(prefix, tmp_path) as b2:
        await b2.publish(contact(4, 1), message_id=mid)
        await b2.sim.wait_for(
            lambda: (
                b2.counter("forwards_total", connector=C, kind="contact", outcome="duplicate") == 1
            ),
            timeout=10,
        )
        assert new_contacts(b2.sim) == []


async def test_an_ack_that_never_completes_does_not_hold_its_source(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiormq can block an ack for ever: one sent just as the connection dies waits in the
    dead connection's write queue, which nothing drains (seen in the broker-restart chaos
    test). Stand-in for that: the first contact's ack never returns. The consumer gives up
    on it after broker.confirm_timeout, the source's next contact goes on, and the first,
    back in the queue once its channel closes, is acked as a duplicate next time."""
    stuck = asyncio.Event()
    original = aio_pika.IncomingMessage.ack

    async def ack(self: aio_pika.IncomingMessage, multiple: bool = False) -> None:
        if json.loads(self.body)["publishedObject"]["id"] == "po-7-1":
            stuck.set()
            await asyncio.Event().wait()  # until the consumer's timeout cancels it
        await original(self, multiple)

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", ack)
    async with bridge(prefix, tmp_path, confirm_timeout=0.5) as b:
        first = await b.publish(contact(7, 1))
        await b.publish(contact(7, 2))
        await stuck.wait()
        await b.sim.wait_for(lambda: len(b.sim.contacts(TITLE)) == 2, timeout=10)
        assert published_ids(b.sim.contacts(TITLE)) == ["po-7-1", "po-7-2"]
        await b.consumer.stop()  # closes its channels: the unacked one goes back
        back = await wait_queue(b.channel, b.topology.contact_queue(C), 1)
        assert [m.message_id for m in back] == [first]
        assert f"contact:m:{first}" in b.dedupe  # so a redelivery is acked, not sent
        assert len(new_contacts(b.sim)) == 2


def test_dedupe_key_is_message_id_else_published_object_id() -> None:
    assert key_of("contact", "m-1", "po-1") == "contact:m:m-1"
    assert key_of("contact", None, "po-1") == "contact:p:po-1"
    assert key_of("contact", "", "po-1") == "contact:p:po-1"
    assert key_of("contact", None, None) is None
    assert key_of("stream_response", "m-2", None) == "stream_response:m:m-2"
    assert key_of("stream_response", None, "po-1") is None


# -- streams -------------------------------------------------------------------------------


async def test_stream_response_is_forwarded_and_bad_one_dead_lettered(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge(prefix, tmp_path) as b:
        reply = await b.channel.declare_queue(exclusive=True, auto_delete=True)
        good = json.loads((GUIDE / "js_stream_response.json").read_bytes())
        key = b.topology.stream_response_key(C)
        await b.publish(good, routing_key=key, correlation_id="req-1", reply_to=reply.name)
        bad = dict(good, orderedItems=[{"id": "1", "dateTime": "not a date"}])
        await b.publish(bad, routing_key=key)
        await b.sim.wait_for(lambda: len(b.sim.stream_responses(TITLE)) == 1, timeout=10)
        sent = b.sim.stream_responses(TITLE)[0]
        assert sent["id"] == good["id"]
        assert sent["itemsInPage"] == 3  # canonical spelling and type
        dead = await wait_queue(b.channel, b.topology.dead_queue(C), 1)
        assert dead[0].routing_key == key
        assert dead[0].headers["oscc-error-code"] == 13
        assert "$.orderedItems[0].dateTime" in dead[0].headers["oscc-dead-reason"]
        r = (await wait_queue(b.channel, reply.name, 1))[0]
        assert r.correlation_id == "req-1"
        assert json.loads(r.body)["errorCode"] == 0
        calls = [x for x in b.sim.records if x.endpoint == "streamResponse"]
        assert len(calls) == 1


async def test_stream_pages_of_one_stream_keep_their_order(prefix: str, tmp_path: Path) -> None:
    async with bridge(prefix, tmp_path) as b:
        key = b.topology.stream_response_key(C)
        b.sim.faults.latency = 0.01
        for stream in range(5):
            for page in range(1, 6):
                await b.publish(
                    {"type": "Stream", "id": f"s{stream}", "page": page}, routing_key=key
                )
        await b.sim.wait_for(lambda: len(b.sim.stream_responses(TITLE)) == 25, timeout=10)
        got = [(r["id"], r["page"]) for r in b.sim.stream_responses(TITLE)]
        for stream in range(5):
            assert [p for s, p in got if s == f"s{stream}"] == [1, 2, 3, 4, 5]


# -- drain ---------------------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_drain_leaves_unfinished_messages_at_the_head_in_order(
    prefix: str, tmp_path: Path, queue_type: str
) -> None:
    sim = Simulator(connectors={TITLE: TOKEN}, port=0, agent=False, seed=0)
    async with (
        sim,
        bridge(
            prefix, tmp_path, sim=sim, prefetch=8, queue_type=queue_type, drain_timeout=30.0
        ) as b,
    ):
        await b.supervisor.token(timeout=5)
        sim.faults.not_ready(60)
        ids = []
        for i in range(20):
            body = contact(i % 3, i)
            ids.append(body["publishedObject"]["id"])
            await b.publish(body)
        # the consumer holds its prefetch of 8, retrying; the rest wait in the queue
        await sim.wait_for(lambda: len(new_contacts(sim)) >= 2, timeout=10)
        started = asyncio.get_running_loop().time()
        await b.consumer.stop()
        # nothing was at OSCC, so stop() did not wait for the 30 s drain timeout
        assert asyncio.get_running_loop().time() - started < 5.0
        # the broker requeues after close-ok, not before: wait until all 20 are back
        name = b.topology.contact_queue(C)

        async def all_back() -> bool:
            return await message_count(name) >= len(ids)

        await wait_until(all_back, 10, f"all {len(ids)} requeued")
        left = await drain_queue(b.channel, name)
        assert [json.loads(m.body)["publishedObject"]["id"] for m in left] == ids
        assert sim.contacts(TITLE) == []


async def test_drain_lets_a_busy_message_finish(prefix: str, tmp_path: Path) -> None:
    async with bridge(prefix, tmp_path) as b:
        await b.supervisor.token(timeout=5)
        b.sim.faults.latency = 0.5
        await b.publish(contact(1, 1))
        await wait_until(lambda: b.sim.state.arrived["newContact"], 5, "the POST at OSCC")
        assert b.sim.contacts(TITLE) == []  # under way: OSCC answers after 0.5 s
        await b.consumer.stop()
        assert published_ids(b.sim.contacts(TITLE)) == ["po-1-1"]
        assert await drain_queue(b.channel, b.topology.contact_queue(C)) == []


# -- the whole bridge: stream request out, stream response back ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stream_round_trip_through_the_whole_bridge(prefix: str, tmp_path: Path) -> None:
    """OSCC's Stream request -> webhook -> <c>.stream.request -> a back-end replies to its
    reply_to with the correlation id -> consumer -> OSCC's streamResponse."""
    port = free_port()
    async with Simulator(connectors={TITLE: TOKEN}, port=0, agent=False, seed=0) as sim:
        config = Config(
            broker=BrokerConfig(exchange=prefix),
            http=HttpConfig(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}"),
            oscc=OsccConfig(url=sim.url, keepalive_interval=5.0),
            spool=SpoolConfig(dir=str(tmp_path)),
            connectors=[ConnectorConfig(name=C, title=TITLE, token=TOKEN)],
        )
        topology = Topology(prefix, config.broker.queue_type)
        connection = await aio_pika.connect_robust(AMQP_URL)
        try:
            channel = await connection.channel()
            async with App(config) as app:
                requests = await channel.declare_queue(exclusive=True, auto_delete=True)
                await requests.bind(prefix, topology.stream_request_key(C))

                async def back_end(request: AbstractIncomingMessage) -> None:
                    async with request.process():
                        asked = json.loads(request.body)
                        answer = json.loads((GUIDE / "stream_response.json").read_bytes())
                        answer["id"] = asked["id"]
                        await channel.default_exchange.publish(
                            aio_pika.Message(
                                json.dumps(answer).encode(),
                                correlation_id=request.correlation_id,
                                content_type="application/json",
                            ),
                            routing_key=request.reply_to or "",
                        )

                await requests.consume(back_end)
                await (await app.session(C)).token(timeout=10)
                call = await sim.send_stream_request(
                    TITLE, id="205056409590639", destination_id="Page id", number="10"
                )
                assert call.ok
                await sim.wait_for(lambda: sim.stream_responses(TITLE), timeout=10)
                (sent,) = sim.stream_responses(TITLE)
                assert sent["id"] == "205056409590639"
                assert sent["type"] == "Stream"
                assert len(sent["orderedItems"]) >= 3
                calls = [r for r in sim.records if r.endpoint == "streamResponse"]
                assert [r.error_code for r in calls] == [0]
        finally:
            with contextlib.suppress(Exception):
                await topology.delete(await connection.channel(), [C])
            await connection.close()
