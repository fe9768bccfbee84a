"""``oscc-bridge demo``: the simulator and the bridge in one process, a few contacts, and
what comes back, printed live.

It runs against the local RabbitMQ (``AMQP_URL`` or 127.0.0.1:5672) on an exchange of its
own (``oscc-demo-<random>``), so it never touches a deployment's queues nor another demo's,
deletes what it declared when it ends, and picks free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from typing import Any

import aio_pika
import msgspec

from bridge import config as config_mod
from bridge import logs
from bridge.amqptools import describe
from bridge.topology import Topology

TOKEN = "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"  # the guide's example connector token
CONNECTOR = "facebook"

CONTACTS = [
    ("abigail.flores@example.com", "Abigail Flores", "Post", "My order #1182 has not arrived."),
    ("martin.smith@example.com", "Martin Smith", "DirectMessage", "How do I reset my password?"),
    ("brian.jameson@example.com", "Brian Jameson", "Post", "Great service, thank you!"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _contact(n: int, source_id: str, name: str, kind: str, text: str) -> dict[str, Any]:
    return {
        "type": kind,
        "source": {"id": source_id, "type": "Person", "name": name, "language": "en"},
        "publishedObject": {"id": f"demo-{n}-{uuid.uuid4().hex[:6]}", "title": "", "content": text},
        "destination": {"id": "page-1", "type": "Page", "name": "Example Corp"},
    }


async def _answer_stream_request(
    channel: aio_pika.abc.AbstractChannel,
    request: aio_pika.abc.AbstractIncomingMessage,
    started: float,
) -> None:
    """Play the channel back-end: answer OSCC's history request with a short stream."""
    body = msgspec.json.decode(request.body)
    items = [
        {
            "id": f"{body['id']}-h{i}",
            "fatherId": body["id"],
            "type": "Post",
            "dateTime": f"2026-11-23T09:0{i}:00Z",
            "source": {"type": "Person", "name": "Earlier customer message"},
            "content": f"Earlier message {i} of this conversation.",
        }
        for i in (1, 2)
    ]
    answer = {
        "type": "Stream",
        "errorCode": 0,
        "errorText": "NO_ERROR",
        "id": body["id"],
        "page": 1,
        "lastPage": "true",
        "itemsInPage": len(items),
        "totalItems": len(items),
        "orderedItems": items,
    }
    await channel.default_exchange.publish(
        aio_pika.Message(
            msgspec.json.encode(answer),
            content_type="application/json",
            correlation_id=request.correlation_id,
        ),
        routing_key=request.reply_to or "",
    )
    _say(f"  {time.monotonic() - started:6.2f}s  → stream response for {body['id']} (2 items)")


async def _delete_topology(amqp_url: str, topology: Topology) -> None:
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(amqp_url, timeout=5)
        async with connection:
            await topology.delete(await connection.channel(), [CONNECTOR])


def _say(line: str) -> None:
    print(line, flush=True)


async def _broker_reachable(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return False
    await connection.close()
    return True


async def run(stop: asyncio.Event) -> int:
    """Run the demo until every contact was answered and disconnected, or `stop`."""
    from bridge.app import Bridge
    from bridge.simulator import Simulator

    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    if not await _broker_reachable(amqp_url):
        _say(f"No RabbitMQ at {config_mod.mask_url(amqp_url)}.")
        _say("Start one and run the demo again, e.g.:")
        _say("  rabbitmq-server -detached          (Debian: apt-get install rabbitmq-server)")
        _say("  docker run -d -p 5672:5672 rabbitmq:3-management")
        _say("or point AMQP_URL at a broker you have.")
        return 1
    logs.configure("warning", "console")
    web_port = _free_port()
    exchange = f"oscc-demo-{uuid.uuid4().hex[:8]}"
    spool = tempfile.mkdtemp(prefix="oscc-demo-")
    # A human-readable pace: the agent takes a moment between steps, and one contact in
    # two asks for its history, so the stream round trip shows too.
    async with Simulator(
        connectors={CONNECTOR: TOKEN}, port=0, seed=7, step_delay=0.4, stream_probability=0.5
    ) as sim:
        config = config_mod.parse(
            f"""
            [broker]
            url = "{amqp_url}"
            exchange = "{exchange}"
            [http]
            host = "127.0.0.1"
            port = {web_port}
            public_url = "http://127.0.0.1:{web_port}"
            [oscc]
            url = "{sim.url}"
            keepalive_interval = 5
            [spool]
            dir = "{spool}"
            [[connectors]]
            name = "{CONNECTOR}"
            title = "{CONNECTOR}"
            token = "{TOKEN}"
            """,
            env={},
        )
        _say(f"OSCC simulator  {sim.url}")
        _say(f"bridge webhook  http://127.0.0.1:{web_port}/webhook/{CONNECTOR}")
        _say(f"RabbitMQ        {config_mod.mask_url(amqp_url)}  exchange {exchange!r}\n")
        try:
            async with Bridge(config) as bridge:
                return await _show(bridge, sim, amqp_url, stop)
        finally:
            await _delete_topology(amqp_url, Topology(exchange, config.broker.queue_type))
            shutil.rmtree(spool, ignore_errors=True)


async def _show(bridge: Any, sim: Any, amqp_url: str, stop: asyncio.Event) -> int:
    topology = bridge.topology
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        watch = await channel.declare_queue(exclusive=True, auto_delete=True)
        await watch.bind(topology.exchange, routing_key=f"{CONNECTOR}.#")
        disconnected: set[str] = set()
        stream_requests: list[str] = []
        done = asyncio.Event()
        started = time.monotonic()

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with msg.process():
                key = msg.routing_key or ""
                if key.startswith(f"{CONNECTOR}.contact.new"):
                    return
                _say(f"  {time.monotonic() - started:6.2f}s  ← {describe(key, msg.body)}")
                if key.endswith("stream.request"):
                    stream_requests.append(msg.correlation_id or "")
                    await _answer_stream_request(channel, msg, started)
                if key.endswith("event.disconnected"):
                    body = msgspec.json.decode(msg.body)
                    disconnected.add(str(body.get("contactID")))
                    if len(disconnected) >= len(CONTACTS):
                        done.set()

        await watch.consume(on_message)
        _say("waiting for the connector to register with OSCC ...")
        supervisor = await bridge.session(CONNECTOR)
        await asyncio.wait_for(supervisor.token(), timeout=30)
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        for n, (source_id, name, kind, text) in enumerate(CONTACTS, 1):
            body = msgspec.json.encode(_contact(n, source_id, name, kind, text))
            await exchange.publish(
                aio_pika.Message(body, content_type="application/json", message_id=f"demo-{n}"),
                routing_key=topology.contact_new_key(CONNECTOR),
            )
            _say(f"  {time.monotonic() - started:6.2f}s  → contact from {name}: {text!r}")
            await asyncio.sleep(0.5)  # pacing for the reader, not synchronisation
        waiters = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(stop.wait())]
        _, pending = await asyncio.wait(waiters, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if done.is_set():
            with contextlib.suppress(TimeoutError):
                await sim.wait_for(
                    lambda: len(sim.stream_responses(CONNECTOR)) >= len(stream_requests),
                    timeout=10,
                )
            _say(
                f"\nOSCC recorded {len(sim.contacts(CONNECTOR))} contacts and "
                f"{len(sim.stream_responses(CONNECTOR))} stream responses "
                f"(for {len(stream_requests)} stream requests)."
            )
            _say("Every contact was delivered, answered by an agent and disconnected.")
            _say("Next: `oscc-bridge tail` to watch a running bridge; see README.md.")
            return 0
        if stop.is_set():
            return 0
        _say(
            "\nTimed out waiting for all contacts to finish.",
        )
        print("see `oscc-bridge tail` and /status", file=sys.stderr)
        return 1
