"""structlog, configured once: console on a TTY, JSON otherwise; secrets redacted.

Bind context per message with ``log.bind(connector=..., routing_key=...)``. Whatever a
caller passes, values under secret-looking keys are replaced before rendering, and the
known secret values registered with `register_secret` are masked wherever they appear.
This module owns that registry: `mask` (a text) and `scrub` (a structure) apply it to
what the bridge writes elsewhere (outcomes, dead-letter headers, /status).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"token|password|passwd|secret|authorization|credential", re.I)
_secrets: set[str] = set()
_global: dict[str, Any] = {}  # bound to every line of the process (the HA instance)


def register_secret(value: str | None) -> None:
    """Mask `value` in every log line from now on (tokens, session tokens, passwords)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def forget_secret(value: str | None) -> None:
    """Stop tracking `value` (a session token that was replaced)."""
    if value:
        _secrets.discard(value)


def bind_global(**context: Any) -> None:
    """Add `context` to every log line of the process from now on, including the
    stdlib loggers' (aiohttp, aio-pika): e.g. ``instance=<ha.instance>``."""
    _global.update(context)


def add_global(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the `bind_global` context, under what a caller bound."""
    for key, value in _global.items():
        event.setdefault(key, value)
    return event


def mask(text: str) -> str:
    """`text` with every registered secret replaced by ``***``.

    For every text the bridge writes besides its log: outcome reasons, dead-letter
    headers, /status. OSCC may quote a session token or the connector's token in an
    errorText, and that text travels on. Mask before cutting a text short, or half a
    secret survives.
    """
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def scrub(value: Any) -> Any:
    """A copy of JSON-like `value` with secret-looking keys' values and registered
    secrets masked, nested ones too (what `redact` does to a log line)."""
    return _mask(value)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    # Structures are rendered whole (JSON, repr): clean what is inside them too.
    if isinstance(value, dict):
        return {k: _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask(v) for v in value]
    return value


def _clean(key: str, value: Any) -> Any:
    if _SECRET_KEYS.search(key) and value not in (None, "", False):
        return "***"
    return _mask(value)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide secret keys and known secret values, nested ones too."""
    for key, value in list(event.items()):
        event[key] = _clean(key, value)
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger (aiohttp, aio-pika) once."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_global,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text before `redact`, in both formats, so a secret in an
        # exception's message is masked too (the console renderer would format exc_info
        # itself, after every processor).
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ExpectedBrokerLoss())  # on the handler: logger filters skip children
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=[*shared[1:]])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


class ExpectedBrokerLoss(logging.Filter):
    """Drop aio-pika's and aiormq's own lines about a lost broker connection.

    A broker restart makes them log half a dozen error lines with tracebacks; the
    publisher already says it once, as a warning, with the broker_connected metric, so
    these add nothing but alarm. Anything else they log passes through unchanged.
    """

    _EXPECTED = (
        "Unexpected connection close",
        "error when creating transport",
        "Connection attempt to",
        "Callback <OneShotCallback",
        "Cancelling cause reader exited abnormally",
        "Closing channel",
        "Reconnecting after",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("aiormq", "aio_pika")):
            return True
        message = record.getMessage()
        return not any(text in message for text in self._EXPECTED)


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A structlog logger with `context` bound."""
    return structlog.get_logger(name).bind(**context) if context else structlog.get_logger(name)
