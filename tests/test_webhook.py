"""The webhook over real HTTP, publishing to the real RabbitMQ.

Every webhook example of the guide lands exactly once on its routing key with its headers
and properties; bad input of every kind is refused with the right status and publishes
nothing; secrets, limits and timeouts hold; with the broker gone the webhook spools, and
with the spool full too it answers 503 NOT_READY with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web

from bridge.broker import Broker
from bridge.config import Config, parse
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.publisher import Publisher
from bridge.spool import Spool
from bridge.topology import Topology
from bridge.webhook import add_routes, server_options
from tests.harness import close_connections_named, message_count, sample, wait_until

GUIDE = Path(__file__).resolve().parent / "data" / "guide"
FB, MAIL = "facebook", "email"
SECRET = "s3cret-Path_token"
OK = {"errorCode": 0, "errorText": "NO_ERROR"}
WRONG = {"errorCode": 11, "errorText": "WRONG_API_REQUEST"}


def make_config(prefix: str, spool_dir: Path, **http: Any) -> Config:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in http.items())
    return parse(
        f"""
[broker]
exchange = "{prefix}"
confirm_timeout = 5
[http]
{extra}
[spool]
dir = "{spool_dir}"
[[connectors]]
name = "{FB}"
title = "facebook"
token = "tok-facebook"
[[connectors]]
name = "{MAIL}"
title = "email"
token = "tok-email"
webhook_secret = "{SECRET}"
""",
        {},
    )


@dataclass
class Ingress:
    """A running webhook + publisher + spool, a client, and what reached the broker."""

    base: str
    config: Config
    metrics: Metrics
    topology: Topology
    publisher: Publisher
    spool: Spool
    http: aiohttp.ClientSession
    received: list[AbstractIncomingMessage]
    amqp: AbstractRobustConnection

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
        data: Any = body if isinstance(body, bytes) else json.dumps(body).encode()
        if "data" in kw:
            data = kw.pop("data")  # a stream
        elif len(data) > 1024 * 1024:
            data = io.BytesIO(data)  # aiohttp warns about large bytes bodies
        async with self.http.post(self.base + path, data=data, **kw) as r:
            text = await r.read()
            try:
                answer = json.loads(text)
            except ValueError:
                answer = text
            return r.status, answer, r.headers

    async def wait(self, n: int) -> list[AbstractIncomingMessage]:
        await wait_until(lambda: len(self.received) >= n, 20, f"{n} messages")
        return self.received

    async def fence(self) -> list[AbstractIncomingMessage]:
        """What reached the broker before a sentinel event posted now, the sentinel left out.

        Posted once every earlier call was answered, and published on the same confirmed
        channel, the sentinel queues behind anything those calls published: a duplicate of
        one of them would be in the list. (Through the `MAIL` connector, so the metrics of
        `FB` that tests count stay as they were.)"""
        status, answer, _ = await self.post(f"/webhook/{MAIL}/{SECRET}", event(FENCE))
        assert (status, answer) == (200, OK)
        await wait_until(lambda: any(map(is_fence, self.received)), 20, "the sentinel event")
        return [m for m in self.received if not is_fence(m)]

    async def unrouted(self) -> int:
        return await message_count(self.topology.unrouted)


@contextlib.asynccontextmanager
async def running(
    prefix: str,
    tmp_path: Path,
    amqp: AbstractRobustConnection,
    *,
    spool_max: int = 1 << 24,
    **http: Any,
) -> AsyncIterator[Ingress]:
    config = make_config(prefix, tmp_path / "spool", **http)
    topology = Topology(prefix, config.broker.queue_type)
    metrics = Metrics()
    connectors = [c.name for c in config.connectors]
    received: list[AbstractIncomingMessage] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            spool = await stack.enter_async_context(
                Spool(config.spool.dir, max_bytes=spool_max, metrics=metrics)
            )
            broker = await stack.enter_async_context(
                Broker(config.broker, topology, connectors=connectors, metrics=metrics)
            )
            publisher = await stack.enter_async_context(Publisher(broker, spool=spool))
            # What OSCC's calls should produce, and nothing else: a wrong routing key
            # would end in <prefix>.unrouted.
            channel = await amqp.channel()
            queue = await channel.declare_queue(exclusive=True)
            for pattern in ("*.event.*", "*.publication.*", "*.stream.request"):
                await queue.bind(topology.exchange, pattern)

            async def collect(m: AbstractIncomingMessage) -> None:
                received.append(m)

            await queue.consume(collect, no_ack=True)
            app = web.Application()
            add_routes(app, config, publisher, metrics)
            runner = web.AppRunner(app, **server_options(config, metrics))
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            http_client = await stack.enter_async_context(aiohttp.ClientSession())
            yield Ingress(
                f"http://127.0.0.1:{port}",
                config,
                metrics,
                topology,
                publisher,
                spool,
                http_client,
                received,
                amqp,
            )
            await channel.close()
    finally:
        channel = await amqp.channel()
        await topology.delete(channel, connectors)
        await channel.close()


@pytest.fixture
async def ingress(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection
) -> AsyncIterator[Ingress]:
    async with running(prefix, tmp_path, amqp) as ing:
        yield ing


def guide(name: str) -> bytes:
    return (GUIDE / f"{name}.json").read_bytes()


FENCE = -1  # the `n` of the sentinel event `Ingress.fence` posts


def is_fence(m: AbstractIncomingMessage) -> bool:
    return bool(json.loads(m.body).get("n") == FENCE)


def event(n: int, kind: str = "EstablishedEvent", **extra: Any) -> dict[str, Any]:
    return {
        "type": "OpenMediaEvent",
        "openMediaEventType": kind,
        "dateTime": "2018-02-20 15:08:41.043",
        "contactID": f"contact-{n}",
        "agentID": "100",
        "n": n,
        **extra,
    }


# -- the guide's examples -------------------------------------------------------------------

EVENTS = {
    "event_delivered": ("delivered", "DeliveredOpenMediaEvent", "0553A8C5A0300"),
    "event_established": ("established", "EstablishedEvent", "0553A8C5A0300"),
    "event_held": ("held", "HeldOpenMediaEvent", "O553A8C5A0300"),
    "event_retrieved": ("retrieved", "RetrievedOpenMediaEvent", "0553A8C5A0300"),
    "event_transferred": ("transferred", "TransferredOpenMediaEvent", "0553A8C5A0300"),
    "event_disconnected": ("disconnected", "DisconnectedEvent", "0553A8C5A0300"),
}


async def test_every_guide_example_lands_once_on_its_key(ingress: Ingress) -> None:
    expected: dict[str, tuple[str, dict[str, Any], dict[str, str], str | None]] = {}
    for name, (kind, event_type, contact) in EVENTS.items():
        headers = {"oscc-contact-id": contact, "oscc-agent-id": "100", "oscc-event": event_type}
        expected[name] = (f"{FB}.event.{kind}", OK, headers, None)
    expected["outgoing_publication"] = (
        f"{FB}.publication.post",
        {"type": "Post", **OK},
        {
            "oscc-published-id": "Object id",
            "oscc-in-reply-to": "Id of post for which this object is a reply or a comment.",
        },
        None,
    )
    expected["stream_request"] = (
        f"{FB}.stream.request",
        {"type": "Stream", **OK},
        {},
        "205056409590639",
    )
    for name, (_, answer, _, _) in expected.items():
        status, got, _ = await ingress.post(f"/webhook/{FB}", guide(name))
        assert (status, got) == (200, answer), name
    await ingress.wait(len(expected))
    messages = await ingress.fence()
    assert len(messages) == len(expected)

    ids = set()
    for m, (name, (key, _, headers, correlation)) in zip(messages, expected.items(), strict=True):
        assert m.routing_key == key, name
        assert m.headers == {"oscc-connector": FB, **headers}, name
        assert json.loads(m.body) == codec.decode_inbound(guide(name)).body, name
        assert m.content_type == "application/json"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.app_id == "oscc-bridge"
        assert m.type == key.removeprefix(f"{FB}.")
        assert m.timestamp is not None
        assert m.message_id
        ids.add(m.message_id)
        assert m.correlation_id == correlation
        assert m.reply_to == (ingress.topology.stream_response_queue(FB) if correlation else None)
    assert len(ids) == len(messages)
    # The examples' own spellings came out canonical; OSCC's fields all kept.
    retrieved = json.loads(messages[3].body)
    assert "date" not in retrieved
    assert retrieved["dateTime"] == "2018-02-20 15:09:19.867"
    assert await ingress.unrouted() == 0
    assert sample(ingress.metrics, "webhook_requests_total", connector=FB, kind="event",
                  outcome="published") == 6  # fmt: skip
    assert sample(ingress.metrics, "webhook_duration_seconds_count", connector=FB,
                  kind="stream") == 1  # fmt: skip


async def test_unknown_event_type_and_every_publication_type(ingress: Ingress) -> None:
    unknown = event(1, "BrandNewOpenMediaEvent", future={"field": [1, 2]})
    assert (await ingress.post(f"/webhook/{FB}", unknown))[:2] == (200, OK)
    for i, spelled in enumerate(["DirectMessage", "article", "TICKET", "ExternalMedia"]):
        pub = json.loads(guide("outgoing_publication"))
        pub["type"] = spelled
        pub["objectToBePublished"]["id"] = f"obj-{i}"
        del pub["objectToBePublished"]["inReplyTo"]
        status, answer, _ = await ingress.post(f"/webhook/{FB}", pub)
        canonical = {"directmessage": "DirectMessage", "externalmedia": "ExternalMedia"}.get(
            spelled.lower(), spelled.capitalize()
        )
        assert (status, answer) == (200, {"type": canonical, **OK})
    messages = await ingress.wait(5)
    assert messages[0].routing_key == f"{FB}.event.unknown"
    assert messages[0].headers["oscc-event"] == "BrandNewOpenMediaEvent"
    assert json.loads(messages[0].body)["future"] == {"field": [1, 2]}  # kept as sent
    assert [m.routing_key for m in messages[1:]] == [
        f"{FB}.publication.directmessage",
        f"{FB}.publication.article",
        f"{FB}.publication.ticket",
        f"{FB}.publication.externalmedia",
    ]
    # No inReplyTo: no header rather than an empty one.
    assert messages[1].headers == {"oscc-connector": FB, "oscc-published-id": "obj-0"}
    assert await ingress.unrouted() == 0


async def test_secret_paths(ingress: Ingress) -> None:
    not_found_body = (await ingress.post("/nothing/here", b"{}"))[1]
    cases = [
        f"/webhook/{MAIL}",  # secret configured: the bare path does not exist
        f"/webhook/{MAIL}/wrong-secret",
        f"/webhook/{MAIL}/{SECRET}x",
        f"/webhook/{MAIL}/{SECRET[:-1]}",
        f"/webhook/{FB}/{SECRET}",  # no secret configured: no secret path either
        "/webhook/nobody",
        f"/webhook/nobody/{SECRET}",
    ]
    for path in cases:
        status, body, _ = await ingress.post(path, event(0))
        assert (status, body) == (404, not_found_body), path
    status, body, _ = await ingress.post(f"/webhook/{MAIL}/{SECRET}", event(1))
    assert (status, body) == (200, OK)
    [m] = await ingress.wait(1)
    assert m.routing_key == f"{MAIL}.event.established"
    assert m.headers["oscc-connector"] == MAIL
    assert await ingress.fence() == [m]
    assert sample(ingress.metrics, "webhook_requests_total", connector="unknown",
                  kind="invalid", outcome="not_found") == 2  # fmt: skip


def nested(depth: int) -> bytes:
    return b'{"type":"OpenMediaEvent","openMediaEventType":"EstablishedEvent","x":' + (
        b"[" * depth + b"]" * depth + b"}"
    )


BAD = [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b"[1, 2]", id="array"),
    pytest.param(b'"OpenMediaEvent"', id="string"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"type": "Nope"}', id="unknown-type"),
    pytest.param(b'{"type": 5}', id="type-not-string"),
    pytest.param(b'{"type": "OpenMediaEvent"}', id="event-without-event-type"),
    pytest.param(
        b'{"type":"OpenMediaEvent","openMediaEventType":"EstablishedEvent","contactID":{"a":1}}',
        id="contact-id-object",
    ),
    pytest.param(
        b'{"type":"OpenMediaEvent","openMediaEventType":"HeldOpenMediaEvent","source":[]}',
        id="source-array",
    ),
    pytest.param(b'{"type": "Post", "source": {}}', id="publication-without-object"),
    pytest.param(b'{"type": "Post", "objectToBePublished": 3}', id="publication-object-int"),
    pytest.param(b'{"type": "Stream"}', id="stream-without-id"),
    pytest.param(b'{"type": "Stream", "id": ["x"]}', id="stream-id-list"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-array-100k"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="nested-object-100k"),
    pytest.param(nested(100_000), id="nested-inside-an-event"),
    pytest.param(b'{"type": "Stream", "id": "x"', id="truncated"),
]


@pytest.mark.parametrize("body", BAD)
async def test_bad_requests_answer_400_and_publish_nothing(ingress: Ingress, body: bytes) -> None:
    status, answer, _ = await ingress.post(f"/webhook/{FB}", body)
    assert (status, answer) == (400, WRONG)
    await assert_nothing_published_and_still_healthy(ingress)
    assert sample(ingress.metrics, "webhook_requests_total", connector=FB, kind="invalid",
                  outcome="rejected") == 1  # fmt: skip


async def assert_nothing_published_and_still_healthy(ingress: Ingress) -> None:
    """A valid event still goes through, and it is the only message anywhere (it is the
    sentinel: posted after the bad call was answered, it queues behind anything that call
    published)."""
    status, answer, _ = await ingress.post(f"/webhook/{FB}", event(42))
    assert (status, answer) == (200, OK)

    def numbers() -> list[int]:
        return [json.loads(m.body)["n"] for m in ingress.received]

    await wait_until(lambda: 42 in numbers(), 20, "the valid event")
    assert numbers() == [42]
    assert sample(ingress.metrics, "publishes_total", outcome="confirmed") == 1
    assert await ingress.unrouted() == 0
    for c in (FB, MAIL):
        for name in (
            ingress.topology.contact_queue(c),
            ingress.topology.stream_response_queue(c),
            ingress.topology.dead_queue(c),
        ):
            assert await message_count(name) == 0, name


async def test_bodies_over_the_limit_answer_413(ingress: Ingress) -> None:
    limit = ingress.config.http.max_body_bytes
    big = b'{"type": "Stream", "id": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    # With a Content-Length: refused before reading.
    status, answer, _ = await ingress.post(f"/webhook/{FB}", big)
    assert (status, answer) == (413, WRONG)

    # Chunked, no Content-Length: refused once the limit is passed while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    status, answer, _ = await ingress.post(f"/webhook/{FB}", b"", data=chunks())
    assert (status, answer) == (413, WRONG)
    # Exactly at the limit is fine as far as size goes (here: not a known object).
    status, _, _ = await ingress.post(f"/webhook/{FB}", b" " * (limit - 2) + b"{}")
    assert status == 400
    await assert_nothing_published_and_still_healthy(ingress)
    assert sample(ingress.metrics, "webhook_requests_total", connector=FB, kind="invalid",
                  outcome="too_large") == 2  # fmt: skip


async def test_slow_requests_time_out(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection
) -> None:
    async with running(prefix, tmp_path, amqp, read_timeout=0.5) as ing:
        host, port = ing.base.removeprefix("http://").split(":")
        # A body that never finishes: 408 after read_timeout.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            'Content-Length: 100\r\n\r\n{"type"'.encode()
        )
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert 0.4 < time.monotonic() - started < 3
        writer.close()
        # A request head that never finishes: the connection is closed.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        await assert_nothing_published_and_still_healthy(ing)


async def test_requests_beyond_max_concurrency_answer_503_not_ready(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection
) -> None:
    """http.max_concurrency requests in progress (here: bodies still arriving), the next
    is answered 503 errorCode 7 with Retry-After at once, unread, and counted; once they
    finish, webhooks go through again."""
    async with running(prefix, tmp_path, amqp, max_concurrency=2) as ing:
        host, port = ing.base.removeprefix("http://").split(":")
        held = []
        for n in (10, 11):
            body = json.dumps(event(n)).encode()
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            await writer.drain()
            held.append((reader, writer, body[10:]))
        # Until both heads are in, a body that is no object answers 400 (and publishes
        # nothing); then 503, unread.
        deadline = time.monotonic() + 10
        while (answer := await ing.post(f"/webhook/{FB}", b"[]"))[0] != 503:
            assert answer[0] == 400
            assert time.monotonic() < deadline, "never busy"
        status, body, headers = answer
        assert (status, body) == (503, {"errorCode": 7, "errorText": "NOT_READY"})
        assert headers["Retry-After"] == "1"
        assert sample(ing.metrics, "webhook_requests_total", connector=FB, kind="invalid",
                      outcome="busy") == 1  # fmt: skip
        for reader, writer, rest in held:
            writer.write(rest)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            writer.close()
        status, body, _ = await ing.post(f"/webhook/{FB}", event(3))
        assert (status, body) == (200, OK)
        messages = await ing.wait(3)
        assert sorted(json.loads(m.body)["n"] for m in messages) == [3, 10, 11]


async def test_concurrent_webhooks_each_arrive_once(ingress: Ingress) -> None:
    results = await asyncio.gather(*(ingress.post(f"/webhook/{FB}", event(i)) for i in range(300)))
    assert all(r[:2] == (200, OK) for r in results)
    await ingress.wait(300)
    messages = await ingress.fence()
    assert sorted(json.loads(m.body)["n"] for m in messages) == list(range(300))


async def test_broker_gone_spools_and_spool_full_answers_503(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection
) -> None:
    async with running(prefix, tmp_path, amqp, spool_max=4096) as ing:
        assert await close_connections_named(f"oscc-bridge {prefix}") == 1
        await wait_until(lambda: not ing.publisher.connected, 20, "the publisher disconnected")
        answered = []
        for i in range(100):
            status, answer, headers = await ing.post(f"/webhook/{FB}", event(i))
            if status != 200:
                break
            assert answer == OK
            answered.append(i)
        assert (status, answer) == (503, {"errorCode": 7, "errorText": "NOT_READY"})
        assert int(headers["Retry-After"]) > 0
        assert 3 < len(answered) < 100
        assert sample(ing.metrics, "webhook_requests_total", connector=FB, kind="event",
                      outcome="spooled") == len(answered)  # fmt: skip
        assert sample(ing.metrics, "webhook_requests_total", connector=FB, kind="event",
                      outcome="refused") == 1  # fmt: skip
        # The broker is back after the reconnect interval: everything answered arrives,
        # in order, once; the refused one does not.
        await ing.wait(len(answered))
        await wait_until(lambda: ing.spool.messages == 0, 20, "the spool replayed")
        messages = await ing.fence()
        assert [json.loads(m.body)["n"] for m in messages] == answered
        status, answer, _ = await ing.post(f"/webhook/{FB}", event(1000))
        assert (status, answer) == (200, OK)


MALFORMED = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello\r\n\r\n",  # not HTTP at all
    b"\x00\x01\x02\x03\r\n\r\n",
    b"POST /webhook/facebook HTTP/1.1 trailing\r\nHost: x\r\n\r\n",  # bad request line
    b"POST /webhook/facebook HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",  # bad header
    b"POST /webhook/facebook HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    # bad chunked framing, at once and after a good first chunk
    b"POST /webhook/facebook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /webhook/facebook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'2\r\n{"\r\nzz\r\n',
    # a good request, then garbage on the same keep-alive connection
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n",
]


async def test_malformed_requests_are_counted_not_logged_each(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection, captured_logs: io.StringIO
) -> None:
    """100 malformed requests over raw sockets: each answered 400 and counted; the log
    has one warning line about them, no ERROR and no traceback; webhooks still work."""
    async with running(prefix, tmp_path, amqp) as ing:
        host, port = ing.base.removeprefix("http://").split(":")
        for i in range(100):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(MALFORMED[i % len(MALFORMED)])
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()  # aiohttp closes after a 400
            assert b"HTTP/1.0 400" in answer or b"HTTP/1.1 400" in answer, answer[:80]
            writer.close()
        await wait_until(
            lambda: sample(ing.metrics, "http_bad_requests_total") == 100,
            20,
            "100 bad requests counted",
        )
        await assert_nothing_published_and_still_healthy(ing)
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line]
    about = [line for line in lines if line["event"] == "http.bad_requests"]
    assert len(about) == 1
    assert about[0]["level"] == "warning"
    assert about[0]["count"] == 1
    assert not [line for line in lines if line["level"] in ("error", "critical")]
    assert "Traceback" not in captured_logs.getvalue()
