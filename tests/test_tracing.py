"""Tracing (bridge/tracing.py, bridge/otel.py) against the real RabbitMQ and the simulator.

Spans go to an in-memory exporter. One trace follows a webhook call to the message a
subscriber receives (its traceparent is the publish span's); one follows a contact that
carries a traceparent through the OSCC POST to its outcome message; a webhook spooled
while the broker is away is replayed in a span linked to the one that spooled it. No
span holds a token or a secret; with tracing off no span is made and no traceparent added.
"""

from __future__ import annotations

import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import bridge
from bridge import cli, otel, tracing
from bridge.broker import Broker
from bridge.config import ConnectorConfig, TracingConfig
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.publisher import Publisher
from bridge.simulator import Simulator
from bridge.spool import Spool
from bridge.topology import Topology
from bridge.webhook import add_routes
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Seen,
    Watch,
    delete_topology,
    free_port,
    make_config,
    new_contact,
    running_bridge,
    wait_until,
)
from tests.conftest import AMQP_URL

SECRET = "s3cret-" + secrets.token_hex(8)
CONNECTOR = ConnectorConfig(name="fb", title=FB_TITLE, token=FB_TOKEN, webhook_secret=SECRET)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every span exported to memory as it ends."""
    exporter = InMemorySpanExporter()
    tracing.setup(TracingConfig(enabled=True), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def event(contact_id: str) -> dict[str, Any]:
    return {
        "type": "OpenMediaEvent",
        "openMediaEventType": "delivered",
        "dateTime": "2024-05-01T10:00:00.000+0000",
        "contactID": contact_id,
        "agentID": "agent-1",
    }


def traceparent(message: AbstractIncomingMessage) -> str | None:
    value = (message.headers or {}).get("traceparent")
    return value.decode() if isinstance(value, bytes) else value


def ids(tp: str) -> tuple[int, int]:
    """(trace id, span id) of a traceparent."""
    _, trace_id, span_id, _ = tp.split("-")
    return int(trace_id, 16), int(span_id, 16)


def one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, f"{what}: {[s.name for s in found]}"
    return found[0]


def by_id(exporter: InMemorySpanExporter, span_id: int) -> ReadableSpan:
    return one(
        [s for s in exporter.get_finished_spans() if s.context and s.context.span_id == span_id],
        f"span {span_id:x}",
    )


def every_value(span: ReadableSpan) -> list[str]:
    """Everything a span says in text: name, attributes, events, links."""
    out = [span.name, str(span.status.description or "")]
    out += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    for e in span.events:
        out += [e.name, *(f"{k}={v}" for k, v in (e.attributes or {}).items())]
    for link in span.links:
        out += [f"{k}={v}" for k, v in (link.attributes or {}).items()]
    return out


@dataclass
class Flow:
    """What one run of the bridge left: the event a subscriber got, the contact's
    outcome, the session tokens the simulator handed out."""

    event: Seen
    outcome: Seen
    tokens: list[str]


async def webhook_and_contact(
    prefix: str, amqp: AbstractRobustConnection, spool_dir: Path, contact_traceparent: str
) -> Flow:
    """Run the bridge: OSCC calls the webhook with one event; a back-end publishes one
    contact carrying `contact_traceparent`; wait for the event and the outcome."""
    async with Simulator({FB_TITLE: FB_TOKEN}, agent=False) as sim:
        config = make_config(prefix, sim.url, spool_dir, [CONNECTOR])
        channel = await amqp.channel(publisher_confirms=True)
        watch = await Watch(channel, Topology(prefix), ["fb"]).start()
        async with running_bridge(config) as b:
            await wait_until(
                lambda: "fb" in b.supervisors and b.supervisors["fb"].ready, what="session"
            )
            call = await sim.call_webhook(FB_TITLE, event("c-1"), kind="event")
            assert call.ok
            await wait_until(lambda: watch.keys("fb.event."), what="event published")

            exchange = await channel.get_exchange(prefix, ensure=False)
            contact = aio_pika.Message(
                codec.encode(new_contact(1)),
                content_type="application/json",
                message_id=uuid.uuid4().hex,
                headers={"traceparent": contact_traceparent},
            )
            await exchange.publish(contact, "fb.contact.new", timeout=10)
            await wait_until(lambda: watch.keys("fb.contact.accepted"), what="outcome")
            tokens = [s.token for s in sim.sessions]
        return Flow(
            one_seen(watch.keys("fb.event.")), one_seen(watch.keys("fb.contact.accepted")), tokens
        )


def one_seen(seen: list[Seen]) -> Seen:
    assert len(seen) == 1, [s.routing_key for s in seen]
    return seen[0]


async def test_a_webhook_and_a_contact_are_each_one_trace_without_secrets(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    backend_trace, backend_span = uuid.uuid4().int, 0x1234ABCD5678EF01
    sent = f"00-{backend_trace:032x}-{backend_span:016x}-01"
    flow = await webhook_and_contact(prefix, amqp, tmp_path / "spool", sent)

    # webhook -> publish -> the subscriber's message
    tp = traceparent(flow.event.message)
    assert tp is not None
    trace_id, span_id = ids(tp)
    publish = by_id(spans, span_id)
    assert publish.kind is SpanKind.PRODUCER
    assert publish.context is not None
    assert publish.context.trace_id == trace_id
    attrs = publish.attributes or {}
    assert attrs["messaging.destination.name"] == prefix
    assert attrs["messaging.rabbitmq.destination.routing_key"] == flow.event.routing_key
    assert attrs["messaging.message.id"] == flow.event.message.message_id
    assert attrs["oscc.connector"] == "fb"
    assert attrs["oscc.outcome"] == "published"
    assert publish.parent is not None
    server = by_id(spans, publish.parent.span_id)
    assert server.kind is SpanKind.SERVER
    assert server.parent is None  # OSCC sent no traceparent: the call starts the trace
    assert server.attributes == {
        "http.request.method": "POST",
        "http.route": "/webhook/{connector}/{secret}",
        "url.scheme": "http",
        "http.response.status_code": 200,
        "oscc.connector": "fb",
    }

    # back-end's traceparent -> process -> POST newContact, and -> the outcome's publish
    process = one(
        [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER], "consumer spans"
    )
    assert process.context is not None
    assert process.context.trace_id == backend_trace
    assert process.parent is not None
    assert process.parent.span_id == backend_span
    assert process.parent.is_remote
    attrs = process.attributes or {}
    assert attrs["messaging.rabbitmq.destination.routing_key"] == "fb.contact.new"
    assert attrs["oscc.connector"] == "fb"
    assert attrs["oscc.error_code"] == 0
    post = one([s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT], "client spans")
    assert post.parent is not None
    assert post.parent.span_id == process.context.span_id
    attrs = post.attributes or {}
    assert attrs["http.request.method"] == "POST"
    assert str(attrs["url.full"]).endswith("/openmedia/webapi/main/newContact")
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["oscc.error_code"] == 0

    tp = traceparent(flow.outcome.message)
    assert tp is not None
    assert ids(tp)[0] == backend_trace
    outcome = by_id(spans, ids(tp)[1])
    assert outcome.kind is SpanKind.PRODUCER
    assert outcome.parent is not None
    assert outcome.parent.span_id == process.context.span_id

    # no span says a token, a session token, the webhook secret or the contact's content
    secrets_ = [FB_TOKEN, SECRET, *flow.tokens, new_contact(1)["publishedObject"]["content"]]
    assert flow.tokens
    for span in spans.get_finished_spans():
        for text in every_value(span):
            for secret in secrets_:
                assert secret not in text, f"{span.name}: {text}"


async def test_with_tracing_off_no_span_and_no_traceparent(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    tracing.setup(TracingConfig(enabled=False), exporter=exporter)
    assert not tracing.enabled()
    sent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    flow = await webhook_and_contact(prefix, amqp, tmp_path / "spool", sent)
    assert exporter.get_finished_spans() == ()
    assert traceparent(flow.event.message) is None
    assert traceparent(flow.outcome.message) is None  # the contact's is not carried on

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    assert tracing.server(handler) is handler  # the hooks hand back what they were given


@pytest.fixture
async def bound(
    prefix: str, amqp: AbstractRobustConnection
) -> AsyncIterator[tuple[Topology, Watch]]:
    topology = Topology(prefix)
    channel = await amqp.channel()
    watch = await Watch(channel, topology, ["fb"]).start("fb.event.#")
    try:
        yield topology, watch
    finally:
        await delete_topology(AMQP_URL, topology, ["fb"])


async def test_a_spooled_webhook_is_replayed_in_a_span_linked_to_its_own(
    prefix: str,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    bound: tuple[Topology, Watch],
) -> None:
    topology, watch = bound
    config = make_config(prefix, "http://127.0.0.1:1", tmp_path / "spool", [CONNECTOR])
    metrics = Metrics()
    port = free_port()

    # The broker is away (this publisher never connected): the webhook is spooled.
    async with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
        away = Broker(config.broker, topology, connectors=["fb"], metrics=metrics)
        app = web.Application()
        add_routes(app, config, Publisher(away, spool=spool), metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            url = f"http://127.0.0.1:{port}/webhook/fb/{SECRET}"
            async with aiohttp.ClientSession() as http, http.post(url, json=event("c-9")) as r:
                assert r.status == 200
        finally:
            await runner.cleanup()
        assert spool.messages == 1
    spooling = one(
        [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER], "spooling span"
    )
    assert (spooling.attributes or {})["oscc.outcome"] == "spooled"
    assert spooling.context is not None
    assert spooling.parent is not None
    assert by_id(spans, spooling.parent.span_id).kind is SpanKind.SERVER
    spans.clear()

    # The broker is back: the replay publishes it, linked to the span that spooled it.
    async with (
        Spool(tmp_path / "spool", max_bytes=1 << 20) as spool,
        Broker(config.broker, topology, connectors=["fb"], metrics=metrics) as up,
        Publisher(up, spool=spool),
    ):
        await wait_until(lambda: watch.seen, what="replayed message")
        await wait_until(lambda: spool.messages == 0, what="spool drained")
    replay = one(
        [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER], "replay span"
    )
    assert replay.parent is None
    assert replay.context is not None
    assert replay.context.trace_id != spooling.context.trace_id  # a trace of its own ...
    assert [link.context.span_id for link in replay.links] == [spooling.context.span_id]
    assert (replay.attributes or {})["oscc.replayed"] is True
    # ... while the message keeps the webhook's trace, for its subscribers
    tp = traceparent(one_seen(watch.seen).message)
    assert tp is not None
    assert ids(tp) == (spooling.context.trace_id, spooling.context.span_id)


def test_enabled_without_the_otel_extra_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bridge.otel", None)
    monkeypatch.delattr(bridge, "otel", raising=False)
    with pytest.raises(ConfigError, match=r"oscc-bridge\[otel\]") as info:
        tracing.setup(TracingConfig(enabled=True))
    assert info.value.key == "tracing.enabled"
    assert not tracing.enabled()
    tracing.setup(TracingConfig(enabled=False))  # off needs nothing


TRACED = f"""
[oscc]
url = "https://oscc.example.com"
[tracing]
enabled = true
endpoint = "http://collector:4318"
[[connectors]]
name = "fb"
title = "{FB_TITLE}"
token = "{FB_TOKEN}"
"""


def test_check_config_names_the_collector_or_the_missing_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(TRACED)
    assert cli.main(["check-config", "--config", str(path)]) == 0
    assert "tracing  OTLP http://collector:4318" in capsys.readouterr().out

    monkeypatch.setitem(sys.modules, "bridge.otel", None)
    monkeypatch.delattr(bridge, "otel", raising=False)
    assert cli.main(["check-config", "--config", str(path)]) == 3
    out, err = capsys.readouterr()
    assert "tracing.enabled" in err
    assert "OK" not in out


def test_endpoint_and_url_redaction() -> None:
    assert otel.otlp_endpoint("") is None
    assert otel.otlp_endpoint("http://jaeger:4318") == "http://jaeger:4318/v1/traces"
    assert otel.otlp_endpoint("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert (
        otel.redact_url("https://u:pw@oscc:8443/openmedia/webapi/main/newContact?x=1")
        == "https://REDACTED:REDACTED@oscc:8443/openmedia/webapi/main/newContact"
    )
