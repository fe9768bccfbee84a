"""OsccClient: wire format, answer mapping, timeouts, TLS.

The simulator answers the guide's error codes, and answers the way a servlet container
does (in pieces, late, HTML error pages, redirects); what it cannot do (HTTP 401, an answer
cut mid-body, an endless one, a self-signed certificate) comes from a small aiohttp or raw
TCP server in this file, on a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge import errors, logs
from bridge.config import OsccConfig
from bridge.metrics import Metrics
from bridge.oscc import client as oscc_client
from bridge.oscc.client import OsccClient
from bridge.oscc.codes import ErrorCode
from bridge.simulator import Simulator

TITLE, TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
WEBHOOK = "http://127.0.0.1:1/webhook/facebook"


def requests(metrics: Metrics, endpoint: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "oscc_bridge_oscc_requests_total",
        {"connector": "fb", "endpoint": endpoint, "code": code},
    )
    return value or 0.0


# -- a stub OSCC for what the guide does not cover ---------------------------------------


@dataclass
class Stub:
    """Answers every POST with `reply` (status, body bytes, delay) and records requests."""

    url: str = ""
    reply: tuple[int, bytes, float] = (200, b'{"errorCode": 0, "errorText": "NO_ERROR"}', 0.0)
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers), await request.read()))
        status, body, delay = self.reply
        if delay:
            await asyncio.sleep(delay)  # a slow OSCC: the delay is what is under test
        headers = {"Location": "https://elsewhere.example/"} if 300 <= status < 400 else {}
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )


async def _serve(stub: Stub, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/{tail:.*}", stub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    stub.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    s = Stub()
    runner = await _serve(s)
    try:
        yield s
    finally:
        await runner.cleanup()


def _client(url: str, metrics: Metrics, **oscc: Any) -> OsccClient:
    return OsccClient(
        OsccConfig(url=url, request_timeout=oscc.pop("request_timeout", 2.0), **oscc),
        connector="fb",
        metrics=metrics,
    )


# -- wire format ---------------------------------------------------------------------------


async def test_headers_paths_and_bodies(stub: Stub) -> None:
    metrics = Metrics()
    stub.reply = (200, b'{"type": "Registration", "errorCode": 0, "sessionToken": "s3ss10n"}', 0)
    async with _client(stub.url, metrics, listen_for_events_path="/custom/lfe") as client:
        reg = await client.register(TITLE, TOKEN, WEBHOOK)
        assert reg.session_token == "s3ss10n"
        stub.reply = (200, b'{"type": "keepAlive", "errorCode": 0, "errorText": "NO_ERROR"}', 0)
        await client.keepalive("s3ss10n")
        await client.listen_for_events("s3ss10n", enabled=False)
        await client.new_contact("s3ss10n", b'{"type":"Post"}')
        await client.stream_response("s3ss10n", b'{"type":"Stream"}')
    paths = [p for p, _, _ in stub.seen]
    base = "/openmedia/webapi/main/"
    assert paths == [
        base + "registerConnector",
        base + "keepalive",
        "/custom/lfe",
        base + "newContact",
        base + "streamResponse",
    ]
    for path, headers, _ in stub.seen:
        assert headers["Content-Type"] == "application/json"
        if path.endswith("registerConnector"):
            assert "Authorization" not in headers
        else:
            assert headers["Authorization"] == "s3ss10n"  # bare, no scheme
    bodies = [json.loads(b) for _, _, b in stub.seen]
    assert bodies[0] == {
        "type": "Registration",
        "webhookURL": WEBHOOK,
        "openMedia": {"openMediaTitle": TITLE, "token": TOKEN},
    }
    assert bodies[1] == {}
    assert bodies[2] == {"enabledListenForEvent": False}
    assert bodies[3] == {"type": "Post"}
    assert requests(metrics, "keepalive", "0") == 1
    assert requests(metrics, "registerConnector", "0") == 1


async def test_registration_without_session_token_is_transient(stub: Stub) -> None:
    stub.reply = (200, b'{"type": "Registration", "errorCode": 0}', 0)
    async with _client(stub.url, Metrics()) as client:
        with pytest.raises(errors.Transient, match="sessionToken"):
            await client.register(TITLE, TOKEN, WEBHOOK)


# -- answers -> typed errors -----------------------------------------------------------------

_EXPECTED: dict[int, type[errors.BridgeError]] = {
    ErrorCode.GENERAL_ERROR: errors.Transient,
    ErrorCode.ALREADY_REGISTERED_ON: errors.StaleSession,
    ErrorCode.WRONG_TITLE_OR_TOKEN_NOT_FOUND: errors.ConnectorRefused,
    ErrorCode.AUTH_STATEMENT_NOT_VALID: errors.SessionLost,
    ErrorCode.NOT_READY: errors.Transient,
    ErrorCode.NOT_ENABLED: errors.ConnectorRefused,
    ErrorCode.CONNECTOR_BLOCKED: errors.ConnectorRefused,
    ErrorCode.CONNECTOR_NOT_REGISTERED: errors.SessionLost,
    ErrorCode.WRONG_API_REQUEST: errors.Rejected,
    ErrorCode.STRING_OUT_OF_BOUND: errors.Rejected,
    ErrorCode.WRONG_DATE_FORMAT: errors.Rejected,
}


@pytest.mark.parametrize("code", sorted(_EXPECTED))
async def test_error_codes_become_typed_errors(stub: Stub, code: int) -> None:
    metrics = Metrics()
    text = ErrorCode(code).name
    stub.reply = (
        200,
        json.dumps({"type": "Post", "errorCode": code, "errorText": text}).encode(),
        0,
    )
    async with _client(stub.url, metrics) as client:
        with pytest.raises(_EXPECTED[code]) as info:
            await client.new_contact("tok1234", b"{}")
    assert type(info.value) is _EXPECTED[code]
    assert info.value.code == code
    assert text in info.value.text
    assert requests(metrics, "newContact", str(code)) == 1


@pytest.mark.parametrize(
    ("status", "body", "expected", "label"),
    [
        (401, b"", errors.SessionLost, "http_401"),
        (403, b"forbidden", errors.SessionLost, "http_403"),
        (401, b'{"errorCode": 6}', errors.SessionLost, "6"),
        (500, b"", errors.Transient, "http_500"),
        (502, b"<html>bad gateway</html>", errors.Transient, "http_502"),
        (503, b'{"errorCode": 7, "errorText": "NOT_READY"}', errors.Transient, "7"),
        (429, b"", errors.Transient, "http_429"),
        (404, b"not found", errors.Transient, "http_404"),
        (400, b'{"errorCode": 11, "errorText": "WRONG_API_REQUEST"}', errors.Rejected, "11"),
        (200, b"<html>a proxy page</html>", errors.Transient, "http_200"),
        (302, b"", errors.Transient, "http_302"),
    ],
)
async def test_http_status_mapping(
    stub: Stub, status: int, body: bytes, expected: type[Exception], label: str
) -> None:
    metrics = Metrics()
    stub.reply = (status, body, 0)
    async with _client(stub.url, metrics) as client:
        with pytest.raises(expected) as info:
            await client.keepalive("tok1234")
    assert type(info.value) is expected
    assert requests(metrics, "keepalive", label) == 1
    # An answer without a usable errorCode keeps its HTTP status for callers to judge
    # (the session runs without events when listenForEvents answers 404).
    expected_status = status if label == f"http_{status}" and not 200 <= status < 300 else None
    if expected is not errors.SessionLost:
        assert info.value.http_status == expected_status


async def test_timeout_is_transient(stub: Stub) -> None:
    metrics = Metrics()
    stub.reply = (200, b'{"errorCode": 0}', 1.0)
    async with _client(stub.url, metrics, request_timeout=0.2) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(errors.Transient, match="no answer within") as info:
            await client.keepalive("tok1234")
        assert loop.time() - started < 0.9
    assert info.value.ambiguous  # sent: OSCC may have acted on it
    assert requests(metrics, "keepalive", "timeout") == 1
    duration = metrics.registry.get_sample_value(
        "oscc_bridge_oscc_request_duration_seconds_count",
        {"connector": "fb", "endpoint": "keepalive"},
    )
    assert duration == 1


async def test_connection_refused_is_transient() -> None:
    metrics = Metrics()
    # a port that was free a moment ago: bind, learn it, close
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with _client(f"http://127.0.0.1:{port}", metrics) as client:
        with pytest.raises(errors.Transient):
            await client.register(TITLE, TOKEN, WEBHOOK)
    assert requests(metrics, "registerConnector", "connection") == 1


async def test_shared_client_session_is_not_closed(stub: Stub) -> None:
    async with aiohttp.ClientSession() as http:
        client = OsccClient(OsccConfig(url=stub.url), connector="fb", metrics=Metrics(), http=http)
        async with client:
            await client.keepalive("tok1234")
        assert not http.closed
        await client.keepalive("tok1234")  # still usable: the session is the caller's


# -- secrets ---------------------------------------------------------------------------------


async def test_tokens_never_logged(stub: Stub, captured_logs: io.StringIO) -> None:
    secret_session = "a5e272bcfa964c6dea958b583da4e721703bb2a74bff8533a5818ccaedd71669"
    stub.reply = (
        200,
        json.dumps(
            {"type": "Registration", "errorCode": 0, "sessionToken": secret_session}
        ).encode(),
        0,
    )
    async with _client(stub.url, Metrics()) as client:
        await client.register(TITLE, TOKEN, WEBHOOK)
        stub.reply = (302, b"", 0)
        with pytest.raises(errors.Transient):
            await client.keepalive(secret_session)
        logs.get_logger("t").warning("echo", note=f"{TOKEN} {secret_session}")
    text = captured_logs.getvalue()
    assert "oscc.redirected" in text  # something was logged at all
    assert "echo" in text
    assert TOKEN not in text
    assert secret_session not in text


# -- TLS ---------------------------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_stub(tmp_path: Path) -> AsyncIterator[tuple[Stub, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    s = Stub()
    runner = await _serve(s, context)
    try:
        yield s, cert
    finally:
        await runner.cleanup()


async def test_tls_verified_by_default(tls_stub: tuple[Stub, Path]) -> None:
    stub, _ = tls_stub
    metrics = Metrics()
    async with _client(stub.url, metrics) as client:
        with pytest.raises(errors.Transient, match="certificate"):
            await client.keepalive("tok1234")
    assert stub.seen == []  # the request never left the client
    assert requests(metrics, "keepalive", "connection") == 1


async def test_tls_ca_file_trusts_the_certificate(tls_stub: tuple[Stub, Path]) -> None:
    stub, cert = tls_stub
    async with _client(stub.url, Metrics(), ca_file=str(cert)) as client:
        answer = await client.keepalive("tok1234")
    assert answer.error_code == 0
    assert len(stub.seen) == 1


async def test_tls_opt_out_warns_once(
    tls_stub: tuple[Stub, Path], captured_logs: io.StringIO
) -> None:
    stub, _ = tls_stub
    async with _client(stub.url, Metrics(), verify_tls=False) as client:
        await client.keepalive("tok1234")
        await client.keepalive("tok1234")
    assert captured_logs.getvalue().count("oscc.tls_verification_disabled") == 1


def test_tls_context_choices(tmp_path: Path) -> None:
    assert oscc_client.tls_context(OsccConfig()) is True
    assert oscc_client.tls_context(OsccConfig(verify_tls=False)) is False
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, _ = _self_signed(tmp_path)
    context = oscc_client.tls_context(OsccConfig(ca_file=str(cert)))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]).get("commonName") for c in context.get_ca_certs()]
    assert "127.0.0.1" in subjects


# -- answers as a real server sends them: in pieces, cut short, too large --------------------

SIM_TITLE, SIM_TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
SIM_CONTACT = {
    "type": "Post",
    "source": {"id": "src-1", "type": "Person", "name": "Person 1"},
    "publishedObject": {"id": "po-1", "content": "hello"},
    "destination": {"id": "page-1", "type": "Page", "name": "Page"},
}


@pytest.fixture
async def streaming_sim() -> AsyncIterator[Simulator]:
    """The simulator writing every answer chunked, in 5 pieces, 20 ms apart."""
    async with Simulator(
        {SIM_TITLE: SIM_TOKEN}, port=0, agent=False, answer_pieces=5, piece_gap=0.02
    ) as sim:
        yield sim


async def test_answers_in_pieces_are_read_to_their_end(streaming_sim: Simulator) -> None:
    metrics = Metrics()
    async with _client(streaming_sim.url, metrics) as client:
        reg = await client.register(SIM_TITLE, SIM_TOKEN, WEBHOOK)
        assert reg.session_token
        assert (await client.keepalive(reg.session_token)).error_code == 0
        answer = await client.new_contact(reg.session_token, json.dumps(SIM_CONTACT).encode())
        assert answer.error_code == 0
    assert requests(metrics, "registerConnector", "0") == 1
    assert requests(metrics, "newContact", "0") == 1
    assert streaming_sim.seen == {"po-1": 1}


async def test_a_streamed_code_11_is_rejected(streaming_sim: Simulator) -> None:
    streaming_sim.faults.fail_contact("po-1", code=ErrorCode.WRONG_API_REQUEST)
    async with _client(streaming_sim.url, Metrics()) as client:
        reg = await client.register(SIM_TITLE, SIM_TOKEN, WEBHOOK)
        with pytest.raises(errors.Rejected) as info:
            await client.new_contact(reg.session_token, json.dumps(SIM_CONTACT).encode())
    assert info.value.code == ErrorCode.WRONG_API_REQUEST


async def test_an_html_error_page_is_transient_and_not_ambiguous(streaming_sim: Simulator) -> None:
    metrics = Metrics()
    streaming_sim.faults.fail_contact("po-1", http=503, times=1)
    async with _client(streaming_sim.url, metrics) as client:
        reg = await client.register(SIM_TITLE, SIM_TOKEN, WEBHOOK)
        with pytest.raises(errors.Transient) as info:
            await client.new_contact(reg.session_token, json.dumps(SIM_CONTACT).encode())
    assert (info.value.http_status, info.value.ambiguous) == (503, False)
    assert requests(metrics, "newContact", "http_503") == 1
    record = streaming_sim.records[-1]
    assert (record.status, record.error_code) == (503, None)
    assert streaming_sim.created() == {}


async def test_a_redirect_is_transient_and_logged(
    streaming_sim: Simulator, captured_logs: io.StringIO
) -> None:
    streaming_sim.faults.fail_next("keepalive", http=301, location="https://new.example/oscc")
    async with _client(streaming_sim.url, Metrics()) as client:
        reg = await client.register(SIM_TITLE, SIM_TOKEN, WEBHOOK)
        with pytest.raises(errors.Transient) as info:
            await client.keepalive(reg.session_token)
        assert (await client.keepalive(reg.session_token)).error_code == 0  # used up
    assert (info.value.http_status, info.value.ambiguous) == (301, False)
    line = next(json.loads(x) for x in captured_logs.getvalue().splitlines() if "redirected" in x)
    assert line["event"] == "oscc.redirected"
    assert line["location"] == "https://new.example/oscc"


async def test_a_late_answer_is_an_ambiguous_timeout() -> None:
    metrics = Metrics()
    async with Simulator({SIM_TITLE: SIM_TOKEN}, port=0, agent=False) as sim:
        sim.faults.fail_contact("po-1", slow=1.0, times=1)
        async with _client(sim.url, metrics, request_timeout=0.3) as client:
            reg = await client.register(SIM_TITLE, SIM_TOKEN, WEBHOOK)
            with pytest.raises(errors.Transient, match="no answer within") as info:
                await client.new_contact(reg.session_token, json.dumps(SIM_CONTACT).encode())
        assert info.value.ambiguous
        assert sim.created() == {"po-1": 1}  # OSCC did the work all the same
    assert requests(metrics, "newContact", "timeout") == 1


async def test_connection_refused_is_not_ambiguous() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with _client(f"http://127.0.0.1:{port}", Metrics()) as client:
        with pytest.raises(errors.Transient) as info:
            await client.new_contact("tok1234", b"{}")
    assert not info.value.ambiguous


@asynccontextmanager
async def raw_server(
    answer: bytes, *, then: bytes = b"", forever: bool = False
) -> AsyncIterator[str]:
    """A TCP server that reads a request, writes `answer`, then `then` repeatedly for
    ever (`forever`) or closes the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            while forever:
                writer.write(then)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_answer_cut_mid_body_is_an_ambiguous_transient() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    metrics = Metrics()
    async with raw_server(head + b'{"errorCode": 0, "err') as url, _client(url, metrics) as client:
        with pytest.raises(errors.Transient) as info:
            await client.new_contact("tok1234", b"{}")
    assert info.value.ambiguous
    assert requests(metrics, "newContact", "unreadable") == 1


async def test_an_endless_answer_is_cut_at_the_bound_not_waited_for() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    metrics = Metrics()
    async with (
        raw_server(head + b'5\r\n{"a":\r\n', then=chunk, forever=True) as url,
        _client(url, metrics, request_timeout=30.0) as client,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(errors.Transient, match="larger than") as info:
            await client.new_contact("tok1234", b"{}")
        assert loop.time() - started < 10.0  # far from the 30 s timeout
    assert info.value.ambiguous
    assert requests(metrics, "newContact", "unreadable") == 1


async def test_a_declared_oversized_answer_is_not_read(stub: Stub) -> None:
    stub.reply = (200, b"[" + b"0," * (1 << 20) + b"0]", 0.0)
    with pytest.raises(errors.Transient, match="larger than") as info:
        async with _client(stub.url, Metrics()) as client:
            await client.new_contact("tok1234", b"{}")
    assert info.value.ambiguous


async def test_an_unreadable_error_answer_is_judged_by_its_status() -> None:
    head = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 99\r\n\r\n"
    async with raw_server(head + b"<html>") as url, _client(url, Metrics()) as client:
        with pytest.raises(errors.Transient) as info:
            await client.new_contact("tok1234", b"{}")
    assert (info.value.http_status, info.value.ambiguous) == (502, False)
