#!/usr/bin/env python3
"""A tiny channel back-end for oscc-bridge: what a social-media or chat integration does.

It publishes a New Contact (with reply_to, so the bridge sends the outcome back to it),
then prints what the bridge publishes for that connector: events (delivered, established,
disconnected ...) and the agents' replies, which a real back-end would post to its channel.

    python examples/channel_backend.py --config config/demo.toml examples/contact.json
    python examples/channel_backend.py --amqp-url amqp://guest:guest@127.0.0.1:5672/ \\
        --exchange oscc --connector facebook examples/contact.json --once

--once: stop after the contact's outcome and the first agent reply to it (exit 0), or
after --timeout seconds (exit 1). Needs only aio-pika (pip install aio-pika).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import aio_pika


def target(args: argparse.Namespace) -> tuple[str, str, str]:
    """(AMQP URL, exchange, connector): from the bridge's config file, or the flags."""
    url, exchange, connector = args.amqp_url, args.exchange, args.connector
    if args.config:
        config = tomllib.loads(Path(args.config).read_text())
        broker = config.get("broker", {})
        url = url or broker.get("url", "amqp://guest:guest@127.0.0.1:5672/")
        exchange = exchange or broker.get("exchange", "oscc")
        connector = connector or config["connectors"][0]["name"]
    if not (url and exchange and connector):
        sys.exit("give --config, or --amqp-url, --exchange and --connector")
    return url, exchange, connector


def line(key: str, body: dict[str, Any]) -> str:
    """One readable line for a message the bridge published."""
    if ".event." in key:
        kind = key.rsplit(".", 1)[1]
        return f"event {kind}: contact {body.get('contactID')} agent {body.get('agentID')}"
    if ".publication." in key:
        obj = body.get("objectToBePublished") or {}
        reply_to = (obj.get("inReplyTo") or {}).get("id")
        return f"agent reply to {reply_to}: {obj.get('content')!r}"
    return f"{key}: {json.dumps(body)}"


async def main(args: argparse.Namespace, contact: dict[str, Any]) -> int:
    url, exchange_name, connector = target(args)
    published_id = contact.get("publishedObject", {}).get("id")
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        # our own queue: the outcome (reply_to) and the bridge's events and publications
        inbox = await channel.declare_queue(exclusive=True)
        for pattern in (f"{connector}.event.*", f"{connector}.publication.*"):
            await inbox.bind(exchange_name, pattern)
        exchange = await channel.get_exchange(exchange_name, ensure=False)
        message_id = str(uuid.uuid4())
        await exchange.publish(
            aio_pika.Message(
                json.dumps(contact).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,  # the bridge's dedupe key: keep it on a resend
                reply_to=inbox.name,
            ),
            routing_key=f"{connector}.contact.new",
        )
        print(f"published contact {published_id} as {message_id}", flush=True)
        outcome = replied = False
        try:
            async with asyncio.timeout(args.timeout), inbox.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        body = json.loads(message.body)
                        if message.routing_key == inbox.name:  # sent to our reply_to
                            outcome = True
                            verdict = "accepted" if body.get("errorCode") == 0 else "rejected"
                            print(f"outcome: {verdict} {body}", flush=True)
                        else:
                            key = message.routing_key or ""
                            print(line(key, body), flush=True)
                            replied |= ".publication." in key
                    if args.once and outcome and replied:
                        return 0
        except TimeoutError:
            if args.once:
                print(f"no outcome and agent reply within {args.timeout:g} s", file=sys.stderr)
                return 1
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contact", help="New Contact JSON file")
    parser.add_argument("--config", help="the bridge's TOML configuration")
    parser.add_argument("--amqp-url")
    parser.add_argument("--exchange")
    parser.add_argument("--connector")
    parser.add_argument("--once", action="store_true", help="stop after outcome and a reply")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        arguments = parse()
        body = json.loads(Path(arguments.contact).read_text())
        raise SystemExit(asyncio.run(main(arguments, body)))
    except KeyboardInterrupt:
        raise SystemExit(0) from None
