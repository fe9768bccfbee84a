"""Every error the bridge raises, rooted at one base class.

Each class says what the bridge does about it::

    BridgeError
    ├── Transient            retry with capped exponential backoff and jitter;
    │   │                    `ambiguous`: the request may have reached OSCC (timeout
    │   │                    after sending, unreadable answer), so a resend may create
    │   │                    the contact twice: resent anyway, and counted
    │   └── BrokerUnavailable    the broker did not confirm; spool or retry
    ├── SessionLost          the OSCC session is gone: re-register (single-flight), retry
    ├── StaleSession         registration answered 2: a dead session still holds the
    │                        connector; retry after a delay until it expires
    ├── ConnectorRefused     registration answered 4, 8 or 9: OSCC-side configuration is
    │                        wrong; state `failed`, retry slowly
    ├── Rejected             the message itself is wrong (11, 12, 13, undecodable, too
    │   │                    big): never retried, dead-lettered with the code and text
    │   └── Undeliverable    OSCC failed it transiently `oscc.max_attempts` times while
    │                        it accepted others: dead-lettered with the last error
    └── Fatal                stop the process and exit non-zero
        └── ConfigError          bad configuration: exit 3, naming the key

OSCC-originated errors carry the guide's `code` and `text` (see `bridge.oscc.codes`), and
`http_status` when OSCC answered an HTTP error status instead of a JSON answer.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    code: int | None
    text: str
    http_status: int | None = None

    def __init__(self, text: str, *, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, text={self.text!r})"


class Transient(BridgeError):
    """Worth retrying later: OSCC 1/7, HTTP 5xx, timeouts, connection errors.

    `ambiguous` is True when OSCC may have acted on the request all the same: the answer
    timed out after the request was sent, or came back unreadable. OSCC offers no
    idempotency key, so the caller resends and counts the resend as a possible duplicate.
    """

    ambiguous: bool

    def __init__(self, text: str, *, code: int | None = None, ambiguous: bool = False) -> None:
        super().__init__(text, code=code)
        self.ambiguous = ambiguous


class BrokerUnavailable(Transient):
    """RabbitMQ is unreachable or did not confirm a publish in time."""


class SessionLost(BridgeError):
    """OSCC no longer knows our session (6, 10, HTTP 401/403): re-register, then retry."""


class StaleSession(BridgeError):
    """Registration answered 2 ALREADY_REGISTERED_ON: wait for the old session to expire."""


class ConnectorRefused(BridgeError):
    """Registration answered 4, 8 or 9: the connector is misconfigured on the OSCC side."""


class Rejected(BridgeError):
    """The message is wrong in itself (11, 12, 13, undecodable); dead-letter it.

    `path` names the offending field when known, e.g. ``$.source.id``.
    """

    path: str | None

    def __init__(self, text: str, *, code: int | None = None, path: str | None = None) -> None:
        super().__init__(text, code=code)
        self.path = path


class Undeliverable(Rejected):
    """OSCC kept failing this message (1, 7, 5xx, timeouts) while it accepted others: give
    up on it, dead-letter it with the last error (the text says so; OSCC did not reject
    it in so many words)."""


class Fatal(BridgeError):
    """Nothing sensible can continue: stop and exit non-zero."""


class ConfigError(Fatal):
    """The configuration is invalid; `key` names the offending key (exit code 3)."""

    key: str | None

    def __init__(self, text: str, *, key: str | None = None) -> None:
        super().__init__(text)
        self.key = key
