"""Fault injection for the simulated OSCC: what goes wrong, and when.

Every knob is a plain attribute or method, settable from tests (``sim.faults``) and from
other processes (``POST /admin/faults``). The 5xx draw uses its own seeded RNG, so a given
seed and call sequence always fails the same calls.

Besides wrong answers, the simulator can be as awkward on the wire as a Java servlet
container: answers written in pieces (chunked, with pauses, split mid-token), answers
that come after the work is done but too late, HTML error pages, redirects. A `Rule`
says how one call misbehaves; rules are scripted per endpoint (`fail_next`) or per
contact (`fail_contact`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.oscc.codes import ErrorCode
from bridge.simulator.state import State

REST_ENDPOINTS = (
    "registerConnector",
    "newContact",
    "keepalive",
    "streamResponse",
    "listenForEvents",
)
REFUSAL_CODES = (
    ErrorCode.WRONG_TITLE_OR_TOKEN_NOT_FOUND,
    ErrorCode.NOT_ENABLED,
    ErrorCode.CONNECTOR_BLOCKED,
)


@dataclass
class Rule:
    """How one call misbehaves; at most one of `code` and `http`, `slow` with either.

    - `code`: answer this errorCode (HTTP 200, JSON) instead of running the command.
    - `http`: answer this HTTP status instead: 3xx a redirect to `location`, anything
      else a Tomcat-like HTML error page. The command does not run.
    - `slow`: run the command (a contact is created), then answer `slow` seconds later,
      like a server that finishes the work after the client stopped waiting.
    - `times`: uses left; None: every time.
    """

    code: int | None = None
    http: int | None = None
    slow: float = 0.0
    location: str = "https://oscc-moved.invalid/openmedia/webapi/main/"
    times: int | None = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form: only what is set, and `times`."""
        out: dict[str, Any] = {}
        if self.code is not None:
            out["code"] = self.code
        if self.http is not None:
            out["http"] = self.http
            if 300 <= self.http < 400:
                out["location"] = self.location
        if self.slow:
            out["slow"] = self.slow
        return out | {"times": self.times}

    def use(self) -> bool:
        """Consume one use; True when none is left."""
        if self.times is None:
            return False
        self.times -= 1
        return self.times <= 0


@dataclass
class Faults:
    """What the simulated OSCC does wrong.

    - `not_ready(seconds)`: every REST call (registration too) answers 7 NOT_READY.
    - `error_5xx_rate`: that fraction of REST calls answers HTTP 503 with a non-JSON body.
    - `latency`: seconds added before every REST answer.
    - `refuse_registration`: 4, 8 or 9 answers every registration with that code;
      `refuse_registration_for[title]` does the same for one connector.
    - `fail_next(endpoint, code, times)`: the next `times` calls to `endpoint` answer
      `code` (any code: 1 GENERAL_ERROR and 6 AUTH_STATEMENT_NOT_VALID come only from here).
    - `fail_next(endpoint, http=503 | 302, slow=s)`: the same with an HTTP error page,
      a redirect, or a late answer (see `Rule`).
    - `fail_contact(id, code=..., http=..., slow=..., times=None)`: the same for every
      newContact whose publishedObject.id is `id` (`times` None: always).
    - `answer_pieces`, `piece_gap`: every answer is written chunked in that many pieces
      (split at even offsets, so mid-token), `piece_gap` seconds apart; 1 is one write
      with a Content-Length, as before.
    - `error_text`: the errorText of those scripted answers instead of the code's name
      (a real OSCC says more, and may quote what it was sent, tokens included).
    - `drop_sessions()`: forget every session; old tokens answer 10.
    - `strict_sessions` (on `State`): only keepalive keeps a session alive.
    """

    state: State = field(repr=False)
    seed: int = 0
    error_5xx_rate: float = 0.0
    latency: float = 0.0
    refuse_registration: int | None = None
    refuse_registration_for: dict[str, int] = field(default_factory=dict)
    answer_pieces: int = 1
    piece_gap: float = 0.0
    error_text: str | None = None
    _not_ready_until: float = 0.0
    _scripted: dict[str, Rule] = field(default_factory=dict)
    _contacts: dict[str, Rule] = field(default_factory=dict)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"5xx:{self.seed}")

    # --- windows and one-shots ------------------------------------------------------

    def not_ready(self, seconds: float) -> None:
        """Answer 7 NOT_READY to every REST call for `seconds` from now (0 ends it)."""
        self._not_ready_until = time.monotonic() + max(0.0, seconds)

    @property
    def not_ready_remaining(self) -> float:
        """Seconds left in the NOT_READY window (0 when none)."""
        return max(0.0, self._not_ready_until - time.monotonic())

    def drop_sessions(self) -> int:
        """Forget every session; return how many there were."""
        return self.state.drop_sessions()

    def fail_next(
        self,
        endpoint: str,
        code: int | None = None,
        times: int = 1,
        *,
        http: int | None = None,
        slow: float = 0.0,
        location: str | None = None,
    ) -> None:
        """Answer the next `times` calls to `endpoint` (``"*"``: any) with errorCode
        `code`, or HTTP status `http`, or late by `slow` seconds (see `Rule`)."""
        if endpoint != "*" and endpoint not in REST_ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        rule = _rule(code, http, slow, times, location) if times > 0 else None
        self._set(self._scripted, endpoint, rule)

    def fail_contact(
        self,
        contact_id: str,
        code: int | None = None,
        times: int | None = None,
        *,
        http: int | None = None,
        slow: float = 0.0,
        location: str | None = None,
    ) -> None:
        """Misbehave on newContact calls for publishedObject.id `contact_id`: `times` of
        them (None: every one; 0 removes the rule). See `Rule`."""
        removed = times is not None and times <= 0
        rule = None if removed else _rule(code, http, slow, times, location)
        self._set(self._contacts, contact_id, rule)

    def clear(self) -> None:
        """Back to a healthy OSCC (sessions are left alone)."""
        self.error_5xx_rate = 0.0
        self.latency = 0.0
        self.refuse_registration = None
        self.refuse_registration_for.clear()
        self.answer_pieces = 1
        self.piece_gap = 0.0
        self._not_ready_until = 0.0
        self._scripted.clear()
        self._contacts.clear()
        self.error_text = None

    # --- decisions, used by the REST side ---------------------------------------------

    @staticmethod
    def _set(rules: dict[str, Rule], key: str, rule: Rule | None) -> None:
        if rule is None:
            rules.pop(key, None)
        else:
            rules[key] = rule

    def draw_5xx(self) -> bool:
        """True when this call should answer HTTP 503."""
        return self.error_5xx_rate > 0 and self._rng.random() < self.error_5xx_rate

    def scripted(self, endpoint: str, contact_id: str | None = None) -> Rule | None:
        """The rule for this call, consuming one use, or None: the contact's rule
        first, then the endpoint's, then the one for any endpoint."""
        candidates: list[tuple[dict[str, Rule], str]] = []
        if contact_id is not None and endpoint == "newContact":
            candidates.append((self._contacts, contact_id))
        candidates += [(self._scripted, endpoint), (self._scripted, "*")]
        for rules, key in candidates:
            rule = rules.get(key)
            if rule is not None:
                if rule.use():
                    del rules[key]
                return rule
        return None

    def refusal(self, title: str) -> int | None:
        """The code a registration for `title` is refused with, or None."""
        return self.refuse_registration_for.get(title, self.refuse_registration)

    # --- admin API ------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view of every fault (GET /admin/faults)."""
        return {
            "not_ready": round(self.not_ready_remaining, 3),
            "error_5xx_rate": self.error_5xx_rate,
            "latency": self.latency,
            "refuse_registration": self.refuse_registration,
            "refuse_registration_for": dict(self.refuse_registration_for),
            "session_ttl": self.state.session_ttl,
            "strict_sessions": self.state.strict_sessions,
            "answer_pieces": self.answer_pieces,
            "piece_gap": self.piece_gap,
            "fail_next": {k: v.as_dict() for k, v in self._scripted.items()},
            "fail_contact": {k: v.as_dict() for k, v in self._contacts.items()},
        }

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a POST /admin/faults body; ValueError names the first bad field.

        Validates everything before changing anything, so a bad request changes nothing.
        """
        apply: list[tuple[str, Any]] = []
        for key, value in changes.items():
            apply.append((key, _check(key, value)))
        for key, value in apply:
            match key:
                case "not_ready":
                    self.not_ready(value)
                case "session_ttl":
                    self.state.session_ttl = value
                case "strict_sessions":
                    self.state.strict_sessions = value
                case "drop_sessions":
                    if value:
                        self.drop_sessions()
                case "fail_next":
                    self._set(self._scripted, *value)
                case "fail_contact":
                    self._set(self._contacts, *value)
                case "refuse_registration_for":
                    self.refuse_registration_for = value
                case _:
                    setattr(self, key, value)


def _number(key: str, value: Any, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{key}: {value!r} is out of range")
    return float(value)


def _refusal(key: str, value: Any) -> int | None:
    if value is None or value == 0:
        return None
    if value not in REFUSAL_CODES or isinstance(value, bool):
        raise ValueError(f"{key}: expected 4, 8, 9 or null, got {value!r}")
    return int(value)


def _rule(
    code: int | None,
    http: int | None,
    slow: float,
    times: int | None,
    location: str | None = None,
) -> Rule:
    if code is not None and http is not None:
        raise ValueError("a rule takes code or http, not both")
    if code is None and http is None and not slow:
        raise ValueError("a rule needs exactly one of code and http, or slow")
    if http is not None and not 300 <= http <= 599:
        raise ValueError(f"http: expected a 3xx, 4xx or 5xx status, got {http!r}")
    rule = Rule(code=code, http=http, slow=max(0.0, slow), times=times)
    if location:
        rule.location = location
    return rule


def _rule_of(key: str, value: dict[str, Any], times: int | None) -> Rule | None:
    """The Rule a fail_next / fail_contact body describes (ValueError names the field);
    None when `times` is 0 (the rule is removed)."""
    if times == 0:
        return None
    code, http, slow = value.get("code"), value.get("http"), value.get("slow", 0.0)
    code = None if code is None else int(_number(f"{key}.code", code, 0, 99))
    http = None if http is None else int(_number(f"{key}.http", http, 300, 599))
    location = value.get("location")
    if location is not None and (not isinstance(location, str) or not location):
        raise ValueError(f"{key}.location: expected a URL")
    try:
        return _rule(code, http, _number(f"{key}.slow", slow, 0.0), times, location)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _times(key: str, value: dict[str, Any], default: int | None) -> int | None:
    times = value.get("times", default)
    return None if times is None else int(_number(f"{key}.times", times, 0))


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false")
    return value


def _scripted_rule(key: str, value: Any) -> tuple[str, Rule | None]:
    """(endpoint or contact id, rule) of a fail_next / fail_contact body."""
    if key == "fail_contact":
        if not isinstance(value, dict) or not isinstance(value.get("id"), str):
            raise ValueError(f"{key}: expected {{id, code | http | slow, times}}")
        return value["id"], _rule_of(key, value, _times(key, value, None))
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected {{endpoint, code | http | slow, times}}")
    endpoint = value.get("endpoint", "*")
    if endpoint != "*" and endpoint not in REST_ENDPOINTS:
        raise ValueError(f"{key}.endpoint: unknown endpoint {endpoint!r}")
    return endpoint, _rule_of(key, value, _times(key, value, 1))


def _check(key: str, value: Any) -> Any:
    match key:
        case "not_ready" | "latency" | "piece_gap":
            return _number(key, value, 0.0)
        case "answer_pieces":
            return int(_number(key, value, 1, 10_000))
        case "strict_sessions" | "drop_sessions":
            return _flag(key, value)
        case "session_ttl":
            return _number(key, value, 0.001)
        case "error_5xx_rate":
            return _number(key, value, 0.0, 1.0)
        case "refuse_registration":
            return _refusal(key, value)
        case "refuse_registration_for":
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected an object title -> code")
            checked = {str(t): _refusal(f"{key}.{t}", c) for t, c in value.items()}
            return {t: c for t, c in checked.items() if c is not None}
        case "fail_next" | "fail_contact":
            return _scripted_rule(key, value)
    raise ValueError(f"unknown fault {key!r}")
