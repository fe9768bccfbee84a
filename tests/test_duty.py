"""Two bridges in one process on the real RabbitMQ (bridge/duty.py, bridge/app.py): one
owns the connector, the other stands by and takes webhooks all the same; stopping the
owner hands the connector over with its session (no second registration) and without
resending what the first one forwarded. The multi-process version with kills, fencing
and broker outages is tests/chaos/test_ha.py."""

from __future__ import annotations

import io
from pathlib import Path

import msgspec
import pytest
from aio_pika.abc import AbstractRobustConnection

from bridge.app import Bridge
from bridge.config import Config, ConnectorConfig, HaConfig
from bridge.session import SessionSupervisor
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Watch,
    delete_topology,
    make_config,
    new_contact,
    publish_json,
    wait_until,
)
from tests.conftest import AMQP_URL


def pair(
    prefix: str,
    oscc_url: str,
    tmp_path: Path,
    connector: ConnectorConfig,
    *,
    same_public_url: bool = True,
) -> tuple[Config, Config]:
    """Instances a and b of one connector; b's public_url is a's (as behind a load
    balancer) unless `same_public_url` is False."""
    a, b = (
        msgspec.structs.replace(
            make_config(prefix, oscc_url, tmp_path / name, [connector], keepalive_interval=1.0),
            ha=HaConfig(instance=name, fence_after=2.0),
        )
        for name in ("a", "b")
    )
    if same_public_url:
        b = msgspec.structs.replace(
            b, http=msgspec.structs.replace(b.http, public_url=a.http.public_url)
        )
    return a, b


@pytest.mark.parametrize("publish_credentials", [False, True], ids=["plain", "credentials"])
async def test_owner_stops_standby_resumes_the_session_nothing_resent(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path, publish_credentials: bool
) -> None:
    """With publish_credentials the user credentials travel in the lease with the token,
    so the new owner resumes too and announces the same credentials."""
    connector = ConnectorConfig(
        name="fb", title=FB_TITLE, token=FB_TOKEN, publish_credentials=publish_credentials
    )
    async with Simulator(
        {FB_TITLE: FB_TOKEN}, agent=False, strict_sessions=True, session_ttl=30.0
    ) as sim:
        a_config, b_config = pair(prefix, sim.url, tmp_path, connector)
        channel = await amqp.channel(publisher_confirms=True)
        await Topology(prefix).declare(channel, ["fb"])
        watch = await Watch(channel, Topology(prefix), ["fb"]).start("fb.session.registered")

        async def publish(numbers: range) -> list[str]:
            ids = []
            for n in numbers:
                body = new_contact(n, source_id=f"s{n % 5}")
                await publish_json(channel, prefix, "fb.contact.new", body, message_id=f"m{n}")
                ids.append(body["publishedObject"]["id"])
            return ids

        try:
            async with Bridge(a_config) as a:
                await a.session("fb")  # a owns: it started first
                async with Bridge(b_config) as b:
                    await wait_until(lambda: b.duties["fb"].ownership is not None, what="b")
                    assert (a.duties["fb"].role, b.duties["fb"].role) == ("owner", "standby")
                    assert b.health.readiness()[0]  # a standby is ready: it takes webhooks
                    sent = await publish(range(20))
                    await sim.wait_for(lambda: len(sim.contacts(FB_TITLE)) == 20, timeout=20)

                    # SIGTERM's path for the connector: drain, hand over with the session
                    await a.duties["fb"].stop()
                    await (await b.session("fb", within=10)).token(timeout=10)
                    assert b.duties["fb"].status()["owner"] == "b"
                    sent += await publish(range(20, 40))
                    await sim.wait_for(lambda: len(sim.contacts(FB_TITLE)) == 40, timeout=20)
        finally:
            await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
        ids = [c["publishedObject"]["id"] for c in sim.contacts(FB_TITLE)]
        assert sorted(ids) == sorted(sent)  # each once
        # one registration: b resumed a's session from the lease; never two live sessions
        registrations = [r.error_code for r in sim.records if r.endpoint == "registerConnector"]
        assert registrations == [0]
        assert sim.state.max_live[FB_TITLE] == 1
        await wait_until(lambda: len(watch.seen) == 2, what="both owners announced")
        announced = [seen.body.get("userCredentials") for seen in watch.seen]
        assert [seen.body["instance"] for seen in watch.seen] == ["a", "b"]
        if publish_credentials:
            assert announced[0]
            assert announced[1] == announced[0]
        else:
            assert announced == [None, None]


async def test_a_standby_with_another_public_url_registers_its_own_session(
    prefix: str,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: io.StringIO,
) -> None:
    """Resuming a session registered with another webhookURL would leave OSCC calling
    that URL (the old instance's, maybe gone) for as long as the new owner keeps the
    session alive. So the new owner says why and registers its own once the old session
    has expired."""
    monkeypatch.setattr(SessionSupervisor, "stale_retry", 0.2)
    connector = ConnectorConfig(name="fb", title=FB_TITLE, token=FB_TOKEN)
    async with Simulator(
        {FB_TITLE: FB_TOKEN}, agent=False, strict_sessions=True, session_ttl=1.0
    ) as sim:
        a_config, b_config = pair(prefix, sim.url, tmp_path, connector, same_public_url=False)
        try:
            async with Bridge(a_config) as a:
                await a.session("fb")
                async with Bridge(b_config) as b:
                    await wait_until(lambda: b.duties["fb"].ownership is not None, what="b")
                    await a.duties["fb"].stop()  # hands over, with a session for a's URL
                    await (await b.session("fb", within=15)).token(timeout=15)
        finally:
            await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
    registered = [r for r in sim.records if r.endpoint == "registerConnector"]
    assert registered[0].error_code == 0
    assert registered[-1].error_code == 0
    assert {r.error_code for r in registered[1:-1]} <= {2}  # the old one, until it expired
    assert registered[-1].body["webhookURL"] == f"{b_config.http.public_url}/webhook/fb"
    assert sim.state.max_live[FB_TITLE] == 1
    assert captured_logs.getvalue().count('"session.handover_for_another_webhook"') == 1
