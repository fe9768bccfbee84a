"""The saved session token: only offered for the settings it was issued for; the text a
session travels as in the ownership lease."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from bridge.session_store import Resumable, Resumer, SessionStore


def test_round_trip_private_and_atomic(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, "fb", "https://oscc", "facebook", "http://me/webhook/fb")
    assert store.load() is None
    store.save(Resumable("a" * 64))
    store.save(Resumable("b" * 64))
    assert store.load() == Resumable("b" * 64)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir()] == ["fb.json"]  # no temp left


def test_other_settings_never_see_the_token(tmp_path: Path) -> None:
    SessionStore(tmp_path, "fb", "https://oscc", "facebook", "http://me/a").save(
        Resumable("t" * 64)
    )
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
    store.save(Resumable("t" * 64))
    store.forget()
    assert store.load() is None
    assert not store.path.exists()


def test_credentials_are_saved_with_their_token(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, "fb", "x")
    held = Resumable("t" * 64, {"userName": "u", "password": "p"})
    store.save(held)
    assert store.load() == held
    # a file an older version wrote (no credentials) still loads
    saved = json.loads(store.path.read_text())
    del saved["credentials"]
    store.path.write_text(json.dumps({**saved, "session": "old"}))
    assert store.load() == Resumable("old")


def test_the_handover_text_round_trips_and_a_bare_token_is_a_token() -> None:
    plain = Resumable("a" * 64)
    assert plain.encode() == "a" * 64  # what an older instance hands over and resumes
    assert Resumable.decode("a" * 64) == plain
    full = Resumable("b" * 64, {"userName": "u", "password": "p"})
    assert Resumable.decode(full.encode()) == full
    assert Resumable.decode("{not json") == Resumable("{not json")


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, event: str, **_: object) -> None:
        self.warnings.append(event)


async def test_a_session_handed_over_for_another_webhook_is_not_resumed(tmp_path: Path) -> None:
    """OSCC calls the webhookURL a session was registered with: resuming one registered
    by an instance with another public_url would send OSCC's calls there (maybe nowhere)."""
    tried: list[str] = []

    async def keepalive(token: str) -> None:
        tried.append(token)

    store = SessionStore(tmp_path, "fb", "x")
    mine, theirs = "http://lb/webhook/fb", "http://old-pod:8080/webhook/fb"
    log = _Log()
    foreign = Resumable("t" * 64, webhook=theirs).encode()
    assert await Resumer(store, foreign, log, webhook=mine).take(keepalive) is None
    assert tried == []  # not even tried: a keepalive would keep it alive for the old URL
    assert log.warnings == ["session.handover_for_another_webhook"]

    same = Resumable("u" * 64, webhook=mine).encode()
    assert await Resumer(store, same, _Log(), webhook=mine).take(keepalive) == Resumable("u" * 64)
    legacy = "v" * 64  # a bare token names no webhook: tried as before
    assert await Resumer(store, legacy, _Log(), webhook=mine).take(keepalive) == Resumable("v" * 64)
    assert tried == ["u" * 64, "v" * 64]
