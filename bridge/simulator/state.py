"""What the simulated OSCC remembers: connectors, sessions, and a log of every call.

Sessions follow the guide's rules as the simulator reads them: a registration yields a
64-hex session token; every authorized call refreshes it; a session nobody used for
`session_ttl` seconds is gone (checked lazily, on the next call that looks at it). Only
one live session may hold a connector title at a time (a second registration answers 2
ALREADY_REGISTERED_ON until the first one expires). With `strict_sessions`, only a
keepalive keeps a session alive (the guide's "Keep Alive ... used to keep the session
alive"); other calls are answered but do not refresh it. `max_live[title]` is the most
sessions of one title that were ever live at once (1 while the rule above holds).

`seen[publishedObject.id]` counts every newContact call carrying that id, whatever it
was answered; `created()` counts those answered 0, so duplicates at OSCC are visible.

Times are `time.monotonic()` seconds, the clock asyncio's loop uses.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge import logs


def contact_id(body: Any) -> str | None:
    """A newContact body's publishedObject.id, or None when it has none."""
    published = body.get("publishedObject") if isinstance(body, dict) else None
    value = published.get("id") if isinstance(published, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Record:
    """One REST call OSCC received, as it arrived, with the answer it got.

    `body` is the decoded JSON (the raw text when it was not JSON); `title` is the
    connector title the call belongs to (from the body at registration, from the session
    otherwise; None when the session was unknown); `status` is the HTTP status and
    `error_code` the answer's errorCode (None when the answer carried none, e.g. a 503).
    """

    endpoint: str
    title: str | None
    body: Any
    authorization: str | None
    status: int
    error_code: int | None
    at: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (admin API)."""
        return asdict(self)


@dataclass(slots=True)
class WebhookCall:
    """One attempt of the agent (or of a test) to call a connector's webhookURL.

    `status` is the HTTP status, None when the connection failed; `answer` the decoded
    JSON answer (its text when not JSON, the error when the connection failed). `kind`
    is ``delivered``, ``established``, ``held``, ``retrieved``, ``transferred``,
    ``disconnected``, ``publication``, ``stream`` or ``custom``.
    """

    title: str
    body: Any
    status: int | None
    answer: Any
    kind: str = "custom"
    contact_id: str | None = None
    attempt: int = 1
    url: str = ""
    at: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the webhook answered 2xx."""
        return self.status is not None and 200 <= self.status < 300

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (admin API)."""
        return {
            "title": self.title,
            "kind": self.kind,
            "contact_id": self.contact_id,
            "attempt": self.attempt,
            "url": self.url,
            "status": self.status,
            "answer": self.answer,
            "body": self.body,
            "at": self.at,
        }


@dataclass(slots=True)
class Session:
    """A registered connector session (its repr masks the token)."""

    token: str = field(repr=False)
    title: str
    webhook_url: str
    created: float
    last_seen: float
    listen: bool = False

    def status(self, now: float) -> dict[str, Any]:
        """JSON-able summary; only a prefix of the token, enough to tell sessions apart."""
        return {
            "title": self.title,
            "token_prefix": self.token[:8],
            "webhookURL": self.webhook_url,
            "listen_for_events": self.listen,
            "age": round(now - self.created, 3),
            "idle": round(now - self.last_seen, 3),
        }


@dataclass
class State:
    """Connectors (title -> token), sessions, and the history of calls."""

    connectors: dict[str, str] = field(repr=False)
    session_ttl: float = 90.0
    strict_sessions: bool = False
    sessions: dict[str, Session] = field(default_factory=dict, repr=False)
    max_live: dict[str, int] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter, repr=False)
    records: list[Record] = field(default_factory=list, repr=False)
    webhook_calls: list[WebhookCall] = field(default_factory=list, repr=False)
    # endpoint -> REST calls received, counted on arrival (a record is made on answering,
    # after any latency): tests wait on it for "the request is at OSCC, unanswered".
    arrived: Counter[str] = field(default_factory=Counter, repr=False)
    # title -> webhookURL of its latest registration; outlives the session, so a contact
    # accepted before an OSCC restart still gets its reply once the connector is back.
    webhooks: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for token in self.connectors.values():
            logs.register_secret(token)

    # --- sessions ---------------------------------------------------------------------

    def _alive(self, session: Session, now: float) -> bool:
        return now - session.last_seen < self.session_ttl

    def expire(self, now: float | None = None) -> None:
        """Forget sessions nobody used for `session_ttl` seconds."""
        now = time.monotonic() if now is None else now
        for token, session in list(self.sessions.items()):
            if not self._alive(session, now):
                del self.sessions[token]
                logs.forget_secret(token)

    def holder(self, title: str) -> Session | None:
        """The live session holding `title`, if any."""
        self.expire()
        return next((s for s in self.sessions.values() if s.title == title), None)

    def open_session(self, title: str, webhook_url: str) -> Session:
        """A new session for `title` (the caller checked that none is live)."""
        now = time.monotonic()
        token = secrets.token_hex(32)
        logs.register_secret(token)
        session = Session(token, title, webhook_url, created=now, last_seen=now)
        self.sessions[token] = session
        self.webhooks[title] = webhook_url
        live = sum(1 for s in self.sessions.values() if s.title == title)
        self.max_live[title] = max(self.max_live.get(title, 0), live)
        return session

    def authorize(self, token: str | None, *, keepalive: bool = False) -> Session | None:
        """The live session for `token`, refreshed (with `strict_sessions`, only by a
        keepalive); None when missing, unknown or expired."""
        if not token:
            return None
        self.expire()
        session = self.sessions.get(token)
        if session is not None and (keepalive or not self.strict_sessions):
            session.last_seen = time.monotonic()
        return session

    def drop_sessions(self) -> int:
        """Forget every session (their tokens answer 10 from now on); return how many."""
        count = len(self.sessions)
        for token in self.sessions:
            logs.forget_secret(token)
        self.sessions.clear()
        return count

    def credentials(self, title: str) -> dict[str, str]:
        """Made-up userCredentials for `title`, stable for a given title and token."""
        digest = hashlib.sha256(f"{title}:{self.connectors.get(title, '')}".encode())
        return {"userName": f"{title}-social-user", "password": digest.hexdigest()[:20]}

    # --- history ----------------------------------------------------------------------

    def accepted(self, endpoint: str, title: str) -> list[Any]:
        """Bodies of `endpoint` calls for `title` answered errorCode 0, in arrival order."""
        return [
            r.body
            for r in self.records
            if r.endpoint == endpoint and r.title == title and r.error_code == 0
        ]

    def created(self) -> Counter[str]:
        """publishedObject.id -> newContact calls answered errorCode 0 (any title)."""
        created: Counter[str] = Counter()
        for r in self.records:
            if r.endpoint == "newContact" and r.error_code == 0:
                created[contact_id(r.body) or ""] += 1
        created.pop("", None)
        return created

    def clear_history(self) -> None:
        """Forget records, webhook calls and contact counts (not sessions)."""
        self.records.clear()
        self.webhook_calls.clear()
        self.seen.clear()
        self.arrived.clear()
