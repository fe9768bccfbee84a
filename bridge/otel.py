"""The OpenTelemetry side of `bridge.tracing`, imported only once tracing is enabled.

Spans are written by hand rather than by the official instrumentations, which do not fit:
aiohttp-server records the request path, and ours holds the webhook secret
(``/webhook/<c>/<secret>``); aio-pika's wraps ``Exchange.publish``, which the publisher
does not use (it publishes through aiormq for confirms), opens its consumer span around
the delivery callback, which only puts the message in a lane, pins
``opentelemetry-instrumentation`` to one exact version and writes the old attribute names
(``messaging.destination``, ``net.peer.name``); aiohttp-client writes the old HTTP names
unless ``OTEL_SEMCONV_STABILITY_OPT_IN=http`` is set, traces every keepalive as a trace of
its own, and cannot see OSCC's errorCode, which is in the answer's body.

Attribute names follow the current semantic conventions (HTTP stable; messaging as of
1.27: ``messaging.operation.type``, ``messaging.destination.name`` = the exchange), plus
``oscc.connector`` and ``oscc.error_code``. Errors are recorded as ``error.type`` (the
exception's class) and the span status, never an exception's message or traceback: those
can quote a URL with its password.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge import __version__
from bridge.config import TracingConfig
from bridge.delivery import Work
from bridge.lanes import Lane
from bridge.oscc import codes
from bridge.segment import SpoolRecord

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Send = Callable[[SpoolRecord], Awaitable[T]]
WorkFn = Callable[[Work, Lane[Work]], Awaitable[None]]

CONNECTOR = "oscc.connector"
ERROR_CODE = "oscc.error_code"
_NO_EXCEPTIONS: dict[str, Any] = {"record_exception": False, "set_status_on_exception": False}


class _Headers(Getter[Mapping[str, Any]]):
    """Reads trace context from AMQP headers, whose strings may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_HEADERS = _Headers()


def otlp_endpoint(endpoint: str) -> str | None:
    """`tracing.endpoint` as the exporter wants it: like ``OTEL_EXPORTER_OTLP_ENDPOINT``, a
    base URL that gets ``/v1/traces``; None (empty) leaves it to the OTEL_* variables."""
    if not endpoint:
        return None
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def redact_url(url: str) -> str:
    """`url` without credentials (``REDACTED:REDACTED@``, as the conventions say) or query."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class Tracing:
    """A tracer provider (ratio sampling behind the parent's decision) and the spans of
    the bridge's paths. `exporter` None: OTLP over HTTP, batched; else `exporter`, each
    span as it ends (tests pass an in-memory one)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        attributes: dict[str, Any] = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "oscc-bridge"
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create(attributes),
        )
        processor: SpanProcessor
        if exporter is None:
            processor = BatchSpanProcessor(OTLPSpanExporter(otlp_endpoint(config.endpoint)))
        else:
            processor = SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("oscc-bridge", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        """Export what is left and stop."""
        self.provider.shutdown()

    # -- webhook ------------------------------------------------------------------------
    def server(self, handler: Handler) -> Handler:
        """`handler` in a SERVER span, continuing a ``traceparent`` the caller sent. The
        route template is recorded, never the path (it may hold the webhook secret); the
        connector only once it was found (not for a 404: anyone can send any name)."""

        @functools.wraps(handler)
        async def traced(request: web.Request) -> web.StreamResponse:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else ""
            attributes = {
                "http.request.method": request.method,
                "http.route": route,
                "url.scheme": request.scheme,
            }
            with self.tracer.start_as_current_span(
                f"{request.method} {route}",
                context=self.propagator.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes=attributes,
                **_NO_EXCEPTIONS,
            ) as span:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    _served(span, exc.status, request)
                    raise
                except BaseException as exc:
                    _failed(span, exc)
                    raise
                _served(span, response.status, request)
                return response

        return traced

    @contextmanager
    def _span(self, name: str, **options: Any) -> Iterator[Span]:
        """The current span `name`; a failure inside it sets error.type and the status,
        never the exception's message (it may quote a URL with its password)."""
        with self.tracer.start_as_current_span(name, **options, **_NO_EXCEPTIONS) as span:
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise

    # -- publishing ---------------------------------------------------------------------
    def producer(self, send: Send[T], exchange: str) -> Send[T]:
        """`send` in a PRODUCER span whose context goes into the record's headers (so it
        is spooled with them too); a child of the current span (webhook, contact)."""

        async def traced(record: SpoolRecord) -> T:
            with self._publishing(record, exchange, otel_context.get_current()) as span:
                headers = dict(record.headers or {})
                self.propagator.inject(headers)
                result = await send(msgspec.structs.replace(record, headers=headers))
                if isinstance(result, str):
                    span.set_attribute("oscc.outcome", result)  # published | spooled
                return result

        return traced

    def replayer(self, send: Send[T], exchange: str) -> Send[T]:
        """`send` of a spooled record in a PRODUCER span of its own trace, linked to the
        span that spooled it; the record keeps that span's ``traceparent``, so a
        subscriber continues the webhook's trace."""

        async def traced(record: SpoolRecord) -> T:
            origin = trace.get_current_span(
                self.propagator.extract(record.headers or {}, getter=_HEADERS)
            ).get_span_context()
            links = [Link(origin)] if origin.is_valid else []
            with self._publishing(record, exchange, otel_context.Context(), links) as span:
                span.set_attribute("oscc.replayed", True)
                return await send(record)

        return traced

    @contextmanager
    def _publishing(
        self,
        record: SpoolRecord,
        main_exchange: str,
        parent: otel_context.Context,
        links: list[Link] | None = None,
    ) -> Iterator[Span]:
        exchange = main_exchange if record.exchange is None else record.exchange
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": exchange,
            "messaging.message.id": record.message_id,
            CONNECTOR: record.connector,
        }
        if exchange:
            # On the default exchange the routing key is a reply_to queue a client chose.
            attributes["messaging.rabbitmq.destination.routing_key"] = record.routing_key
        with self._span(
            f"publish {exchange}" if exchange else "publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
        ) as span:
            yield span

    # -- consuming ----------------------------------------------------------------------
    def consumer(self, work: WorkFn, connector: str) -> WorkFn:
        """`work` in a CONSUMER span, a child of the message's ``traceparent`` when it
        has one; the OSCC request and the outcome's publish are its children."""

        async def traced(item: Work, lane: Lane[Work]) -> None:
            m = item.message
            attributes: dict[str, Any] = {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": m.exchange or "",
                "messaging.rabbitmq.destination.routing_key": m.routing_key or "",
                CONNECTOR: connector,
            }
            if m.message_id:
                attributes["messaging.message.id"] = m.message_id
            with self._span(
                f"process {item.kind.queue}",
                context=self.propagator.extract(m.headers or {}, getter=_HEADERS),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            ):
                await work(item, lane)

        return traced

    def outcome(self, code: int) -> None:
        """OSCC's answer to the message being processed, on its CONSUMER span."""
        span = trace.get_current_span()
        span.set_attribute(ERROR_CODE, int(code))
        if code:
            span.set_status(Status(StatusCode.ERROR, codes.text_of(code)))

    # -- OSCC requests ------------------------------------------------------------------
    @contextmanager
    def http_client(self, url: str) -> Iterator[Span | None]:
        """A CLIENT span for a POST to `url`, inside a trace only: keepalives and
        registrations outside one would each be a trace of their own."""
        if not trace.get_current_span().is_recording():
            yield None
            return
        parts = urllib.parse.urlsplit(url)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": redact_url(url),
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
        with self._span("POST", kind=SpanKind.CLIENT, attributes=attributes) as span:
            yield span

    @staticmethod
    def http_answered(span: Span, status: int, code: int | None) -> None:
        """What OSCC answered: the HTTP status and, when there was one, the errorCode."""
        span.set_attribute("http.response.status_code", status)
        if code is not None:
            span.set_attribute(ERROR_CODE, code)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        elif code:
            span.set_status(Status(StatusCode.ERROR, codes.text_of(code)))


def _served(span: Span, status: int, request: web.Request) -> None:
    span.set_attribute("http.response.status_code", status)
    if status != 404:
        span.set_attribute(CONNECTOR, request.match_info.get("connector", ""))
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
