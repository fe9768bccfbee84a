"""The whole bridge (bridge/app.py) against the real RabbitMQ and the simulator over HTTP.

In-process: one connector end to end, two connectors side by side. As a process
(``python -m bridge run``): SIGTERM in the middle of a stream of contacts and webhooks
stops cleanly, loses nothing and sends nothing twice.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from bridge.config import ConnectorConfig
from bridge.oscc import codec
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Watch,
    config_toml,
    delete_topology,
    make_config,
    new_contact,
    publish_json,
    running_bridge,
    wait_http,
    wait_until,
)
from tests.conftest import AMQP_URL
from tests.harness import message_count

ROOT = Path(__file__).resolve().parent.parent


def _ids(bodies: list[dict[str, object]]) -> list[str]:
    return [b["publishedObject"]["id"] for b in bodies]  # type: ignore[index]


async def test_one_connector_end_to_end(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """Registers, announces the session, forwards contacts, publishes what OSCC sends back."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=1, stream_probability=0.0) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        topology = Topology(prefix)
        channel = await amqp.channel(publisher_confirms=True)
        watch = await Watch(channel, topology, ["fb"]).start()
        async with running_bridge(config) as bridge:
            base = f"http://127.0.0.1:{bridge.ports['webhook']}"
            ready = await wait_http(
                f"{base}/readyz",
                200,
                check=lambda b: b["connectors"]["fb"]["session"] == "registered",
            )
            assert ready == {
                "ready": True,
                "broker": True,
                "spool_room": True,
                "instance": bridge.instance,
                "connectors": {"fb": {"role": "owner", "session": "registered"}},
            }

            # the session change is announced, without credentials (publish_credentials off)
            await wait_until(lambda: watch.keys("fb.session.registered"), what="session.registered")
            registered = watch.keys("fb.session.registered")[0]
            assert registered.body["connector"] == "fb"
            assert registered.body["title"] == FB_TITLE
            assert registered.body["state"] == "registered"
            assert registered.body["instance"] == bridge.instance  # which instance holds it
            assert "userCredentials" not in registered.body
            assert registered.message.app_id == "oscc-bridge"
            assert registered.message.type == "session.registered"
            assert registered.message.headers["oscc-connector"] == "fb"

            bodies = [new_contact(n) for n in range(3)]
            mids = [
                await publish_json(channel, prefix, "fb.contact.new", b, message_id=f"m-{n}")
                for n, b in enumerate(bodies)
            ]
            await sim.wait_for(lambda: len(sim.contacts(FB_TITLE)) == 3, timeout=20)
            assert sorted(_ids(sim.contacts(FB_TITLE))) == sorted(_ids(bodies))
            # the bridge filled in the dateTime a back-end left out
            for body in sim.contacts(FB_TITLE):
                codec.parse_date(body["dateTime"])

            # outcomes, correlated with the contact's message_id
            await wait_until(lambda: len(watch.keys("fb.contact.accepted")) == 3, what="outcomes")
            assert sorted(s.message.correlation_id for s in watch.keys("fb.contact.accepted")) == (
                sorted(mids)
            )

            # what the agent sent back: delivered .. reply .. disconnected for each contact
            await wait_until(
                lambda: len(watch.keys("fb.event.disconnected")) == 3, what="disconnected events"
            )
            await sim.wait_for(lambda: sim.idle, timeout=10)
            delivered = {s.body["publishedObject"]["id"] for s in watch.keys("fb.event.delivered")}
            assert delivered == set(_ids(bodies))
            replies = watch.keys("fb.publication.post")
            assert sorted(s.body["objectToBePublished"]["inReplyTo"]["id"] for s in replies) == (
                sorted(_ids(bodies))
            )
            for seen in watch.keys("fb.event."):
                assert seen.message.headers["oscc-event"]
                assert seen.message.headers["oscc-contact-id"] == seen.body["contactID"]
                assert seen.message.app_id == "oscc-bridge"
            # every webhook call was answered 2xx on the first attempt
            assert sim.webhook_calls
            assert all(call.ok and call.attempt == 1 for call in sim.webhook_calls)
            # one webhook call -> one message on the exchange, no more, no less
            published = [s for s in watch.seen if ".event." in s.routing_key]
            published += [s for s in watch.seen if ".publication." in s.routing_key]
            webhook_kinds = [c.kind for c in sim.webhook_calls if c.kind != "stream"]
            assert len(published) == len(webhook_kinds)
            assert bridge.supervisors["fb"].ready


async def test_two_connectors_in_one_process(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """facebook and email register with their own title and token; each one's contacts
    reach OSCC under its own title, and what OSCC sends back comes out under its name."""
    mail_title, mail_token = "corporate-mail", "mail-token-0123456789"
    async with Simulator(
        {FB_TITLE: FB_TOKEN, mail_title: mail_token}, seed=2, stream_probability=0.0
    ) as sim:
        connectors = [
            ConnectorConfig(name="facebook", title=FB_TITLE, token=FB_TOKEN),
            ConnectorConfig(
                name="email", title=mail_title, token=mail_token, publish_credentials=True
            ),
        ]
        config = make_config(prefix, sim.url, tmp_path / "spool", connectors)
        topology = Topology(prefix)
        channel = await amqp.channel(publisher_confirms=True)
        watch = await Watch(channel, topology, ["facebook", "email"]).start()
        async with running_bridge(config) as bridge:
            base = f"http://127.0.0.1:{bridge.ports['webhook']}"
            ready = await wait_http(
                f"{base}/readyz",
                200,
                check=lambda b: all(c["session"] == "registered" for c in b["connectors"].values()),
            )
            assert ready["connectors"] == {
                "facebook": {"role": "owner", "session": "registered"},
                "email": {"role": "owner", "session": "registered"},
            }
            registrations = {
                r.title: r.body["openMedia"]["token"]
                for r in sim.records
                if r.endpoint == "registerConnector" and r.error_code == 0
            }
            assert registrations == {FB_TITLE: FB_TOKEN, mail_title: mail_token}
            # each session's webhookURL names its own connector
            urls = {s.title: s.webhook_url for s in sim.sessions}
            assert urls[FB_TITLE].endswith("/webhook/facebook")
            assert urls[mail_title].endswith("/webhook/email")

            fb = [new_contact(n, source_id=f"fb-user-{n}") for n in range(3)]
            mail = [new_contact(n, source_id=f"mail-user-{n}") for n in range(3)]
            for f, m in zip(fb, mail, strict=True):
                await publish_json(channel, prefix, "facebook.contact.new", f)
                await publish_json(channel, prefix, "email.contact.new", m)
            await sim.wait_for(
                lambda: len(sim.contacts(FB_TITLE)) == 3 and len(sim.contacts(mail_title)) == 3,
                timeout=20,
            )
            assert sorted(_ids(sim.contacts(FB_TITLE))) == sorted(_ids(fb))
            assert sorted(_ids(sim.contacts(mail_title))) == sorted(_ids(mail))

            await wait_until(
                lambda: (
                    len(watch.keys("facebook.event.disconnected")) == 3
                    and len(watch.keys("email.event.disconnected")) == 3
                ),
                what="disconnected events of both connectors",
            )
            for name, sent in (("facebook", fb), ("email", mail)):
                delivered = watch.keys(f"{name}.event.delivered")
                assert {s.body["publishedObject"]["id"] for s in delivered} == set(_ids(sent))
                for s in watch.seen:  # what the bridge published (not our contact.new)
                    if s.routing_key.startswith(f"{name}.") and "contact.new" not in s.routing_key:
                        assert s.message.headers["oscc-connector"] == name
                        assert s.message.app_id == "oscc-bridge"

            # publish_credentials is per connector
            sessions = {
                s.routing_key: s.body for s in watch.keys("") if ".session." in s.routing_key
            }
            assert "userCredentials" not in sessions["facebook.session.registered"]
            creds = sessions["email.session.registered"]["userCredentials"]
            assert creds == sim.state.credentials(mail_title)


# -- SIGTERM under load ----------------------------------------------------------------------

LOAD = 300


@pytest.mark.timeout(90)
async def test_sigterm_under_load_exits_cleanly_and_loses_nothing(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """`python -m bridge run`, 300 contacts published while the agent calls the webhook,
    SIGTERM half-way: exit 0 in time; every contact reached OSCC once or is back in its
    queue, none unacked; no webhook call was answered 5xx."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=3, latency=0.005) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        path = tmp_path / "bridge.toml"
        path.write_text(config_toml(config))
        topology = Topology(prefix)
        channel = await amqp.channel(publisher_confirms=True)
        await topology.declare(channel, ["fb"])
        log_path = tmp_path / "bridge.log"
        env = {k: v for k, v in os.environ.items() if k not in ("AMQP_URL", "OSCC_URL")}
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(path),
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        try:
            await wait_http(f"http://127.0.0.1:{config.http.port}/readyz", 200, within=30)
            bodies = [new_contact(n, source_id=f"user-{n % 40}") for n in range(LOAD)]
            published: list[str] = []
            stopped_at = 0.0
            agent_busy = False
            for n, body in enumerate(bodies):
                if n == LOAD // 2:
                    # half published: once OSCC has a good part of them and the agent is
                    # calling the webhook, SIGTERM; the other half is published meanwhile
                    await sim.wait_for(
                        lambda: (
                            len(sim.contacts(FB_TITLE)) >= LOAD // 4
                            and sum(c.kind == "disconnected" for c in sim.webhook_calls) >= 5
                        ),
                        timeout=40,
                    )
                    agent_busy = not sim.idle
                    proc.send_signal(signal.SIGTERM)
                    stopped_at = time.monotonic()
                await publish_json(channel, prefix, "fb.contact.new", body, message_id=f"c{n}")
                published.append(_ids([body])[0])
            code = await asyncio.wait_for(proc.wait(), 45)
            took = time.monotonic() - stopped_at
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert code == 0, f"exit code {code}; see {log_path}"
        assert took < 40, f"took {took:.1f} s to stop"

        # exactly-once-or-still-queued: OSCC's count plus the queue's equals what we sent
        at_oscc = _ids(sim.contacts(FB_TITLE))
        duplicates = [i for i, n in collections.Counter(at_oscc).items() if n > 1]
        assert not duplicates, f"sent to OSCC twice: {duplicates[:5]}"
        assert len(published) == LOAD
        print(f"stopped in {took:.2f} s; at OSCC {len(at_oscc)}, webhooks {len(sim.webhook_calls)}")
        queue_name = topology.contact_queue("fb")
        depth = await message_count(queue_name)
        assert len(at_oscc) + depth == LOAD, (len(at_oscc), depth)
        assert agent_busy, "the agent had finished before SIGTERM: no webhooks in flight"
        # nothing is left unacked or in flight: the count is stable, a new consumer gets all
        consume = await amqp.channel()
        queue = await consume.declare_queue(queue_name, passive=True)
        left: list[str] = []
        while (msg := await queue.get(fail=False, no_ack=False)) is not None:
            left.append(json.loads(msg.body)["publishedObject"]["id"])
            await msg.ack()
        assert len(left) == depth
        assert sorted(left + at_oscc) == sorted(published)
        assert await message_count(queue_name) == 0
        # and nothing was dead-lettered on the way
        assert await message_count(topology.dead_queue("fb")) == 0

        # OSCC never got a 5xx from the webhook (refused connections after exit are fine:
        # OSCC retries those like any unreachable connector)
        assert sim.webhook_calls
        assert [c for c in sim.webhook_calls if c.status is not None and c.status >= 500] == []
        await delete_topology(AMQP_URL, topology, ["fb"])


@pytest.mark.timeout(60)
async def test_sigterm_idle_bridge_exits_zero(prefix: str, tmp_path: Path) -> None:
    """A registered, idle bridge stops on SIGTERM and SIGINT with exit code 0."""
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=4) as sim:
        for sig in (signal.SIGTERM, signal.SIGINT):
            config = make_config(prefix, sim.url, tmp_path / f"spool-{sig}")
            path = tmp_path / "bridge.toml"
            path.write_text(config_toml(config))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(path),
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                await wait_http(f"http://127.0.0.1:{config.http.port}/readyz", 200, within=30)
                proc.send_signal(sig)
                _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
            # OSCC has no "unregister": the stopped bridge's session would hold the title
            # until it expires, so the next run starts on a fresh OSCC
            sim.faults.drop_sessions()
        await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
