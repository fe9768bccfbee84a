"""TLS of the webhook listener (DESIGN.md § Webhook HTTP interface).

`ServerTls` owns the listener's SSLContext and swaps in a new one on `reload` (SIGHUP).
`check_files` is what ``check-config`` says about the PEM files.

Protocol versions: TLS 1.2 and 1.3 only (1.3 preferred: OpenSSL picks the highest both
sides speak). Not 1.3-only because OSCC is a Java application, and the Java 8 runtimes
many installations still run speak at most TLS 1.2; TLS 1.2 restricted to ECDHE with AEAD
ciphers (Mozilla's "intermediate" profile) is still sound.

Reload without dropping connections: the context handed to the listener never changes;
its SNI callback (which OpenSSL calls on every ClientHello, with or without a server name)
moves each new handshake onto the newest context. A connection keeps the certificate it
was set up with, so open connections simply finish. A new context is built whole before
it is swapped in, so a reload that fails leaves the old certificate serving.

Rotating the client CA must shut out the old CA's clients, but a resumed TLS session skips
the certificate: OpenSSL keeps its session cache and ticket keys in the listener's first
context. With a client CA the listener therefore issues no tickets (so TLS 1.3 never
resumes), and `refuse_stale_sessions` aborts a request on a TLS 1.2 session resumed from
before the client CA changed; an abort also drops that session from the cache, so the
client's next handshake is a full one against the new CA.
"""

from __future__ import annotations

import datetime
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from bridge import logs
from bridge.config import HttpConfig
from bridge.errors import ConfigError

log = logs.get_logger("bridge.tls")

# TLS 1.2 suites: forward secrecy and AEAD only; TLS 1.3 suites are all of that already.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
EXPIRY_WARNING = datetime.timedelta(days=14)


def enabled(cfg: HttpConfig) -> bool:
    """Whether the webhook listener speaks HTTPS."""
    return bool(cfg.tls_cert and cfg.tls_key)


def build_context(cfg: HttpConfig) -> ssl.SSLContext:
    """A server context from the configured files; ConfigError naming the key on failure."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"http.tls_cert/http.tls_key: cannot load {cfg.tls_cert!r} with {cfg.tls_key!r}: "
            f"{_reason(exc)}",
            key="http.tls_cert",
        ) from exc
    if cfg.tls_client_ca:
        try:
            ctx.load_verify_locations(cafile=cfg.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"http.tls_client_ca: cannot load {cfg.tls_client_ca!r}: {_reason(exc)}",
                key="http.tls_client_ca",
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2 sessions in the cache only (see above)
        ctx.num_tickets = 0  # no TLS 1.3 resumption
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class ServerTls:
    """The webhook listener's TLS, reloadable while it serves.

    `context` goes to the listener once; `reload()` re-reads the files for every handshake
    from then on and returns whether it worked.
    """

    def __init__(self, cfg: HttpConfig) -> None:
        self._cfg = cfg
        self._current = build_context(cfg)
        # The outer context fixes what is set per connection before the SNI callback runs
        # (protocol versions, verify mode), so it is built the same way.
        self.context = build_context(cfg)
        self.context.sni_callback = self._select
        self._client_ca = _client_ca(cfg)
        self._client_ca_since: float | None = None  # when a reload changed it
        log.info("tls.loaded", **_describe(cfg.tls_cert), client_ca=bool(cfg.tls_client_ca))

    def _select(
        self, conn: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        conn.context = self._current

    def reload(self) -> bool:
        """Serve the files' current contents to new handshakes; on failure keep the old."""
        try:
            new = build_context(self._cfg)
        except ConfigError as exc:
            log.error("tls.reload_failed", error=str(exc))
            return False
        self._current = new
        if (ca := _client_ca(self._cfg)) != self._client_ca:
            self._client_ca, self._client_ca_since = ca, time.time()
        log.info("tls.reloaded", **_describe(self._cfg.tls_cert))
        return True

    @property
    def verifies_clients(self) -> bool:
        """Whether clients must present a certificate (``http.tls_client_ca``)."""
        return bool(self._cfg.tls_client_ca)

    def admits(self, conn: ssl.SSLObject | None) -> bool:
        """False for a TLS session resumed from before the client CA changed (its
        certificate was checked against the old one); a session's time is in whole
        seconds, so one from the second of the change counts as before."""
        since = self._client_ca_since
        if since is None or conn is None or not conn.session_reused:
            return True
        session = conn.session
        return session is not None and session.time > since


def refuse_stale_sessions(tls: ServerTls) -> Middleware:
    """Middleware for the webhook app when `tls` verifies clients (see the module)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and not tls.admits(transport.get_extra_info("ssl_object")):
            log.warning("tls.stale_session_refused", peer=request.remote)
            transport.abort()  # no close_notify: OpenSSL drops the session from its cache
            raise web.HTTPForbidden()
        return await handler(request)

    return middleware


def _client_ca(cfg: HttpConfig) -> bytes | None:
    try:
        return Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    except OSError:
        return None


def _describe(cert_file: str) -> dict[str, str]:
    """Serial and expiry of the leaf certificate, for the log line (best effort)."""
    try:
        cert = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
    except (OSError, ValueError):
        return {}
    return {"serial": f"{cert.serial_number:x}", "not_after": cert.not_valid_after_utc.isoformat()}


# -- check-config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One finding about the TLS files: an error stops the bridge, a warning does not."""

    level: Literal["error", "warning"]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def check_files(cfg: HttpConfig, *, now: datetime.datetime | None = None) -> list[Problem]:
    """What is wrong with the configured TLS files: readable, PEM, key matches the
    certificate, certificate valid now (a warning within 14 days of expiry), client CA."""
    if not enabled(cfg):
        return []
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[Problem] = []
    certs = _read_certs(cfg.tls_cert, "http.tls_cert", problems)
    key = _read_key(cfg.tls_key, problems)
    if certs:
        problems += _validity(certs[0], now)
        if key is not None and not _same_key(certs[0], key):
            problems.append(
                Problem("error", "http.tls_key", "does not match the certificate in tls_cert")
            )
    if cfg.tls_client_ca:
        _read_certs(cfg.tls_client_ca, "http.tls_client_ca", problems)
    if not any(p.level == "error" for p in problems):
        # whatever OpenSSL itself refuses (a key too weak for its security level, ...)
        try:
            build_context(cfg)
        except ConfigError as exc:
            problems.append(Problem("error", exc.key or "http.tls_cert", str(exc)))
    return problems


def _read(path: str, key: str, problems: list[Problem]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append(Problem("error", key, f"cannot read {path!r}: {exc.strerror}"))
        return None


def _read_certs(path: str, key: str, problems: list[Problem]) -> list[x509.Certificate]:
    data = _read(path, key, problems)
    if data is None:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append(Problem("error", key, f"{path!r} holds no PEM certificate"))
        return []


def _read_key(path: str, problems: list[Problem]) -> PrivateKeyTypes | None:
    data = _read(path, "http.tls_key", problems)
    if data is None:
        return None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # the bridge starts unattended: nobody could type a passphrase
        problems.append(Problem("error", "http.tls_key", f"{path!r} is encrypted"))
    except (ValueError, UnsupportedAlgorithm):
        problems.append(Problem("error", "http.tls_key", f"{path!r} holds no PEM private key"))
    return None


def _validity(cert: x509.Certificate, now: datetime.datetime) -> list[Problem]:
    not_after, not_before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if not_after <= now:
        return [Problem("error", "http.tls_cert", f"expired on {not_after.isoformat()}")]
    if not_before > now:
        return [Problem("error", "http.tls_cert", f"not valid before {not_before.isoformat()}")]
    if not_after - now <= EXPIRY_WARNING:
        return [Problem("warning", "http.tls_cert", f"expires on {not_after.isoformat()}")]
    return []


def _same_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
