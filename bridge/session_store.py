"""The session token of each connector, kept on disk so a restarted bridge resumes it.

OSCC keeps a session until its keepalives stop, and answers 2 ALREADY_REGISTERED_ON to a
new registration meanwhile: without this, every restart (a deploy, a crash) leaves the
connector unregistered until the old session expires, and contacts wait in their queue.

The file (``<spool.dir>/session/<connector>.json``, mode 0600) holds the token (with the
user credentials its registration brought, for a connector that publishes them) and a
fingerprint of what it was issued for (OSCC URL, title, webhookURL); a token issued for
anything else is never offered. It is a bearer secret at rest: the spool directory must be
private to the bridge's user, as it already must be for the spool.

`Resumer` picks the token a (re)registration tries first: the one handed over with the
connector by its previous owner (ownership.py), else the saved one, if OSCC still
honours it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from bridge import errors
from bridge.config import Config, ConnectorConfig, webhook_url


class Resumable(msgspec.Struct, frozen=True, omit_defaults=True):
    """A session to resume: its token; for a connector with ``publish_credentials``, the
    user credentials that came with its registration (OSCC gives them only then, so a
    resumed session announces these); and the webhookURL it was registered with, where
    OSCC keeps calling whoever resumes it."""

    session: str
    credentials: dict[str, Any] | None = None
    webhook: str | None = None

    def encode(self) -> str:
        """The text handed over in the lease (sealed there); a bare token when there is
        nothing else to say."""
        if self.credentials is None and self.webhook is None:
            return self.session
        return msgspec.json.encode(self).decode()

    @classmethod
    def decode(cls, text: str) -> Resumable:
        """Read what `encode` wrote (a bare token stays a token)."""
        if text.startswith("{"):
            with contextlib.suppress(msgspec.DecodeError):
                return msgspec.json.decode(text, type=cls)
        return cls(text)


class _Saved(msgspec.Struct, frozen=True):
    session: str
    issued_for: str
    credentials: dict[str, Any] | None = None


_SAME_PUBLIC_URL = (
    "the previous owner registered another webhookURL: give every instance the same "
    "http.public_url; registering anew (after the old session expires)"
)


class SessionStore:
    """Read, write and forget one connector's saved session token."""

    def __init__(self, directory: str | os.PathLike[str], connector: str, *parts: str) -> None:
        self.path = Path(directory) / "session" / f"{connector}.json"
        self._issued_for = hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def load(self) -> Resumable | None:
        """The saved session, or None when there is none or it was issued for other
        settings."""
        try:
            saved = msgspec.json.decode(self.path.read_bytes(), type=_Saved)
        except (OSError, msgspec.DecodeError):
            return None
        if saved.issued_for != self._issued_for:
            return None
        return Resumable(saved.session, saved.credentials)

    def save(self, session: Resumable) -> None:
        """Replace the saved session atomically; readable by the bridge's user only."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                msgspec.json.encode(_Saved(session.session, self._issued_for, session.credentials))
            )
        os.replace(tmp, self.path)

    def forget(self) -> None:
        """Delete the saved token (OSCC no longer honours it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Resumer:
    """The session a (re)registration tries before registering anew.

    `handed`: a session handed over with the connector by its previous owner
    (`Resumable.encode`), tried before the one `store` holds; not when it was registered
    with another webhookURL than `webhook` (OSCC would go on calling that one, which may
    be gone). `credentials`: the connector publishes user credentials, so only a session
    saved with them will do. `log`: the session's logger.
    """

    @classmethod
    def for_connector(
        cls, config: Config, connector: ConnectorConfig, handed: str | None, log: Any
    ) -> Resumer:
        """The resumer of `connector`, with its store in ``spool.dir``."""
        url = webhook_url(config, connector)
        store = SessionStore(
            config.spool.dir, connector.name, config.oscc.url, connector.title, url
        )
        return cls(store, handed, log, webhook=url, credentials=connector.publish_credentials)

    def __init__(
        self,
        store: SessionStore,
        handed: str | None,
        log: Any,
        *,
        webhook: str,
        credentials: bool = False,
    ) -> None:
        self.store = store
        self._handed = Resumable.decode(handed) if handed is not None else None
        self._webhook = webhook
        self._credentials = credentials
        self._log = log
        if self._handed is not None and self._handed.webhook not in (None, webhook):
            # http.public_url differs between the instances (no URL logged: the secret)
            self._log.warning("session.handover_for_another_webhook", hint=_SAME_PUBLIC_URL)
            self._handed = None

    async def take(self, keepalive: Callable[[str], Awaitable[object]]) -> Resumable | None:
        """The handed-over session, else the saved one, if `keepalive` on it succeeds.

        A token OSCC refuses is forgotten; on a transient failure it is kept for the next
        attempt (OSCC may just be down, and the session with it may still be alive).
        """
        for handed, found in ((True, self._handed), (False, self.store.load())):
            if found is None:
                continue
            if not self._credentials:
                found = Resumable(found.session)  # not kept where they are not wanted
            elif found.credentials is None:
                continue  # resuming it could not announce the credentials
            try:
                await keepalive(found.session)
            except errors.Transient:
                return None
            except errors.BridgeError:
                if handed:
                    self._handed = None
                else:
                    self.store.forget()
                continue
            if handed:
                self._handed = None
                self.save(found)  # this instance's next restart resumes it too
            return found
        return None

    def save(self, session: Resumable) -> None:
        """Save `session` for the next restart; a failure is logged, not raised."""
        try:
            self.store.save(session)
        except OSError as exc:
            # Only the next restart is slower for it (it waits for this session to expire).
            self._log.warning("session.save_failed", path=str(self.store.path), error=str(exc))

    def forget(self) -> None:
        """Never offer the saved token again (someone saw OSCC refuse it)."""
        self.store.forget()
