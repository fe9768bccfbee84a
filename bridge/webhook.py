"""The webhook OSCC calls: Outgoing Publications, Stream Requests and OpenMedia events.

``POST /webhook/<c>`` (or ``/webhook/<c>/<secret>`` when the connector has a
`webhook_secret`) -> read the body (bounded in size and time) -> classify and validate it
once (`codec.decode_inbound`) -> publish its canonical JSON with confirm, or spool it ->
answer OSCC. OSCC is answered only once the message is safe: confirmed by the broker or
on disk in the spool.

==========================  =====  ===========================================
what                        HTTP   body
==========================  =====  ===========================================
event                       200    {"errorCode": 0, "errorText": "NO_ERROR"}
publication                 200    {"type": <its type>, "errorCode": 0, ...}
stream request              200    {"type": "Stream", "errorCode": 0, ...}
not JSON / not known        400    errorCode 11 WRONG_API_REQUEST
body over max_body_bytes    413    errorCode 11 WRONG_API_REQUEST
compressed body             415    errorCode 11 WRONG_API_REQUEST (OSCC does not compress)
body too slow               408    errorCode 1 GENERAL_ERROR
http.max_concurrency busy   503    errorCode 7 NOT_READY, Retry-After: 1
broker down and spool full  503    errorCode 7 NOT_READY, Retry-After
unknown connector / secret  404    aiohttp's own 404, as for any unknown path
==========================  =====  ===========================================
"""

from __future__ import annotations

import asyncio
import hmac
import multiprocessing
import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import Counter, Histogram

from bridge import logs, tracing
from bridge.badrequests import BadRequestLog
from bridge.config import Config, ConnectorConfig
from bridge.errors import BrokerUnavailable, Rejected
from bridge.metrics import Metrics
from bridge.oscc import codec, models
from bridge.oscc.codes import ErrorCode
from bridge.oscc.models import OpenMediaEvent, OutgoingPublication, StreamRequest
from bridge.publisher import Publisher
from bridge.topology import Topology

log = logs.get_logger("bridge.webhook")

RETRY_AFTER = 10  # seconds, when neither broker nor spool can take a message
BUSY_RETRY_AFTER = 1  # seconds, when http.max_concurrency requests are in progress
# Bodies up to this size are decoded on the event loop (a ~1 KB event takes ~20 us; a
# hop to another process would cost more); larger ones in the decoder process.
INLINE_BYTES = 65536
# Not fork: the process has threads (aio-pika's, the spool's) that a fork would copy
# mid-flight. Spawn starts a clean interpreter that imports only what _prepare needs.
_SPAWN = multiprocessing.get_context("spawn")


def _answer(code: ErrorCode, **extra: Any) -> bytes:
    return codec.encode({**extra, "errorCode": int(code), "errorText": code.name})


_OK_EVENT = _answer(ErrorCode.NO_ERROR)
_OK_STREAM = _answer(ErrorCode.NO_ERROR, type="Stream")
_OK_PUBLICATION = {t.value: _answer(ErrorCode.NO_ERROR, type=t.value) for t in models.ContactType}
_WRONG_REQUEST = _answer(ErrorCode.WRONG_API_REQUEST)
_NOT_READY = _answer(ErrorCode.NOT_READY)
_GENERAL = _answer(ErrorCode.GENERAL_ERROR)


class _TooLarge(Exception):
    pass


def _closing(response: web.Response) -> web.Response:
    """Close the connection with this answer: an unread body is not worth lingering for
    (aiohttp would otherwise read and discard it for up to 10 s more)."""
    response.force_close()
    return response


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


@dataclass(frozen=True, slots=True)
class _Message:
    """What a webhook body becomes: where it goes, its canonical bytes, OSCC's answer."""

    kind: str  # event | publication | stream
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    answer: bytes
    correlation_id: str | None = None
    reply_to: str | None = None
    contact_id: str | None = None

    def context(self, c: str) -> dict[str, Any]:
        """What a log line about this message names. Passed to the few lines written on
        the slow paths rather than bound with structlog's contextvars for every request
        (binding and resetting three of them cost ~4 us a webhook: issue 15)."""
        return {"connector": c, "routing_key": self.routing_key, "contact_id": self.contact_id}


def _prepare(data: bytes, c: str, topology: Topology) -> _Message | str:
    """Classify, validate and canonically encode one body; the rejection's text when it
    is not an object OSCC sends. Runs in the decoder process for large bodies, so it
    returns only bytes and short strings: no decoded tree, and no exception whose
    traceback would keep one alive."""
    try:
        parsed = codec.decode_inbound(data)
    except (Rejected, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the decoder goes.
        return exc.text if isinstance(exc, Rejected) else "JSON nested too deeply"
    obj = parsed.obj
    headers: dict[str, Any] = {}
    reply_to = correlation_id = contact_id = None
    match obj:
        case OutgoingPublication():
            kind = "publication"
            key = topology.publication_key(c, obj.type)
            published = obj.object_to_be_published
            headers["oscc-published-id"] = published.id
            if published.in_reply_to is not None:
                headers["oscc-in-reply-to"] = published.in_reply_to.id
            answer = _OK_PUBLICATION.get(obj.type) or _answer(
                ErrorCode.NO_ERROR, type=str(obj.type)
            )
        case StreamRequest():
            kind = "stream"
            key = topology.stream_request_key(c)
            reply_to = topology.stream_response_queue(c)
            # topology bounds it (and every header) for AMQP: docs/SECURITY.md W11/W12.
            correlation_id = obj.id
            answer = _OK_STREAM
        case OpenMediaEvent():
            kind = "event"
            key = topology.event_key(c, obj.kind)
            contact_id = obj.contact_id
            headers["oscc-contact-id"] = obj.contact_id
            headers["oscc-agent-id"] = obj.agent_id
            headers["oscc-event"] = obj.open_media_event_type
            answer = _OK_EVENT
    # AMQP has no null header worth sending; absent means "OSCC did not say".
    headers = {k: v for k, v in headers.items() if v is not None}
    return _Message(
        kind,
        key,
        codec.encode(parsed.body),
        headers,
        answer,
        correlation_id=correlation_id,
        reply_to=reply_to,
        contact_id=contact_id,
    )


class Webhook:
    """The handlers behind the two webhook routes, for every configured connector."""

    def __init__(self, config: Config, publisher: Publisher, metrics: Metrics) -> None:
        self.connectors = {c.name: c for c in config.connectors}
        self.publisher = publisher
        self.topology = publisher.topology
        self.metrics = metrics
        self.max_body = config.http.max_body_bytes
        self.read_timeout = config.http.read_timeout
        self.max_concurrency = config.http.max_concurrency
        self._active = 0  # requests being read, decoded or published right now
        self._decoder: ProcessPoolExecutor | None = None  # started with the first large body
        # Compared against when the connector is unknown or has no secret, so a wrong
        # guess costs the same time whatever was wrong.
        self._decoy = secrets.token_urlsafe(32).encode()
        # Label lookups cached: they cost more than the increments on the hot path.
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    async def close(self, _: web.Application | None = None) -> None:
        """Stop the decoder process, if one was started (an aiohttp ``on_cleanup``)."""
        if self._decoder is not None:
            await asyncio.to_thread(self._decoder.shutdown, True, cancel_futures=True)
            self._decoder = None

    async def _prepare_apart(self, data: bytes, c: str) -> _Message | str:
        """`_prepare` in the decoder process; a fresh one if the last one died."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            if self._decoder is None:
                self._decoder = ProcessPoolExecutor(max_workers=1, mp_context=_SPAWN)
            try:
                return await loop.run_in_executor(self._decoder, _prepare, data, c, self.topology)
            except BrokenProcessPool:
                # Killed (by the OOM killer, say): the next body gets a new process.
                log.warning("webhook.decoder_died", attempt=attempt)
                self._decoder.shutdown(wait=False)
                self._decoder = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # -- routes -------------------------------------------------------------------------
    async def bare(self, request: web.Request) -> web.StreamResponse:
        """``POST /webhook/{connector}``: only for connectors without a secret."""
        connector = self.connectors.get(request.match_info["connector"])
        if connector is None or connector.webhook_secret:
            return self._not_found(connector)
        return await self._handle(request, connector)

    async def with_secret(self, request: web.Request) -> web.StreamResponse:
        """``POST /webhook/{connector}/{secret}``: the secret compared in constant time."""
        connector = self.connectors.get(request.match_info["connector"])
        expected = connector.webhook_secret.encode() if connector is not None else b""
        given = request.match_info["secret"].encode()
        matches = hmac.compare_digest(given, expected or self._decoy)
        if connector is None or not expected or not matches:
            return self._not_found(connector)
        return await self._handle(request, connector)

    def _not_found(self, connector: ConnectorConfig | None) -> web.StreamResponse:
        # The label is never the name from the URL: anyone can send any name.
        self._count(connector.name if connector else "unknown", "invalid", "not_found")
        raise web.HTTPNotFound()

    # -- handling -----------------------------------------------------------------------
    async def _handle(self, request: web.Request, connector: ConnectorConfig) -> web.Response:
        started = time.perf_counter()
        c = connector.name
        kind = "invalid"
        if self._active >= self.max_concurrency:
            # Refused before the body is read: memory stays bounded by max_concurrency
            # bodies whatever OSCC (or anyone who can reach the port) sends at once.
            headers = {"Retry-After": str(BUSY_RETRY_AFTER)}
            response, outcome = _closing(_json(_NOT_READY, 503, headers)), "busy"
        else:
            self._active += 1
            try:
                response, kind, outcome = await self._process(request, c)
            except Exception:
                log.exception("webhook.failed", connector=c)
                response, outcome = _json(_GENERAL, 500), "error"
            finally:
                self._active -= 1
        self._count(c, kind, outcome)
        duration = self._durations.get((c, kind))
        if duration is None:
            duration = self._durations[c, kind] = self.metrics.webhook_duration.labels(c, kind)
        duration.observe(time.perf_counter() - started)
        return response

    async def _process(self, request: web.Request, c: str) -> tuple[web.Response, str, str]:
        if request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
            # OSCC does not compress; aiohttp would inflate a gzip bomb past max_body_bytes
            # (the limit sees only the compressed length), so refuse before reading.
            return _closing(_json(_WRONG_REQUEST, 415)), "invalid", "rejected"
        try:
            data = await self._read(request)
        except _TooLarge:
            return _closing(_json(_WRONG_REQUEST, 413)), "invalid", "too_large"
        except TimeoutError:
            return _closing(_json(_GENERAL, 408)), "invalid", "timeout"
        if len(data) <= INLINE_BYTES:
            prepared = _prepare(data, c, self.topology)
        else:
            # Off the event loop: decoding, checking and freeing a wide megabyte takes
            # tens of milliseconds in C calls that hold the GIL (msgspec does not release
            # it), and 30 of them held /healthz and the broker's confirms for seconds. A
            # thread would still hold the loop at every syscall it makes for as long as
            # one such call lasts (140 ms for /healthz measured), so: a process. One: only
            # one decoded tree is alive at a time, however many bodies wait.
            prepared = await self._prepare_apart(data, c)
        del data  # the canonical body is all we keep while the broker confirms
        if isinstance(prepared, str):
            log.info("webhook.rejected", connector=c, error=prepared[:200])
            return _json(_WRONG_REQUEST, 400), "invalid", "rejected"

        m = prepared
        try:
            outcome = await self.publisher.publish_or_spool(
                m.routing_key,
                m.body,
                connector=c,
                headers=m.headers,
                correlation_id=m.correlation_id,
                reply_to=m.reply_to,
            )
        except BrokerUnavailable as exc:
            log.warning(
                "webhook.refused",
                reason="broker down and spool full",
                error=exc.text,
                **m.context(c),
            )
            response = _json(_NOT_READY, 503, {"Retry-After": str(RETRY_AFTER)})
            return response, m.kind, "refused"
        if outcome == "spooled":
            log.debug("webhook.spooled", **m.context(c))
        return _json(m.answer), m.kind, outcome

    async def _read(self, request: web.Request) -> bytes:
        """The body, at most `max_body` bytes, within `read_timeout`."""
        length = request.content_length
        if length is not None and length > self.max_body:
            raise _TooLarge
        if length is not None and request.content.is_eof():
            # The usual case: the whole body came with the head; no timer needed.
            return request.content.read_nowait()
        async with asyncio.timeout(self.read_timeout):
            if length is not None:
                # The parser stops at Content-Length, so this is bounded.
                return await request.content.read()
            chunks: list[bytes] = []
            size = 0
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > self.max_body:
                    raise _TooLarge
                chunks.append(chunk)
            return b"".join(chunks)

    def _count(self, connector: str, kind: str, outcome: str) -> None:
        key = (connector, kind, outcome)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.webhook_requests.labels(*key)
        counter.inc()


def add_routes(
    app: web.Application, config: Config, publisher: Publisher, metrics: Metrics
) -> None:
    """Mount ``POST /webhook/{connector}`` and ``POST /webhook/{connector}/{secret}``."""
    webhook = Webhook(config, publisher, metrics)
    app.on_cleanup.append(webhook.close)
    app.router.add_post("/webhook/{connector}", tracing.server(webhook.bare))
    app.router.add_post("/webhook/{connector}/{secret}", tracing.server(webhook.with_secret))


def server_options(config: Config, metrics: Metrics | None = None) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` serving the webhook.

    aiohttp has no header-read timeout of its own, but its keep-alive timer starts when a
    connection opens and is not reset by a partial request, so it closes a connection that
    does not deliver a whole request head within `read_timeout` (and idle keep-alive
    connections after as long). After a refused request (404, 408, 413) aiohttp reads and
    discards the unread body ("lingers") for at most `read_timeout` too, not its 10 s.
    Bodies are not decompressed: the size limit holds for what is read, and a few KB of
    gzip cannot become gigabytes (docs/SECURITY.md W4); OSCC does not compress. With
    `metrics`, malformed requests are counted and logged as a rate-limited warning
    instead of an ERROR with a traceback each (`bridge.badrequests`).
    """
    options: dict[str, Any] = {
        "keepalive_timeout": config.http.read_timeout,
        "lingering_time": config.http.read_timeout,
        "auto_decompress": False,
        "access_log": None,
    }
    if metrics is not None:
        options["logger"] = BadRequestLog(metrics)
    return options
