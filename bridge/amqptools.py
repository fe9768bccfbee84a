"""The AMQP side as a user sees it: ``send-contact``, ``tail`` and readable message lines.

Every tool reads the bridge's own configuration (--config) and turns broker failures into
one line (`ToolError`) that the CLI prints instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import msgspec

from bridge import config as config_mod
from bridge.errors import ConfigError, Rejected
from bridge.oscc import codec
from bridge.topology import Topology


class ToolError(Exception):
    """A command-line tool failed: one line saying what failed and what to do, and the
    exit code (1, or 3 for bad configuration)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def broker_target(args: argparse.Namespace) -> tuple[config_mod.Config, Topology]:
    """The configuration named by --config and its topology.

    Never guessed: a missing file is a ConfigError (exit 3), not a default exchange that
    happens to exist on somebody's broker.
    """
    path: Path = args.config
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such configuration file; give --config FILE (the one the bridge runs with)"
        )
    config = config_mod.load(path)
    return config, Topology(config.broker.exchange, config.broker.queue_type)


def connector_of(config: config_mod.Config, name: str | None) -> str:
    """`name` when the configuration has it, else the first connector."""
    names = [c.name for c in config.connectors]
    if name is None:
        return names[0]
    if name not in names:
        raise ToolError(
            f"no connector {name!r} in the configuration (it has {', '.join(names)})", 2
        )
    return name


def explain(exc: BaseException, url: str, what: str = "") -> ToolError:
    """A broker failure as one line: what failed and what to do."""
    where = config_mod.mask_url(url)
    match exc:
        case aiormq.exceptions.ProbableAuthenticationError():
            return ToolError(
                f"the broker at {where} refused the login: check the user and password "
                "in broker.url (or AMQP_URL)"
            )
        case aiormq.exceptions.ChannelNotFoundEntity():
            missing = re.search(r"no (?:exchange|queue) '[^']*'", str(exc))
            what = missing.group().removeprefix("no ") if missing else what
            return ToolError(
                f"{what or 'a queue or exchange'} does not exist on {where}: start the "
                "bridge with this configuration once (it declares it), or check "
                "broker.exchange"
            )
        case aiormq.exceptions.AMQPConnectionError() | OSError() | TimeoutError():
            return ToolError(
                f"cannot reach the broker at {where} ({exc}): is RabbitMQ running, and is "
                "broker.url (or AMQP_URL) right?"
            )
    return ToolError(f"broker error on {where}: {exc}")


@contextlib.asynccontextmanager
async def connected(
    config: config_mod.Config, what: str = ""
) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A connection to the first broker URL that answers; every broker failure inside
    becomes a ToolError (`what` names the entity the block works with)."""
    urls = config.broker.all_urls
    connection = None
    for i, url in enumerate(urls):
        try:
            connection = await aio_pika.connect(url, timeout=10)
            break
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            if i == len(urls) - 1 or isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
                raise explain(exc, url) from None
    assert connection is not None
    try:
        async with connection:
            yield connection
    except aiormq.exceptions.AMQPError as exc:
        raise explain(exc, urls[0], what) from None


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
            if doc.get("reason"):
                what += f": {_short(doc['reason'], 200)}"
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


def _read_contact(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read the contact file {file}: {exc.strerror}", 2) from None


async def _waiting_line(channel: aio_pika.abc.AbstractChannel, queue: str) -> str:
    """What send-contact is waiting for, judged from the contact queue."""
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    if not result.consumer_count:
        return f"waiting: nobody consumes {queue}; is the bridge running with this configuration?"
    if result.message_count:
        return f"waiting: {result.message_count} message(s) in {queue} before the bridge takes it"
    return (
        "waiting: the bridge has the contact and is forwarding it to OSCC; it retries while "
        "OSCC answers NOT_READY or the session is down (Ctrl-C stops waiting; the contact "
        "stays with the bridge)"
    )


async def send_contact(args: argparse.Namespace) -> int:
    """Validate a New Contact locally, publish it, and wait for its outcome."""
    config, topology = broker_target(args)
    connector = connector_of(config, args.connector)
    data = await asyncio.to_thread(_read_contact, args.file)
    try:
        parsed = codec.decode_new_contact(data)
    except Rejected as exc:
        print(f"rejected before sending: {exc.code} {exc.text}", file=sys.stderr)
        return 1
    message_id = str(uuid.uuid4())
    key = topology.contact_new_key(connector)
    async with connected(config, f"exchange {topology.exchange!r}") as connection:
        channel = await connection.channel(publisher_confirms=True)
        # exclusive, not auto-delete: the wait below re-subscribes between status lines,
        # and an auto-delete queue goes with its last consumer
        replies = await channel.declare_queue(exclusive=True)
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                codec.encode(parsed.body),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                reply_to=None if args.no_wait else replies.name,
            ),
            routing_key=key,
        )
        print(f"sent {message_id} to {key}", flush=True)
        if args.no_wait:
            return 0
        outcome = await _outcome(
            replies, args.timeout, args.status_every, channel, topology, connector
        )
        if outcome is None:
            raise ToolError(f"no outcome within {args.timeout:g} s (is the bridge running?)")
        body, headers = outcome
        # The copy sent to reply_to is typed after the reply queue, not after the outcome:
        # judge by the error code the outcome carries.
        accepted = _outcome_code(body, headers) == 0
        print(describe(topology.contact_outcome_key(connector, accepted), body, headers))
        return 0 if accepted else 1


async def _outcome(
    replies: aio_pika.abc.AbstractQueue,
    timeout: float,  # noqa: ASYNC109 (a budget for the whole wait, not one call)
    status_every: float,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    connector: str,
) -> tuple[bytes, dict[str, Any]] | None:
    """The first outcome on `replies` within `timeout`; says what it waits for every
    `status_every` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(min(left, status_every)), replies.iterator() as it:
                async for msg in it:
                    await msg.ack()
                    return msg.body, dict(msg.headers or {})
        except TimeoutError:
            if deadline - loop.time() > 0:
                line = await _waiting_line(channel, topology.contact_queue(connector))
                print(line, file=sys.stderr, flush=True)
    return None


def tail_json(msg: aio_pika.abc.AbstractIncomingMessage) -> str:
    """One JSON line for `tail --json`: routing key, headers, message_id and body."""
    try:
        body: Any = msgspec.json.decode(msg.body)
    except msgspec.DecodeError:
        body = msg.body.decode(errors="replace")
    line = {
        "routing_key": msg.routing_key,
        "message_id": msg.message_id,
        "correlation_id": msg.correlation_id,
        "headers": dict(msg.headers or {}),
        "body": body,
    }
    return json.dumps(line, ensure_ascii=False, default=str)


async def tail(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Print every message the bridge publishes that matches the pattern, until `stop`."""
    config, topology = broker_target(args)
    async with connected(config, f"exchange {topology.exchange!r}") as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(topology.exchange, routing_key=args.pattern)
        print(f"listening on exchange {topology.exchange!r} for {args.pattern!r} (Ctrl-C stops)")

        async def show(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with msg.process():
                if args.json:
                    print(tail_json(msg), flush=True)
                else:
                    headers = dict(msg.headers or {})
                    print(describe(msg.routing_key or "", msg.body, headers), flush=True)

        tag = await queue.consume(show)
        await stop.wait()
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
