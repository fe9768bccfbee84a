"""What the consumer tells RabbitMQ about a message it took: dead letters and outcomes.

Pure functions build them; the consumer's `Reporter` publishes them, each retried until
the broker confirmed it::

    dead letter   the original message (body, properties, headers) to ``<p>.dead`` under
                  its own ``<c>.*`` routing key, else ``<c>.contact.new`` /
                  ``<c>.stream.response`` (it came through the default exchange), plus
                  headers oscc-error-code, oscc-error-text, oscc-dead-reason,
                  oscc-dead-at
    outcome       {"messageId", "publishedObjectId", "sourceId", "errorCode", "errorText",
                  "reason"?} (a stream response names its "id" instead of the two ids) to
                  ``<c>.contact.accepted|rejected`` and to the message's reply_to;
                  correlation_id = the message's correlation_id, else its message_id

Reasons quote OSCC's errorText, which may quote a secret: each is masked (`logs.mask`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from bridge import errors, logs, tracing
from bridge.backoff import retry
from bridge.delivery import Abandoned, MessageKind, Work
from bridge.metrics import Metrics
from bridge.oscc import codec, codes
from bridge.publisher import Publisher
from bridge.topology import Topology

MAX_REASON = 1000  # characters of oscc-dead-reason / the outcome's reason
# Original headers larger than this are not copied onto a dead letter: with ours added
# they could outgrow the broker's frame (131072 bytes by default).
MAX_COPIED_HEADERS = 65536


@dataclass(frozen=True, slots=True)
class Outcome:
    """An outcome message: body, headers and correlation id."""

    body: bytes
    headers: dict[str, Any]
    correlation_id: str | None
    accepted: bool


def rejection(exc: errors.Rejected, *, by_oscc: bool) -> tuple[int, str, str]:
    """(code, errorText, reason) of a rejected message; the reason names the field."""
    code = exc.code or codes.ErrorCode.WRONG_API_REQUEST
    text = codes.text_of(code)
    reason = f"OSCC answered {code} {text}: {exc.text}" if by_oscc else exc.text
    if exc.path and exc.path not in reason:
        reason = f"{reason} (at {exc.path})"
    return int(code), text, shorten(logs.mask(reason))


def shorten(text: str, limit: int = MAX_REASON) -> str:
    """`text` cut in the middle to `limit` characters: msgspec quotes a whole bad value
    (200 KB of it, if that is what was sent), and a header that outgrows the broker's
    frame closes the connection (docs/SECURITY.md B2). The end, which names the field,
    is kept."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[: limit - tail - 5]} ... {text[-tail:]}"


def outcome(
    message: AbstractIncomingMessage, ids: dict[str, Any], code: int, reason: str | None
) -> Outcome:
    """The outcome of `message`: OSCC's code (0 accepted) and, when there is more to say
    (the offending field, ``duplicate``), a reason."""
    text = codes.text_of(code)
    body: dict[str, Any] = {"messageId": message.message_id, **ids}
    body |= {"errorCode": int(code), "errorText": text}
    if reason is not None:
        body["reason"] = logs.mask(reason)
    return Outcome(
        codec.encode(body),
        {"oscc-error-code": int(code), "oscc-error-text": text},
        message.correlation_id or message.message_id,
        code == codes.ErrorCode.NO_ERROR,
    )


def dead_letter(
    message: AbstractIncomingMessage,
    connector: str,
    default_key: str,
    code: int,
    reason: str,
) -> tuple[aio_pika.Message, str]:
    """A copy of `message` for the dead exchange, and its routing key."""
    m = message
    key = m.routing_key or ""
    if not key.startswith(f"{connector}."):
        key = default_key  # came through the default exchange: the key was the queue name
    headers = dict(m.headers or {})
    size = sum(len(str(k)) + len(str(v)) for k, v in headers.items())
    if size > MAX_COPIED_HEADERS:
        headers = {"oscc-original-headers-dropped": size}
    headers |= {
        "oscc-connector": connector,
        "oscc-error-code": int(code),
        "oscc-error-text": codes.text_of(code),
        "oscc-dead-reason": logs.mask(reason),
        "oscc-original-exchange": m.exchange or "",
        "oscc-original-routing-key": m.routing_key or "",
        "oscc-dead-at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }
    copy = aio_pika.Message(
        m.body,
        headers=headers,
        content_type=m.content_type,
        content_encoding=m.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=m.priority,
        correlation_id=m.correlation_id,
        reply_to=m.reply_to,
        message_id=m.message_id,
        timestamp=m.timestamp,
        type=m.type,
        app_id=m.app_id,
        # no expiration (a dead letter must not vanish) and no user_id (the broker refuses
        # a user_id that is not the publishing connection's user)
    )
    return copy, key


class Reporter:
    """Publishes the dead letters and outcomes of one connector's messages.

    Every publish is retried with backoff until confirmed; `check(work)` raises Abandoned
    when the message's channel is gone (the broker redelivers it, so there is nothing left
    to report). `dead` is the dead-letter exchange, set once the consumer declared it.
    """

    def __init__(
        self,
        *,
        connector: str,
        topology: Topology,
        publisher: Publisher,
        metrics: Metrics,
        confirm_timeout: float,
        retry_base: float,
        retry_cap: float,
        rng: random.Random,
        check: Callable[[Work], None],
    ) -> None:
        self.connector = connector
        self.topology = topology
        self.dead: AbstractExchange | None = None
        self._publisher = publisher
        self._metrics = metrics
        self._timeout = confirm_timeout
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._rng = rng
        self._check = check

    async def reject(self, work: Work, exc: errors.Rejected, *, by_oscc: bool) -> None:
        """Dead-letter (confirmed), count, publish the rejected outcome."""
        assert self.dead is not None
        dead, c, timeout = self.dead, self.connector, self._timeout
        code, text, reason = rejection(exc, by_oscc=by_oscc)
        copy, key = dead_letter(work.message, c, work.kind.routing_key, code, reason)

        async def publish() -> None:
            # aio-pika's own timeout starts only once the connection is back.
            async with asyncio.timeout(timeout):
                await dead.publish(copy, key, timeout=timeout)

        await self._retrying(work, publish)
        self._metrics.dead_letters.labels(c, text).inc()
        self._metrics.forwards.labels(c, work.kind.name, "rejected").inc()
        work.log.warning("consumer.dead_lettered", error_code=code, reason=reason)
        await self.outcome(work, code, reason)

    async def outcome(self, work: Work, code: int, reason: str | None = None) -> None:
        """Publish the outcome to ``<c>.contact.accepted|rejected`` (contacts) and to the
        message's reply_to (both kinds); before the ack, so it is at least once."""
        c, out = self.connector, outcome(work.message, work.ids, code, reason)
        tracing.outcome(code)

        def publish(key: str, exchange: str | None = None) -> Callable[[], Awaitable[None]]:
            return lambda: self._publisher.publish(
                key,
                out.body,
                connector=c,
                headers=out.headers,
                correlation_id=out.correlation_id,
                exchange=exchange,
            )

        if work.kind.name is MessageKind.CONTACT:
            await self._retrying(work, publish(self.topology.contact_outcome_key(c, out.accepted)))
        reply_to = work.message.reply_to
        if reply_to:
            try:
                await self._retrying(work, publish(reply_to, exchange=""))
            except Abandoned:
                raise
            except Exception as exc:
                # A broken reply_to must not hold the queue; the topic outcome stands.
                work.log.warning("consumer.reply_to_failed", reply_to=reply_to, error=repr(exc))

    async def _retrying(self, work: Work, publish: Callable[[], Awaitable[Any]]) -> None:
        """Run a broker publish until it is confirmed; give up (unacked, so the broker
        redelivers) when the message's channel is gone."""

        async def attempt() -> None:
            self._check(work)
            await publish()

        def failed(exc: BaseException, delay: float) -> None:
            work.log.warning("consumer.publish_failed", error=repr(exc), retry_in=delay)

        await retry(
            attempt,
            retry_on=(errors.Transient, TimeoutError, AMQPError, ChannelInvalidStateError),
            base=self._retry_base,
            cap=self._retry_cap,
            rng=self._rng,
            on_retry=failed,
        )
