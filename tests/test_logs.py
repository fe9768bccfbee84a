"""Logging (bridge/logs.py): redaction, the format choice, and no secret in any line of a
whole run of the bridge.

The integration test runs the simulator as a separate process on purpose: in-process it
would register every session token it issues as a secret of *this* process's logging,
and the test could no longer tell whether the bridge protects its secrets by itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aio_pika.abc import AbstractRobustConnection

from bridge import logs
from bridge.config import ConnectorConfig
from bridge.simulator.state import State
from bridge.topology import Topology
from tests.bridge_harness import (
    Watch,
    make_config,
    new_contact,
    publish_json,
    running_bridge,
    wait_http,
)
from tests.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() changes process-wide state: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiormq", "aio_pika")}
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        for name, lvl in quiet.items():
            logging.getLogger(name).setLevel(lvl)
        structlog.reset_defaults()


# -- redact --------------------------------------------------------------------------------


def _redact(**event: Any) -> dict[str, Any]:
    return dict(logs.redact(None, "info", dict(event)))


def test_redact_hides_values_under_secret_keys() -> None:
    out = _redact(
        token="abc",
        session_token="def",
        Authorization="ghi",
        password="jkl",
        webhook_secret="mno",
        userCredentials={"userName": "u", "password": "p"},
        connector="fb",
        error_code=10,
    )
    for key in ("token", "session_token", "Authorization", "password", "webhook_secret"):
        assert out[key] == "***", key
    assert out["userCredentials"] == "***"
    assert out["connector"] == "fb"
    assert out["error_code"] == 10


def test_redact_leaves_empty_secret_keys_alone() -> None:
    """An absent secret reads as absent, not as a masked one."""
    assert _redact(token=None, password="", publish_credentials=False) == {
        "token": None,
        "password": "",
        "publish_credentials": False,
    }


def test_redact_masks_registered_values_anywhere() -> None:
    value = f"reg-{secrets.token_hex(8)}"
    logs.register_secret(value)
    try:
        out = _redact(
            event=f"calling with {value} in the text",
            url=f"http://x/webhook/fb/{value}",
            body={"nested": {"deeper": f"<{value}>"}, "list": [value, 1]},
            items=(value,),
        )
        assert value not in json.dumps(out)
        assert out["event"] == "calling with *** in the text"
        assert out["url"] == "http://x/webhook/fb/***"
        assert out["body"]["nested"]["deeper"] == "<***>"
        assert out["body"]["list"] == ["***", 1]
    finally:
        logs.forget_secret(value)
    assert _redact(event=value)["event"] == value  # forgotten: shown again


def test_redact_hides_nested_secret_keys() -> None:
    out = _redact(answer={"sessionToken": "t" * 64, "errorCode": 0})
    assert out["answer"] == {"sessionToken": "***", "errorCode": 0}


def test_register_secret_ignores_short_values() -> None:
    """Masking every "a" or "ab" would shred every line."""
    logs.register_secret("ab")
    logs.register_secret("")
    logs.register_secret(None)
    assert _redact(event="a tab abroad")["event"] == "a tab abroad"


# -- format choice -----------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _emit(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, fmt: str, level: str) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure(level, fmt)
    logs.get_logger("test", connector="fb").info("hello from structlog", n=1)
    logs.get_logger("test").debug("a debug line")
    logging.getLogger("some.library").warning("hello from %s", "stdlib")
    return stream.getvalue()


@pytest.mark.parametrize(
    ("fmt", "stream"),
    [("json", io.StringIO), ("json", _Tty), ("auto", io.StringIO)],
    ids=["json", "json-on-a-tty", "auto-not-a-tty"],
)
def test_json_lines(monkeypatch: pytest.MonkeyPatch, fmt: str, stream: type[io.StringIO]) -> None:
    """JSON: one object per line, for structlog and stdlib records alike."""
    lines = _emit(monkeypatch, stream(), fmt, "info").splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["event"] for d in docs] == ["hello from structlog", "hello from stdlib"]
    assert docs[0]["connector"] == "fb"
    assert docs[0]["level"] == "info"
    assert docs[1]["level"] == "warning"
    assert all("timestamp" in d for d in docs)


@pytest.mark.parametrize(
    ("fmt", "stream"),
    [("console", io.StringIO), ("console", _Tty), ("auto", _Tty)],
    ids=["console", "console-on-a-tty", "auto-on-a-tty"],
)
def test_console_lines(
    monkeypatch: pytest.MonkeyPatch, fmt: str, stream: type[io.StringIO]
) -> None:
    """Console: readable lines, not JSON; colours only on a terminal."""
    sink = stream()
    lines = _emit(monkeypatch, sink, fmt, "info").splitlines()
    assert len(lines) == 2
    for line in lines:
        with pytest.raises(ValueError, match=r"Expecting value|Extra data"):
            json.loads(line)
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    assert "hello from structlog" in plain[0]
    assert "connector=fb" in plain[0]
    assert "hello from stdlib" in plain[1]
    assert ("\x1b[" in "".join(lines)) == sink.isatty()


def test_debug_level_shows_debug_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [
        json.loads(line)["event"]
        for line in _emit(monkeypatch, io.StringIO(), "json", "debug").splitlines()
    ]
    assert "a debug line" in events


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exceptions_are_redacted_in_both_formats(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """A secret inside an exception's message is masked in the traceback as well."""
    value = f"exc-{secrets.token_hex(8)}"
    logs.register_secret(value)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("info", fmt)
    try:
        try:
            raise ValueError(f"refused {value}")
        except ValueError:
            logs.get_logger("test").exception("structlog failure")
            logging.getLogger("lib").exception("stdlib failure")
    finally:
        logs.forget_secret(value)
    text = stream.getvalue()
    assert text.count("ValueError: refused ***") == 2, text
    assert value not in text


# -- a whole run -------------------------------------------------------------------------------


@asynccontextmanager
async def rabbitmq_user() -> AsyncIterator[tuple[str, str]]:
    """A RabbitMQ user of our own with a random password, deleted afterwards."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not installed: cannot make a user with a unique password")
    user, password = f"oscc-test-{secrets.token_hex(4)}", secrets.token_hex(16)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60)

    made = await asyncio.to_thread(run, "add_user", user, password)
    if made.returncode != 0:
        pytest.skip(f"rabbitmqctl add_user failed: {made.stderr.strip()[:200]}")
    try:
        allowed = await asyncio.to_thread(run, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        assert allowed.returncode == 0, allowed.stderr
        yield user, password
    finally:
        await asyncio.to_thread(run, "delete_user", user)


@asynccontextmanager
async def simulator_process(title: str, token: str, log: Path) -> AsyncIterator[str]:
    """``oscc-bridge simulator`` as a process of its own; yields its URL."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "simulator", "--port", "0",
            "--connector", f"{title}:{token}", "--seed", "11",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = re.search(r"OSCC simulator (\S+)", line.decode())
        assert url, f"the simulator did not start ({line!r}); see {log}"
        yield url.group(1)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)


async def _admin(http: aiohttp.ClientSession, url: str, method: str = "GET", **kw: Any) -> Any:
    async with http.request(method, url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.mark.timeout(90)
async def test_no_secret_in_any_log_line_of_a_whole_run(
    prefix: str,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Debug-level JSON logs of registration, contacts, webhooks (with a secret path), a
    lost session and its re-registration, a broker reconnect: no line holds the connector
    token, a session token, the userCredentials password, the broker password or the
    webhook secret."""
    title, token = "facebook", f"tok-{secrets.token_hex(16)}"
    webhook_secret = secrets.token_hex(12)
    # the password the simulator hands out with every registration (its own rule; a
    # bare State, so this process does not register anything as a secret)
    oscc = State({})
    oscc.connectors[title] = token
    user_password = oscc.credentials(title)["password"]

    async with (
        rabbitmq_user() as (user, broker_password),
        simulator_process(title, token, tmp_path / "simulator.log") as sim_url,
        aiohttp.ClientSession() as http,
    ):
        logs.configure("debug", "json")  # onto capfd's stderr, structlog and stdlib alike
        connector = ConnectorConfig(
            name="fb",
            title=title,
            token=token,
            webhook_secret=webhook_secret,
            publish_credentials=False,
        )
        config = make_config(
            prefix,
            sim_url,
            tmp_path / "spool",
            [connector],
            amqp_url=f"amqp://{user}:{broker_password}@127.0.0.1:5672/",
            keepalive_interval=0.5,
            log_level="debug",
        )
        channel = await amqp.channel(publisher_confirms=True)
        watch = await Watch(channel, Topology(prefix), ["fb"]).start()
        admin = f"{sim_url}/admin"

        async def accepted() -> int:
            return len((await _admin(http, f"{admin}/contacts?title={title}"))["contacts"])

        async def registrations() -> list[dict[str, Any]]:
            rows = (await _admin(http, f"{admin}/records?endpoint=registerConnector"))["records"]
            return [r for r in rows if r["error_code"] == 0]

        async with running_bridge(config) as bridge:
            base = f"http://127.0.0.1:{config.http.port}"
            await wait_http(f"{base}/readyz", 200)
            for n in range(3):
                await publish_json(channel, prefix, "fb.contact.new", new_contact(n))
            await wait_until(lambda: _is(accepted(), 3), what="3 contacts at OSCC")

            async def disconnected() -> bool:
                calls = await _admin(http, f"{admin}/webhook-calls?kind=disconnected")
                return sum(1 for c in calls["webhook_calls"] if c["status"] == 200) == 3

            await wait_until(disconnected, what="3 scripts done")
            calls = (await _admin(http, f"{admin}/webhook-calls"))["webhook_calls"]
            assert all(c["url"].endswith(f"/webhook/fb/{webhook_secret}") for c in calls)
            # a malformed call on the secret path is logged too (and answered 400)
            async with http.post(
                f"{base}/webhook/fb/{webhook_secret}", data=b"{not json", headers={}
            ) as resp:
                assert resp.status == 400

            # OSCC forgets the session: keepalive fails, the bridge registers again
            await _admin(http, f"{admin}/faults", "POST", json={"drop_sessions": True})
            await wait_until(lambda: _longer(registrations(), 2), what="re-registration")
            # the broker drops our connection: the bridge reconnects
            closed = await asyncio.to_thread(
                subprocess.run,
                ["rabbitmqctl", "-q", "close_all_user_connections", user, "test reconnect"],
                capture_output=True,
                timeout=60,
            )
            assert closed.returncode == 0, closed.stderr
            await wait_until(lambda: _reconnected(bridge), within=30, what="publisher reconnected")
            await wait_http(f"{base}/readyz", 200, within=30)
            await publish_json(channel, prefix, "fb.contact.new", new_contact(9))
            await wait_until(lambda: _is(accepted(), 4), within=30, what="contact after reconnect")

        records = (await _admin(http, f"{admin}/records"))["records"]
    out, err = capfd.readouterr()
    text = out + err

    session_tokens = {r["authorization"] for r in records if r["authorization"]}
    assert len(session_tokens) >= 2, "expected the first and the new session token"
    assert all(len(t) == 64 for t in session_tokens)
    # the run really was logged, by structlog and by stdlib loggers, at debug level
    lines = [line for line in text.splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines if line.startswith("{")]
    events = [d.get("event", "") for d in docs]
    assert events.count("session.registered") == 2
    assert "oscc.answer" in events  # a debug line
    assert "session.lost" in events
    assert "broker.connection_lost" in events
    assert "broker.reconnected" in events
    # lines that name the broker URL were there to search (aio-pika's own, masked)
    assert any(f"amqp://{user}:" in line for line in lines)
    secrets_ = {
        "connector token": token,
        "userCredentials password": user_password,
        "broker password": broker_password,
        "webhook secret": webhook_secret,
    } | {f"session token {t[:6]}…": t for t in session_tokens}
    leaks = {
        name: [line for line in lines if value in line][:3] for name, value in secrets_.items()
    }
    assert {k: v for k, v in leaks.items() if v} == {}
    # publish_credentials = false: the session messages carry no credentials either
    sessions = [s for s in watch.seen if ".session." in s.routing_key]
    assert len(sessions) >= 3  # registered, lost, registered
    for s in sessions:
        assert user_password not in json.dumps(s.body)
        assert "userCredentials" not in s.body


async def _is(count: Any, n: int) -> bool:
    return bool(await count == n)


async def _longer(rows: Any, n: int) -> bool:
    return len(await rows) >= n


async def _reconnected(bridge: Any) -> bool:
    total = bridge.metrics.registry.get_sample_value("oscc_bridge_broker_reconnects_total")
    return bool(total and bridge.publisher.connected)


def test_expected_broker_loss_lines_are_dropped_others_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A broker restart is one warning of ours, not a burst of library tracebacks."""
    logs.configure("info", "json")
    noisy = logging.getLogger("aiormq.connection")
    noisy.error('Unexpected connection close from remote "amqp://x", Connection.Close(320)')
    logging.getLogger("aio_pika.robust_connection").warning(
        "Connection attempt to amqp://x failed: refused. Reconnecting after 5 seconds."
    )
    noisy.error("something nobody expected")
    logging.getLogger("bridge.other").error("Closing channel is fine to say elsewhere")
    lines = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["something nobody expected", "Closing channel is fine to say elsewhere"]


def test_bad_requests_are_counted_and_reported_once_per_interval(
    captured_logs: io.StringIO,
) -> None:
    from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine

    from bridge.badrequests import INTERVAL, BadRequestLog
    from bridge.metrics import Metrics

    now = [1000.0]
    metrics = Metrics()
    bad = BadRequestLog(metrics, clock=lambda: now[0])
    for _ in range(5):
        bad.exception("Error handling request from %s", "127.0.0.1", exc_info=BadStatusLine("x"))
    now[0] += INTERVAL
    bad.debug("Error handling request from %s", "127.0.0.1", exc_info=BadHttpMessage("y"))
    try:
        raise ValueError("a handler's bug")
    except ValueError:
        bad.exception("Unhandled exception")  # not a bad request: logged as aiohttp would
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    reports = [line for line in lines if line["event"] == "http.bad_requests"]
    assert [(r["level"], r["count"]) for r in reports] == [("warning", 1), ("warning", 5)]
    assert "BadStatusLine" in reports[0]["error"]
    assert metrics.registry.get_sample_value("oscc_bridge_http_bad_requests_total") == 6
    [bug] = [line for line in lines if line["event"] == "Unhandled exception"]
    assert bug["level"] == "error"
    assert "a handler's bug" in bug["exception"]
