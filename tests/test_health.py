"""Operator routes (bridge/health.py) of a running Bridge, over real HTTP.

/healthz, /readyz (200 and 503 with the reason), /status (no secrets in it), /metrics
(every family of bridge/metrics.py), and the separate admin listener.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics
from bridge.session import SessionSupervisor
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Watch,
    free_port,
    get_json,
    http_get,
    make_config,
    new_contact,
    publish_json,
    running_bridge,
    wait_http,
    wait_until,
)


def _families(text: str) -> dict[str, list[Any]]:
    """Metric family name -> its samples, `_created` samples left out."""
    return {
        f.name: [s for s in f.samples if not s.name.endswith("_created")]
        for f in text_string_to_metric_families(text)
    }


def _total(samples: list[Any], suffix: str = "_total", **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _session_tokens(sim: Simulator) -> set[str]:
    """Every session token the simulator issued that was seen in use, and the live ones."""
    tokens = {r.authorization for r in sim.records if r.authorization}
    return tokens | {s.token for s in sim.sessions}


async def test_status_and_metrics_after_traffic(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """After contacts, a dead letter, webhooks and a lost session: /status shows each
    connector's state and keepalive and the spool depth, and no secret; /metrics lists
    every family of bridge/metrics.py, each with samples that agree with the simulator."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=5, stream_probability=0.0) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool", keepalive_interval=0.3)
        channel = await amqp.channel(publisher_confirms=True)
        watch = await Watch(channel, Topology(prefix), ["fb"]).start()
        async with running_bridge(config) as bridge:
            base = f"http://127.0.0.1:{bridge.ports['webhook']}"
            assert await get_json(f"{base}/healthz") == (200, {"status": "ok"})
            await wait_http(f"{base}/readyz", 200)
            good = [new_contact(n) for n in range(2)]
            for body in good:
                await publish_json(channel, prefix, "fb.contact.new", body)
            # over the guide's 5000-character content limit: dead-lettered with 12
            await publish_json(
                channel, prefix, "fb.contact.new", new_contact(9, content="x" * 5001)
            )
            await sim.wait_for(lambda: len(sim.contacts(FB_TITLE)) == 2, timeout=20)
            await wait_until(lambda: watch.keys("fb.contact.rejected"), what="rejected outcome")
            await wait_until(
                lambda: len(watch.keys("fb.event.disconnected")) == 2, what="disconnected events"
            )
            await sim.wait_for(lambda: sim.idle, timeout=10)
            # OSCC forgets the session: the next keepalive fails, the bridge re-registers
            first = {s.token for s in sim.sessions}
            sim.faults.drop_sessions()
            await sim.wait_for(lambda: {s.token for s in sim.sessions} - first, timeout=10)
            status = await wait_http(
                f"{base}/status",
                200,
                check=lambda b: (
                    b["connectors"]["fb"]["registrations"] == 2
                    and b["connectors"]["fb"]["state"] == "registered"
                    and b["connectors"]["fb"]["last_keepalive"] is not None
                ),
            )
            _, _, status_text = await http_get(f"{base}/status")
            _, content_type, metrics_text = await http_get(f"{base}/metrics")

            fb = status["connectors"]["fb"]
            assert fb["title"] == FB_TITLE
            assert fb["ready"] is True
            assert fb["keepalive_failures"] >= 1
            assert fb["last_error_code"] == 10
            assert status["spool"]["messages"] == 0
            # the password is masked (and so is the user here: guest's password is "guest")
            assert status["broker"] == {"connected": True, "url": "amqp://***:***@127.0.0.1:5672/"}
            assert status["instance"] == bridge.instance
            assert (fb["role"], fb["owner"]) == ("owner", bridge.instance)

            password = sim.state.credentials(FB_TITLE)["password"]
            secrets = {FB_TOKEN, password, config.broker.url} | _session_tokens(sim)
            assert len(secrets) >= 5  # token, password, URL, the first and the new session
            for secret in secrets:
                assert secret not in status_text
                assert secret not in metrics_text
            assert "guest:guest" not in status_text

        # every family of bridge/metrics.py is exported, each with at least one sample
        assert content_type == "text/plain"
        exported = _families(metrics_text)
        expected = {f.name for f in Metrics().registry.collect()}
        assert expected - exported.keys() == set()
        empty = sorted(name for name in expected if not exported[name])
        assert empty == [], f"families without samples: {empty}"
        # and the numbers agree with what happened
        forwards = exported["oscc_bridge_forwards"]
        assert _total(forwards, connector="fb", kind="contact", outcome="accepted") == 2
        assert _total(exported["oscc_bridge_dead_letters"], connector="fb") == 1
        webhooks = exported["oscc_bridge_webhook_requests"]
        ok_calls = sum(1 for c in sim.webhook_calls if c.ok)
        assert _total(webhooks, connector="fb", outcome="published") == ok_calls
        registrations = exported["oscc_bridge_registrations"]
        assert _total(registrations, connector="fb", outcome="registered") == 2
        assert _total(exported["oscc_bridge_keepalive_failures"], connector="fb") >= 1
        state = {s.labels["state"]: s.value for s in exported["oscc_bridge_session_state"]}
        assert state["registered"] == 1
        assert sum(state.values()) == 1
        assert exported["oscc_bridge_broker_connected"][0].value == 1
        new_contacts = _total(
            exported["oscc_bridge_oscc_requests"], connector="fb", endpoint="newContact", code="0"
        )
        assert new_contacts == 2


async def test_readyz_200_while_oscc_refuses_registration(
    prefix: str,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OSCC refuses the connector (4): /readyz stays 200 (this instance takes webhooks)
    and shows the session failed, /status says failed and why, session.failed is
    published; once OSCC accepts it again, the session is registered."""
    monkeypatch.setattr(SessionSupervisor, "failed_retry", 0.3)
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=6, refuse_registration=4) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        channel = await amqp.channel()
        watch = await Watch(channel, Topology(prefix), ["fb"]).start()
        async with running_bridge(config) as bridge:
            base = f"http://127.0.0.1:{bridge.ports['webhook']}"
            await sim.wait_for(lambda: sum(r.error_code == 4 for r in sim.records) >= 2, timeout=10)
            status, body = await get_json(f"{base}/readyz")
            assert status == 200
            assert body["connectors"] == {"fb": {"role": "owner", "session": "failed"}}
            assert (await get_json(f"{base}/healthz"))[0] == 200  # alive all the same
            _, st = await get_json(f"{base}/status")
            assert st["connectors"]["fb"]["state"] == "failed"
            assert st["connectors"]["fb"]["last_error_code"] == 4
            await wait_until(lambda: watch.keys("fb.session.failed"), what="session.failed")
            assert watch.keys("fb.session.failed")[0].body["errorCode"] == 4
            # a few more refused tries in the same spell
            await sim.wait_for(lambda: sum(r.error_code == 4 for r in sim.records) >= 4, timeout=10)

            sim.faults.refuse_registration = None
            await wait_http(
                f"{base}/readyz",
                200,
                within=10,
                check=lambda b: b["connectors"]["fb"]["session"] == "registered",
            )
            await wait_until(lambda: watch.keys("fb.session.registered"), what="registered")
            # session events go out in order: any session.failed of a later try would have
            # arrived before session.registered
            assert len(watch.keys("fb.session.failed")) == 1  # once per spell, not per try


async def test_admin_listener_is_separate(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """With http.admin_port set, the operator routes answer there and only there; the
    webhook keeps working on its own port."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=7, stream_probability=0.0) as sim:
        admin_port = free_port()
        config = make_config(prefix, sim.url, tmp_path / "spool", admin_port=admin_port)
        channel = await amqp.channel(publisher_confirms=True)
        async with running_bridge(config) as bridge:
            assert bridge.ports["admin"] == admin_port
            assert bridge.ports["webhook"] == config.http.port != admin_port
            web, admin = (f"http://127.0.0.1:{p}" for p in (config.http.port, admin_port))
            await wait_http(f"{admin}/readyz", 200)
            status, content_type, text = await http_get(f"{admin}/metrics")
            assert (status, content_type) == (200, "text/plain")
            assert "oscc_bridge_session_state" in text
            for route in ("/metrics", "/status", "/readyz", "/healthz"):
                assert (await http_get(f"{web}{route}"))[0] == 404, route
                assert (await http_get(f"{admin}{route}"))[0] == 200, route
            # the webhook is on the webhook port, not on the admin one
            await publish_json(channel, prefix, "fb.contact.new", new_contact(1))
            await sim.wait_for(
                lambda: any(c.kind == "disconnected" and c.ok for c in sim.webhook_calls),
                timeout=20,
            )
            assert all(c.url.startswith(f"{web}/webhook/fb") for c in sim.webhook_calls)
            assert (await http_get(f"{admin}/webhook/fb"))[0] in (404, 405)
            assert json.loads((await http_get(f"{admin}/status"))[2])["broker"]["connected"]
