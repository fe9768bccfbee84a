"""HTTPS on the webhook listener, over real TLS sockets, with certificates made here.

A whole Bridge (real RabbitMQ, simulator over HTTP) serves the webhook over TLS: an event
POSTed over HTTPS is published; plain HTTP and TLS 1.1 are refused; with a client CA, only
a client certificate from that CA gets through. Reloading (the method, and SIGHUP to a real
`oscc-bridge run` process) serves the new certificate to new connections while a request
already under way on an open connection finishes. `check-config` reads the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import signal
import socket
import ssl
import sys
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractRobustConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge import cli
from bridge.app import Bridge
from bridge.config import Config, ConfigError, parse
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Watch,
    config_toml,
    delete_topology,
    established_event,
    free_port,
    make_config,
    running_bridge,
    wait_until,
)
from tests.conftest import AMQP_URL
from tests.harness import BridgeProcess

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)

# -- a small PKI ------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """`name`.pem (certificate) and `name`.key (unencrypted PKCS#8)."""
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key


def issue(
    name: str,
    issuer: Issued | None = None,
    *,
    server: bool = False,
    client: bool = False,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
) -> Issued:
    """A certificate for `name`, signed by `issuer` (self-signed CA when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class Pki:
    dir: Path
    ca: Issued
    ca_file: Path
    other_ca: Issued
    server: Issued
    renewed: Issued  # the server's next certificate, same CA
    cert_file: Path  # where the bridge reads its certificate ...
    key_file: Path  # ... and key; tests overwrite them to rotate
    client: tuple[Path, Path]  # from `ca`
    stranger: tuple[Path, Path]  # from `other_ca`

    def install(self, issued: Issued) -> None:
        """Put `issued` where the bridge reads its certificate and key."""
        cert, key = issued.write(self.dir, "staging")
        cert.replace(self.cert_file)
        key.replace(self.key_file)

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client that trusts `ca` and presents `cert` when given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = issue("test CA"), issue("another CA")
    ca_file, _ = ca.write(directory, "ca")
    server = issue("bridge", ca, server=True)
    cert_file, key_file = server.write(directory, "server")
    return Pki(
        dir=directory,
        ca=ca,
        ca_file=ca_file,
        other_ca=other_ca,
        server=server,
        renewed=issue("bridge", ca, server=True),
        cert_file=cert_file,
        key_file=key_file,
        client=issue("oscc", ca, client=True).write(directory, "client"),
        stranger=issue("oscc", other_ca, client=True).write(directory, "stranger"),
    )


@pytest.fixture
def server_files(pki: Pki) -> Pki:
    """The server's first certificate in place (a test may rotate it)."""
    pki.install(pki.server)
    return pki


# -- a bridge with TLS ------------------------------------------------------------------------


def tls_config(prefix: str, sim_url: str, tmp_path: Path, pki: Pki, *, mtls: bool) -> Config:
    base = make_config(prefix, sim_url, tmp_path / "spool", admin_port=free_port())
    http = msgspec.structs.replace(
        base.http,
        public_url=f"https://127.0.0.1:{base.http.port}",
        tls_cert=str(pki.cert_file),
        tls_key=str(pki.key_file),
        tls_client_ca=str(_own_copy(pki.ca_file, tmp_path)) if mtls else "",
    )
    # no events from the simulator: this test's webhook calls are the only ones
    connectors = [msgspec.structs.replace(c, listen_for_events=False) for c in base.connectors]
    return msgspec.structs.replace(base, http=http, connectors=connectors)


def _own_copy(path: Path, directory: Path) -> Path:
    """A copy of the module's file for one test, which may rotate it."""
    copy = directory / f"own-{path.name}"
    copy.write_bytes(path.read_bytes())
    return copy


@dataclass
class Served:
    bridge: Bridge
    watch: Watch
    port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/webhook/fb"

    def contacts(self) -> list[str]:
        return [s.body["contactID"] for s in self.watch.keys("fb.event.")]


@contextlib.asynccontextmanager
async def tls_bridge(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection, pki: Pki, *, mtls: bool = False
) -> AsyncIterator[Served]:
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=1) as sim:
        config = tls_config(prefix, sim.url, tmp_path, pki, mtls=mtls)
        channel = await amqp.channel()
        watch = await Watch(channel, Topology(prefix), ["fb"]).start("fb.event.#")
        async with running_bridge(config) as bridge:
            yield Served(bridge, watch, bridge.ports["webhook"])


event = established_event


async def post(url: str, body: dict[str, Any], ctx: ssl.SSLContext | None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(url, json=body, ssl=ctx if ctx is not None else False) as r,
    ):
        return r.status, await r.json()


OK = {"errorCode": 0, "errorText": "NO_ERROR"}


async def test_webhook_over_https_is_published_and_plain_http_refused(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection, server_files: Pki
) -> None:
    pki = server_files
    async with tls_bridge(prefix, tmp_path, amqp, pki) as served:
        # plain HTTP to the TLS port: no answer, nothing published
        with pytest.raises(aiohttp.ClientError):
            await post(served.url.replace("https://", "http://"), event("plain"), None)
        # the admin listener stays plain HTTP
        async with aiohttp.ClientSession() as http:
            admin = served.bridge.ports["admin"]
            async with http.get(f"http://127.0.0.1:{admin}/healthz") as r:
                assert r.status == 200

        assert await post(served.url, event("over-https"), pki.client_context()) == (200, OK)
        await wait_until(lambda: served.contacts(), what="the event published")
        # the sentinel came after the plain attempt: that one published nothing
        assert served.contacts() == ["over-https"]

        # TLS 1.3 by default, 1.2 still accepted
        for version, want in ((None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
            ctx = pki.client_context()
            if version:
                ctx.maximum_version = version
            _, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=ctx)
            assert writer.get_extra_info("ssl_object").version() == want
            writer.close()
            await writer.wait_closed()


def old_protocol_client(pki: Pki) -> ssl.SSLContext:
    """A client that speaks TLS 1.1 at most (OpenSSL 3 needs security level 0 for it)."""
    ctx = pki.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def test_tls_1_1_is_refused(server_files: Pki, tmp_path: Path) -> None:
    """The bridge's own context refuses TLS 1.1, which this client can speak (a server
    that allows it answers the same client)."""
    from bridge.config import HttpConfig
    from bridge.tls import ServerTls

    pki = server_files
    cfg = HttpConfig(
        public_url="https://127.0.0.1", tls_cert=str(pki.cert_file), tls_key=str(pki.key_file)
    )
    lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lenient.minimum_version = ssl.TLSVersion.TLSv1
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    lenient.load_cert_chain(pki.cert_file, pki.key_file)

    async def handshake(server_ctx: ssl.SSLContext) -> str:
        async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=old_protocol_client(pki)
            )
            version: str = writer.get_extra_info("ssl_object").version()
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            return version
        finally:
            server.close()
            await server.wait_closed()

    assert await handshake(lenient) == "TLSv1.1"
    # asyncio aborts the refused connection, so the client may see the reset before the
    # protocol_version alert
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(ServerTls(cfg).context)


async def test_client_certificate_required_with_client_ca(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection, server_files: Pki
) -> None:
    pki = server_files
    async with tls_bridge(prefix, tmp_path, amqp, pki, mtls=True) as served:
        for name, cert in (("no-cert", None), ("other-ca", pki.stranger)):
            with pytest.raises(aiohttp.ClientError):
                await post(served.url, event(name), pki.client_context(cert))
        assert await post(served.url, event("right-cert"), pki.client_context(pki.client)) == (
            200,
            OK,
        )
        await wait_until(lambda: served.contacts(), what="the event published")
        assert served.contacts() == ["right-cert"]


# -- reload -----------------------------------------------------------------------------------


class RawConnection:
    """One keep-alive HTTPS connection, driven by hand so a request can be left half sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=ctx))

    @property
    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def send_head(self, body: bytes) -> None:
        """Request line and headers, and the first half of the body."""
        self.writer.write(
            b"POST /webhook/fb HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        await self.writer.drain()

    async def finish(self, body: bytes) -> tuple[int, Any]:
        """The rest of the body; the answer's status and JSON."""
        self.writer.write(body[len(body) // 2 :])
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        length = next(
            int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
        )
        return int(lines[0].split()[1]), json.loads(await self.reader.readexactly(length))

    async def request(self, body: bytes) -> tuple[int, Any]:
        await self.send_head(body)
        return await self.finish(body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def body_of(contact: str) -> bytes:
    return json.dumps(event(contact)).encode()


async def test_reload_serves_new_certificate_and_open_connection_finishes(
    prefix: str,
    tmp_path: Path,
    amqp: AbstractRobustConnection,
    server_files: Pki,
    captured_logs: Any,
) -> None:
    pki = server_files
    async with tls_bridge(prefix, tmp_path, amqp, pki) as served:
        ctx = pki.client_context()
        old = await RawConnection.open(served.port, ctx)
        assert old.serial == pki.server.serial
        await old.send_head(body_of("open-before"))

        # a bad key: the reload fails, one error line, the old certificate still served
        pki.install(pki.renewed)
        pki.key_file.write_bytes(pki.server.write(tmp_path, "bad")[1].read_bytes())
        assert served.bridge.reload_tls() is False
        failed = [line for line in captured_logs.getvalue().splitlines() if "tls.reload" in line]
        assert len(failed) == 1
        assert json.loads(failed[0])["event"] == "tls.reload_failed"
        assert json.loads(failed[0])["level"] == "error"
        probe = await RawConnection.open(served.port, ctx)
        assert probe.serial == pki.server.serial
        await probe.close()

        # the right files: new handshakes get the new certificate
        pki.install(pki.renewed)
        assert served.bridge.reload_tls() is True
        new = await RawConnection.open(served.port, ctx)
        assert new.serial == pki.renewed.serial
        assert await new.request(body_of("new-connection")) == (200, OK)

        # the request under way on the old connection finishes, and it stays usable
        assert await old.finish(body_of("open-before")) == (200, OK)
        assert await old.request(body_of("open-after")) == (200, OK)
        assert old.serial == pki.server.serial
        await old.close()
        await new.close()
        want = {"open-before", "new-connection", "open-after"}
        await wait_until(lambda: set(served.contacts()) == want, what="three events")
        assert len(served.contacts()) == 3


@pytest.mark.timeout(90)
async def test_sighup_to_the_process_reloads(
    prefix: str, tmp_path: Path, server_files: Pki
) -> None:
    """`oscc-bridge run` as a process: SIGHUP serves the new files, an open request
    finishes, and the process keeps running."""
    pki = server_files
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=2) as sim:
        config = tls_config(prefix, sim.url, tmp_path, pki, mtls=False)
        try:
            async with BridgeProcess(
                config_toml(config), port=config.http.admin_port, workdir=tmp_path / "proc"
            ) as proc:
                await proc.start()
                ctx = pki.client_context()
                old = await RawConnection.open(config.http.port, ctx)
                assert old.serial == pki.server.serial
                await old.send_head(body_of("open"))

                pki.install(pki.renewed)
                proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

                async def serial_now() -> int:
                    conn = await RawConnection.open(config.http.port, ctx)
                    await conn.close()
                    return conn.serial

                # the signal is handled asynchronously: poll new handshakes with a deadline
                deadline = time.monotonic() + 15
                while (serial := await serial_now()) != pki.renewed.serial:
                    assert serial == pki.server.serial
                    assert time.monotonic() < deadline, "SIGHUP did not reload within 15 s"
                    await asyncio.sleep(0.05)
                assert await old.finish(body_of("open")) == (200, OK)
                await old.close()
                assert proc.running
                assert await proc.stop() == 0
            assert "tls.reloaded" in proc.log_path.read_text()
        finally:
            await delete_topology(AMQP_URL, Topology(prefix), ["fb"])


# -- configuration ----------------------------------------------------------------------------

GOOD = f"""
[http]
port = 8443
public_url = "https://bridge.example.com"
tls_cert = "CERT"
tls_key = "KEY"
[[connectors]]
name = "fb"
title = "facebook"
token = "{FB_TOKEN}"
"""


def configured(pki: Pki, cert: Path, key: Path, **extra: str) -> str:
    text = GOOD.replace("CERT", str(cert)).replace("KEY", str(key))
    for k, v in extra.items():
        text = text.replace("[[connectors]]", f'{k} = "{v}"\n[[connectors]]')
    return text


@pytest.mark.parametrize(
    ("case", "key", "words"),
    [
        ("mismatched-key", "http.tls_key", "does not match"),
        ("expired", "http.tls_cert", "expired"),
        ("missing-file", "http.tls_cert", "cannot read"),
        ("not-pem", "http.tls_key", "no PEM private key"),
        ("bad-client-ca", "http.tls_client_ca", "no PEM certificate"),
    ],
)
def test_check_config_catches_bad_files(
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    key: str,
    words: str,
) -> None:
    cert, key_file = pki.server.write(tmp_path, "server")
    extra: dict[str, str] = {}
    if case == "mismatched-key":
        key_file = pki.renewed.write(tmp_path, "renewed")[1]
    elif case == "expired":
        expired = issue(
            "bridge", pki.ca, server=True, not_before=NOW - 60 * DAY, not_after=NOW - DAY
        )
        cert, key_file = expired.write(tmp_path, "expired")
    elif case == "missing-file":
        cert = tmp_path / "nope.pem"
    elif case == "not-pem":
        key_file.write_text("not a key\n")
    elif case == "bad-client-ca":
        (tmp_path / "ca.pem").write_text("garbage\n")
        extra["tls_client_ca"] = str(tmp_path / "ca.pem")
    code = cli.main(
        ["check-config", "--config", str(write(tmp_path, configured(pki, cert, key_file, **extra)))]
    )
    out, err = capsys.readouterr()
    assert code == 3
    assert f"{key}: " in err
    assert words in err
    assert "OK" not in out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_check_config_good_files_and_expiry_warning(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pki.server.write(tmp_path, "server")
    text = configured(pki, cert, key, tls_client_ca=str(pki.ca_file))
    assert cli.main(["check-config", "--config", str(write(tmp_path, text))]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "https client-cert" in out
    assert err == ""

    soon = issue("bridge", pki.ca, server=True, not_after=NOW + 5 * DAY)
    cert, key = soon.write(tmp_path, "soon")
    assert (
        cli.main(["check-config", "--config", str(write(tmp_path, configured(pki, cert, key)))])
        == 0
    )
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "warning: http.tls_cert: expires on" in err


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('public_url = "https://', 'public_url = "http://'), "http.public_url"),
        (('tls_key = "KEY"', ""), "http.tls_key"),
        (('tls_cert = "CERT"', ""), "http.tls_cert"),
        (
            ('tls_cert = "CERT"\ntls_key = "KEY"', 'tls_client_ca = "CA"'),
            "http.tls_client_ca",
        ),
    ],
    ids=["http-public-url", "cert-without-key", "key-without-cert", "client-ca-alone"],
)
def test_config_tls_keys_go_together(change: tuple[str, str], key: str) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as caught:
        parse(GOOD.replace(old, new), {})
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


async def test_unloadable_files_stop_the_start(
    prefix: str, tmp_path: Path, server_files: Pki
) -> None:
    """A key that does not match: the bridge does not start, ConfigError (exit 3)."""
    pki = server_files
    config = tls_config(prefix, "http://127.0.0.1:9", tmp_path, pki, mtls=False)
    http = msgspec.structs.replace(
        config.http, tls_key=str(pki.renewed.write(tmp_path, "other")[1])
    )
    with pytest.raises(ConfigError, match=r"http\.tls_cert"):
        async with running_bridge(msgspec.structs.replace(config, http=http)):
            pass


async def test_reload_replaces_the_client_ca(server_files: Pki, tmp_path: Path) -> None:
    """The client CA is part of what a reload swaps: after rotating it to another CA, that
    CA's clients get in and the old CA's do not."""
    from bridge.config import HttpConfig
    from bridge.tls import ServerTls

    pki = server_files
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_bytes(pki.ca_file.read_bytes())
    tls = ServerTls(
        HttpConfig(
            public_url="https://127.0.0.1",
            tls_cert=str(pki.cert_file),
            tls_key=str(pki.key_file),
            tls_client_ca=str(ca_file),
        )
    )

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]

    async def admitted(cert: tuple[Path, Path]) -> bool:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=pki.client_context(cert)
            )
            answer = await asyncio.wait_for(reader.read(2), 5)
        except (ssl.SSLError, ConnectionError):
            return False
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        return answer == b"ok"

    try:
        assert (await admitted(pki.client), await admitted(pki.stranger)) == (True, False)
        pki.other_ca.write(tmp_path, "other-ca")[0].replace(ca_file)
        assert tls.reload()
        assert (await admitted(pki.client), await admitted(pki.stranger)) == (False, True)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_client_of_the_old_ca_cannot_resume_its_session_after_rotation(
    prefix: str,
    tmp_path: Path,
    amqp: AbstractRobustConnection,
    server_files: Pki,
    version: ssl.TLSVersion,
) -> None:
    """Revoking a client CA by rotating `tls_client_ca` leaves its clients no way in: a
    TLS session (ticket or session id) from before the reload would skip the certificate.
    TLS 1.3 never resumes with a client CA; a TLS 1.2 session from before the change is
    cut off and dropped from the cache, so the next handshake is a full one."""
    pki = server_files
    clients = {cert: pki.client_context(cert) for cert in (pki.client, pki.stranger)}
    for client in clients.values():
        client.maximum_version = version
    body = json.dumps(event("resumed")).encode()
    request = (
        b"POST /webhook/fb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"  # the server closes cleanly: the session is kept
        + body
    )

    async with tls_bridge(prefix, tmp_path, amqp, pki, mtls=True) as served:

        def post(
            cert: tuple[Path, Path], session: ssl.SSLSession | None = None
        ) -> tuple[bytes, bool, ssl.SSLSession | None]:
            """(the status line or b"", whether the session was resumed, the session)"""
            with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
                try:
                    conn = clients[cert].wrap_socket(
                        raw, server_hostname="127.0.0.1", session=session
                    )
                except (ssl.SSLError, ConnectionError):
                    return b"", False, None
                with conn:
                    try:
                        conn.sendall(request)
                        answer = conn.recv(4096).split(b"\r\n", 1)[0]
                    except (ssl.SSLError, ConnectionError):
                        answer = b""
                    return answer, conn.session_reused, conn.session

        answer, _, session = await asyncio.to_thread(post, pki.client)
        assert answer == b"HTTP/1.1 200 OK"
        # nothing changed yet: TLS 1.2 resumes as usual, TLS 1.3 has no tickets to resume
        again = await asyncio.to_thread(post, pki.client, session)
        assert again[:2] == (b"HTTP/1.1 200 OK", version == ssl.TLSVersion.TLSv1_2)
        ca_file = Path(served.bridge.config.http.tls_client_ca)
        pki.other_ca.write(tmp_path, "other-ca")[0].replace(ca_file)
        assert served.bridge.reload_tls()
        for _ in range(2):  # cut off (1.2) or refused at the handshake; then refused again
            answer, reused, _ = await asyncio.to_thread(post, pki.client, session)
            assert answer == b""
        assert not reused  # the second try was a full handshake: the session was dropped
        assert (await asyncio.to_thread(post, pki.stranger))[0] == b"HTTP/1.1 200 OK"
        await wait_until(lambda: len(served.contacts()) == 3, what="three published")


async def test_run_exits_3_when_the_files_do_not_load(
    prefix: str, tmp_path: Path, server_files: Pki
) -> None:
    """`oscc-bridge run` with a key file that is not there: exit 3, the key named."""
    pki = server_files
    config = tls_config(prefix, "http://127.0.0.1:9", tmp_path, pki, mtls=False)
    config = msgspec.structs.replace(
        config, http=msgspec.structs.replace(config.http, tls_key=str(tmp_path / "gone.key"))
    )
    path = tmp_path / "bridge.toml"
    path.write_text(config_toml(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
    assert proc.returncode == 3, err.decode()[-2000:]
    assert "http.tls_cert/http.tls_key: cannot load" in err.decode()
