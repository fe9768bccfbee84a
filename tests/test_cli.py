"""The command line (bridge/cli.py): verbs, exit codes, and what each prints.

Exit codes: 0 ok, 2 usage, 3 bad configuration, 1 anything else. Verbs that talk to the
broker run as real processes against the real RabbitMQ (and a running Bridge with the
simulator where OSCC has to answer).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bridge import cli
from bridge.oscc import codec, models
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Watch,
    config_toml,
    delete_topology,
    established_event,
    make_config,
    new_contact,
    running_bridge,
    wait_http,
    wait_until,
)
from tests.conftest import AMQP_URL
from tests.harness import message

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in ("AMQP_URL", "OSCC_URL")}

GOOD = f"""
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/"
exchange = "oscc-cli-test"
[http]
port = 8089
public_url = "http://127.0.0.1:8089"
[oscc]
url = "https://oscc.example.com"
[[connectors]]
name = "facebook"
title = "facebook"
token = "{FB_TOKEN}"
webhook_secret = "s3cret-path-segment"
"""


def _write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def _run(
    *args: str, stdin: bytes | None = None, within: float = 30.0
) -> tuple[int, str, str]:
    """`python -m bridge ARGS` as a process: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        cwd=ROOT,
        env=ENV,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# -- check-config -----------------------------------------------------------------------------


def test_check_config_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A good file: exit 0, a summary, and neither the token nor the webhook secret."""
    assert cli.main(["check-config", "--config", str(_write(tmp_path, GOOD))]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "connector facebook" in out
    assert "guest:***@" in out
    for secret in (FB_TOKEN, "s3cret-path-segment", "guest:guest"):
        assert secret not in out + err


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('exchange = "oscc-cli-test"', 'exchange = "x"\nprefetch = "many"'), "broker.prefetch"),
        (("port = 8089", 'port = 8089\ncolour = "blue"'), "http.colour"),
        ((f'token = "{FB_TOKEN}"', ""), "connectors[0].token"),
        (('name = "facebook"', 'name = "Face Book"'), "connectors[0].name"),
        (('url = "https://oscc.example.com"', 'url = "oscc.example.com"'), "oscc.url"),
    ],
    ids=["wrong-type", "unknown-key", "missing-token", "bad-name", "bad-url"],
)
def test_check_config_bad_file_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], key: str
) -> None:
    """A bad file: exit 3 and the offending key named on stderr."""
    old, new = change
    assert old in GOOD
    text = GOOD.replace(old, new)
    assert cli.main(["check-config", "--config", str(_write(tmp_path, text))]) == 3
    out, err = capsys.readouterr()
    assert key in err
    assert "OK" not in out
    assert FB_TOKEN not in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 3
    assert "nope.toml" in capsys.readouterr().err


async def test_run_with_bad_config_exits_3(tmp_path: Path) -> None:
    """`run` validates before starting anything: exit 3, the key on stderr."""
    path = _write(tmp_path, GOOD.replace("port = 8089", "port = 70000"))
    code, _, err = await _run("run", "--config", str(path))
    assert code == 3, err
    assert "http.port" in err


async def test_run_on_a_port_in_use_exits_3_naming_it(prefix: str, tmp_path: Path) -> None:
    """Another process (or instance) listens on the webhook port: one line naming
    ``http.port`` and the way to share it, exit 3 (not a traceback, not exit 1)."""
    config = make_config(prefix, "http://127.0.0.1:9", tmp_path / "spool")
    with socket.socket() as other:
        other.bind(("127.0.0.1", config.http.port))
        other.listen()
        try:
            code, _, err = await _run("run", "--config", str(_write(tmp_path, config_toml(config))))
        finally:
            await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
    assert code == 3, err
    [line] = [ln for ln in err.splitlines() if "http.port" in ln]
    assert f"cannot listen on http://127.0.0.1:{config.http.port}" in line
    assert "reuse_port" in line
    assert "Traceback" not in err


async def test_run_with_refused_credentials_exits_3(tmp_path: Path) -> None:
    """RabbitMQ refuses the password (ACCESS_REFUSED): exit 3 at once, naming the key and
    the broker (password masked). A broker that is merely unreachable is no reason to
    exit (tests/chaos/test_ha.py starts the bridge without one)."""
    password = uuid.uuid4().hex
    text = GOOD.replace(
        "amqp://guest:guest@127.0.0.1:5672/", f"amqp://guest:{password}@127.0.0.1:5672/"
    ).replace("port = 8089", 'host = "127.0.0.1"\nport = 0')
    text += f'[spool]\ndir = "{tmp_path / "spool"}"\n'
    started = time.monotonic()
    code, out, err = await _run("run", "--config", str(_write(tmp_path, text)), within=30)
    assert code == 3, out + err
    assert time.monotonic() - started < 20
    assert "ACCESS_REFUSED" in err
    assert "broker.url" in err
    assert "guest:***@127.0.0.1:5672" in err
    assert password not in out + err


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["check-config", "--bogus"], ["tail", "--json", "a", "b"]],
    ids=["no-verb", "unknown-verb", "bad-flag", "extra-argument"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("run", "check-config", "simulator", "demo", "send-contact", "tail", "schema"):
        assert verb in out


async def test_usage_exit_code_of_the_process() -> None:
    """The console entry point returns main()'s code as the process's exit status."""
    code, _, err = await _run("frobnicate")
    assert code == 2
    assert "invalid choice" in err


# -- schema ----------------------------------------------------------------------------------


def test_schema_covers_every_routing_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    doc = json.loads(capsys.readouterr().out)
    c = "<c>"
    t = Topology
    expected = {t.event_key(c, kind) for kind in models.EVENT_KINDS}
    expected |= {t.publication_key(c, "<type>"), t.stream_request_key(c)}
    expected |= {t.contact_new_key(c), t.stream_response_key(c)}
    expected |= {t.contact_outcome_key(c, ok) for ok in (True, False)}
    expected |= {t.session_key(c, change) for change in ("registered", "lost", "failed")}
    assert set(doc["messages"]) == expected
    for key, schema in doc["messages"].items():
        assert schema, key
    assert doc["$schema"].startswith("https://json-schema.org/")


# -- send-contact, tail -----------------------------------------------------------------------


async def test_send_contact_to_a_running_bridge(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """send-contact publishes, the bridge forwards, OSCC accepts: exit 0, "accepted"."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=8, agent=False) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        path = _write(tmp_path, config_toml(config))
        body = new_contact(1)
        contact = _write(tmp_path, json.dumps(body), "contact.json")
        async with running_bridge(config):
            await wait_http(f"http://127.0.0.1:{config.http.port}/readyz", 200)
            code, out, err = await _run("send-contact", "--config", str(path), str(contact))
            assert code == 0, out + err
            assert "fb.contact.accepted" in out
            assert "accepted" in out.splitlines()[-1]
            assert [c["publishedObject"]["id"] for c in sim.contacts(FB_TITLE)] == [
                body["publishedObject"]["id"]
            ]
            # from stdin too
            again = new_contact(2)
            code, out, err = await _run(
                "send-contact", "--config", str(path), "-", stdin=json.dumps(again).encode()
            )
            assert code == 0, out + err
            assert len(sim.contacts(FB_TITLE)) == 2
            # OSCC refuses the next one (13): the outcome is "rejected", exit 1
            sim.faults.fail_next("newContact", 13)
            code, out, err = await _run("send-contact", "--config", str(path), str(contact))
            assert code == 1, out + err
            assert "fb.contact.rejected" in out
            assert "13" in out.splitlines()[-1]
            assert len(sim.contacts(FB_TITLE)) == 2


async def test_send_contact_over_a_limit_is_refused_locally(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """Content over 5000 characters: exit 1 with OSCC's code 12, and nothing published."""
    config = make_config(prefix, "http://127.0.0.1:9", tmp_path / "spool")
    path = _write(tmp_path, config_toml(config))
    contact = _write(tmp_path, json.dumps(new_contact(1, content="x" * 5001)), "contact.json")
    topology = Topology(prefix)
    channel = await amqp.channel(publisher_confirms=True)
    watch = await Watch(channel, topology, ["fb"]).start()
    try:
        code, out, err = await _run("send-contact", "--config", str(path), str(contact))
        assert code == 1, out + err
        assert re.search(r"\b12\b", err), err
        assert "STRING_OUT_OF_BOUND" in err or "5000" in err
        # the tool's connection is closed: a sentinel published now arrives after anything
        # it had published, so an empty watch before the sentinel means nothing was sent
        exchange = await channel.get_exchange(prefix, ensure=False)
        await exchange.publish(
            message(b"{}", connector="fb", routing_key="fb.sentinel", message_id="sentinel"),
            "fb.sentinel",
        )
        await wait_until(lambda: watch.keys("fb.sentinel"), what="sentinel")
        assert [s.routing_key for s in watch.seen] == ["fb.sentinel"]
    finally:
        await delete_topology(AMQP_URL, topology, ["fb"])


async def _start_tail(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path, *args: str
) -> tuple[AbstractChannel, asyncio.subprocess.Process]:
    """The topology declared, and `oscc-bridge tail --config F *args` started with its
    output piped; a confirming channel to publish what it should print."""
    config = make_config(prefix, "http://127.0.0.1:9", tmp_path / "spool")
    path = _write(tmp_path, config_toml(config))
    channel = await amqp.channel(publisher_confirms=True)
    await Topology(prefix).declare(channel, ["fb"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "tail", "--config", str(path), *args,
        cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return channel, proc


async def test_tail_prints_published_events(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """tail prints one readable line per message, and stops on SIGINT with exit 0."""
    topology = Topology(prefix)
    channel, proc = await _start_tail(prefix, amqp, tmp_path, "fb.event.*")
    assert proc.stdout is not None
    lines: list[str] = []

    async def read_until(pattern: str, within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        assert proc.stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in {lines!r}")
            raw = await asyncio.wait_for(proc.stdout.readline(), remaining)
            if not raw:
                raise AssertionError(f"tail ended before {pattern!r}: {lines!r}")
            lines.append(raw.decode())
            if pattern in lines[-1]:
                return lines[-1]

    try:
        await read_until("listening on")
        contact_id = f"O{uuid.uuid4().hex[:12].upper()}"
        event = established_event(contact_id)
        exchange = await channel.get_exchange(prefix, ensure=False)
        for key, body in (
            ("fb.contact.accepted", {"errorCode": 0}),  # not matched by the pattern
            ("fb.event.established", event),
        ):
            await exchange.publish(
                message(codec.encode(body), connector="fb", routing_key=key, message_id="m"),
                key,
            )
        line = await read_until(contact_id)
        assert line.startswith("fb.event.established")
        assert "agent 100" in line
        assert not any("contact.accepted" in x for x in lines)
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await delete_topology(AMQP_URL, topology, ["fb"])


# -- demo -------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_demo_runs_end_to_end() -> None:
    """`oscc-bridge demo`: exit 0; each of its 3 contacts is delivered to an agent,
    answered and disconnected, and the output shows it."""
    code, out, err = await _run("demo", within=80)
    assert code == 0, out + err
    lines = out.splitlines()

    def contact_ids(kind: str) -> set[str]:
        found = set()
        for line in lines:
            m = re.search(rf"\.{kind}\s+contact (\S+)", line)
            if m:
                found.add(m.group(1))
        return found

    assert len(contact_ids(r"event\.delivered")) == 3, out
    assert len(contact_ids(r"event\.disconnected")) == 3, out
    replies = [line for line in lines if ".publication." in line and "agent reply to" in line]
    assert len(replies) == 3, out
    assert len([line for line in lines if "contact.accepted" in line]) == 3, out
    assert "Every contact was delivered" in out


def test_describe_gives_every_routing_key_family_a_readable_line() -> None:
    from bridge.amqptools import describe

    contact = {
        "type": "Post",
        "source": {"id": "ann@example.com", "name": "Ann"},
        "publishedObject": {"id": "p-1", "content": "Hello there"},
    }
    lines = {
        "fb.contact.new": describe("fb.contact.new", json.dumps(contact).encode()),
        "fb.contact.accepted": describe(
            "fb.contact.accepted",
            json.dumps(
                {"publishedObjectId": "p-1", "errorCode": 0, "errorText": "NO_ERROR"}
            ).encode(),
        ),
        "fb.event.delivered": describe(
            "fb.event.delivered", json.dumps({"contactID": "C1", "agentID": "100"}).encode()
        ),
        "fb.stream.request": describe(
            "fb.stream.request", json.dumps({"id": "p-1", "numberOfMessages": "10"}).encode()
        ),
        "fb.session.registered": describe(
            "fb.session.registered", json.dumps({"title": "facebook"}).encode()
        ),
    }
    assert "contact from Ann: 'Hello there'" in lines["fb.contact.new"]
    assert "accepted: p-1 (0 NO_ERROR)" in lines["fb.contact.accepted"]
    assert "contact C1 agent 100" in lines["fb.event.delivered"]
    assert "history of p-1 (10 messages)" in lines["fb.stream.request"]
    assert "registered: facebook" in lines["fb.session.registered"]
    assert all("None" not in line for line in lines.values())
    assert describe("fb.event.held", b"not json").startswith("fb.event.held")


# -- never guess, one-line errors, --version -----------------------------------------------------


def _one_line(err: str) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"oscc-bridge {__version__}"


@pytest.mark.parametrize(
    "argv",
    [["send-contact", "-"], ["tail"], ["dead", "list"]],
    ids=["send-contact", "tail", "dead"],
)
async def test_broker_verbs_without_a_config_file_exit_3(tmp_path: Path, argv: list[str]) -> None:
    """No guessing an exchange: a missing --config is exit 3, naming the file."""
    missing = tmp_path / "nope.toml"
    code, out, err = await _run(*argv, "--config", str(missing), stdin=b"{}")
    assert code == 3, out + err
    assert str(missing) in err
    _one_line(err)


async def test_send_contact_one_line_errors(prefix: str, tmp_path: Path) -> None:
    """A missing contact file, a wrong broker password, an exchange nobody declared: one
    line each, saying what to do, never a traceback (and never the password)."""
    config = make_config(prefix, "http://127.0.0.1:9", tmp_path / "spool")
    path = _write(tmp_path, config_toml(config))
    code, _, err = await _run("send-contact", "--config", str(path), str(tmp_path / "no.json"))
    assert code == 2
    assert "cannot read the contact file" in err
    _one_line(err)

    contact = _write(tmp_path, json.dumps(new_contact(1)), "contact.json")
    password = uuid.uuid4().hex
    bad = _write(
        tmp_path, config_toml(config).replace("guest:guest@", f"guest:{password}@"), "bad.toml"
    )
    code, _, err = await _run("send-contact", "--config", str(bad), str(contact))
    assert code == 1
    assert "refused the login" in err
    assert "broker.url" in err
    assert password not in err
    _one_line(err)

    # the exchange `prefix` was never declared: no bridge ran with this configuration
    code, _, err = await _run("send-contact", "--config", str(path), str(contact))
    assert code == 1
    assert "does not exist" in err
    assert prefix in err
    _one_line(err)


async def test_send_contact_says_what_it_waits_for(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """While OSCC answers NOT_READY the tool says the bridge has the contact and retries."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=8, agent=False) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        path = _write(tmp_path, config_toml(config))
        contact = _write(tmp_path, json.dumps(new_contact(1)), "contact.json")
        async with running_bridge(config):
            await wait_http(f"http://127.0.0.1:{config.http.port}/readyz", 200)
            sim.faults.not_ready(60)
            code, out, err = await _run(
                "send-contact", "--config", str(path), str(contact),
                "--timeout", "3", "--status-every", "1",
            )  # fmt: skip
            sim.faults.clear()
            assert code == 1, out + err
            assert "waiting: the bridge has the contact" in err
            assert "NOT_READY" in err
            assert "no outcome within 3 s" in err.splitlines()[-1]
            assert "Traceback" not in err


async def test_tail_json_has_routing_key_and_headers(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    topology = Topology(prefix)
    channel, proc = await _start_tail(prefix, amqp, tmp_path, "--json", "fb.contact.*")
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert b"listening on" in first
        exchange = await channel.get_exchange(prefix, ensure=False)
        body = {"messageId": "m-1", "errorCode": 12, "errorText": "STRING_OUT_OF_BOUND"}
        body["reason"] = "$.source.name is 300 characters, the limit is 256"
        key = "fb.contact.rejected"
        await exchange.publish(
            message(
                codec.encode(body),
                connector="fb",
                routing_key=key,
                message_id="out-1",
                headers={"oscc-error-code": 12, "oscc-error-text": "STRING_OUT_OF_BOUND"},
            ),
            key,
        )
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert line["routing_key"] == key
        assert line["message_id"] == "out-1"
        assert line["headers"]["oscc-error-code"] == 12
        assert line["headers"]["oscc-connector"] == "fb"
        assert line["body"] == body
    finally:
        proc.kill()
        await proc.wait()
        await delete_topology(AMQP_URL, topology, ["fb"])


def test_tail_line_of_a_rejection_shows_its_reason() -> None:
    from bridge.amqptools import describe

    body = {"publishedObjectId": "p-1", "errorCode": 12, "errorText": "STRING_OUT_OF_BOUND"}
    body["reason"] = "$.source.name is 300 characters, the limit is 256"
    line = describe("fb.contact.rejected", json.dumps(body).encode())
    assert "12 STRING_OUT_OF_BOUND" in line
    assert "$.source.name is 300 characters" in line


# -- quick start truth ----------------------------------------------------------------------------


def test_make_demo_installs_the_runtime_only() -> None:
    """`make demo` installs the package without the test extra (tens of MB, not hundreds)."""
    import shutil
    import subprocess

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        [make, "-n", "-B", "demo", "VENV=/nonexistent-venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert any(line.rstrip().endswith("-e .") for line in installs), result.stdout
    assert not any("[test]" in line for line in installs), result.stdout


def test_demo_config_uses_an_exchange_of_its_own() -> None:
    from bridge import config

    ann = config.load(ROOT / "config" / "demo.toml", {"USER": "ann"})
    bob = config.load(ROOT / "config" / "demo.toml", {"USER": "bob"})
    assert ann.broker.exchange == "oscc-demo-ann"
    assert bob.broker.exchange != ann.broker.exchange
    assert config.load(ROOT / "config" / "demo.toml", {}).broker.exchange == "oscc-demo-demo"


def test_readme_links_the_security_notes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/SECURITY.md)" in readme
    assert (ROOT / "docs" / "SECURITY.md").is_file()
