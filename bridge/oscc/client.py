"""The OSCC REST client: one method per command of guide §3, typed errors out.

Every call is a POST with ``Content-Type: application/json``; every call but registration
carries ``Authorization: <sessionToken>`` (the bare token, no scheme). What each answer
becomes::

    errorCode 0                         -> the Answer / RegistrationResponse
    errorCode 6, 10; HTTP 401/403       -> SessionLost
    errorCode 1, 7; HTTP 5xx/408/429;
      timeouts; connection/TLS errors;
      a 2xx/3xx without a usable answer -> Transient

The answer is read to its end (Content-Length or chunked, however many TCP segments it
comes in), at most 1 MiB. A Transient is `ambiguous` when OSCC may have acted on the
request: a timeout or a cut connection after it was sent, or a 2xx answer that is cut
short, too large or not JSON.
    errorCode 2                         -> StaleSession
    errorCode 4, 8, 9                   -> ConnectorRefused
    errorCode 11, 12, 13; other 4xx     -> Rejected

Each call is counted in ``oscc_requests_total{connector, endpoint, code}`` with code = the
errorCode, or ``http_<status>`` when there was no JSON answer, ``timeout``,
``connection`` or ``unreadable`` (a 2xx answer cut short or too large). Tokens and
session tokens are registered as log secrets.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Final, TypeVar

import aiohttp
import msgspec

from bridge import errors, tracing
from bridge.config import OsccConfig, mask_url
from bridge.lifecycle import Service
from bridge.logs import get_logger, register_secret
from bridge.metrics import Metrics
from bridge.oscc import codec, codes, models

BASE_PATH: Final = "/openmedia/webapi/main"
REGISTER: Final = "registerConnector"
NEW_CONTACT: Final = "newContact"
KEEPALIVE: Final = "keepalive"
STREAM_RESPONSE: Final = "streamResponse"
LISTEN_FOR_EVENTS: Final = "listenForEvents"

_KEEPALIVE_BODY: Final = b"{}"
_MAX_ANSWER_BYTES: Final = 1 << 20
_READ_CHUNK: Final = 1 << 16

_A = TypeVar("_A", bound=models.Answer)


def tls_context(config: OsccConfig) -> ssl.SSLContext | bool:
    """The ``ssl=`` argument for aiohttp: verification on, plus `ca_file` when given.

    `ca_file` is added to the system's trust store (not a replacement for it), so an
    OSCC behind a public certificate keeps working when an operator adds a private CA.
    """
    if not config.verify_tls:
        return False
    if not config.ca_file:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=config.ca_file)
    return context


class OsccClient(Service):
    """POSTs the guide's commands to ``config.url`` over one aiohttp ClientSession.

    Use as ``async with OsccClient(config.oscc, connector="facebook", metrics=m):``. The
    ClientSession is created on entry and closed on exit, unless one was passed as `http`
    (then its owner closes it).
    """

    def __init__(
        self,
        config: OsccConfig,
        *,
        connector: str,
        metrics: Metrics,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.connector = connector
        self._metrics = metrics
        self._http = http
        self._owns_http = http is None
        self._ssl = tls_context(config)
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout)
        base = config.url.rstrip("/")
        lfe = config.listen_for_events_path
        self._urls = {
            name: f"{base}{BASE_PATH}/{name}"
            for name in (REGISTER, NEW_CONTACT, KEEPALIVE, STREAM_RESPONSE)
        }
        self._urls[LISTEN_FOR_EVENTS] = base + (lfe if lfe.startswith("/") else "/" + lfe)
        self._log = get_logger("bridge.oscc", connector=connector)

    async def start(self) -> None:
        """Create the ClientSession (unless one was passed in)."""
        if not self.config.verify_tls and self.config.url.startswith("https:"):
            self._log.warning(
                "oscc.tls_verification_disabled",
                url=mask_url(self.config.url),
                hint="oscc.verify_tls = false: OSCC's certificate is not checked",
            )
        self._session()

    async def stop(self) -> None:
        """Close the ClientSession if this client created it."""
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    # -- commands ------------------------------------------------------------------------

    async def register(
        self, title: str, token: str, webhook_url: str
    ) -> models.RegistrationResponse:
        """Connector Registration; the answer carries the session token."""
        register_secret(token)
        request = models.Registration(
            webhook_url=webhook_url,
            open_media=models.OpenMedia(open_media_title=title, token=token),
        )
        codec.check_limits(request)
        answer = await self._post(
            REGISTER, codec.encode(request), None, models.RegistrationResponse
        )
        if not answer.session_token:
            self._count(REGISTER, "no_session_token")
            raise errors.Transient("registration answered NO_ERROR without a sessionToken")
        register_secret(answer.session_token)
        if answer.user_credentials is not None:
            register_secret(answer.user_credentials.password)
        return answer

    async def keepalive(self, session_token: str) -> models.Answer:
        """Keep Alive: an empty JSON object."""
        return await self._post(KEEPALIVE, _KEEPALIVE_BODY, session_token, models.Answer)

    async def listen_for_events(self, session_token: str, enabled: bool = True) -> models.Answer:
        """Listen For Events: ask OSCC to call the webhook with OpenMedia events."""
        body = codec.encode(models.ListenForEvents(enabled_listen_for_event=enabled))
        return await self._post(LISTEN_FOR_EVENTS, body, session_token, models.Answer)

    async def new_contact(self, session_token: str, body: bytes) -> models.Answer:
        """New Contact; `body` is the canonical JSON of the contact."""
        return await self._post(NEW_CONTACT, body, session_token, models.Answer)

    async def stream_response(self, session_token: str, body: bytes) -> models.Answer:
        """Stream Response; `body` is the canonical JSON of the response."""
        return await self._post(STREAM_RESPONSE, body, session_token, models.Answer)

    # -- transport -----------------------------------------------------------------------

    def _count(self, endpoint: str, code: str) -> None:
        self._metrics.oscc_requests.labels(self.connector, endpoint, code).inc()

    async def _post(
        self, endpoint: str, body: bytes, session_token: str | None, answer_type: type[_A]
    ) -> _A:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if session_token is not None:
            register_secret(session_token)
            headers["Authorization"] = session_token
        with tracing.http_client(self._urls[endpoint]) as span:
            status, content, location = await self._exchange(endpoint, body, headers)
            answer, raw = _parse(content, answer_type)
            code = answer.error_code if answer is not None and "errorCode" in raw else None
            tracing.http_answered(span, status, code)
        self._count(endpoint, str(code) if code is not None else f"http_{status}")
        self._log.debug("oscc.answer", endpoint=endpoint, status=status, error_code=code)
        return self._judge(endpoint, status, answer, code, location)

    async def _exchange(
        self, endpoint: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        """POST `body`: OSCC's HTTP status, answer (bounded) and Location; Transient when
        there is no answer."""
        started = time.monotonic()
        try:
            async with self._session().post(
                self._urls[endpoint],
                data=body,
                headers=headers,
                ssl=self._ssl,
                timeout=self._timeout,
                allow_redirects=False,  # a redirected POST loses its body; say so instead
            ) as response:
                status = response.status
                location = response.headers.get("Location")
                content = await self._read_answer(endpoint, response)
        except TimeoutError as exc:
            self._count(endpoint, "timeout")
            # aiohttp raises ConnectionTimeoutError while connecting: nothing was sent.
            sent = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            raise errors.Transient(
                f"{endpoint}: no answer within {self.config.request_timeout:g} s",
                ambiguous=sent,
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            self._count(endpoint, "connection")
            self._log.error(
                "oscc.tls_certificate_rejected",
                endpoint=endpoint,
                error=str(exc.certificate_error),
                hint="set oscc.ca_file to the CA that signed OSCC's certificate",
            )
            raise errors.Transient(f"{endpoint}: TLS certificate rejected: {exc}") from exc
        except aiohttp.ClientError as exc:
            self._count(endpoint, "connection")
            # Connected and sent, then cut (server disconnected, reset): OSCC may have
            # acted on it. Not connected at all: it certainly did not.
            sent = not isinstance(exc, aiohttp.ClientConnectorError)
            raise errors.Transient(
                f"{endpoint}: {type(exc).__name__}: {exc}", ambiguous=sent
            ) from exc
        finally:
            self._metrics.oscc_duration.labels(self.connector, endpoint).observe(
                time.monotonic() - started
            )
        return status, content, location

    async def _read_answer(self, endpoint: str, response: aiohttp.ClientResponse) -> bytes:
        """The whole answer body, whatever its framing (Content-Length or chunked, in
        however many segments), at most `_MAX_ANSWER_BYTES`.

        A 2xx answer that is cut short or too large is an ambiguous Transient: OSCC has
        seen the request and may have acted on it. For other statuses the body is only
        decoration; b"" lets the status decide.
        """
        declared = response.content_length
        try:
            if declared is not None and declared > _MAX_ANSWER_BYTES:
                raise _TooLarge(declared)
            return await _read_bounded(response.content, _MAX_ANSWER_BYTES)
        except (_TooLarge, aiohttp.ClientPayloadError) as exc:
            if not 200 <= response.status < 300:
                return b""
            self._count(endpoint, "unreadable")
            raise errors.Transient(
                f"{endpoint}: HTTP {response.status} with an unreadable answer: {exc}",
                ambiguous=True,
            ) from exc

    def _judge(
        self, endpoint: str, status: int, answer: _A | None, code: int | None, location: str | None
    ) -> _A:
        if status in (401, 403):
            raise errors.SessionLost(f"{endpoint}: HTTP {status}", code=code)
        if answer is not None and code:
            codes.raise_for(code, f"{endpoint}: {answer.error_text or codes.text_of(code)}")
        if 200 <= status < 300:
            if answer is None:
                # OSCC answered success in a form we cannot read: it may have acted.
                raise errors.Transient(
                    f"{endpoint}: HTTP {status} without a JSON answer", ambiguous=True
                )
            return answer
        error: errors.BridgeError
        if codes.error_for_http(status) is errors.Rejected:
            error = errors.Rejected(f"{endpoint}: HTTP {status}")
        else:
            if 300 <= status < 400:
                self._log.error(
                    "oscc.redirected",
                    endpoint=endpoint,
                    status=status,
                    location=mask_url(location or ""),
                    hint="point oscc.url at the final address",
                )
            error = errors.Transient(f"{endpoint}: HTTP {status}")
        error.http_status = status
        raise error


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"answer larger than {_MAX_ANSWER_BYTES} bytes ({size}+)")


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Everything up to EOF; _TooLarge as soon as more than `limit` bytes came."""
    parts: list[bytes] = []
    size = 0
    while chunk := await stream.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size)
        parts.append(chunk)
    return b"".join(parts)


def _parse(content: bytes, answer_type: type[_A]) -> tuple[_A | None, dict[str, Any]]:
    """The typed answer and its normalized dict, or (None, {}) when it is not one."""
    try:
        raw = codec.decode_json(content)
        parsed = codec.convert(raw, answer_type)
    except (errors.Rejected, msgspec.MsgspecError):
        return None, {}
    return parsed.obj, parsed.body


__all__ = [
    "KEEPALIVE",
    "LISTEN_FOR_EVENTS",
    "NEW_CONTACT",
    "REGISTER",
    "STREAM_RESPONSE",
    "OsccClient",
    "tls_context",
]
