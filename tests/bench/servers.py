"""The webhooks the ingress benchmark measures, each in a process of its own.

    python tests/bench/servers.py bridge --prefix P --port 0 [--reuse-port] [--spool DIR]
    python tests/bench/servers.py bare   --prefix P --port 0

``bridge`` is the bridge's webhook as app.py mounts it (spool, broker, publisher with
confirms, metrics, logs at warning); ``bare`` is the simplest honest webhook: aiohttp
reads the body, aio-pika publishes it persistent and awaits the confirm, then 200 (no
validation, canonical form, spool, metrics or logs). Both publish to exchange P (which
must exist: the bridge declares it, `bare` only looks it up) with routing key
``facebook.event.delivered``. Each prints ``READY <port>`` once it answers, then serves
until stdin closes or SIGTERM, so the benchmark reads its CPU and RSS from /proc and
py-spy can attach to it alone:

    py-spy record -p <pid> -d 10 -o profile.svg &  wrk -t1 -c64 -d10s -s post.lua URL

With ``BENCH_BRIDGE_TREE=<checkout>`` the bridge imported is that checkout's (bench_ingress
measures it as ``bridge_before`` when ``BENCH_BEFORE=<checkout>`` is set).

`--reuse-port` (bridge) binds with SO_REUSEPORT: several instances then share one port
and the kernel spreads the connections (the scale-out figure of docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
from aiohttp import web

# BENCH_BRIDGE_TREE: serve the bridge of another checkout (a before/after in one run).
sys.path[:0] = [os.environ.get("BENCH_BRIDGE_TREE") or str(Path(__file__).resolve().parents[2])]

from bridge import logs  # noqa: E402
from bridge.broker import Broker  # noqa: E402
from bridge.config import Config, parse  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.publisher import Publisher  # noqa: E402
from bridge.spool import Spool  # noqa: E402
from bridge.topology import Topology, properties  # noqa: E402
from bridge.webhook import add_routes, server_options  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
C = "facebook"
OK = b'{"errorCode":0,"errorText":"NO_ERROR"}'


def bench_config(prefix: str, spool_dir: str, queue_type: str) -> Config:
    """The bridge's configuration for the benchmark: one connector, no secret."""
    return parse(
        f"""
[broker]
url = "{AMQP_URL}"
exchange = "{prefix}"
queue_type = "{queue_type}"
[spool]
dir = "{spool_dir}"
[[connectors]]
name = "{C}"
title = "facebook"
token = "bench-token"
""",
        {},
    )


@contextlib.asynccontextmanager
async def bridge_app(config: Config) -> AsyncIterator[web.Application]:
    """Spool + broker + publisher + the webhook routes, as app.py mounts them."""
    metrics = Metrics()
    topology = Topology(config.broker.exchange, config.broker.queue_type)
    async with (
        Spool(config.spool.dir, max_bytes=config.spool.max_bytes, metrics=metrics) as spool,
        Broker(config.broker, topology, connectors=[C], metrics=metrics) as broker,
        Publisher(broker, spool=spool) as pub,
    ):
        app = web.Application(client_max_size=config.http.max_body_bytes)
        add_routes(app, config, pub, metrics)
        app["options"] = server_options(config, metrics)
        app["metrics"] = metrics
        yield app


@contextlib.asynccontextmanager
async def bare_app(prefix: str) -> AsyncIterator[web.Application]:
    """The bare webhook (see the module docstring)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(prefix, ensure=False)
        key = Topology.event_key(C, "delivered")

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            p = properties(connector=C, routing_key=key, message_id=uuid.uuid4().hex)
            message = aio_pika.Message(
                body,
                content_type=p.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=p.message_id,
                timestamp=p.timestamp,
                app_id=p.app_id,
                type=p.message_type,
                headers=p.headers,
            )
            await exchange.publish(message, key, mandatory=True)
            return web.Response(body=OK, content_type="application/json")

        app = web.Application()
        app.router.add_post(f"/webhook/{C}", handle)
        app["options"] = {"access_log": None}
        yield app
    finally:
        await connection.close()


async def serve(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="oscc-bench-spool-") as tmp:
        spool_dir = args.spool or tmp
        if args.kind == "bridge":
            app_cm = bridge_app(bench_config(args.prefix, spool_dir, args.queue_type))
        else:
            app_cm = bare_app(args.prefix)
        async with app_cm as app:
            runner = web.AppRunner(app, **app["options"])
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=args.reuse_port)
            await site.start()
            print(f"READY {runner.addresses[0][1]}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            if stat.S_ISFIFO(os.fstat(0).st_mode):  # a pipe from the benchmark: EOF = stop
                loop.add_reader(0, lambda: stop.set() if not os.read(0, 1) else None)
            await stop.wait()
            await runner.cleanup()
            if "metrics" in app and os.environ.get("BENCH_METRICS"):  # what the bridge saw
                for line in app["metrics"].exposition().decode().splitlines():
                    if line.startswith(("oscc_bridge_webhook_duration", "oscc_bridge_publish")):
                        print(line, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["bridge", "bare"])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--spool", help="spool directory (default: a temporary one)")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    args = parser.parse_args()
    logs.configure("warning", "console")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
