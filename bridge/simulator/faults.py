"""Fault injection for the simulated OSCC: what goes wrong, and when.

Every knob is a plain attribute or method, settable from tests (``sim.faults``) and from
other processes (``POST /admin/faults``). The 5xx draw uses its own seeded RNG, so a given
seed and call sequence always fails the same calls.
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
class _Scripted:
    code: int
    times: int


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
    - `error_text`: the errorText of those scripted answers instead of the code's name
      (a real OSCC says more, and may quote what it was sent, tokens included).
    - `drop_sessions()`: forget every session; old tokens answer 10.
    """

    state: State = field(repr=False)
    seed: int = 0
    error_5xx_rate: float = 0.0
    latency: float = 0.0
    refuse_registration: int | None = None
    refuse_registration_for: dict[str, int] = field(default_factory=dict)
    error_text: str | None = None
    _not_ready_until: float = 0.0
    _scripted: dict[str, _Scripted] = field(default_factory=dict)
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

    def fail_next(self, endpoint: str, code: int, times: int = 1) -> None:
        """Answer the next `times` calls to `endpoint` (``"*"``: any) with errorCode `code`."""
        if endpoint != "*" and endpoint not in REST_ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        if times > 0:
            self._scripted[endpoint] = _Scripted(int(code), times)
        else:
            self._scripted.pop(endpoint, None)

    def clear(self) -> None:
        """Back to a healthy OSCC (sessions are left alone)."""
        self.error_5xx_rate = 0.0
        self.latency = 0.0
        self.refuse_registration = None
        self.refuse_registration_for.clear()
        self._not_ready_until = 0.0
        self._scripted.clear()
        self.error_text = None

    # --- decisions, used by the REST side ---------------------------------------------

    def draw_5xx(self) -> bool:
        """True when this call should answer HTTP 503."""
        return self.error_5xx_rate > 0 and self._rng.random() < self.error_5xx_rate

    def scripted(self, endpoint: str) -> int | None:
        """The scripted code for this call to `endpoint`, consuming one use, or None."""
        for key in (endpoint, "*"):
            entry = self._scripted.get(key)
            if entry is not None:
                entry.times -= 1
                if entry.times <= 0:
                    del self._scripted[key]
                return entry.code
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
            "fail_next": {k: {"code": v.code, "times": v.times} for k, v in self._scripted.items()},
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
                case "drop_sessions":
                    if value:
                        self.drop_sessions()
                case "fail_next":
                    self.fail_next(value["endpoint"], value["code"], value["times"])
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


def _check(key: str, value: Any) -> Any:
    match key:
        case "not_ready" | "latency":
            return _number(key, value, 0.0)
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
        case "drop_sessions":
            if not isinstance(value, bool):
                raise ValueError(f"{key}: expected true or false")
            return value
        case "fail_next":
            if not isinstance(value, dict) or "code" not in value:
                raise ValueError(f"{key}: expected {{endpoint, code, times}}")
            endpoint = value.get("endpoint", "*")
            if endpoint != "*" and endpoint not in REST_ENDPOINTS:
                raise ValueError(f"{key}.endpoint: unknown endpoint {endpoint!r}")
            code = int(_number(f"{key}.code", value["code"], 0, 99))
            times = int(_number(f"{key}.times", value.get("times", 1), 0))
            return {"endpoint": endpoint, "code": code, "times": times}
    raise ValueError(f"unknown fault {key!r}")
