"""Sealing of the session token in the ownership lease: only the connector's own token
opens it, and anything else (tampering, another connector/OSCC/title) opens to None."""

from __future__ import annotations

import base64

import pytest

from bridge.sealing import Sealer

BASE = {"connector": "fb", "title": "Facebook", "token": "tok-123", "oscc_url": "https://o/"}


def sealer(**change: str) -> Sealer:
    return Sealer(**{**BASE, **change})


def test_round_trip_and_fresh_nonce() -> None:
    s = sealer()
    a, b = s.seal("session-abc"), s.seal("session-abc")
    assert a != b  # a random nonce per seal
    assert s.open(a) == "session-abc"
    assert sealer().open(b) == "session-abc"  # another instance with the same config
    assert "session-abc" not in a
    assert sealer(oscc_url="https://o").open(a) == "session-abc"  # trailing slash


@pytest.mark.parametrize(
    "change",
    [
        {"token": "tok-124"},
        {"connector": "twitter"},
        {"oscc_url": "https://other/"},
        {"title": "Facebook2"},
    ],
)
def test_other_key_or_binding_does_not_open(change: dict[str, str]) -> None:
    box = sealer().seal("session-abc")
    assert sealer(**change).open(box) is None


def test_tampered_box_does_not_open() -> None:
    box = bytearray(base64.urlsafe_b64decode(sealer().seal("session-abc")))
    for i in (0, 1, 13, len(box) - 1):  # version, nonce, ciphertext, tag
        bad = bytearray(box)
        bad[i] ^= 0x01
        assert sealer().open(base64.urlsafe_b64encode(bytes(bad)).decode()) is None


@pytest.mark.parametrize("junk", [None, "", "not base64 !!", "AAAA", "é", "A" * 400])
def test_junk_opens_to_none(junk: str | None) -> None:
    assert sealer().open(junk) is None


def test_repr_hides_the_key() -> None:
    assert "tok" not in repr(sealer())
