"""Every OSCC error code maps to the typed error DESIGN.md gives it."""

from __future__ import annotations

import pytest

from bridge import errors
from bridge.oscc.codes import ErrorCode, error_for, error_for_http, raise_for, text_of

# DESIGN.md, "OSCC side": code -> typed error (which says what the bridge does).
EXPECTED: dict[int, type[errors.BridgeError]] = {
    1: errors.Transient,
    2: errors.StaleSession,
    4: errors.ConnectorRefused,
    6: errors.SessionLost,
    7: errors.Transient,
    8: errors.ConnectorRefused,
    9: errors.ConnectorRefused,
    10: errors.SessionLost,
    11: errors.Rejected,
    12: errors.Rejected,
    13: errors.Rejected,
}

# Typed errors that must NOT be caught by a handler for another family: a Rejected message
# must never look transient (it would be retried forever), nor a lost session rejected.
FAMILIES = (
    errors.Transient,
    errors.SessionLost,
    errors.StaleSession,
    errors.ConnectorRefused,
    errors.Rejected,
    errors.Fatal,
)


def test_guide_codes_and_texts() -> None:
    """The enum is exactly the guide's §6 table."""
    assert {c.value: c.name for c in ErrorCode} == {
        0: "NO_ERROR",
        1: "GENERAL_ERROR",
        2: "ALREADY_REGISTERED_ON",
        4: "WRONG_TITLE_OR_TOKEN_NOT_FOUND",
        6: "AUTH_STATEMENT_NOT_VALID",
        7: "NOT_READY",
        8: "NOT_ENABLED",
        9: "CONNECTOR_BLOCKED",
        10: "CONNECTOR_NOT_REGISTERED",
        11: "WRONG_API_REQUEST",
        12: "STRING_OUT_OF_BOUND",
        13: "WRONG_DATE_FORMAT",
    }
    assert set(EXPECTED) | {0} == {c.value for c in ErrorCode}


def test_no_error_is_ok_and_raises_nothing() -> None:
    assert error_for(0) is None
    assert raise_for(0) is None
    assert raise_for(0, "NO_ERROR") is None


@pytest.mark.parametrize(("code", "error"), EXPECTED.items())
def test_code_and_error(code: int, error: type[errors.BridgeError]) -> None:
    assert error_for(code) is error
    with pytest.raises(error) as caught:
        raise_for(code, f"text of {code}")
    assert type(caught.value) is error, "a subclass would change how callers dispatch"
    assert caught.value.code == code
    assert caught.value.text == f"text of {code}"
    for family in FAMILIES:
        if not issubclass(error, family):
            assert not isinstance(caught.value, family)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_missing_text_falls_back_to_the_guide_name(code: int) -> None:
    with pytest.raises(errors.BridgeError) as caught:
        raise_for(code)
    assert caught.value.text == ErrorCode(code).name == text_of(code)


@pytest.mark.parametrize("code", [3, 5, 14, 99, -1, 500])
def test_unknown_code_is_transient(code: int) -> None:
    assert error_for(code) is errors.Transient
    assert text_of(code) == f"UNKNOWN_{code}"
    with pytest.raises(errors.Transient) as caught:
        raise_for(code)
    assert caught.value.code == code
    assert caught.value.text == f"UNKNOWN_{code}"


def test_rejected_carries_no_path_from_an_oscc_answer() -> None:
    """OSCC's answer names no field; the path is only known for the bridge's own checks."""
    with pytest.raises(errors.Rejected) as caught:
        raise_for(12)
    assert caught.value.path is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, errors.SessionLost),
        (403, errors.SessionLost),
        (500, errors.Transient),
        (502, errors.Transient),
        (503, errors.Transient),
        (504, errors.Transient),
        (599, errors.Transient),
        (408, errors.Transient),
        (429, errors.Transient),
        (400, errors.Rejected),
        (413, errors.Rejected),
        (422, errors.Rejected),
        (404, errors.Transient),  # a wrong oscc.url must not dead-letter every contact
        (405, errors.Transient),
        (200, None),
        (204, None),
    ],
)
def test_http_status_error(status: int, error: type[errors.BridgeError] | None) -> None:
    assert error_for_http(status) is error


def test_every_code_but_no_error_raises() -> None:
    """raise_for raises for every code but 0, known or not."""
    for code in [*EXPECTED, 3, 99]:
        with pytest.raises(errors.BridgeError):
            raise_for(code)
