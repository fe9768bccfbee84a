"""The OSCC REST side: the five ``/openmedia/webapi/main/*`` commands, checked as the guide says.

Every call goes through the same gate, in this order: latency, HTTP 503 draw, the
NOT_READY window, scripted rules (`Faults.fail_contact`, then `Faults.fail_next`: an HTTP
error page or redirect, or an errorCode); then the command itself; then a rule's `slow`
delay. Answers go on the wire through `answers.send` (in pieces when asked). Every
command but registration needs ``Authorization: <session token>`` (bare) first: missing,
unknown or expired answers 10 CONNECTOR_NOT_REGISTERED. Then the body must be JSON
(``Content-Type: application/json``) or the answer is 11 WRONG_API_REQUEST. Objects are
parsed with `bridge.oscc.models`, so the simulator and the bridge agree on every rule
(11 shape, 12 length, 13 date). Every call is appended to `State.records`. OSCC answers
errors with HTTP 200 and an errorCode; only the 5xx fault and `http` rules break that.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from aiohttp import web

from bridge import logs
from bridge.errors import Rejected
from bridge.oscc import codec, models, spelling
from bridge.oscc.codes import ErrorCode, text_of
from bridge.simulator import answers
from bridge.simulator.faults import Faults, Rule
from bridge.simulator.state import Record, Session, State, contact_id

BASE_PATH = "/openmedia/webapi/main"
_log = logs.get_logger("bridge.simulator")
_json = msgspec.json.Decoder()
_UNAVAILABLE = "<html><body><h1>503 Service Unavailable</h1></body></html>"


class ContactSink(Protocol):
    """Who hears about accepted contacts (the agent)."""

    def contact_accepted(self, session: Session, contact: codec.Parsed[models.NewContact]) -> None:
        """Called once per newContact answered errorCode 0."""


@dataclass(slots=True)
class Call:
    """One incoming REST call, read once."""

    endpoint: str
    body: Any  # decoded JSON; the text when `is_json` is False
    is_json: bool
    authorization: str | None


@dataclass(slots=True)
class Outcome:
    """The answer to a call and the connector title it belongs to (None: unknown)."""

    answer: dict[str, Any]
    title: str | None


def answer(code: int, type_: str | None = None, **extra: Any) -> dict[str, Any]:
    """An OSCC answer body: ``{"type"?, "errorCode", "errorText", ...}``."""
    body: dict[str, Any] = {} if type_ is None else {"type": type_}
    body |= {"errorCode": int(code), "errorText": text_of(code)}
    return body | extra


# Each command's answer `type` (the guide's response tables); newContact echoes the
# contact's type, listenForEvents has none.
_ANSWER_TYPES: dict[str, str | None] = {
    "registerConnector": "Registration",
    "newContact": None,
    "keepalive": "keepAlive",
    "streamResponse": "Stream",
    "listenForEvents": None,
}


def _contact_type(body: Any) -> str | None:
    kind = body.get("type") if isinstance(body, dict) else None
    if not isinstance(kind, str):
        return None
    normal = spelling.normalize(kind, msgspec.inspect.type_info(models.ContactType))
    return str(normal)


def _answer_type(call: Call) -> str | None:
    if call.endpoint == "newContact":
        return _contact_type(call.body)
    return _ANSWER_TYPES[call.endpoint]


class OsccApi:
    """aiohttp handlers of the OSCC REST interface over a `State`."""

    def __init__(self, state: State, faults: Faults, sink: ContactSink | None) -> None:
        self.state = state
        self.faults = faults
        self.sink = sink
        self._commands: dict[str, Callable[[Call], Awaitable[Outcome]]] = {
            "registerConnector": self._register,
            "newContact": self._new_contact,
            "keepalive": self._keepalive,
            "streamResponse": self._stream_response,
            "listenForEvents": self._listen_for_events,
        }

    def add_routes(self, app: web.Application) -> None:
        """Add ``POST /openmedia/webapi/main/<command>`` for every command."""
        for endpoint in self._commands:
            app.router.add_post(f"{BASE_PATH}/{endpoint}", self._handler(endpoint))

    def _handler(self, endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(endpoint, request)

        return handle

    async def handle(self, endpoint: str, request: web.Request) -> web.StreamResponse:
        """Run one REST call through the fault gate and its command; record it."""
        call = await _read(endpoint, request)
        self.state.arrived[endpoint] += 1
        contact = contact_id(call.body) if endpoint == "newContact" else None
        if contact is not None:
            self.state.seen[contact] += 1
        if self.faults.latency > 0:
            await asyncio.sleep(self.faults.latency)
        if self.faults.draw_5xx():
            self._record(call, None, 503, None)
            return await self._send(request, _UNAVAILABLE.encode(), 503, "text/html")
        # No rule is used up while OSCC answers 7 NOT_READY anyway.
        rule = None
        if self.faults.not_ready_remaining <= 0:
            rule = self.faults.scripted(endpoint, contact)
        if rule is not None and rule.http is not None:
            return await self._http_fault(call, request, rule)
        outcome = await self._gate(call, rule)
        code = outcome.answer.get("errorCode")
        self._record(call, outcome.title, 200, code if isinstance(code, int) else None)
        _log.debug(
            "sim.call", endpoint=endpoint, connector=outcome.title, error_code=code, status=200
        )
        if rule is not None and rule.slow > 0:
            await asyncio.sleep(rule.slow)  # the work is done; the answer comes late
        return await self._send(request, codec.encode(outcome.answer))

    async def _http_fault(self, call: Call, request: web.Request, rule: Rule) -> web.StreamResponse:
        """Answer the rule's HTTP status instead of running the command: a redirect for
        3xx, a Tomcat-like error page for anything else."""
        status = rule.http or 500
        self._record(call, self._title_of(call), status, None)
        if rule.slow > 0:
            await asyncio.sleep(rule.slow)
        if 300 <= status < 400:
            location = rule.location
            if location.endswith("/"):
                location += call.endpoint
            page = answers.moved_page(status, location)
            headers = {"Location": location}
            return await self._send(request, page.encode(), status, "text/html", headers)
        return await self._send(request, answers.error_page(status).encode(), status, "text/html")

    async def _send(
        self,
        request: web.Request,
        body: bytes,
        status: int = 200,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        return await answers.send(
            request,
            body,
            status=status,
            content_type=content_type,
            charset="utf-8" if content_type == "text/html" else None,
            headers=headers,
            pieces=self.faults.answer_pieces,
            gap=self.faults.piece_gap,
        )

    async def _gate(self, call: Call, rule: Rule | None) -> Outcome:
        if self.faults.not_ready_remaining > 0:
            return Outcome(answer(ErrorCode.NOT_READY, _answer_type(call)), self._title_of(call))
        if rule is not None and rule.code is not None:
            said = {"errorText": self.faults.error_text} if self.faults.error_text else {}
            return Outcome(answer(rule.code, _answer_type(call), **said), self._title_of(call))
        try:
            return await self._commands[call.endpoint](call)
        except _Answered as answered:
            return answered.outcome
        except Exception:
            # A bug in the simulator must look like OSCC's own failure, not a hang.
            _log.exception("sim.command_failed", endpoint=call.endpoint)
            return Outcome(answer(ErrorCode.GENERAL_ERROR, _answer_type(call)), None)

    def _title_of(self, call: Call) -> str | None:
        """The title a call belongs to, without refreshing any session."""
        if call.endpoint == "registerConnector":
            return _registration_title(call.body)
        session = self.state.sessions.get(call.authorization or "")
        return session.title if session else None

    def _record(self, call: Call, title: str | None, status: int, code: int | None) -> None:
        self.state.records.append(
            Record(
                endpoint=call.endpoint,
                title=title,
                body=call.body,
                authorization=call.authorization,
                status=status,
                error_code=code,
                at=time.monotonic(),
            )
        )

    # --- commands ---------------------------------------------------------------------

    async def _register(self, call: Call) -> Outcome:
        kind = "Registration"
        title = _registration_title(call.body)
        if not call.is_json:
            return Outcome(answer(ErrorCode.WRONG_API_REQUEST, kind), title)
        try:
            parsed = codec.convert(call.body, models.Registration)
            codec.check_limits(parsed.obj)
        except Rejected as exc:
            return Outcome(answer(exc.code or ErrorCode.WRONG_API_REQUEST, kind), title)
        reg = parsed.obj
        if reg.type != "Registration" or not reg.webhook_url.startswith(("http://", "https://")):
            return Outcome(answer(ErrorCode.WRONG_API_REQUEST, kind), title)
        title = reg.open_media.open_media_title
        expected = self.state.connectors.get(title)
        if expected is None or not hmac.compare_digest(
            expected.encode(), reg.open_media.token.encode()
        ):
            _log.info("sim.registration_refused", connector=title, why="wrong title or token")
            return Outcome(answer(ErrorCode.WRONG_TITLE_OR_TOKEN_NOT_FOUND, kind), title)
        refusal = self.faults.refusal(title)
        if refusal is not None:
            return Outcome(answer(refusal, kind), title)
        if self.state.holder(title) is not None:
            return Outcome(answer(ErrorCode.ALREADY_REGISTERED_ON, kind), title)
        session = self.state.open_session(title, reg.webhook_url)
        _log.info("sim.registered", connector=title)
        return Outcome(
            answer(
                ErrorCode.NO_ERROR,
                kind,
                sessionToken=session.token,
                userCredentials=self.state.credentials(title),
            ),
            title,
        )

    def _session(self, call: Call) -> Session:
        """The caller's live session (refreshed); else answer 10, then 11 for a non-JSON body."""
        session = self.state.authorize(call.authorization, keepalive=call.endpoint == "keepalive")
        if session is None:
            code = ErrorCode.CONNECTOR_NOT_REGISTERED
            raise _Answered(Outcome(answer(code, _answer_type(call)), None))
        if not call.is_json:
            code = ErrorCode.WRONG_API_REQUEST
            raise _Answered(Outcome(answer(code, _answer_type(call)), session.title))
        return session

    async def _new_contact(self, call: Call) -> Outcome:
        session = self._session(call)
        try:
            parsed = codec.decode_new_contact(_object(call.body))
        except Rejected as exc:
            code = exc.code or ErrorCode.WRONG_API_REQUEST
            return Outcome(answer(code, _answer_type(call)), session.title)
        if self.sink is not None:
            self.sink.contact_accepted(session, parsed)
        return Outcome(answer(ErrorCode.NO_ERROR, str(parsed.obj.type)), session.title)

    async def _keepalive(self, call: Call) -> Outcome:
        session = self._session(call)
        # The guide says "send an empty JSON object" and prints `[]`; take both.
        if not isinstance(call.body, dict) and call.body != []:
            return Outcome(answer(ErrorCode.WRONG_API_REQUEST, "keepAlive"), session.title)
        return Outcome(answer(ErrorCode.NO_ERROR, "keepAlive"), session.title)

    async def _listen_for_events(self, call: Call) -> Outcome:
        session = self._session(call)
        try:
            parsed = codec.convert(call.body, models.ListenForEvents)
        except Rejected:
            return Outcome(answer(ErrorCode.WRONG_API_REQUEST), session.title)
        session.listen = parsed.obj.enabled_listen_for_event
        return Outcome(answer(ErrorCode.NO_ERROR), session.title)

    async def _stream_response(self, call: Call) -> Outcome:
        session = self._session(call)
        try:
            codec.decode_stream_response(_object(call.body))
        except Rejected as exc:
            code = exc.code or ErrorCode.WRONG_API_REQUEST
            return Outcome(answer(code, "Stream"), session.title)
        return Outcome(answer(ErrorCode.NO_ERROR, "Stream"), session.title)


class _Answered(Exception):
    """Raised by a command that already knows its answer (no or a bad session)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.answer.get("errorText"))
        self.outcome = outcome


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Rejected("expected a JSON object", code=ErrorCode.WRONG_API_REQUEST)
    return body


async def _read(endpoint: str, request: web.Request) -> Call:
    data = await request.read()
    authorization = request.headers.get("Authorization")
    json_type = request.content_type == "application/json" or request.content_type.endswith("+json")
    try:
        return Call(endpoint, _json.decode(data), json_type, authorization)
    except msgspec.DecodeError:
        return Call(endpoint, data.decode("utf-8", "replace"), False, authorization)


def _registration_title(body: Any) -> str | None:
    if isinstance(body, dict):
        media = body.get("openMedia")
        if isinstance(media, dict):
            title = media.get("openMediaTitle")
            return title if isinstance(title, str) else None
    return None
