"""OpenTelemetry tracing: optional (extra ``oscc-bridge[otel]``), off by default, free when off.

With ``[tracing] enabled = true``::

    POST /webhook/{connector}    SERVER     continues a traceparent the caller sent
      └─ publish <exchange>      PRODUCER   its context in the AMQP headers traceparent/
                                            tracestate, so subscribers continue the trace
    publish <exchange>           PRODUCER   a spool replay: a trace of its own, LINKED to the
                                            span that spooled the message (whose traceparent
                                            the message keeps)
    process <queue>              CONSUMER   a contact or stream response; a child of the
      │                                     message's traceparent when it has one
      ├─ POST                    CLIENT     the OSCC request
      └─ publish <exchange>      PRODUCER   the outcome, its context in its headers

Attributes name the connector, routing key, message id and OSCC error code, never a token,
a secret, or a contact's content (`bridge.otel` writes them).

Free when off: the components ask once, when they are built (`server`, `producer`,
`replayer`, `consumer` hand back the function they were given), so the webhook, publish
and consume paths run exactly as without tracing; `http_client` and `outcome` cost one
test of a module global. The OpenTelemetry packages are imported only by `setup` when
tracing is on. So `setup` runs before the bridge is built (`cli` does it at start-up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from bridge.config import TracingConfig
from bridge.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from bridge.delivery import Work
    from bridge.lanes import Lane
    from bridge.otel import Tracing
    from bridge.segment import SpoolRecord

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WorkFn = Callable[["Work", "Lane[Work]"], Awaitable[None]]
Send = Callable[["SpoolRecord"], Awaitable[T]]

_impl: Tracing | None = None
_OFF: AbstractContextManager[None] = contextlib.nullcontext()


def setup(config: TracingConfig, *, exporter: SpanExporter | None = None) -> None:
    """Turn tracing on as `config` says (off: nothing is imported or created).

    `exporter` replaces the OTLP exporter (tests). ConfigError (key ``tracing.enabled``)
    when tracing is on and the otel extra is not installed."""
    global _impl
    shutdown()
    if config.enabled:
        _impl = _otel().Tracing(config, exporter)


def check(config: TracingConfig) -> None:
    """ConfigError (key ``tracing.enabled``) when tracing is on and cannot be (check-config)."""
    if config.enabled:
        _otel()


def _otel() -> ModuleType:
    try:
        from bridge import otel
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled: tracing needs the otel extra (pip install 'oscc-bridge[otel]'):"
            f" {exc.name or exc} is not installed",
            key="tracing.enabled",
        ) from exc
    return otel


def shutdown() -> None:
    """Export the spans still buffered and turn tracing off."""
    global _impl
    impl, _impl = _impl, None
    if impl is not None:
        impl.shutdown()


def enabled() -> bool:
    """True while tracing is on."""
    return _impl is not None


def server(handler: Handler) -> Handler:
    """The webhook `handler`, in a SERVER span when tracing is on."""
    return handler if _impl is None else _impl.server(handler)


def producer(send: Send[T], exchange: str) -> Send[T]:
    """`send` (publish a record; `exchange` is the main one), in a PRODUCER span that puts
    its context in the record's headers, when tracing is on."""
    return send if _impl is None else _impl.producer(send, exchange)


def replayer(send: Send[T], exchange: str) -> Send[T]:
    """`send` for spooled records, in a PRODUCER span linked to the original one, when
    tracing is on."""
    return send if _impl is None else _impl.replayer(send, exchange)


def consumer(work: WorkFn, connector: str) -> WorkFn:
    """The consumer's `work(item, lane)`, in a CONSUMER span when tracing is on."""
    return work if _impl is None else _impl.consumer(work, connector)


def outcome(code: int) -> None:
    """Note OSCC's errorCode for the message being processed (its CONSUMER span)."""
    if _impl is not None:
        _impl.outcome(code)


def http_client(url: str) -> AbstractContextManager[Any]:
    """A CLIENT span around a POST to OSCC while inside a trace; yields the span or None
    (give it to `http_answered`)."""
    return _OFF if _impl is None else _impl.http_client(url)


def http_answered(span: Any, status: int, code: int | None) -> None:
    """Record OSCC's HTTP status and errorCode on `span` (from `http_client`)."""
    if span is not None and _impl is not None:
        _impl.http_answered(span, status, code)
