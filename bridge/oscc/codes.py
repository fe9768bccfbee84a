"""OSCC error codes (guide §6) and the error each one raises (DESIGN.md); what the bridge
does about each error is `bridge.errors`'."""

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


# What each code means, as the error the bridge raises for it; each error class says what
# the bridge does about it (bridge.errors). NO_ERROR raises nothing.
_ERRORS: dict[int, type[errors.BridgeError]] = {
    ErrorCode.GENERAL_ERROR: errors.Transient,
    ErrorCode.NOT_READY: errors.Transient,
    ErrorCode.AUTH_STATEMENT_NOT_VALID: errors.SessionLost,
    ErrorCode.CONNECTOR_NOT_REGISTERED: errors.SessionLost,
    ErrorCode.ALREADY_REGISTERED_ON: errors.StaleSession,  # registration only
    ErrorCode.WRONG_TITLE_OR_TOKEN_NOT_FOUND: errors.ConnectorRefused,  # registration only
    ErrorCode.NOT_ENABLED: errors.ConnectorRefused,
    ErrorCode.CONNECTOR_BLOCKED: errors.ConnectorRefused,
    ErrorCode.WRONG_API_REQUEST: errors.Rejected,
    ErrorCode.STRING_OUT_OF_BOUND: errors.Rejected,
    ErrorCode.WRONG_DATE_FORMAT: errors.Rejected,
}


def text_of(code: int) -> str:
    """The guide's errorText for `code`, or ``UNKNOWN_<code>``."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


def error_for(code: int) -> type[errors.BridgeError] | None:
    """The error `code` means; None for NO_ERROR; an unknown code is transient."""
    if code == ErrorCode.NO_ERROR:
        return None
    return _ERRORS.get(code, errors.Transient)


def raise_for(code: int, text: str | None = None) -> None:
    """Raise the typed error for an OSCC answer; return quietly for NO_ERROR."""
    error = error_for(code)
    if error is not None:
        raise error(text or text_of(code), code=code)


def error_for_http(status: int) -> type[errors.BridgeError] | None:
    """The error an HTTP status from OSCC means when it carried no usable JSON answer;
    None for a success."""
    if status in (401, 403):
        return errors.SessionLost
    if status in _MESSAGE_AT_FAULT:
        return errors.Rejected
    if status >= 400:
        # 404, 405, 5xx...: a wrong oscc.url or a proxy in the way is our configuration's
        # fault, not the message's; retrying (and pausing consumers) keeps every contact,
        # where dead-lettering would discard all of them until someone noticed.
        return errors.Transient
    return None


# HTTP statuses that blame the request body itself.
_MESSAGE_AT_FAULT = frozenset({400, 413, 414, 422})
