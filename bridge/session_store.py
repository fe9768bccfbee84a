"""The session token of each connector, kept on disk so a restarted bridge resumes it.

OSCC keeps a session until its keepalives stop, and answers 2 ALREADY_REGISTERED_ON to a
new registration meanwhile: without this, every restart (a deploy, a crash) leaves the
connector unregistered until the old session expires, and contacts wait in their queue.

The file (``<spool.dir>/session/<connector>.json``, mode 0600) holds the token and a
fingerprint of what it was issued for (OSCC URL, title, webhookURL); a token issued for
anything else is never offered. It is a bearer secret at rest: the spool directory must be
private to the bridge's user, as it already must be for the spool.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import msgspec


class _Saved(msgspec.Struct, frozen=True):
    session: str
    issued_for: str


class SessionStore:
    """Read, write and forget one connector's saved session token."""

    def __init__(self, directory: str | os.PathLike[str], connector: str, *parts: str) -> None:
        self.path = Path(directory) / "session" / f"{connector}.json"
        self._issued_for = hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def load(self) -> str | None:
        """The saved token, or None when there is none or it was issued for other settings."""
        try:
            saved = msgspec.json.decode(self.path.read_bytes(), type=_Saved)
        except (OSError, msgspec.DecodeError):
            return None
        return saved.session if saved.issued_for == self._issued_for else None

    def save(self, token: str) -> None:
        """Replace the saved token atomically; readable by the bridge's user only."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(_Saved(token, self._issued_for)))
        os.replace(tmp, self.path)

    def forget(self) -> None:
        """Delete the saved token (OSCC no longer honours it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
