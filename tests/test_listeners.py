"""The bridge's HTTP listeners: a port that cannot be had is a configuration error naming
its key (exit 3), and `http.reuse_port` lets several instances on one host share the
webhook port, each taking part of OSCC's calls."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractRobustConnection

from bridge.app import Bridge
from bridge.config import Config, HaConfig
from bridge.errors import ConfigError
from bridge.topology import Topology
from tests.bridge_harness import (
    Watch,
    delete_topology,
    established_event,
    make_config,
    wait_until,
)
from tests.conftest import AMQP_URL
from tests.harness import free_port, sample

OSCC = "http://127.0.0.1:9"  # never called: no connector registers in these tests


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def _with_http(config: Config, **http: object) -> Config:
    return msgspec.structs.replace(config, http=msgspec.structs.replace(config.http, **http))


@pytest.mark.parametrize("key", ["http.port", "http.admin_port"])
async def test_a_port_in_use_is_a_config_error_naming_its_key(
    prefix: str, tmp_path: Path, taken: int, key: str
) -> None:
    config = make_config(prefix, OSCC, tmp_path / "spool", admin_port=free_port())
    field = key.split(".")[1]
    config = _with_http(config, **{field: taken})
    try:
        with pytest.raises(ConfigError) as raised:
            async with Bridge(config):
                pass
    finally:
        await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
    assert raised.value.key == key
    text = str(raised.value)
    assert text.startswith(f"{key}: cannot listen on http://127.0.0.1:{taken}")
    assert ("reuse_port" in text) == (key == "http.port")  # the hint that fits


async def test_instances_on_one_host_share_the_webhook_port_with_reuse_port(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection
) -> None:
    """Two instances, one webhook port: calls on 40 connections are spread over both by
    the kernel, and each is published once."""
    base = _with_http(make_config(prefix, OSCC, tmp_path / "a"), reuse_port=True)
    configs = [
        msgspec.structs.replace(
            base,
            spool=msgspec.structs.replace(base.spool, dir=str(tmp_path / name)),
            ha=HaConfig(instance=name),
        )
        for name in ("a", "b")
    ]
    channel = await amqp.channel()
    watch = await Watch(channel, Topology(prefix), ["fb"]).start("fb.event.#")
    calls = 40
    try:
        async with Bridge(configs[0]) as a, Bridge(configs[1]) as b:
            assert a.ports["webhook"] == b.ports["webhook"] == base.http.port
            url = f"http://127.0.0.1:{base.http.port}/webhook/fb"
            for n in range(calls):
                # a connection each: SO_REUSEPORT spreads connections, not requests
                async with (
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                    s.post(url, data=json.dumps(established_event(f"c{n}"))) as answer,
                ):
                    assert answer.status == 200, await answer.text()
            await wait_until(lambda: len(watch.seen) == calls, what="every call published")
            taken = [_answered(x) for x in (a, b)]
    finally:
        await delete_topology(AMQP_URL, Topology(prefix), ["fb"])
    assert sum(taken) == calls
    assert min(taken) > 0, taken  # both took part (2 * 2**-40 to fail by chance)
    assert sorted(s.body["contactID"] for s in watch.seen) == sorted(f"c{n}" for n in range(calls))


def _answered(bridge: Bridge) -> float:
    """Event calls this instance answered 200 (published, or spooled while it connected)."""
    return sum(
        sample(bridge.metrics, "webhook_requests_total", connector="fb", kind="event", outcome=o)
        for o in ("published", "spooled")
    )
