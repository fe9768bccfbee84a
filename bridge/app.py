"""One lifecycle for the whole bridge.

Each component is an async context manager entered on one AsyncExitStack, so teardown
runs in reverse order::

    spool -> broker -> publisher -> HTTP listeners -> OSCC clients -> supervisors -> consumers

On stop, consumers drain first (in-flight contacts finish or go back to their queue),
then sessions stop, then the webhook listener closes (it keeps accepting OSCC's calls
while the rest drains, because the publisher is still there to take them), and the
publisher closes last. Signals only set the `stop` Event (see `cli.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge import logs, tls
from bridge.broker import Broker
from bridge.config import Config, ConnectorConfig
from bridge.consumer import Consumer
from bridge.health import Health
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.oscc.client import OsccClient
from bridge.publisher import Publisher
from bridge.session import SessionSupervisor
from bridge.spool import Spool
from bridge.topology import SessionChange, Topology
from bridge.webhook import add_routes as add_webhook_routes
from bridge.webhook import server_options

log = logs.get_logger("bridge.app")

SHUTDOWN_TIMEOUT = 30.0


class Bridge:
    """The running bridge: every component of every connector, in one process."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.topology = Topology(config.broker.exchange, config.broker.queue_type)
        self.supervisors: dict[str, SessionSupervisor] = {}
        self.consumers: dict[str, Consumer] = {}
        self.ports: dict[str, int] = {}  # "webhook" and, when separate, "admin"
        self.tls: tls.ServerTls | None = None  # the webhook listener's, when it speaks HTTPS
        self._stack = contextlib.AsyncExitStack()
        for url in config.broker.all_urls:
            logs.register_secret(urllib.parse.urlsplit(url).password)
        for c in config.connectors:
            logs.register_secret(c.token)
            self.metrics.add_connector(c.name)
            logs.register_secret(c.webhook_secret)

    async def __aenter__(self) -> Bridge:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        config, stack = self.config, self._stack
        names = [c.name for c in config.connectors]
        self.spool = Spool(
            Path(config.spool.dir), max_bytes=config.spool.max_bytes, metrics=self.metrics
        )
        await stack.enter_async_context(self.spool)
        self.broker = await stack.enter_async_context(
            Broker(config.broker, self.topology, connectors=names, metrics=self.metrics)
        )
        self.publisher = await stack.enter_async_context(Publisher(self.broker, spool=self.spool))
        self.health = Health(
            metrics=self.metrics,
            broker=self.broker,
            spool=self.spool,
            supervisors=self.supervisors,
        )
        await stack.enter_async_context(self._http())
        clients = {
            c.name: await stack.enter_async_context(
                OsccClient(config.oscc, connector=c.name, metrics=self.metrics)
            )
            for c in config.connectors
        }
        for c in config.connectors:
            sup = SessionSupervisor(
                config, c, clients[c.name], self.metrics, on_change=self._on_session_change(c)
            )
            self.supervisors[c.name] = await stack.enter_async_context(sup)
        for c in config.connectors:
            consumer = Consumer(
                config,
                c,
                self.broker,
                self.publisher,
                self.supervisors[c.name],
                clients[c.name],
                self.metrics,
            )
            self.consumers[c.name] = await stack.enter_async_context(consumer)
        log.info(
            "bridge.started",
            connectors=names,
            webhook_port=self.ports.get("webhook"),
            exchange=self.topology.exchange,
        )

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[None]:
        """The webhook listener and, when configured apart, the admin listener."""
        cfg = self.config.http
        self.tls = tls.ServerTls(cfg) if tls.enabled(cfg) else None
        app = web.Application(client_max_size=cfg.max_body_bytes)
        add_webhook_routes(app, self.config, self.publisher, self.metrics)
        separate = bool(cfg.admin_port or cfg.admin_host)
        admin = web.Application() if separate else app
        self.health.add_routes(admin)
        options = server_options(self.config, self.metrics)
        runners = [(web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT, **options), "webhook")]
        if separate:
            admin_runner = web.AppRunner(admin, access_log=None, logger=options["logger"])
            runners.append((admin_runner, "admin"))
        try:
            for runner, role in runners:
                await runner.setup()
                host, port = (
                    (cfg.admin_host or cfg.host, cfg.admin_port)
                    if role == "admin"
                    else (cfg.host, cfg.port)
                )
                context = self.tls.context if self.tls and role == "webhook" else None
                site = web.TCPSite(runner, host, port, ssl_context=context)
                await site.start()
                self.ports[role] = _bound_port(runner)
            yield
        finally:
            for runner, _ in reversed(runners):
                await runner.cleanup()

    def reload_tls(self) -> bool:
        """Re-read the TLS files for new webhook handshakes (SIGHUP); False when it failed
        (the old certificate stays) or the listener has no TLS."""
        return self.tls.reload() if self.tls else False

    def _on_session_change(self, c: ConnectorConfig) -> Any:
        async def publish(change: SessionChange, body: dict[str, Any]) -> None:
            key = self.topology.session_key(c.name, change)
            await self.publisher.publish_or_spool(key, codec.encode(body), connector=c.name)

        return publish


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return 0


async def run(config: Config, stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
    """Run the bridge until `stop` is set, then shut down in order; each time `reload` is
    set, re-read the TLS files."""
    async with Bridge(config) as bridge:
        watcher = asyncio.create_task(_reload_on(reload, bridge)) if reload else None
        await stop.wait()
        if watcher:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        log.info("bridge.stopping", order="consumers, sessions, listeners, broker")
    log.info("bridge.stopped")


async def _reload_on(reload: asyncio.Event, bridge: Bridge) -> None:
    while True:
        await reload.wait()
        reload.clear()
        try:
            bridge.reload_tls()
        except Exception:  # the watcher must outlive one bad reload
            log.exception("tls.reload_failed")
