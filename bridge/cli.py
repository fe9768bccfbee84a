"""Command line: ``oscc-bridge VERB`` (DESIGN.md § Command line).

Exit codes: 0 clean stop, 2 usage, 3 bad configuration, 1 anything else. Errors are one
line on stderr (what failed, what to do), never a traceback; ``OSCC_BRIDGE_DEBUG=1``
adds the traceback. The verbs only parse and print: the work is in `bridge.amqptools`,
`bridge.deadletters`, `bridge.schema`, `bridge.inputschema` and `bridge.asyncapi`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bridge import __version__
from bridge import config as config_mod
from bridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from bridge import deadletters

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(
        prog="oscc-bridge",
        description="Bridge OpenScape Contact Center's OpenMedia Framework to RabbitMQ.",
    )
    parser.add_argument("--version", action="version", version=f"oscc-bridge {__version__}")
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
    send.add_argument("--timeout", type=float, default=30.0, help="seconds (default: 30)")
    send.add_argument(
        "--status-every",
        type=float,
        default=5.0,
        help="say what it is waiting for every this many seconds (default: 5)",
    )

    tail = with_config(sub.add_parser("tail", help="print what the bridge publishes"))
    tail.add_argument("pattern", nargs="?", default="#", help="routing key pattern (default: #)")
    tail.add_argument(
        "--json", action="store_true", help="one JSON line each: routing key, headers, body"
    )

    schema = sub.add_parser("schema", help="JSON Schema of every message on the AMQP interface")
    what = schema.add_mutually_exclusive_group()
    what.add_argument("--asyncapi", action="store_true", help="the AsyncAPI 3.0 document (YAML)")
    what.add_argument(
        "--input", action="store_true", help="the lenient schema of what the bridge accepts"
    )
    schema.add_argument("--prefix", default="oscc", help="broker.exchange, for --asyncapi names")

    _dead_parsers(sub, with_config)
    return parser


def _dead_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    dead = sub.add_parser("dead", help="list, show, replay or purge dead letters")
    verbs = dead.add_subparsers(dest="dead_verb", metavar="ACTION", required=True)
    listing = with_config(verbs.add_parser("list", help="one line per dead letter"))
    listing.add_argument("--connector", help="one connector (default: every configured one)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = with_config(verbs.add_parser("show", help="one dead letter in full (JSON)"))
    show.add_argument("id", help="its message_id")
    show.add_argument("--connector", help="one connector (default: every configured one)")
    for name, text in (
        ("replay", "move dead letters back to their queue"),
        ("purge", "delete dead letters for good"),
    ):
        p = with_config(verbs.add_parser(name, help=text))
        p.add_argument("--connector", required=True)
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", nargs="+", metavar="ID", help="these message_ids")
        which.add_argument("--all", action="store_true", help="every dead letter")
        which.add_argument("--reason", metavar="TEXT", help="those whose reason contains TEXT")
        if name == "purge":
            p.add_argument("--yes", action="store_true", help="really delete them")


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
        "dead": _dead,
    }
    from bridge.amqptools import ToolError

    try:
        return verbs[args.verb](args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ToolError as exc:
        print(f"{args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the last resort: one line, the traceback only on request
        if os.environ.get("OSCC_BRIDGE_DEBUG"):
            raise
        print(
            f"{args.verb}: unexpected {type(exc).__name__}: {exc} "
            "(OSCC_BRIDGE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config)


def _check_config(args: argparse.Namespace) -> int:
    from bridge import configcheck

    report = configcheck.diagnose(args.config)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.config is None:
        count = len(report.problems)
        print(f"configuration error: {args.config}: {count} problem(s)", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    config = report.config
    print(f"{args.config}: OK")
    for var, key in (("AMQP_URL", "broker.url"), ("OSCC_URL", "oscc.url")):
        if os.environ.get(var):
            print(f"  ({key} comes from {var})")
    urls = ", ".join(config_mod.mask_url(u) for u in config.broker.all_urls)
    print(f"  broker   {urls} exchange={config.broker.exchange}")
    print(f"  oscc     {config.oscc.url} verify_tls={config.oscc.verify_tls}")
    tls = (
        " https" + (" client-cert" if config.http.tls_client_ca else "")
        if config.http.tls_cert
        else ""
    )
    print(f"  webhook  {config.http.host}:{config.http.port}{tls}")
    print(f"  spool    {config.spool.dir}")
    if config.tracing.enabled:
        print(f"  tracing  OTLP {config.tracing.endpoint or '(OTEL_EXPORTER_OTLP_* variables)'}")
    for c in config.connectors:
        print(f"  connector {c.name}: title={c.title} webhookURL={_public_webhook(config, c)}")
    return EXIT_OK


def _public_webhook(config: config_mod.Config, c: config_mod.ConnectorConfig) -> str:
    url = config_mod.webhook_url(config, c)
    return url.replace(c.webhook_secret, "***") if c.webhook_secret else url


def _run(args: argparse.Namespace) -> int:
    config = _load(args)
    from bridge import app, logs, tracing

    logs.configure(config.log.level, config.log.format)
    tracing.setup(config.tracing)  # before the bridge is built: its parts ask once

    async def body(stop: asyncio.Event) -> None:
        reload = asyncio.Event()  # SIGHUP: re-read the webhook's TLS files
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        try:
            await app.run(config, stop, reload)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    try:
        asyncio.run(_until_signal(body))
    except ConfigError:
        raise  # found at start-up (TLS files, spool.dir in use, a refused topology): exit 3
    except BridgeError as exc:
        logs.get_logger("bridge").error("bridge.failed", error=str(exc))
        return EXIT_ERROR
    finally:
        tracing.shutdown()  # exports the spans still buffered
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


def _schema(args: argparse.Namespace) -> int:
    from bridge import asyncapi, inputschema, schema

    if args.asyncapi:
        sys.stdout.write(asyncapi.to_yaml(asyncapi.asyncapi(args.prefix)) + "\n")
        return EXIT_OK
    doc = inputschema.input_schema() if args.input else schema.schemas()
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def _dead(args: argparse.Namespace) -> int:
    return asyncio.run(_dead_async(args))


async def _dead_async(args: argparse.Namespace) -> int:
    from bridge import amqptools, deadletters

    config, topology = amqptools.broker_target(args)
    if args.connector is not None:
        amqptools.connector_of(config, args.connector)  # exit 2 naming the known ones
    names = [args.connector] if args.connector else [c.name for c in config.connectors]
    verb = args.dead_verb
    async with amqptools.connected(config, f"the dead-letter queue of {names}") as connection:
        if verb in ("list", "show"):
            found = [d for c in names for d in await deadletters.browse(connection, topology, c)]
            if verb == "show":
                return _show_dead([d for d in found if d.message_id == args.id], args.id)
            for d in found:
                print(json.dumps(d.summary(), ensure_ascii=False) if args.json else _dead_line(d))
            if not args.json:
                print(
                    f"{len(found)} dead letter(s) in {', '.join(map(topology.dead_queue, names))}"
                )
            return EXIT_OK
        chosen = deadletters.select(args.id or (), args.reason, args.all)
        c = names[0]
        if verb == "purge" and not args.yes:
            found = [d for d in await deadletters.browse(connection, topology, c) if chosen(d)]
            print(
                f"dead purge: would delete {len(found)} dead letter(s) of {c} for good; "
                "add --yes to do it",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if verb == "replay":
            result = await deadletters.replay(
                connection, topology, c, chosen, lambda d: print(f"replayed {d.message_id}")
            )
        else:
            result = await deadletters.purge(connection, topology, c, chosen)
        for why in result.skipped:
            print(f"not replayed: {why}", file=sys.stderr)
        done = "replayed" if verb == "replay" else "purged"
        print(f"{done} {len(result.done)}, left {result.kept} in {topology.dead_queue(c)}")
        return EXIT_ERROR if result.skipped else EXIT_OK


def _dead_line(d: deadletters.DeadLetter) -> str:
    when = d.when.strftime("%Y-%m-%d %H:%M:%S") if d.when else "-"
    code = f"{d.code} {d.text}" if d.code is not None else "-"
    replays = f" (replayed {d.replays}x)" if d.replays else ""
    return (
        f"{d.connector}  {d.message_id}  {when}  {code}  source={d.source_id}  {d.reason}{replays}"
    )


def _show_dead(found: list[deadletters.DeadLetter], wanted: str) -> int:
    if not found:
        print(f"dead: no dead letter with message_id {wanted!r}", file=sys.stderr)
        return EXIT_ERROR
    for d in found:
        print(json.dumps(d.detail(), indent=2, ensure_ascii=False, default=str))
    return EXIT_OK
