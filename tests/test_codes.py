"""Every OSCC error code maps to the action and typed error DESIGN.md gives it."""

from __future__ import annotations

import pytest

from bridge import errors
from bridge.oscc.codes import Action, ErrorCode, action_for, action_for_http, raise_for, text_of

# DESIGN.md, "OSCC side": code -> (action, typed error).
EXPECTED: dict[int, tuple[Action, type[errors.BridgeError]]] = {
    1: (Action.RETRY, errors.Transient),
    2: (Action.WAIT_STALE, errors.StaleSession),
    4: (Action.MISCONFIGURED, errors.ConnectorRefused),
    6: (Action.REREGISTER, errors.SessionLost),
    7: (Action.RETRY, errors.Transient),
    8: (Action.MISCONFIGURED, errors.ConnectorRefused),
    9: (Action.MISCONFIGURED, errors.ConnectorRefused),
    10: (Action.REREGISTER, errors.SessionLost),
    11: (Action.REJECT, errors.Rejected),
    12: (Action.REJECT, errors.Rejected),
    13: (Action.REJECT, errors.Rejected),
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
    assert action_for(0) is Action.OK
    assert raise_for(0) is None
    assert raise_for(0, "NO_ERROR") is None


@pytest.mark.parametrize(("code", "action", "error"), [(c, *v) for c, v in EXPECTED.items()])
def test_code_action_and_error(code: int, action: Action, error: type[errors.BridgeError]) -> None:
    assert action_for(code) is action
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
    assert action_for(code) is Action.RETRY
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
    ("status", "action"),
    [
        (401, Action.REREGISTER),
        (403, Action.REREGISTER),
        (500, Action.RETRY),
        (502, Action.RETRY),
        (503, Action.RETRY),
        (504, Action.RETRY),
        (599, Action.RETRY),
        (408, Action.RETRY),
        (429, Action.RETRY),
        (400, Action.REJECT),
        (413, Action.REJECT),
        (422, Action.REJECT),
        (404, Action.RETRY),  # a wrong oscc.url must not dead-letter every contact
        (405, Action.RETRY),
        (200, Action.OK),
        (204, Action.OK),
    ],
)
def test_http_status_action(status: int, action: Action) -> None:
    assert action_for_http(status) is action


def test_every_action_but_ok_has_an_error() -> None:
    """raise_for must be able to raise for every action a code can map to."""
    for code in [*EXPECTED, 3, 99]:
        with pytest.raises(errors.BridgeError):
            raise_for(code)
