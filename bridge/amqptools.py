"""The AMQP side as a user sees it: ``send-contact``, ``tail`` and readable message lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import msgspec

from bridge import config as config_mod
from bridge.errors import Rejected
from bridge.oscc import codec
from bridge.topology import Topology


def broker_target(args: argparse.Namespace) -> tuple[str, Topology, list[str]]:
    """Broker URL, topology and connector names from --config, else from the environment.

    The tools work without a config file (AMQP_URL, default exchange ``oscc``) so a
    channel developer can use them against someone else's bridge.
    """
    path: Path = args.config
    if path.is_file():
        config = config_mod.load(path)
        topology = Topology(config.broker.exchange, config.broker.queue_type)
        return config.broker.url, topology, [c.name for c in config.connectors]
    import os

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    return url, Topology(os.environ.get("OSCC_EXCHANGE", "oscc")), []


def _short(text: Any, n: int = 60) -> str:
    s = str(text or "").replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def describe(routing_key: str, body: bytes, headers: dict[str, Any] | None = None) -> str:
    """One readable line for a message the bridge published."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return f"{routing_key:<34} {_short(body)}"
    if not isinstance(doc, dict):
        return f"{routing_key:<34} {_short(doc)}"
    kind = routing_key.split(".", 1)[1] if "." in routing_key else routing_key
    headers = headers or {}
    match kind.split("."):
        case ["event", ev]:
            what = f"contact {doc.get('contactID', '?')} agent {doc.get('agentID', '?')}"
            if ev == "disconnected":
                what += f" ({doc.get('disconnectReason', '')})"
        case ["publication", _]:
            obj = doc.get("objectToBePublished") or {}
            reply = (obj.get("inReplyTo") or {}).get("id")
            what = f"agent reply to {reply}: {_short(obj.get('content'))!r}"
        case ["stream", "request"]:
            what = f"history of {doc.get('id')} ({doc.get('numberOfMessages')} messages)"
        case ["contact", "new"]:
            source = doc.get("source") or {}
            content = (doc.get("publishedObject") or {}).get("content")
            what = f"contact from {source.get('name') or source.get('id')}: {_short(content)!r}"
        case ["contact", outcome]:
            code = doc.get("errorCode", headers.get("oscc-error-code"))
            text = doc.get("errorText", headers.get("oscc-error-text"))
            what = (
                f"{outcome}: {doc.get('publishedObjectId') or doc.get('messageId')} ({code} {text})"
            )
        case ["session", change]:
            what = f"{change}: {doc.get('title', '')} {doc.get('errorText', '')}".rstrip()
        case _:
            what = _short(msgspec.json.encode(doc).decode(), 100)
    return f"{routing_key:<34} {what}"


def _outcome_code(body: bytes, headers: dict[str, Any]) -> int | None:
    """The errorCode of a contact outcome (body first, then the header)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        doc = None
    code = doc.get("errorCode") if isinstance(doc, dict) else None
    if code is None:
        code = headers.get("oscc-error-code")
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


async def send_contact(args: argparse.Namespace) -> int:
    """Validate a New Contact locally, publish it, and wait for its outcome."""
    url, topology, names = broker_target(args)
    connector = args.connector or (names[0] if names else None)
    if connector is None:
        print("send-contact: give --connector (no configuration file found)", file=sys.stderr)
        return 2
    source = sys.stdin.buffer.read if args.file == "-" else Path(args.file).read_bytes
    data = await asyncio.to_thread(source)
    try:
        parsed = codec.decode_new_contact(data)
    except Rejected as exc:
        print(f"rejected before sending: {exc.code} {exc.text}", file=sys.stderr)
        return 1
    message_id = str(uuid.uuid4())
    connection = await aio_pika.connect_robust(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                codec.encode(parsed.body),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                reply_to=None if args.no_wait else replies.name,
            ),
            routing_key=topology.contact_new_key(connector),
        )
        print(f"sent {message_id} to {topology.contact_new_key(connector)}")
        if args.no_wait:
            return 0
        try:
            async with asyncio.timeout(args.timeout), replies.iterator() as it:
                async for msg in it:
                    await msg.ack()
                    # The copy sent to reply_to is typed after the reply queue, not after
                    # the outcome: judge by the error code the outcome carries.
                    headers = dict(msg.headers or {})
                    accepted = _outcome_code(msg.body, headers) == 0
                    key = topology.contact_outcome_key(connector, accepted)
                    print(describe(key, msg.body, headers))
                    return 0 if accepted else 1
        except TimeoutError:
            print(f"no outcome within {args.timeout:g} s (is the bridge running?)", file=sys.stderr)
    return 1


async def tail(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Print every message the bridge publishes that matches the pattern, until `stop`."""
    url, topology, _ = broker_target(args)
    connection = await aio_pika.connect_robust(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(topology.exchange, routing_key=args.pattern)
        print(f"listening on exchange {topology.exchange!r} for {args.pattern!r} (Ctrl-C stops)")

        async def show(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with msg.process():
                if args.json:
                    print(msg.body.decode(errors="replace"), flush=True)
                else:
                    headers = dict(msg.headers or {})
                    print(describe(msg.routing_key or "", msg.body, headers), flush=True)

        tag = await queue.consume(show)
        await stop.wait()
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
