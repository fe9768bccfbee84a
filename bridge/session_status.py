"""What ``/status`` says about one connector's session besides its state: since when,
the last keepalive, counts, whether events are on, and the last error (never the token).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from bridge import errors


def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC timestamp in milliseconds (None stays None)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


class SessionRecord:
    """The facts the session supervisor keeps for ``/status``."""

    def __init__(self) -> None:
        self.since = time.time()  # when the current state began
        self.last_keepalive: float | None = None
        self.registrations = 0
        self.keepalive_failures = 0
        self.events_enabled: bool | None = None  # None: not asked (yet)
        self.last_error: errors.BridgeError | None = None
        self.last_error_at: float | None = None

    def note(self, error: errors.BridgeError) -> None:
        """Remember `error` as the last one, with the time."""
        self.last_error = error
        self.last_error_at = time.time()

    def status(self) -> dict[str, Any]:
        """The JSON-able part of ``/status`` these facts make."""
        err = self.last_error
        return {
            "since": iso(self.since),
            "last_keepalive": iso(self.last_keepalive),
            "registrations": self.registrations,
            "keepalive_failures": self.keepalive_failures,
            "listen_for_events": self.events_enabled,
            "last_error_code": err.code if err else None,
            "last_error_text": err.text if err else None,
            "last_error_at": iso(self.last_error_at),
        }
