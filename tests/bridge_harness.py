"""Helpers for the whole-bridge tests (test_app, test_health, test_cli, test_logs).

A Bridge is run against the real RabbitMQ (unique exchange prefix per test) and the
simulator over real HTTP. Everything a test counts comes from the simulator's records,
what the broker holds, or what the bridge serves over HTTP. `wait_until` (from
tests/harness.py, re-exported here) is how they wait.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bridge.app import Bridge
from bridge.config import (
    BrokerConfig,
    Config,
    ConnectorConfig,
    HttpConfig,
    LogConfig,
    OsccConfig,
    SpoolConfig,
)
from bridge.topology import Topology
from tests.conftest import AMQP_URL
from tests.harness import free_port, wait_until

FB_TITLE, FB_TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"


def make_config(
    prefix: str,
    oscc_url: str,
    spool_dir: Path,
    connectors: Iterable[ConnectorConfig] = (),
    *,
    amqp_url: str = AMQP_URL,
    admin_port: int = 0,
    keepalive_interval: float = 5.0,
    queue_type: str = "quorum",
    log_level: str = "info",
    log_format: str = "json",
) -> Config:
    """A configuration on free ports, `public_url` matching the webhook port."""
    port = free_port()
    conns = list(connectors) or [ConnectorConfig(name="fb", title=FB_TITLE, token=FB_TOKEN)]
    return Config(
        broker=BrokerConfig(url=amqp_url, exchange=prefix, queue_type=queue_type),  # type: ignore[arg-type]
        http=HttpConfig(
            host="127.0.0.1",
            port=port,
            public_url=f"http://127.0.0.1:{port}",
            admin_host="127.0.0.1" if admin_port else "",
            admin_port=admin_port,
        ),
        oscc=OsccConfig(url=oscc_url, keepalive_interval=keepalive_interval, request_timeout=5.0),
        spool=SpoolConfig(dir=str(spool_dir)),
        log=LogConfig(level=log_level, format=log_format),  # type: ignore[arg-type]
        connectors=conns,
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return json.dumps(str(value))  # JSON string escapes are a subset of TOML's


def _toml_fields(obj: Any) -> list[str]:
    """``key = value`` for each field of a config struct set (TOML has no null)."""
    values = ((k, getattr(obj, k)) for k in obj.__struct_fields__)
    return [f"{k} = {_toml_value(v)}" for k, v in values if v is not None]


def config_toml(config: Config) -> str:
    """`config` as the TOML file `oscc-bridge run --config` reads."""
    lines: list[str] = []
    for section in ("broker", "http", "oscc", "spool", "log"):
        lines.append(f"[{section}]")
        obj = getattr(config, section)
        lines += _toml_fields(obj)
    for c in config.connectors:
        lines.append("[[connectors]]")
        lines += _toml_fields(c)
    return "\n".join(lines) + "\n"


def new_contact(
    n: int, *, source_id: str | None = None, content: str | None = None
) -> dict[str, Any]:
    """A New Contact body as a channel back-end publishes it (no dateTime: the bridge adds it)."""
    return {
        "type": "Post",
        "source": {"id": source_id or f"user-{n}", "type": "Person", "name": f"User {n}"},
        "publishedObject": {
            "id": f"post-{n}-{uuid.uuid4().hex[:8]}",
            "title": "",
            "content": content if content is not None else f"message number {n}",
        },
        "destination": {"id": "page-1", "type": "Page", "name": "Example Corp"},
    }


def established_event(contact_id: str, **fields: Any) -> dict[str, Any]:
    """An EstablishedEvent as OSCC posts it to a webhook (the guide's example)."""
    return {
        "type": "OpenMediaEvent",
        "openMediaEventType": "EstablishedEvent",
        "dateTime": "2018-02-20 15:08:41.043",
        "contactID": contact_id,
        "agentID": "100",
        **fields,
    }


async def publish_json(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    body: dict[str, Any],
    *,
    message_id: str | None = None,
) -> str:
    """Publish like a back-end (persistent JSON); waits for the confirm when the channel
    has confirms on. Returns the message_id."""
    mid = message_id or uuid.uuid4().hex
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(
        aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=mid,
        ),
        routing_key,
        timeout=10,
    )
    return mid


@dataclass
class Seen:
    """A message the bridge published, as a subscriber received it."""

    routing_key: str
    body: Any
    message: AbstractIncomingMessage = field(repr=False)


class Watch:
    """An exclusive queue bound to the exchange with `pattern`, collecting what arrives.

    Declares the topology first, so it can bind before the bridge starts.
    """

    def __init__(self, channel: AbstractChannel, topology: Topology, connectors: list[str]):
        self.channel = channel
        self.topology = topology
        self.connectors = connectors
        self.seen: list[Seen] = []

    async def start(self, pattern: str = "#") -> Watch:
        await self.topology.declare(self.channel, self.connectors)
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.exchange, routing_key=pattern)

        async def on_message(msg: AbstractIncomingMessage) -> None:
            await msg.ack()
            try:
                body = json.loads(msg.body)
            except ValueError:
                body = msg.body
            self.seen.append(Seen(msg.routing_key or "", body, msg))

        await queue.consume(on_message)
        return self

    def keys(self, prefix: str) -> list[Seen]:
        """Messages whose routing key starts with `prefix`."""
        return [s for s in self.seen if s.routing_key.startswith(prefix)]


async def http_get(url: str) -> tuple[int, str, str]:
    """GET `url`: status, content type, body text."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, resp.content_type, await resp.text()


async def get_json(url: str) -> tuple[int, Any]:
    """GET `url` and decode its JSON answer."""
    status, _, text = await http_get(url)
    return status, json.loads(text)


async def wait_http(
    url: str, want: int, within: float = 20.0, check: Callable[[Any], bool] | None = None
) -> Any:
    """Poll `url` until it answers `want` (and `check(body)` holds); return the JSON body."""
    last: Any = None

    async def answered() -> tuple[Any] | None:
        nonlocal last
        try:
            status, body = await get_json(url)
        except (aiohttp.ClientError, ValueError) as exc:
            status, body = -1, repr(exc)
        last = (status, body)
        return (body,) if status == want and (check is None or check(body)) else None

    try:
        (body,) = await wait_until(answered, within, f"{url} answering {want}")
    except TimeoutError:
        raise AssertionError(f"{url}: wanted {want}, last answer {last!r}") from None
    return body


async def delete_topology(url: str, topology: Topology, connectors: Iterable[str]) -> None:
    """Remove what the bridge declared for `topology` (its own connection: the test's may
    be closed by then)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await topology.delete(channel, list(connectors))


@asynccontextmanager
async def running_bridge(config: Config) -> AsyncIterator[Bridge]:
    """A started Bridge; its exchanges and queues are deleted afterwards."""
    topology = Topology(config.broker.exchange, config.broker.queue_type)
    try:
        async with Bridge(config) as bridge:
            yield bridge
    finally:
        await delete_topology(AMQP_URL, topology, [c.name for c in config.connectors])
