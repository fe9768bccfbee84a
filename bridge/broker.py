"""The broker link: one robust aio-pika connection to RabbitMQ, shared by every part.

::

    start ── connect to a node of broker.urls ── declare topology ────────────────► up
               │ no node answers: keep trying in the background (backoff) ──────► up later
               └ ACCESS_REFUSED / NOT_ALLOWED, or the topology refused: ConfigError (exit 3)
    connection lost ──────────────────────────────────────────────────────────────► down
    reconnected (to the next node of broker.urls) ── re-declare topology (retried) ► up
                                                                 listeners are told

`connected` is True only while the connection is open *and* the topology was declared on
it, so nobody publishes into a broker that lost the bridge's queues. The publisher and
the consumers open their channels on this connection with `channel` once `up` is set.
A start with RabbitMQ down is not an error: webhooks go to the spool meanwhile (the
publisher is not connected), and a fatal refusal found later is set on `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable
from typing import Any

import aiormq
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from yarl import URL

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


class ClusterConnection(RobustConnection):
    """A robust connection that moves on to the next of `urls` whenever its connection
    closes or an attempt to connect fails, so reconnects try the cluster's nodes in turn.

    aio-pika's RobustConnection reconnects to its one `url`; it reports both a lost
    connection and a failed attempt through `_on_connection_close`, which is where the
    next URL is chosen. Parameters in the query string are read from the first URL only.
    """

    def __init__(self, urls: list[str], *, first: int = 0, **kwargs: Any) -> None:
        self.urls = [URL(u) for u in urls]
        self.node = first % len(self.urls)
        super().__init__(self.urls[self.node], **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if len(self.urls) > 1 and not self._close_called:
            self.node = (self.node + 1) % len(self.urls)
            self.url = self.urls[self.node]
        await super()._on_connection_close(closing)


def refusal(exc: BaseException) -> str | None:
    """Why RabbitMQ refused us for good (bad credentials, unknown vhost), else None."""
    text = str(exc)
    if "ACCESS_REFUSED" in text or isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return text
    return None


class Broker(Service):
    """Owns the robust connection and the topology declared on it.

    ``async with Broker(config.broker, topology, connectors=names, metrics=m) as broker:``
    connects to a node of ``config.all_urls`` and declares the topology; when none
    answers, it raises BrokerUnavailable, or with ``background=True`` keeps trying in the
    background (`up` is set once connected); exit closes the connection. `add_listener`
    registers a callback run each time the broker is up (after the first connection made
    in the background, and after every reconnect).
    """

    redeclare_base: float = 0.5  # first retry of a refused re-declaration after 0.5 s ...
    redeclare_cap: float = 10.0  # ... doubling up to 10 s
    connect_base: float = 0.5  # first retry of a start without a broker after 0.5 s ...
    connect_cap: float = 5.0  # ... doubling up to 5 s

    def __init__(
        self,
        config: BrokerConfig,
        topology: Topology,
        *,
        connectors: Iterable[str],
        metrics: Metrics,
        name: str | None = None,
        background: bool = False,
    ) -> None:
        self.config = config
        self.topology = topology
        self.connectors = list(connectors)
        self.metrics = metrics
        # Named after the exchange (and the instance), so an operator or a test can tell
        # bridges apart in the broker's connection list.
        self.name = name or f"oscc-bridge {topology.exchange}"
        self.background = background  # no node answers at start: retry, do not raise
        self.up = asyncio.Event()  # set once the first connection declared the topology
        self._connection: ClusterConnection | None = None
        self._up = False
        self._connecting: asyncio.Task[None] | None = None
        self._redeclaring: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._rng = random.Random()
        self._failed: asyncio.Future[None] | None = None
        self.attempts = 0  # connection attempts made by `start` and in the background

    @property
    def url(self) -> str:
        """The URL of the node connected to (or tried next)."""
        if self._connection is not None:
            return str(self._connection.urls[self._connection.node])
        return self.config.all_urls[0]

    @property
    def failed(self) -> asyncio.Future[None]:
        """Done with a ConfigError when RabbitMQ refused us for good after `start`."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and declare the topology; when no node answers, BrokerUnavailable, or
        with `background` keep trying in the background. ConfigError at once when
        RabbitMQ refuses the credentials or the topology."""
        if self._connection is not None or self._connecting is not None:
            return
        try:
            await self._connect()
        except BrokerUnavailable as exc:
            if not self.background:
                raise
            log.warning("broker.unavailable", error=exc.text, retry="in the background")
            self._connecting = watch(
                asyncio.create_task(self._connect_later(), name="broker-connect"),
                log,
                "broker.connect_crashed",
            )

    async def stop(self) -> None:
        """Stop connecting or re-declaring and close the connection."""
        for task in (self._connecting, self._redeclaring):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._connecting = self._redeclaring = None
        if self._connection is not None:
            self._connection.reconnect_callbacks.discard(self._on_reconnect)
            self._connection.close_callbacks.discard(self._on_close)
        await self._close()
        self._set_up(False)

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _connect(self) -> None:
        """One attempt on every node in turn; BrokerUnavailable when none answers."""
        urls = self.config.all_urls
        errors: list[str] = []
        for node in range(len(urls)):
            self.attempts += 1
            connection = ClusterConnection(
                urls,
                first=node,
                reconnect_interval=RECONNECT_INTERVAL,
                client_properties={"connection_name": self.name},
            )
            try:
                await connection.connect(timeout=CONNECT_TIMEOUT)
            except (*BROKER_ERRORS, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await connection.close()
                if (why := refusal(exc)) is not None:
                    raise ConfigError(
                        f"broker.url: RabbitMQ at {mask_url(urls[node])} refused the bridge: {why}",
                        key="broker.url",
                    ) from exc
                errors.append(f"{mask_url(urls[node])}: {exc or type(exc).__name__}")
                continue
            await self._declared_on(connection)
            return
        raise BrokerUnavailable("cannot connect to RabbitMQ: " + "; ".join(errors))

    async def _declared_on(self, connection: ClusterConnection) -> None:
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
        except BaseException as exc:
            await self._close()
            if isinstance(exc, (*BROKER_ERRORS, TimeoutError)):
                raise BrokerUnavailable(f"RabbitMQ went away while declaring: {exc!r}") from exc
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self._set_up(True)
        self.up.set()
        log.info("broker.connected", url=mask_url(self.url), exchange=self.topology.exchange)

    async def _connect_later(self) -> None:
        def failed(exc: BaseException, delay: float) -> None:
            log.info("broker.connect_failed", error=str(exc), retry_in=round(delay, 2))

        try:
            await retry(
                self._connect,
                retry_on=BrokerUnavailable,
                base=self.connect_base,
                cap=self.connect_cap,
                rng=self._rng,
                on_retry=failed,
            )
        except ConfigError as exc:
            log.error("broker.refused", error=str(exc))
            if not self.failed.done():
                self.failed.set_exception(exc)
            return
        self._tell_listeners()

    # -- what the other parts use -------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the connection is open and the topology is declared on it."""
        return self._up and self._connection is not None and not self._connection.is_closed

    @property
    def connection(self) -> AbstractRobustConnection:
        """The robust connection (RuntimeError before the first one was made)."""
        if self._connection is None:
            raise RuntimeError("broker is not connected yet")
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

    def _tell_listeners(self) -> None:
        for listener in list(self._listeners):
            listener()

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

        # Up only once the topology is back: until then publishes spool.
        await retry(
            declare,
            retry_on=Exception,
            base=self.redeclare_base,
            cap=self.redeclare_cap,
            rng=self._rng,
            on_retry=failed,
        )
        self._set_up(True)
        log.info("broker.reconnected", url=mask_url(self.url))
        self._tell_listeners()
