"""Sealing of the OSCC session token that travels with a connector's ownership lease.

The lease sits in a RabbitMQ queue that other broker clients may be allowed to read, so
the token in it is sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the
connector's token, which only bridge instances configured for that connector hold. The
associated data binds the sealed token to the connector name, the OSCC URL and the
connector title, so a lease copied to another connector or another OSCC does not open::

    seal = Sealer(connector="facebook", title="FB", token="...", oscc_url="https://...")
    box = seal.seal("session-token")      # ASCII text, safe in JSON
    seal.open(box)                         # "session-token"; None if tampered/foreign

`open` never raises on bad input: a lease that does not open means "register as usual".
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"  # first byte of every box, so the format can change later
_NONCE_BYTES = 12
_INFO = b"oscc-bridge lease session v1"
_SALT = b"oscc-bridge/sealing"


class Sealer:
    """Seals and opens session tokens for one connector (see the module docstring)."""

    __slots__ = ("_aad", "_aead")

    def __init__(self, *, connector: str, title: str, token: str, oscc_url: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
            token.encode()
        )
        self._aead = AESGCM(key)
        # NUL-separated: none of the parts may contain NUL, so the split is unambiguous
        self._aad = b"\x00".join(
            part.encode() for part in ("oscc-bridge", connector, oscc_url.rstrip("/"), title)
        )

    def __repr__(self) -> str:
        return "Sealer(***)"

    def seal(self, secret: str) -> str:
        """`secret` encrypted and authenticated, as URL-safe base64 text."""
        nonce = os.urandom(_NONCE_BYTES)
        box = _VERSION + nonce + self._aead.encrypt(nonce, secret.encode(), self._aad)
        return base64.urlsafe_b64encode(box).decode("ascii")

    def open(self, sealed: str | None) -> str | None:
        """The secret in `sealed`; None when it is absent, malformed, tampered with, or
        sealed for another connector, OSCC or token."""
        if not sealed:
            return None
        try:
            box = base64.urlsafe_b64decode(sealed.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None
        if len(box) < 1 + _NONCE_BYTES + 16 or box[:1] != _VERSION:
            return None
        nonce, ciphertext = box[1 : 1 + _NONCE_BYTES], box[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, self._aad).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None


__all__ = ["Sealer"]
