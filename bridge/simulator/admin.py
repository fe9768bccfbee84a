"""Admin HTTP API of the simulator, for the CLI, the demo and other processes.

All under ``/admin``; JSON in and out; a bad request answers 400 ``{"error": "..."}``::

    GET    /admin                      summary: url, connector titles, counts, faults
    GET    /admin/faults               current faults (see Faults.as_dict)
    POST   /admin/faults               {"not_ready": s, "error_5xx_rate": f, "latency": s,
                                        "refuse_registration": 4|8|9|null,
                                        "refuse_registration_for": {title: code},
                                        "session_ttl": s, "drop_sessions": true,
                                        "strict_sessions": bool,
                                        "answer_pieces": n, "piece_gap": s,
                                        "fail_next": {"endpoint", "code" | "http" |
                                                      "slow", "location"?, "times"},
                                        "fail_contact": {"id", "code" | "http" |
                                                         "slow", "times": n | null}}
                                       -> the faults after the change
    GET    /admin/records              ?endpoint=&title=&since=N -> {"records": [...]}
    GET    /admin/contacts             ?title= -> {"contacts": [accepted bodies]}
    GET    /admin/contact-counts       {"seen": {id: n}, "created": {id: n}, "duplicates": n}
    GET    /admin/stream-responses     ?title= -> {"stream_responses": [accepted bodies]}
    GET    /admin/webhook-calls        ?title=&kind=&since=N -> {"webhook_calls": [...]}
    POST   /admin/reset                forget records, webhook calls, faults (not sessions)
    GET    /admin/sessions             {"sessions": [... token prefix only ...],
                                        "max_live": {title: most live at once}}
    DELETE /admin/sessions             drop every session -> {"dropped": n}
    POST   /admin/restart              {"not_ready": s}? -> OSCC restart
    POST   /admin/stream-request       {"title", "id", "destinationId"?, "numberOfMessages"?}
                                       -> the last webhook attempt
    POST   /admin/webhook              {"title", "body", "kind"?} -> the last webhook attempt
    GET    /admin/connectors           {"connectors": [titles]}
    PUT    /admin/connectors/{title}   {"token": "..."}: OSCC learns (or changes) a connector
    DELETE /admin/connectors/{title}   OSCC forgets a connector

``since=N`` skips the first N entries, so a poller can ask only for what is new.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from bridge import logs
from bridge.oscc import codec
from bridge.simulator.agent import Agent
from bridge.simulator.faults import Faults
from bridge.simulator.state import Record, Session, State, WebhookCall


class Simulator(Protocol):
    """What the admin API uses of `server.Simulator` (which serves it: a Protocol, so
    this module does not import the server that imports it)."""

    state: State
    faults: Faults
    agent: Agent

    @property
    def url(self) -> str: ...
    @property
    def connectors(self) -> dict[str, str]: ...
    @property
    def sessions(self) -> list[Session]: ...
    @property
    def records(self) -> list[Record]: ...
    @property
    def webhook_calls(self) -> list[WebhookCall]: ...
    @property
    def idle(self) -> bool: ...
    @property
    def seen(self) -> Counter[str]: ...
    def contacts(self, title: str) -> list[Any]: ...
    def created(self) -> Counter[str]: ...
    def duplicates(self) -> int: ...
    def stream_responses(self, title: str) -> list[Any]: ...
    def restart(self, not_ready: float = 0.0) -> None: ...
    def reset(self) -> None: ...
    async def send_stream_request(
        self, title: str, id: str, destination_id: str | None = None, number: str = "10"
    ) -> WebhookCall: ...
    async def call_webhook(self, title: str, body: Any, kind: str = "custom") -> WebhookCall: ...


_json = msgspec.json.Decoder()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.encode(body), status=status, content_type="application/json")


class _BadRequest(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    data = await request.read()
    if not data.strip():
        return {}
    try:
        body = _json.decode(data)
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("expected a JSON object")
    return body


def _since(request: web.Request) -> int:
    try:
        return max(0, int(request.query.get("since", "0")))
    except ValueError as exc:
        raise _BadRequest("since: expected an integer") from exc


def _text(body: dict[str, Any], *names: str) -> str | None:
    """The first of `names` that holds a non-empty string."""
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _required(body: dict[str, Any], name: str) -> str:
    value = _text(body, name)
    if value is None:
        raise _BadRequest(f"{name}: required string")
    return value


def add_routes(app: web.Application, sim: Simulator) -> None:
    """Add the admin API for `sim` to `app`."""
    AdminApi(sim).add_routes(app)


def _guarded(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (_BadRequest, ValueError) as exc:
            return _reply({"error": str(exc)}, 400)

    return run


class AdminApi:
    """Handlers of the admin API over one `Simulator`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def add_routes(self, app: web.Application) -> None:
        """Add every admin route to `app`."""
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/admin", self.summary),
            ("GET", "/admin/faults", self.get_faults),
            ("POST", "/admin/faults", self.post_faults),
            ("GET", "/admin/records", self.records),
            ("GET", "/admin/contacts", self.contacts),
            ("GET", "/admin/contact-counts", self.contact_counts),
            ("GET", "/admin/stream-responses", self.stream_responses),
            ("GET", "/admin/webhook-calls", self.webhook_calls),
            ("POST", "/admin/reset", self.reset),
            ("GET", "/admin/sessions", self.sessions),
            ("DELETE", "/admin/sessions", self.drop_sessions),
            ("POST", "/admin/restart", self.restart),
            ("POST", "/admin/stream-request", self.stream_request),
            ("POST", "/admin/webhook", self.webhook),
            ("GET", "/admin/connectors", self.list_connectors),
            ("PUT", "/admin/connectors/{title}", self.put_connector),
            ("DELETE", "/admin/connectors/{title}", self.delete_connector),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, _guarded(handler))

    async def summary(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        return _reply(
            {
                "url": sim.url,
                "connectors": sorted(sim.connectors),
                "sessions": len(sim.sessions),
                "records": len(sim.records),
                "webhook_calls": len(sim.webhook_calls),
                "webhook_calls_given_up": len(sim.agent.gave_up),
                "agent_idle": sim.idle,
                "faults": sim.faults.as_dict(),
            }
        )

    async def get_faults(self, request: web.Request) -> web.StreamResponse:
        return _reply(self.sim.faults.as_dict())

    async def post_faults(self, request: web.Request) -> web.StreamResponse:
        self.sim.faults.update(await _body(request))
        return _reply(self.sim.faults.as_dict())

    async def records(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        rows = [
            r.as_dict()
            for r in self.sim.records[_since(request) :]
            if q.get("endpoint") in (None, r.endpoint) and q.get("title") in (None, r.title)
        ]
        return _reply({"records": rows})

    async def contacts(self, request: web.Request) -> web.StreamResponse:
        return _reply({"contacts": self.sim.contacts(request.query.get("title", ""))})

    async def contact_counts(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        return _reply(
            {"seen": dict(sim.seen), "created": dict(sim.created()), "duplicates": sim.duplicates()}
        )

    async def stream_responses(self, request: web.Request) -> web.StreamResponse:
        title = request.query.get("title", "")
        return _reply({"stream_responses": self.sim.stream_responses(title)})

    async def webhook_calls(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        rows = [
            c.as_dict()
            for c in self.sim.webhook_calls[_since(request) :]
            if q.get("title") in (None, c.title) and q.get("kind") in (None, c.kind)
        ]
        return _reply({"webhook_calls": rows})

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.sim.reset()
        return _reply({"reset": True})

    async def sessions(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        return _reply(
            {
                "sessions": [s.status(now) for s in self.sim.sessions],
                "max_live": dict(self.sim.state.max_live),
            }
        )

    async def drop_sessions(self, request: web.Request) -> web.StreamResponse:
        return _reply({"dropped": self.sim.faults.drop_sessions()})

    async def restart(self, request: web.Request) -> web.StreamResponse:
        not_ready = (await _body(request)).get("not_ready", 0.0)
        if isinstance(not_ready, bool) or not isinstance(not_ready, int | float) or not_ready < 0:
            raise _BadRequest("not_ready: expected seconds >= 0")
        self.sim.restart(not_ready=float(not_ready))
        return _reply({"restarted": True, "not_ready": float(not_ready)})

    async def stream_request(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        title, id_ = _required(body, "title"), _required(body, "id")
        destination = _text(body, "destinationId", "destination_id")
        number = _text(body, "numberOfMessages", "number") or "10"
        try:
            call = await self.sim.send_stream_request(title, id_, destination, number)
        except LookupError as exc:
            raise _BadRequest(str(exc)) from exc
        return _reply(call.as_dict())

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        title = _required(body, "title")
        if "body" not in body:
            raise _BadRequest("body: required")
        try:
            call = await self.sim.call_webhook(title, body["body"], _text(body, "kind") or "custom")
        except LookupError as exc:
            raise _BadRequest(str(exc)) from exc
        return _reply(call.as_dict())

    async def list_connectors(self, request: web.Request) -> web.StreamResponse:
        return _reply({"connectors": sorted(self.sim.connectors)})

    async def put_connector(self, request: web.Request) -> web.StreamResponse:
        title = request.match_info["title"]
        token = _required(await _body(request), "token")
        if len(title) > 50 or len(token) > 50:
            raise _BadRequest("title and token are at most 50 characters")
        self.sim.connectors[title] = token
        logs.register_secret(token)
        return _reply({"connectors": sorted(self.sim.connectors)})

    async def delete_connector(self, request: web.Request) -> web.StreamResponse:
        if self.sim.connectors.pop(request.match_info["title"], None) is None:
            return _reply({"error": "unknown connector"}, 404)
        return _reply({"connectors": sorted(self.sim.connectors)})
