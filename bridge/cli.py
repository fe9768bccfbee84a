"""Command line: ``oscc-bridge VERB`` (DESIGN.md § Command line).

Exit codes: 0 clean stop, 2 usage, 3 bad configuration, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bridge import config as config_mod
from bridge.errors import BridgeError, ConfigError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(
        prog="oscc-bridge",
        description="Bridge OpenScape Contact Center's OpenMedia Framework to RabbitMQ.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            type=Path,
            default=Path(os.environ.get("OSCC_BRIDGE_CONFIG", config_mod.DEFAULT_PATH)),
            help="TOML configuration file (default: %(default)s)",
        )
        return p

    with_config(sub.add_parser("run", help="run the bridge"))
    with_config(sub.add_parser("check-config", help="validate a configuration file"))

    from bridge import simulator

    simulator.add_arguments(sub.add_parser("simulator", help="run the OSCC simulator"))

    sub.add_parser("demo", help="simulator + bridge + a few contacts, with live output")

    send = with_config(sub.add_parser("send-contact", help="publish a New Contact"))
    send.add_argument("file", nargs="?", default="-", help="JSON file, or - for stdin")
    send.add_argument("--connector", help="connector name (default: the first configured)")
    send.add_argument(
        "--no-wait", action="store_true", help="do not wait for the accepted/rejected outcome"
    )
    send.add_argument("--timeout", type=float, default=30.0)

    tail = with_config(sub.add_parser("tail", help="print what the bridge publishes"))
    tail.add_argument("pattern", nargs="?", default="#", help="routing key pattern (default: #)")
    tail.add_argument("--json", action="store_true", help="print raw JSON lines")

    sub.add_parser("schema", help="JSON Schema of every message on the AMQP interface")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    verbs: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run,
        "check-config": _check_config,
        "simulator": _simulator,
        "demo": _demo,
        "send-contact": _send_contact,
        "tail": _tail,
        "schema": _schema,
    }
    try:
        return verbs[args.verb](args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config)


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"{args.config}: OK")
    print(f"  broker   {config_mod.mask_url(config.broker.url)} exchange={config.broker.exchange}")
    print(f"  oscc     {config.oscc.url} verify_tls={config.oscc.verify_tls}")
    print(f"  webhook  {config.http.host}:{config.http.port}")
    for c in config.connectors:
        print(f"  connector {c.name}: title={c.title} webhookURL={_public_webhook(config, c)}")
    return EXIT_OK


def _public_webhook(config: config_mod.Config, c: config_mod.ConnectorConfig) -> str:
    url = config_mod.webhook_url(config, c)
    return url.replace(c.webhook_secret, "***") if c.webhook_secret else url


def _run(args: argparse.Namespace) -> int:
    config = _load(args)
    from bridge import app, logs

    logs.configure(config.log.level, config.log.format)
    try:
        asyncio.run(_until_signal(lambda stop: app.run(config, stop)))
    except ConfigError:
        raise  # found at start (e.g. the broker refused the topology): main() exits 3
    except BridgeError as exc:
        logs.get_logger("bridge").error("bridge stopped on an error", error=str(exc))
        return EXIT_ERROR
    return EXIT_OK


async def _until_signal(body: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `body(stop)` and return its result; SIGTERM and SIGINT only set `stop`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await body(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _simulator(args: argparse.Namespace) -> int:
    from bridge import simulator

    return simulator.run_from_args(args)


def _demo(args: argparse.Namespace) -> int:
    from bridge import demo

    return asyncio.run(_until_signal(demo.run))


def _send_contact(args: argparse.Namespace) -> int:
    from bridge import amqptools

    return asyncio.run(amqptools.send_contact(args))


def _tail(args: argparse.Namespace) -> int:
    from bridge import amqptools

    asyncio.run(_until_signal(lambda stop: amqptools.tail(args, stop)))
    return EXIT_OK


def _schema(_: argparse.Namespace) -> int:
    from bridge import schema

    return schema.main([])
