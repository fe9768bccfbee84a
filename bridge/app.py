"""One lifecycle for the whole bridge.

Each component is an async context manager entered on one AsyncExitStack, so teardown
runs in reverse order::

    spool -> broker -> publisher -> OSCC clients -> HTTP listeners -> connectors' duties

The webhook listener takes OSCC's calls from the start, for every connector, whether or
not this instance owns it and whether or not the broker is there (the spool takes them
then). Once the broker is up, the publisher opens its channel and each connector's
`Duty` competes for the connector's lease; the owner runs the session and the consumer.

On stop, each owner's consumer drains first (in-flight contacts finish or go back to
their queue), then it hands the lease over with its session token, then the webhook
listener closes (it keeps accepting OSCC's calls while the rest drains, because the
publisher is still there to take them), and the publisher closes last. Signals only set
the `stop` Event (see `cli.py`); a fatal refusal by the broker found after the start (bad
credentials, a refused topology) ends `run` with a ConfigError (exit 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge import logs, tls
from bridge.backoff import retry
from bridge.broker import BROKER_ERRORS, Broker
from bridge.config import Config, ConnectorConfig
from bridge.duty import Duty
from bridge.errors import BrokerUnavailable, ConfigError
from bridge.health import Health
from bridge.lifecycle import watch
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


def instance_id(config: Config) -> str:
    """``ha.instance``, else ``<hostname>-<pid>``."""
    return config.ha.instance or f"{socket.gethostname()}-{os.getpid()}"


class Bridge:
    """The running bridge: every component of every connector, in one process."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.instance = instance_id(config)
        self.topology = Topology(config.broker.exchange, config.broker.queue_type)
        self.duties: dict[str, Duty] = {}
        self.ports: dict[str, int] = {}  # "webhook" and, when separate, "admin"
        self.tls: tls.ServerTls | None = None  # the webhook listener's, when it speaks HTTPS
        self._stack = contextlib.AsyncExitStack()
        self._failed: asyncio.Future[None] | None = None
        logs.bind_global(instance=self.instance)
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

    @property
    def failed(self) -> asyncio.Future[None]:
        """Done with a ConfigError when the broker refused the bridge after the start."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    @property
    def supervisors(self) -> dict[str, SessionSupervisor]:
        """The session supervisors of the connectors this instance owns right now."""
        return {n: d.supervisor for n, d in self.duties.items() if d.supervisor is not None}

    async def session(self, name: str, within: float = 30.0) -> SessionSupervisor:
        """The session supervisor of connector `name` once this instance owns it
        (TimeoutError after `within` s)."""
        deadline = time.monotonic() + within
        while (supervisor := self.duties[name].supervisor) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.instance} does not own {name} after {within:g} s")
            await asyncio.sleep(0.05)
        return supervisor

    async def _start(self) -> None:
        config, stack = self.config, self._stack
        names = [c.name for c in config.connectors]
        self.spool = Spool(
            Path(config.spool.dir), max_bytes=config.spool.max_bytes, metrics=self.metrics
        )
        await stack.enter_async_context(self.spool)
        self.broker = Broker(
            config.broker,
            self.topology,
            connectors=names,
            metrics=self.metrics,
            name=f"oscc-bridge {self.topology.exchange} {self.instance}",
            background=True,
        )
        await stack.enter_async_context(self.broker)
        self.broker.failed.add_done_callback(self._broker_failed)
        # Not started until the broker is up: meanwhile it is not connected, so every
        # webhook goes to the spool.
        self.publisher = Publisher(self.broker, spool=self.spool)
        stack.push_async_callback(self.publisher.stop)
        clients = {
            c.name: await stack.enter_async_context(
                OsccClient(config.oscc, connector=c.name, metrics=self.metrics)
            )
            for c in config.connectors
        }
        self.health = Health(
            metrics=self.metrics,
            broker=self.broker,
            spool=self.spool,
            duties=self.duties,
            instance=self.instance,
            room=config.http.max_body_bytes,
        )
        await stack.enter_async_context(self._http())
        for c in config.connectors:
            duty = Duty(
                config,
                c,
                broker=self.broker,
                publisher=self.publisher,
                client=clients[c.name],
                metrics=self.metrics,
                instance=self.instance,
                on_change=self._on_session_change(c),
            )
            # Listed at once: /status answers (as a standby) while the duty starts.
            self.duties[c.name] = duty
            await stack.enter_async_context(duty)
        online = watch(
            asyncio.create_task(self._online(), name="bridge-online"), log, "bridge.online_crashed"
        )
        stack.push_async_callback(_cancel, online)
        log.info(
            "bridge.started",
            connectors=names,
            webhook_port=self.ports.get("webhook"),
            exchange=self.topology.exchange,
            broker=self.broker.connected,
        )

    async def _online(self) -> None:
        """Once the broker is up: open the publisher's channel, compete for every
        connector. Each step is idempotent and retried while the broker comes and goes."""
        await self.broker.up.wait()

        async def join() -> None:
            await self.publisher.start()
            for duty in self.duties.values():
                await duty.compete()

        def failed(exc: BaseException, delay: float) -> None:
            log.warning("bridge.online_failed", error=repr(exc), retry_in=round(delay, 2))

        try:
            await retry(
                join,
                retry_on=(BrokerUnavailable, *BROKER_ERRORS, TimeoutError),
                base=0.5,
                cap=5.0,
                rng=random.Random(),
                on_retry=failed,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.failed.done():
                self.failed.set_exception(exc)
            raise
        log.info("bridge.online", instance=self.instance)

    def _broker_failed(self, future: asyncio.Future[None]) -> None:
        if future.cancelled() or self.failed.done():
            return
        if (exc := future.exception()) is not None:
            self.failed.set_exception(exc)

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[None]:
        """The webhook listener and, when configured apart, the admin listener."""
        cfg = self.config.http
        self.tls = tls.ServerTls(cfg) if tls.enabled(cfg) else None
        app = web.Application(client_max_size=cfg.max_body_bytes)
        add_webhook_routes(app, self.config, self.publisher, self.metrics)
        if self.tls is not None and self.tls.verifies_clients:
            app.middlewares.append(tls.refuse_stale_sessions(self.tls))
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
                webhook = role == "webhook"
                context = self.tls.context if self.tls and webhook else None
                site = web.TCPSite(
                    runner, host, port, ssl_context=context, reuse_port=webhook and cfg.reuse_port
                )
                await _listen(site, "http.port" if webhook else "http.admin_port")
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
            # `body` names the instance (Duty adds it); never a token
            key = self.topology.session_key(c.name, change)
            await self.publisher.publish_or_spool(key, codec.encode(body), connector=c.name)

        return publish


_IN_USE = {
    "http.port": "another bridge? `http.reuse_port = true` lets instances on one host share it",
    "http.admin_port": "each instance needs an admin_port of its own",
}


async def _listen(site: web.TCPSite, key: str) -> None:
    """Start `site`; a port that cannot be had is a configuration error naming `key`."""
    try:
        await site.start()
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += f" ({_IN_USE[key]})"
        raise ConfigError(f"{key}: cannot listen on {site.name}: {why}", key=key) from exc


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
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((stopping, bridge.failed), return_when=asyncio.FIRST_COMPLETED)
        await _cancel(stopping)
        if watcher:
            await _cancel(watcher)
        log.info("bridge.stopping", order="consumers, handover, sessions, listeners, broker")
    log.info("bridge.stopped")
    if bridge.failed.done() and (exc := bridge.failed.exception()) is not None:
        raise exc


async def _reload_on(reload: asyncio.Event, bridge: Bridge) -> None:
    while True:
        await reload.wait()
        reload.clear()
        try:
            bridge.reload_tls()
        except Exception:  # the watcher must outlive one bad reload
            log.exception("tls.reload_failed")


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it (its own failure was logged where it happened)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
