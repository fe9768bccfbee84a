"""The broker link: one robust aio-pika connection to RabbitMQ, shared by every part.

::

    start ── connect (fail fast: BrokerUnavailable) ── declare topology ──────────► up
                                                        └─ refused: ConfigError
    connection lost ──────────────────────────────────────────────────────────────► down
    reconnected ── re-declare topology (retried with backoff until it succeeds) ─► up
                                                                 listeners are told

`connected` is True only while the connection is open *and* the topology was declared on
it, so ``/readyz`` never reports a broker that lost the bridge's queues as ready. The
publisher and the consumers open their channels on this connection with `channel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from bridge import logs
from bridge.backoff import retry
from bridge.config import BrokerConfig, mask_url
from bridge.errors import BrokerUnavailable, ConfigError
from bridge.lifecycle import Service, watch
from bridge.metrics import Metrics
from bridge.topology import Topology

log = logs.get_logger("bridge.broker")

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 2.0
REDECLARE_TIMEOUT = 30.0

# Everything aio-pika/aiormq raise when the connection or channel is gone.
BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)


class Broker(Service):
    """Owns the robust connection and the topology declared on it.

    ``async with Broker(config.broker, topology, connectors=names, metrics=m) as broker:``
    connects to the first of ``config.all_urls`` and declares the topology; exit closes
    the connection. `add_listener` registers a callback run each time the broker is back
    up after a reconnect (the spool replayer wakes on it).
    """

    redeclare_base: float = 0.5  # first retry of a refused re-declaration after 0.5 s ...
    redeclare_cap: float = 10.0  # ... doubling up to 10 s

    def __init__(
        self,
        config: BrokerConfig,
        topology: Topology,
        *,
        connectors: Iterable[str],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.topology = topology
        self.connectors = list(connectors)
        self.metrics = metrics
        self._connection: AbstractRobustConnection | None = None
        self._up = False
        self._redeclaring: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._rng = random.Random()

    @property
    def url(self) -> str:
        """The URL connected to (the first of ``broker.all_urls``)."""
        return self.config.all_urls[0]

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (BrokerUnavailable when RabbitMQ cannot be reached) and declare the
        topology (ConfigError when RabbitMQ refuses it)."""
        if self._connection is not None:
            return
        url = self.url
        try:
            connection = await aio_pika.connect_robust(
                url,
                timeout=CONNECT_TIMEOUT,
                reconnect_interval=RECONNECT_INTERVAL,
                # Named after the exchange, so an operator (or a test) can tell bridges apart.
                client_properties={"connection_name": f"oscc-bridge {self.topology.exchange}"},
            )
        except (*BROKER_ERRORS, TimeoutError) as exc:
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {mask_url(url)}: {exc or type(exc).__name__}"
            ) from exc
        self._connection = connection
        try:
            await self._declare()
        except (
            aiormq.exceptions.ChannelPreconditionFailed,
            aiormq.exceptions.ChannelAccessRefused,
        ) as exc:
            await self._close()
            raise ConfigError(
                f"RabbitMQ refused the topology of exchange {self.topology.exchange!r}: {exc}"
                " (a queue or exchange exists with other arguments, e.g. broker.queue_type,"
                " or the user may not declare it)",
                key="broker",
            ) from exc
        except BaseException:
            await self._close()
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self._set_up(True)
        log.info("broker.connected", url=mask_url(url), exchange=self.topology.exchange)

    async def stop(self) -> None:
        """Stop any re-declaration and close the connection."""
        if self._redeclaring is not None:
            self._redeclaring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redeclaring
            self._redeclaring = None
        if self._connection is not None:
            self._connection.reconnect_callbacks.discard(self._on_reconnect)
            self._connection.close_callbacks.discard(self._on_close)
        await self._close()
        self._set_up(False)

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    # -- what the other parts use -------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the connection is open and the topology is declared on it."""
        return self._up and self._connection is not None and not self._connection.is_closed

    @property
    def connection(self) -> AbstractRobustConnection:
        """The robust connection."""
        if self._connection is None:
            raise RuntimeError("broker is not started")
        return self._connection

    async def channel(self, *, publisher_confirms: bool = True) -> AbstractRobustChannel:
        """A new robust channel on the connection (restored by aio-pika on reconnect)."""
        return await self.connection.channel(publisher_confirms=publisher_confirms)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (in the loop) whenever the broker is up again after a reconnect."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Undo `add_listener`."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # -- connection events --------------------------------------------------------------
    def _set_up(self, up: bool) -> None:
        self._up = up
        self.metrics.broker_connected.set(1 if up else 0)

    def _on_close(self, _: Any, exc: BaseException | None = None) -> None:
        if self._up:
            log.warning("broker.connection_lost", error=str(exc) if exc else None)
        self._set_up(False)

    async def _declare(self) -> None:
        """Declare the topology on a channel of its own: a refused declaration closes
        that channel, never one that publishes or consumes."""
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            await self.topology.declare(channel, self.connectors)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def _on_reconnect(self, _: Any) -> None:
        # Not inline: this runs inside aio-pika's reconnect; a slow declaration must not
        # hold it up. A newer reconnect supersedes an unfinished re-declaration.
        if self._redeclaring is not None:
            self._redeclaring.cancel()
        self._redeclaring = watch(
            asyncio.create_task(self._after_reconnect(), name="broker-redeclare"),
            log,
            "broker.redeclare_crashed",
        )

    async def _after_reconnect(self) -> None:
        self.metrics.broker_reconnects.inc()

        async def declare() -> None:
            # Brings back anything deleted while we were away, or a broker that lost its
            # state, before publishing resumes.
            async with asyncio.timeout(REDECLARE_TIMEOUT):
                await self._declare()

        def failed(exc: BaseException, delay: float) -> None:
            log.warning("broker.redeclare_failed", error=repr(exc), retry_in=round(delay, 2))

        # Up only once the topology is back: until then publishes spool and /readyz
        # says the broker is not there.
        await retry(
            declare,
            retry_on=Exception,
            base=self.redeclare_base,
            cap=self.redeclare_cap,
            rng=self._rng,
            on_retry=failed,
        )
        self._set_up(True)
        log.info("broker.reconnected")
        for listener in list(self._listeners):
            listener()
