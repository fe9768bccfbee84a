"""OSCC error codes (guide §6) and what each one means to the bridge (DESIGN.md)."""

from __future__ import annotations

import enum

from bridge import errors


class ErrorCode(enum.IntEnum):
    """The guide's error codes; `.name` is the guide's errorText."""

    NO_ERROR = 0
    GENERAL_ERROR = 1
    ALREADY_REGISTERED_ON = 2
    WRONG_TITLE_OR_TOKEN_NOT_FOUND = 4
    AUTH_STATEMENT_NOT_VALID = 6
    NOT_READY = 7
    NOT_ENABLED = 8
    CONNECTOR_BLOCKED = 9
    CONNECTOR_NOT_REGISTERED = 10
    WRONG_API_REQUEST = 11
    STRING_OUT_OF_BOUND = 12
    WRONG_DATE_FORMAT = 13


class Action(enum.Enum):
    """What the bridge does when OSCC answers with a code."""

    OK = "ok"
    RETRY = "retry"  # transient: capped backoff with jitter
    REREGISTER = "reregister"  # session gone: single-flight re-registration, then retry
    WAIT_STALE = "wait_stale"  # registration only: a stale session holds the connector
    MISCONFIGURED = "misconfigured"  # registration only: state failed, retry slowly
    REJECT = "reject"  # the message itself is wrong: dead-letter, never retry


_ACTIONS: dict[int, Action] = {
    ErrorCode.NO_ERROR: Action.OK,
    ErrorCode.GENERAL_ERROR: Action.RETRY,
    ErrorCode.NOT_READY: Action.RETRY,
    ErrorCode.AUTH_STATEMENT_NOT_VALID: Action.REREGISTER,
    ErrorCode.CONNECTOR_NOT_REGISTERED: Action.REREGISTER,
    ErrorCode.ALREADY_REGISTERED_ON: Action.WAIT_STALE,
    ErrorCode.WRONG_TITLE_OR_TOKEN_NOT_FOUND: Action.MISCONFIGURED,
    ErrorCode.NOT_ENABLED: Action.MISCONFIGURED,
    ErrorCode.CONNECTOR_BLOCKED: Action.MISCONFIGURED,
    ErrorCode.WRONG_API_REQUEST: Action.REJECT,
    ErrorCode.STRING_OUT_OF_BOUND: Action.REJECT,
    ErrorCode.WRONG_DATE_FORMAT: Action.REJECT,
}

_ERRORS: dict[Action, type[errors.BridgeError]] = {
    Action.RETRY: errors.Transient,
    Action.REREGISTER: errors.SessionLost,
    Action.WAIT_STALE: errors.StaleSession,
    Action.MISCONFIGURED: errors.ConnectorRefused,
    Action.REJECT: errors.Rejected,
}


def text_of(code: int) -> str:
    """The guide's errorText for `code`, or ``UNKNOWN_<code>``."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


def action_for(code: int) -> Action:
    """What to do about `code`; an unknown code is treated as transient."""
    return _ACTIONS.get(code, Action.RETRY)


def raise_for(code: int, text: str | None = None) -> None:
    """Raise the typed error for an OSCC answer; return quietly for NO_ERROR."""
    action = action_for(code)
    if action is Action.OK:
        return
    raise _ERRORS[action](text or text_of(code), code=code)


def action_for_http(status: int) -> Action:
    """What to do about an HTTP status from OSCC that carried no usable JSON answer."""
    if status in (401, 403):
        return Action.REREGISTER
    if status in _MESSAGE_AT_FAULT:
        return Action.REJECT
    if status >= 400:
        # 404, 405, 5xx...: a wrong oscc.url or a proxy in the way is our configuration's
        # fault, not the message's; retrying (and pausing consumers) keeps every contact,
        # where dead-lettering would discard all of them until someone noticed.
        return Action.RETRY
    return Action.OK


# HTTP statuses that blame the request body itself.
_MESSAGE_AT_FAULT = frozenset({400, 413, 414, 422})
