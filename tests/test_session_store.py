"""The saved session token: only offered for the settings it was issued for."""

from __future__ import annotations

import stat
from pathlib import Path

from bridge.session_store import SessionStore


def test_round_trip_private_and_atomic(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, "fb", "https://oscc", "facebook", "http://me/webhook/fb")
    assert store.load() is None
    store.save("a" * 64)
    store.save("b" * 64)
    assert store.load() == "b" * 64
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir()] == ["fb.json"]  # no temp left


def test_other_settings_never_see_the_token(tmp_path: Path) -> None:
    SessionStore(tmp_path, "fb", "https://oscc", "facebook", "http://me/a").save("t" * 64)
    for parts in (
        ("https://other", "facebook", "http://me/a"),
        ("https://oscc", "twitter", "http://me/a"),
        ("https://oscc", "facebook", "http://me/b"),
    ):
        assert SessionStore(tmp_path, "fb", *parts).load() is None
    assert SessionStore(tmp_path, "email", "https://oscc", "facebook", "http://me/a").load() is None


def test_damaged_or_missing_files_are_no_token(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, "fb", "x")
    store.forget()  # nothing to forget: fine
    store.path.parent.mkdir(parents=True)
    for junk in (b"", b"not json", b'{"session": 1}', b"[]"):
        store.path.write_bytes(junk)
        assert store.load() is None
    store.save("t" * 64)
    store.forget()
    assert store.load() is None
    assert not store.path.exists()
