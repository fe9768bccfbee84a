"""Security review: one test per finding of docs/SECURITY.md.

The attacker is anyone who can reach the webhook listener over the network (OSCC's side),
or anyone who can publish to the bridge's queues (the broker's side), or who can read the
bridge's logs, /status and /metrics. Every test runs the real component over real
sockets: the webhook app on 127.0.0.1 with the real RabbitMQ behind it, the consumer with
the simulator as OSCC, and the whole `Bridge` for the secrets sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import hmac
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from bridge import config as config_module
from bridge import errors, webhook
from bridge.app import Bridge
from bridge.broker import Broker
from bridge.config import (
    BrokerConfig,
    Config,
    ConnectorConfig,
    HttpConfig,
    OsccConfig,
    SpoolConfig,
)
from bridge.dedupe import DedupeStore
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.oscc.client import OsccClient
from bridge.publisher import Publisher
from bridge.simulator import Simulator
from bridge.simulator.state import State as SimState
from bridge.spool import Spool, SpoolRecord
from bridge.topology import HEADER_VALUE_MAX_BYTES, Topology
from tests.harness import wait_until

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
GUIDE = Path(__file__).parent / "data" / "guide"

FB = "fb"  # connector without a webhook secret
SEC, SECRET = "sec", "Zq8-webhook-secret-4Kp2vX"  # connector with one
OK = {"errorCode": 0, "errorText": "NO_ERROR"}
WRONG = {"errorCode": 11, "errorText": "WRONG_API_REQUEST"}


def open_finding(code: str, why: str) -> pytest.MarkDecorator:
    """An OPEN finding of docs/SECURITY.md: expected to fail until fixed. Strict, so the
    fix makes the suite fail until this marker is removed (and SECURITY.md updated)."""
    return pytest.mark.xfail(strict=True, reason=f"docs/SECURITY.md {code} (open): {why}")


def guide(name: str) -> bytes:
    return (GUIDE / f"{name}.json").read_bytes()


def event(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "type": "OpenMediaEvent",
        "openMediaEventType": "EstablishedEvent",
        "contactID": f"contact-{n}",
        "agentID": "100",
        **fields,
    }


# ---------------------------------------------------------------------------------------
# The webhook app, the real publisher and spool, and a queue that sees every message


@dataclass
class Ingress:
    config: Config
    metrics: Metrics
    topology: Topology
    publisher: Publisher
    spool: Spool
    http: aiohttp.ClientSession
    received: list[AbstractIncomingMessage]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, bytes, dict[str, str]]:
        data: Any = body if isinstance(body, bytes) else json.dumps(body).encode()
        if len(data) > 65536:
            data = io.BytesIO(data)  # aiohttp warns about large bytes bodies
        async with self.http.post(self.base + path, data=kw.pop("data", data), **kw) as r:
            return r.status, await r.read(), dict(r.headers)

    async def healthy(self) -> None:
        """A valid event is still published, at once, not spooled."""
        before = len(self.received)
        status, body, _ = await self.post(f"/webhook/{FB}", event(999))
        assert (status, json.loads(body)) == (200, OK)
        await wait_until(lambda: len(self.received) > before, 10, "the valid event")
        assert self.publisher.connected
        assert self.spool.messages == 0


def make_config(prefix: str, spool_dir: Path, **http: Any) -> Config:
    return Config(
        broker=BrokerConfig(exchange=prefix, queue_type="classic"),
        http=HttpConfig(**http),
        spool=SpoolConfig(dir=str(spool_dir)),
        connectors=[
            ConnectorConfig(name=FB, title="facebook", token="tok-facebook-123"),
            ConnectorConfig(
                name=SEC, title="secure", token="tok-secure-456", webhook_secret=SECRET
            ),
        ],
    )


@contextlib.asynccontextmanager
async def running(prefix: str, tmp_path: Path, **http: Any) -> AsyncIterator[Ingress]:
    config = make_config(prefix, tmp_path / "spool", **http)
    topology = Topology(prefix, "classic")
    metrics = Metrics()
    received: list[AbstractIncomingMessage] = []
    amqp = await aio_pika.connect_robust(AMQP_URL)
    try:
        async with contextlib.AsyncExitStack() as stack:
            spool = await stack.enter_async_context(
                Spool(config.spool.dir, max_bytes=1 << 26, metrics=metrics)
            )
            broker = await stack.enter_async_context(
                Broker(config.broker, topology, connectors=[FB, SEC], metrics=metrics)
            )
            publisher = await stack.enter_async_context(Publisher(broker, spool=spool))
            channel = await amqp.channel()
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(topology.exchange, "#")

            async def collect(message: AbstractIncomingMessage) -> None:
                received.append(message)

            await queue.consume(collect, no_ack=True)
            app = web.Application(client_max_size=config.http.max_body_bytes)
            webhook.add_routes(app, config, publisher, metrics)
            runner = web.AppRunner(app, **webhook.server_options(config))
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            client = await stack.enter_async_context(aiohttp.ClientSession())
            yield Ingress(
                config,
                metrics,
                topology,
                publisher,
                spool,
                client,
                received,
                runner.addresses[0][1],
            )
    finally:
        channel = await amqp.channel()
        await topology.delete(channel, [FB, SEC])
        await amqp.close()


@pytest.fixture
async def ingress(prefix: str, tmp_path: Path) -> AsyncIterator[Ingress]:
    async with running(prefix, tmp_path) as ing:
        yield ing


async def raw_exchange(port: int, data: bytes, within: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(within):
            return await reader.read()
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------
# 1. Webhook secret guessing


async def test_wrong_secrets_and_unknown_connectors_answer_identically(ingress: Ingress) -> None:
    """No oracle: every wrong guess gets byte-identical status, body and headers."""
    guesses = [
        f"/webhook/{SEC}/wrong-secret-of-same-len",
        f"/webhook/{SEC}/{SECRET[:-1]}",  # a prefix of the right secret
        f"/webhook/{SEC}/{SECRET[:1]}",
        f"/webhook/{SEC}/{SECRET}x",  # the right secret and more
        f"/webhook/{SEC}/{SECRET.upper()}",
        f"/webhook/{SEC}",  # the secret missing
        f"/webhook/{FB}/{SECRET}",  # a secret where none is configured
        "/webhook/nobody",  # unknown connectors
        f"/webhook/nobody/{SECRET}",
        "/nothing/here",  # and a path that was never a route
    ]
    answers = set()
    for path in guesses:
        for body in (event(1), b"not json", b""):
            status, data, headers = await ingress.post(path, body)
            headers.pop("Date", None)
            answers.add((status, data, tuple(sorted(headers.items()))))
    assert len(answers) == 1, answers
    [(status, _, _)] = answers
    assert status == 404
    assert ingress.received == []
    status, data, _ = await ingress.post(f"/webhook/{SEC}/{SECRET}", event(2))
    assert (status, json.loads(data)) == (200, OK)


async def test_secret_compared_in_constant_time(
    ingress: Ingress, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every guess, even for an unknown connector, goes through hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook.hmac, "compare_digest", spy)
    guesses = [f"{SECRET[:-1]}", f"{SECRET}x", "x", SECRET]
    for guess in guesses:
        await ingress.post(f"/webhook/{SEC}/{guess}", event())
    await ingress.post(f"/webhook/nobody/{SECRET}", event())
    await ingress.post(f"/webhook/{FB}/{SECRET}", event())
    assert [a.decode() for a, _ in calls] == [*guesses, SECRET, SECRET]
    # The right secret is only ever compared for the connector that has it; the others
    # are compared against a random decoy, so their timing says nothing about it.
    assert [b == SECRET.encode() for _, b in calls] == [True] * 4 + [False, False]


async def test_attacker_chosen_names_never_become_metric_labels(ingress: Ingress) -> None:
    """Random connector names in the path must not grow /metrics (label cardinality)."""
    for i in range(50):
        await ingress.post(f"/webhook/guess-{i}", event())
        await ingress.post(f"/webhook/guess-{i}/{SECRET}", event())
    text = ingress.metrics.exposition().decode()
    assert "guess-" not in text
    assert 'connector="unknown"' in text


# ---------------------------------------------------------------------------------------
# 2. Oversized bodies, slow requests, many connections


async def test_content_length_over_limit_is_refused_without_reading(ingress: Ingress) -> None:
    """413 comes back at once, though the body was never sent."""
    limit = ingress.config.http.max_body_bytes
    head = (
        f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {limit + 1}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
    try:
        writer.write(head)
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(3):  # far less than read_timeout (10 s)
            answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert time.monotonic() - started < 3
    finally:
        writer.close()
    await ingress.healthy()


async def test_chunked_body_over_limit_is_refused(ingress: Ingress) -> None:
    limit = ingress.config.http.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "Stream", "id": "'
        for _ in range(2 * limit // 65536 + 1):
            yield b"x" * 65536

    status, data, _ = await ingress.post(f"/webhook/{FB}", b"", data=chunks())
    assert (status, json.loads(data)) == (413, WRONG)
    await ingress.healthy()


async def test_compressed_body_cannot_inflate_past_the_limit(ingress: Ingress) -> None:
    """A gzip bomb: 20 KB on the wire, 20 MB inflated. The webhook does not inflate
    bodies, so it is refused (400: not JSON) without ever being 20 MB in memory."""
    inner = b'{"type":"Stream","id":"1","pad":"' + b" " * (20 * 1024 * 1024) + b'"}'
    bomb = gzip.compress(inner, 9)
    assert len(bomb) < ingress.config.http.max_body_bytes // 10
    for chunked in (False, True):

        async def once(data: bytes = bomb) -> AsyncIterator[bytes]:
            yield data

        status, _, _ = await ingress.post(
            f"/webhook/{FB}",
            bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            **({"data": once()} if chunked else {}),
        )
        assert status in (400, 413, 415), (chunked, status)
    assert ingress.received == []
    await ingress.healthy()


async def test_trickled_body_is_cut_off(prefix: str, tmp_path: Path) -> None:
    """Headers at once, then a byte every 100 ms: cut off after read_timeout (0.5 s)."""
    async with running(prefix, tmp_path, read_timeout=0.5) as ing:
        body = json.dumps(event()).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", ing.port)
        head = f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode())
        started = time.monotonic()
        answer = b""

        async def trickle() -> None:
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)  # the pace of the trickle is what is under test

        sender = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(5):
                answer = await reader.read(65536)
                elapsed = time.monotonic() - started
                # Stop writing: bytes that reach the closed socket come back as a reset.
                sender.cancel()
                with contextlib.suppress(ConnectionResetError):  # a reset is a close too
                    while chunk := await reader.read(65536):  # then closed
                        answer += chunk
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            writer.close()
        assert_408(answer)
        assert elapsed < 2.5, elapsed  # the whole body would have taken 5+ s
        assert ing.received == []
        await ing.healthy()


async def test_slowloris_headers_are_cut_off(prefix: str, tmp_path: Path) -> None:
    """A request head that never ends, one header line every 100 ms: closed."""
    async with running(prefix, tmp_path, read_timeout=0.5) as ing:
        reader, writer = await asyncio.open_connection("127.0.0.1", ing.port)
        writer.write(f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\n".encode())
        started = time.monotonic()

        async def drip() -> None:
            for i in range(100):
                writer.write(f"X-Drip-{i}: {i}\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.1)  # the pace of the drip is what is under test

        sender = asyncio.create_task(drip())
        try:
            async with asyncio.timeout(5):
                try:
                    closed = await reader.read() == b""
                except ConnectionResetError:
                    closed = True  # the drip reached the closed socket: a reset is a close
                assert closed
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            writer.close()
        assert time.monotonic() - started < 2.5
        await ing.healthy()


async def hold(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` connections with half-sent requests: half stop in the head, half in the body."""
    held = []
    for i in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST /webhook/{FB} HTTP/1.1\r\nHost: x\r\n"
        writer.write((head if i % 2 else head + "Content-Length: 999\r\n\r\n{").encode())
        held.append((reader, writer))
    return held


async def closed_within(
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], seconds: float
) -> list[bytes]:
    """Wait until the server closed every held connection; what each one received."""

    async def closed(reader: asyncio.StreamReader) -> bytes:
        got = b""
        while chunk := await reader.read(65536):
            got += chunk
        return got

    try:
        async with asyncio.timeout(seconds):
            return list(await asyncio.gather(*(closed(r) for r, _ in held)))
    finally:
        for _, writer in held:
            writer.close()


# aiohttp keeps reading ("lingering") up to 10 s after answering a request whose body it
# did not finish reading, before it closes the connection.
AIOHTTP_LINGERING = 10.0


async def test_many_slow_connections_stay_bounded(prefix: str, tmp_path: Path) -> None:
    """300 connections holding half-sent requests: the webhook still answers at once, and
    the server closes every one of them (so an attacker holds at most rate x hold time
    connections, whatever it sends)."""
    async with running(prefix, tmp_path, read_timeout=0.5) as ing:
        held = await hold(ing.port, 300)
        started = time.monotonic()
        await ing.healthy()
        assert time.monotonic() - started < 1.0
        await closed_within(held, 2 * 0.5 + AIOHTTP_LINGERING + 2)


async def test_refused_requests_close_their_connection(prefix: str, tmp_path: Path) -> None:
    """A request cut off by read_timeout gets its 408 and the connection closed with it."""
    async with running(prefix, tmp_path, read_timeout=0.5) as ing:
        held = await hold(ing.port, 20)
        answers = await closed_within(held, 2 * 0.5 + 2)
    for i, answer in enumerate(answers):
        if i % 2:  # stopped in the head: no request to answer, only closed
            assert answer == b"", answer
        else:  # stopped in the body: 408 with the guide's GENERAL_ERROR, then closed
            assert_408(answer)


def assert_408(answer: bytes) -> None:
    """`answer` is one whole 408 response with errorCode 1, and says it closes."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower(), head
    assert json.loads(body) == {"errorCode": 1, "errorText": "GENERAL_ERROR"}, body


# ---------------------------------------------------------------------------------------
# 3. TLS to OSCC


def _certificate(tmp: Path, name: str, san: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def https_oscc(cert: Path, key: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A TLS server answering registration like OSCC; yields its URL and the paths hit."""
    hits: list[str] = []

    async def register(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response(
            {"type": "Registration", "errorCode": 0, "errorText": "NO_ERROR",
             "sessionToken": uuid.uuid4().hex}
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/openmedia/webapi/main/registerConnector", register)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        await runner.cleanup()


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@needs_openssl
async def test_oscc_tls_is_verified_by_default(tmp_path: Path) -> None:
    """A self-signed OSCC is refused: no request reaches it, the call is Transient."""
    cert, key = _certificate(tmp_path, "oscc", "IP:127.0.0.1")
    async with https_oscc(cert, key) as (url, hits):
        async with OsccClient(OsccConfig(url=url), connector=FB, metrics=Metrics()) as client:
            with pytest.raises(errors.Transient):
                await client.register("facebook", "token", "http://x/webhook/fb")
        assert hits == []
        # With its certificate as ca_file, the same server is trusted.
        config = OsccConfig(url=url, ca_file=str(cert))
        async with OsccClient(config, connector=FB, metrics=Metrics()) as client:
            await client.register("facebook", "token", "http://x/webhook/fb")
        assert hits == ["/openmedia/webapi/main/registerConnector"]


@needs_openssl
async def test_oscc_tls_ca_file_does_not_skip_the_hostname_check(tmp_path: Path) -> None:
    """A trusted certificate for another name (a stolen one) is still refused."""
    cert, key = _certificate(tmp_path, "elsewhere", "DNS:oscc.elsewhere.invalid")
    async with https_oscc(cert, key) as (url, hits):
        config = OsccConfig(url=url, ca_file=str(cert))
        async with OsccClient(config, connector=FB, metrics=Metrics()) as client:
            with pytest.raises(errors.Transient):
                await client.register("facebook", "token", "http://x/webhook/fb")
        assert hits == []


@needs_openssl
async def test_verify_tls_false_warns(tmp_path: Path, captured_logs: io.StringIO) -> None:
    cert, key = _certificate(tmp_path, "oscc", "IP:127.0.0.1")
    async with https_oscc(cert, key) as (url, hits):
        config = OsccConfig(url=url, verify_tls=False)
        async with OsccClient(config, connector=FB, metrics=Metrics()) as client:
            await client.register("facebook", "token", "http://x/webhook/fb")
    assert hits
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line]
    warnings = [x for x in lines if x.get("event") == "oscc.tls_verification_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"


# ---------------------------------------------------------------------------------------
# 4. Secrets in reprs (the full sweep over logs, /status and /metrics is further below)


def test_config_reprs_hide_secrets() -> None:
    config = config_module.parse(
        """
[broker]
url = "amqp://bridge:Br0ker-Pa55word@rabbit:5672/"
[oscc]
url = "https://oscc.example.com"
[[connectors]]
name = "fb"
title = "facebook"
token = "C0nnector-T0ken-xyz"
webhook_secret = "W3bhook-Secret-abc"
""",
        {},
    )
    shown = [repr(config), str(config), repr(config.broker), repr(config.connectors[0])]
    shown += [repr(config.connectors), f"{config!r}", str(config.connectors[0])]
    for text in shown:
        for secret in ("Br0ker-Pa55word", "C0nnector-T0ken-xyz", "W3bhook-Secret-abc"):
            assert secret not in text, text
    assert "amqp://bridge:***@rabbit:5672/" in repr(config.broker)


# ---------------------------------------------------------------------------------------
# 5. Injection: webhook fields into AMQP headers and routing keys; paths on disk


async def test_webhook_fields_cannot_inject_headers_or_routing_keys(ingress: Ingress) -> None:
    """Header values are AMQP field-table strings (length-prefixed, not CRLF-delimited):
    they come out verbatim and add no header; routing keys come from fixed names."""
    hostile = "x\r\noscc-connector: evil\r\n\x00#.*"
    bodies = [
        event(1, contactID=hostile, agentID=hostile, openMediaEventType="x.contact.new"),
        event(2, openMediaEventType="#"),
        {"type": "Post", "objectToBePublished": {"id": hostile, "inReplyTo": {"id": hostile}}},
        {"type": "Stream", "id": "fb.contact.new", "destinationId": hostile},
    ]
    for body in bodies:
        status, _, _ = await ingress.post(f"/webhook/{FB}", body)
        assert status == 200
    await wait_until(lambda: len(ingress.received) == len(bodies), 10, "every body published")
    keys = sorted(m.routing_key or "" for m in ingress.received)
    assert keys == [
        "fb.event.unknown",
        "fb.event.unknown",
        "fb.publication.post",
        "fb.stream.request",
    ]
    for message in ingress.received:
        body = json.loads(message.body)
        published = body.get("objectToBePublished") or {}
        expected = {
            "oscc-connector": FB,
            "oscc-contact-id": body.get("contactID"),
            "oscc-agent-id": body.get("agentID"),
            "oscc-event": body.get("openMediaEventType"),
            "oscc-published-id": published.get("id"),
            "oscc-in-reply-to": (published.get("inReplyTo") or {}).get("id"),
        }
        assert message.headers == {k: v for k, v in expected.items() if v is not None}
    assert sum(hostile in (m.headers or {}).values() for m in ingress.received) == 2


def test_connector_names_cannot_traverse_paths() -> None:
    """The only input-derived path is the per-connector dedupe directory, and connector
    names come from the configuration, restricted to [a-z0-9_-]."""
    for name in ("../etc", "a/b", "..", "fb\x00", "FB", ""):
        with pytest.raises(errors.ConfigError):
            config_module.parse(
                f'[[connectors]]\nname = {json.dumps(name)}\ntitle = "t"\ntoken = "k"\n', {}
            )


async def test_spool_file_names_do_not_come_from_messages(tmp_path: Path) -> None:
    """A spooled message with path-like ids and routing key lands in numbered segments."""
    record_fields = {"../../evil": "../../../etc/passwd"}
    async with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
        await spool.enqueue(
            SpoolRecord(
                connector="../../x",
                routing_key="../../y",
                body=json.dumps(record_fields).encode(),
                message_id="../../z",
                timestamp=dt.datetime.now(dt.UTC),
            )
        )
    every = [str(p.relative_to(tmp_path)) for p in await asyncio.to_thread(tmp_path.rglob, "*")]
    fixed = {"spool", "spool/cursor", "spool/.lock"}
    assert all(f in fixed or f.endswith(".seg") for f in every), every


async def test_dedupe_keys_cannot_forge_lines(tmp_path: Path) -> None:
    """A message_id with a newline and a JSON line in it stays one key after a restart."""
    forged = 'a"]\n[1e12, "contact:m:victim'
    async with DedupeStore(tmp_path) as store:
        await store.add(forged)
    async with DedupeStore(tmp_path) as store:
        assert forged in store
        assert "contact:m:victim" not in store
        assert len(store) == 1


# ---------------------------------------------------------------------------------------
# 6. Hostile bodies that used to escape as 500s or worse


async def test_invalid_utf8_is_a_400_not_a_500(ingress: Ingress) -> None:
    """UTF-8-encoded surrogates and stray bytes: not JSON (400), never a 500."""
    for body in (
        b'"\xed\xa0\x80"',
        b'{"type":"Stream","id":"\xed\xa0\x80"}',
        b'{"type":"Stream","id":"\xff"}',
        b'{"type":"Stream","id":"\xc0\xaf"}',  # overlong "/"
    ):
        status, data, _ = await ingress.post(f"/webhook/{FB}", body)
        assert (status, json.loads(data)) == (400, WRONG), body
    await ingress.healthy()


async def test_json_bombs_answer_400(ingress: Ingress) -> None:
    depth = 100_000  # 200-600 KB, under the body limit
    for body in (
        b"[" * depth + b"]" * depth,
        b'{"type":"Stream","id":"1","x":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}",
        b'{"type":"OpenMediaEvent","openMediaEventType":"HeldOpenMediaEvent","source":'
        + b"[" * depth
        + b"]" * depth
        + b"}",
    ):
        status, data, _ = await ingress.post(f"/webhook/{FB}", body)
        assert (status, json.loads(data)) == (400, WRONG)
    await ingress.healthy()


async def test_nesting_is_bounded_at_a_fixed_depth_not_at_the_stack(ingress: Ingress) -> None:
    """The decoder alone stops at the interpreter's recursion limit from wherever it
    runs: a body the webhook could decode was published, and then failed to decode in a
    subscriber with a deeper stack (found by the fuzz suite). codec.MAX_DEPTH is the same
    everywhere: one level more is 400, the limit itself still goes through."""

    def held(levels: int) -> dict[str, object]:
        deep: object = 1
        for _ in range(levels - 1):  # the event object itself is the first level
            deep = [deep]
        return event(7, extra=deep)

    status, data, _ = await ingress.post(f"/webhook/{FB}", held(codec.MAX_DEPTH + 1))
    assert (status, json.loads(data)) == (400, WRONG)
    status, _, _ = await ingress.post(f"/webhook/{FB}", held(codec.MAX_DEPTH))
    assert status == 200
    await ingress.healthy()


async def test_long_header_values_do_not_kill_the_broker_connection(ingress: Ingress) -> None:
    """Ids OSCC sends become AMQP headers. A header table larger than the broker's frame
    size (128 KiB) makes RabbitMQ close the whole connection; spooled, the message would
    close it again on every replay. Each such call must be answered without a 500 and
    leave the connection up and the spool empty."""
    big = "x" * 200_000
    bodies = [
        {"type": "Post", "objectToBePublished": {"id": big}},
        {"type": "Post", "objectToBePublished": {"id": "1", "inReplyTo": {"id": big}}},
        event(1, contactID=big),
        event(2, agentID=big),
        event(3, openMediaEventType=big),
    ]
    for body in bodies:
        status, _, _ = await ingress.post(f"/webhook/{FB}", body)
        assert status in (200, 400), status
        assert ingress.publisher.connected
        assert ingress.spool.messages == 0
    await ingress.healthy()
    for message in ingress.received:
        codec.decode_inbound(message.body)
        for value in (message.headers or {}).values():
            assert len(str(value).encode()) <= HEADER_VALUE_MAX_BYTES


async def test_long_stream_request_ids_are_not_a_500(ingress: Ingress) -> None:
    """A Stream Request id becomes the AMQP correlation_id, at most 255 bytes."""
    ids = ["x" * 255, "x" * 256, "é" * 200, "x" * 5000]
    for stream_id in ids:
        body = {"type": "Stream", "id": stream_id, "destinationId": "d"}
        status, _, _ = await ingress.post(f"/webhook/{FB}", body)
        assert status in (200, 400), (len(stream_id), status)
    await ingress.healthy()
    for message in ingress.received[: len(ids)]:
        stream_id = json.loads(message.body)["id"]  # the whole id, always in the body
        fits = len(stream_id.encode()) <= 255
        assert message.correlation_id == (stream_id if fits else None)


# ---------------------------------------------------------------------------------------
# The whole bridge: admin listener, consumer side, and the secrets sweep

TITLE = "facebook"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bridge_config(
    prefix: str,
    tmp_path: Path,
    oscc_url: str,
    token: str,
    *,
    broker_url: str = AMQP_URL,
    webhook_secret: str = "",
    **http: Any,
) -> Config:
    port = http.pop("port", None) or free_port()
    return Config(
        broker=BrokerConfig(url=broker_url, exchange=prefix, queue_type="classic"),
        http=HttpConfig(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}", **http),
        oscc=OsccConfig(url=oscc_url, keepalive_interval=0.5, request_timeout=5.0),
        spool=SpoolConfig(dir=str(tmp_path / "spool")),
        connectors=[
            ConnectorConfig(name=FB, title=TITLE, token=token, webhook_secret=webhook_secret)
        ],
    )


@contextlib.asynccontextmanager
async def watching(prefix: str) -> AsyncIterator[list[AbstractIncomingMessage]]:
    """Every message published on the bridge's exchange while the block runs; the
    topology is declared first (as the bridge declares it) and deleted afterwards."""
    topology = Topology(prefix, "classic")
    seen: list[AbstractIncomingMessage] = []
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        channel = await connection.channel()
        await topology.declare(channel, [FB])
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topology.exchange, "#")

        async def collect(message: AbstractIncomingMessage) -> None:
            seen.append(message)

        await queue.consume(collect, no_ack=True)
        yield seen
    finally:
        channel = await connection.channel()
        await topology.delete(channel, [FB])
        await connection.close()


async def wait_ready(bridge: Bridge, within: float = 15.0) -> None:
    await wait_until(lambda: bridge.health.readiness()[0], within, "the bridge ready")


def contact(n: int) -> dict[str, Any]:
    return {
        "type": "Post",
        "source": {"id": f"src-{n}", "type": "Person", "name": f"Person {n}"},
        "publishedObject": {"id": f"po-{n}", "content": f"message {n}"},
        "destination": {"id": "page-1", "type": "Page", "name": "Page"},
    }


async def publish_contact(prefix: str, body: bytes) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(prefix, ensure=False)
        message = aio_pika.Message(body, message_id=uuid.uuid4().hex, delivery_mode=2)
        await exchange.publish(message, Topology.contact_new_key(FB), timeout=10)
    finally:
        await connection.close()


async def test_admin_listener_keeps_operator_routes_off_the_webhook_port(
    prefix: str, tmp_path: Path
) -> None:
    token = "tok-" + uuid.uuid4().hex[:12]
    admin_port = free_port()
    async with Simulator(connectors={TITLE: token}, agent=False) as sim, watching(prefix):
        config = bridge_config(
            prefix, tmp_path, sim.url, token, admin_host="127.0.0.1", admin_port=admin_port
        )
        async with Bridge(config) as bridge, aiohttp.ClientSession() as http:
            await wait_ready(bridge)
            webhook_base = f"http://127.0.0.1:{bridge.ports['webhook']}"
            admin_base = f"http://127.0.0.1:{admin_port}"
            assert bridge.ports["admin"] == admin_port
            for path in ("/metrics", "/status", "/healthz", "/readyz"):
                async with http.get(webhook_base + path) as r:
                    assert r.status == 404, path
                async with http.get(admin_base + path) as r:
                    assert r.status == 200, path
            async with http.post(admin_base + f"/webhook/{FB}", json=event()) as r:
                assert r.status == 404
            async with http.post(webhook_base + f"/webhook/{FB}", json=event()) as r:
                assert r.status == 200


async def test_hostile_contacts_are_dead_lettered_and_the_consumer_goes_on(
    prefix: str, tmp_path: Path
) -> None:
    """Contacts from the broker side: a JSON bomb, invalid UTF-8, and a huge invalid enum
    whose error text once went, whole, into a dead-letter header (over the frame size,
    which closes the connection the consumer shares with the publisher)."""
    token = "tok-" + uuid.uuid4().hex[:12]
    hostile = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type":"Post","x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        b'{"type":"Post","source":"\xed\xa0\x80"}',
        json.dumps({**contact(1), "type": "x" * 200_000}).encode(),
        json.dumps({**contact(2), "dateTime": "y" * 200_000}).encode(),
        json.dumps(
            contact(3) | {"source": {"id": "s", "type": "z" * 200_000, "name": "n"}}
        ).encode(),
    ]
    async with Simulator(connectors={TITLE: token}, agent=False) as sim, watching(prefix):
        config = bridge_config(prefix, tmp_path, sim.url, token)
        async with Bridge(config) as bridge:
            await wait_ready(bridge)
            connection = await aio_pika.connect_robust(AMQP_URL)
            channel = await connection.channel()
            dead_queue = await channel.get_queue(bridge.topology.dead_queue(FB), ensure=False)
            dead: list[AbstractIncomingMessage] = []
            try:
                for body in hostile:
                    await publish_contact(prefix, body)

                async def all_dead() -> bool:
                    while (message := await dead_queue.get(no_ack=True, fail=False)) is not None:
                        dead.append(message)
                    return len(dead) >= len(hostile)

                await wait_until(all_dead, 10, "every hostile contact dead-lettered")
            finally:
                await connection.close()
            assert len(dead) == len(hostile)
            for message in dead:
                headers = message.headers or {}
                assert headers["oscc-error-code"] in (11, 12, 13)
                assert sum(len(str(v)) for v in headers.values()) < 16_384
            assert bridge.publisher.connected
            await publish_contact(prefix, json.dumps(contact(4)).encode())
            await sim.wait_for(lambda: len(sim.contacts(TITLE)) == 1, timeout=10)


@pytest.fixture
def broker_user() -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of our own, so its password is a string found nowhere else."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl to add a broker user")
    user, password = f"oscc-sec-{uuid.uuid4().hex[:8]}", f"Bp-{uuid.uuid4().hex}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_user", user, password], check=True, capture_output=True)
    try:
        subprocess.run(
            [*ctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield user, password
    finally:
        subprocess.run([*ctl, "delete_user", user], check=False, capture_output=True)


@contextlib.asynccontextmanager
async def simulator_process(title: str, token: str) -> AsyncIterator[str]:
    """The simulator in a process of its own: in-process, it would register the session
    tokens it hands out as log secrets itself and so hide a leak by the bridge."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "simulator", "--port", str(port),
        "--connector", f"{title}:{token}", "--seed", "3",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def answers() -> bool:
                if proc.returncode is not None:
                    raise RuntimeError(f"the simulator exited with {proc.returncode}")
                try:
                    async with http.get(url + "/admin") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(answers, 20, "the simulator answering")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def admin(http: aiohttp.ClientSession, url: str, path: str, key: str) -> list[Any]:
    async with http.get(f"{url}/admin/{path}") as r:
        return list((await r.json())[key])


async def test_no_secret_in_logs_status_metrics_or_messages(
    prefix: str,
    tmp_path: Path,
    captured_logs: io.StringIO,
    broker_user: tuple[str, str],
) -> None:
    """A full flow — registration, contacts, the agent's events and replies, a lost
    session and re-registration, wrong webhook secrets, bad bodies, shutdown — while
    every log line (structlog and stdlib, JSON, debug) is captured; then none of the
    secrets may appear in the logs, /status, /metrics or any message on the exchange."""
    user, broker_password = broker_user
    token = f"Tk-{uuid.uuid4().hex[:20]}"
    webhook_secret = f"Ws-{uuid.uuid4().hex[:20]}"
    views: dict[str, str] = {}
    async with (
        simulator_process(TITLE, token) as sim_url,
        watching(prefix) as messages,
        aiohttp.ClientSession() as http,
    ):
        config = bridge_config(
            prefix,
            tmp_path,
            sim_url,
            token,
            broker_url=f"amqp://{user}:{broker_password}@127.0.0.1:5672/",
            webhook_secret=webhook_secret,
        )
        async with Bridge(config) as bridge:
            await wait_ready(bridge)
            base = f"http://127.0.0.1:{bridge.ports['webhook']}"
            for n in range(3):
                await publish_contact(prefix, json.dumps(contact(n)).encode())

            async def calls(kind: str) -> int:
                found = await admin(http, sim_url, "webhook-calls", "webhook_calls")
                return sum(c["kind"] == kind and 200 <= (c["status"] or 0) < 300 for c in found)

            async def finished() -> bool:
                return await calls("disconnected") >= 3

            await wait_until(finished, 30, "the agent finished its contacts")
            # OSCC forgets the session: the bridge registers again, with a new token.
            async with http.delete(f"{sim_url}/admin/sessions") as r:
                assert r.status == 200
            await publish_contact(prefix, json.dumps(contact(9)).encode())

            async def fourth() -> bool:
                return len(await admin(http, sim_url, f"contacts?title={TITLE}", "contacts")) >= 4

            await wait_until(fourth, 30, "a contact after re-registration")
            for path in (f"/webhook/{FB}/{webhook_secret[:-1]}", f"/webhook/{FB}"):
                async with http.post(base + path, json=event()) as r:
                    assert r.status == 404
            async with http.post(f"{base}/webhook/{FB}/{webhook_secret}", data=b"{") as r:
                assert r.status == 400
            for path in ("/status", "/metrics", "/readyz", "/healthz"):
                async with http.get(base + path) as r:
                    views[path] = await r.text()
            views["repr"] = repr(config) + repr(bridge.config) + str(config)
        records = await admin(http, sim_url, "records", "records")

    sessions = {r["authorization"] for r in records if r["authorization"]}
    registered = [r for r in records if r["endpoint"] == "registerConnector"]
    password = SimState.credentials(
        types.SimpleNamespace(connectors={TITLE: token}),  # type: ignore[arg-type]
        TITLE,
    )["password"]
    secrets_ = {
        "connector token": token,
        "webhook secret": webhook_secret,
        "broker password": broker_password,
        "userCredentials password": password,
        **{f"session token {i}": s for i, s in enumerate(sorted(sessions))},
    }
    # The flow did what it should, or finding nothing would prove nothing.
    assert len(sessions) >= 2, "no re-registration happened"
    assert len([r for r in registered if r["error_code"] == 0]) >= 2
    log_text = captured_logs.getvalue()
    assert log_text.count("\n") > 20
    assert "session.registered" in log_text
    assert any(m.routing_key == f"{FB}.publication.post" for m in messages)
    assert any(m.routing_key == f"{FB}.session.registered" for m in messages)
    amqp_text = "\n".join(
        m.body.decode("utf-8", "replace") + repr(m.headers) + repr(m.info()) for m in messages
    )
    where = {"logs": log_text, "AMQP messages": amqp_text, **views}
    leaks = [
        f"{name} in {place}"
        for name, value in secrets_.items()
        for place, text in where.items()
        if value in text
    ]
    assert leaks == []


# -- secrets OSCC quotes back (issue 10, defect 6) -----------------------------------------


async def test_secrets_quoted_in_an_oscc_error_never_reach_amqp(
    prefix: str, tmp_path: Path
) -> None:
    """OSCC rejects a contact with an errorText quoting the session token and the
    connector token: the dead letter's headers, the outcome's body and headers carry the
    reason masked."""
    from tests import test_consumer as tc

    async with tc.bridge(prefix, tmp_path) as b:
        session = await b.supervisor.token(timeout=5)
        rejected = await b.listen(b.topology.contact_outcome_key(tc.C, False))
        b.sim.faults.error_text = f"refused for session {session}, connector {tc.TOKEN}"
        b.sim.faults.fail_next("newContact", 12)
        await b.publish(tc.contact(1, 1), correlation_id="c1")
        [dead] = await tc.wait_queue(b.channel, b.topology.dead_queue(tc.C), 1)
        [outcome] = await tc.wait_queue(b.channel, rejected.name, 1)
    # The reason is there, quoting OSCC, or finding no secret would prove nothing.
    reason = dead.headers["oscc-dead-reason"]
    assert "refused for session ***, connector ***" in str(reason)
    assert json.loads(outcome.body)["reason"] == reason
    written = [
        outcome.body.decode(),
        json.dumps(outcome.headers, default=str),
        json.dumps(dead.headers, default=str),
    ]
    for text in written:
        assert session not in text
        assert tc.TOKEN not in text


def test_status_masks_registered_secrets() -> None:
    """Whatever a component puts in /status (an error text quoting OSCC), registered
    secrets come out masked, under any key, nested too."""
    from bridge import logs
    from bridge.health import Health

    secret = f"Ss-{uuid.uuid4().hex}"
    logs.register_secret(secret)
    try:
        health = Health(
            metrics=Metrics(),
            broker=types.SimpleNamespace(connected=True, url="amqp://127.0.0.1/"),  # type: ignore[arg-type]
            spool=types.SimpleNamespace(status=lambda: {"messages": 0}),  # type: ignore[arg-type]
            duties={},
            instance="i",
            extra_status=lambda: {"connectors": {"fb": {"last_error_text": f"no {secret}"}}},
        )
        status = health.status()
    finally:
        logs.forget_secret(secret)
    assert status["connectors"]["fb"]["last_error_text"] == "no ***"
    assert secret not in json.dumps(status)


@pytest.mark.parametrize(
    ("data", "deeper"),
    [
        (b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', False),
        (b'["\\"[[[[", ' + b"[" * 63 + b"]" * 63 + b"]", False),  # 64 levels, quote escaped
        (b'{"a":' * 32 + b"[" * 32 + b"1" + b"]" * 32 + b"}" * 32, False),  # 64, mixed
        (b'{"a":' * 32 + b"[" * 33 + b"1" + b"]" * 33 + b"}" * 32, True),  # 65
        (b"[" + b"[]," * 100_000 + b"[]]", False),  # wide, not deep
        (b"[" + b"[" * 64 + b"]" * 64 + b"," + b"{}," * 1000 + b"0]", True),
    ],
)
def test_depth_is_read_from_the_bytes_as_a_walk_would_find_it(data: bytes, deeper: bool) -> None:
    """codec.too_deep reads nesting from the bytes (a walk of a wide body held the loop);
    it must agree with a walk of the decoded value, strings and escapes included."""

    def walk_depth(value: Any) -> int:
        if isinstance(value, dict):
            return 1 + max((walk_depth(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return 1 + max((walk_depth(v) for v in value), default=0)
        return 0

    import msgspec

    assert (walk_depth(msgspec.json.decode(data)) > codec.MAX_DEPTH) is deeper
    assert codec.too_deep(data) is deeper
