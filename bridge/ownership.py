"""Which instance owns a connector: a lease message in a RabbitMQ queue (DESIGN.md,
"Several instances").

Every instance consumes the durable queue ``<p>.<c>.owner`` (quorum, single active
consumer, manual ack, prefetch 2). The queue holds one *lease* message; the broker hands
it only to the active consumer, which keeps it unacked: holding the lease = owning the
connector. AMQP 0.9.1 never says "you are active now"; the lease's arrival does. When the
owner's connection or channel closes, the broker requeues the lease and the next consumer
gets it at once.

How a single lease is kept in the queue: lease.py.

Roles: ``standby`` -> ``owner`` (lease arrived) -> ``suspended`` (the broker link is
down: the lease is back in the queue, but the OSCC session may be kept for a while) ->
``owner`` again if the lease comes back within `fence_after`, else ``standby`` with
reason ``fenced``. The body of a lease (lease.py) is JSON ``{"instance", "session", "since"}``,
`session` the OSCC session token sealed for this connector (sealing.py), so a new owner
resumes the session instead of waiting out ``2 ALREADY_REGISTERED_ON``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from bridge import lease, logs
from bridge.inorder import InOrder
from bridge.lease import Lease
from bridge.lifecycle import Service
from bridge.metrics import Metrics
from bridge.sealing import Sealer
from bridge.topology import Topology

Role = Literal["standby", "owner", "suspended"]
LostReason = Literal["released", "fenced"]

DEFAULT_RENEW_EVERY = 60.0  # well inside any sane consumer_timeout


Acquired = Callable[[str | None], Awaitable[None]]
Suspended = Callable[[], Awaitable[None]]
Lost = Callable[[LostReason], Awaitable[None]]


class Ownership(Service):
    """The ownership of one connector by this instance (see the module docstring).

    Callbacks run one at a time, in order, outside the AMQP consumer:

    - ``on_acquired(session)``: this instance owns the connector; `session` is the OSCC
      session token the lease carried (None: none, or it does not open: register).
      Also called when the lease comes back to a suspended owner.
    - ``on_suspended()``: the broker link is down; stop consuming contacts now (the lease
      is already back in the queue), keep the session until `on_lost`.
    - ``on_lost(reason)``: ``released`` (release()/stop()) or ``fenced`` (no broker for
      `fence_after` s): stop keepalives and consumers.

    The broker's connection signals go to `connection_lost` / `connection_restored`;
    the channel's own close and reopen are watched too, so a robust connection alone
    is enough.
    """

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        topology: Topology,
        connector: str,
        instance: str,
        sealer: Sealer,
        fence_after: float,
        metrics: Metrics | None = None,
        renew_every: float = DEFAULT_RENEW_EVERY,
        on_acquired: Acquired | None = None,
        on_suspended: Suspended | None = None,
        on_lost: Lost | None = None,
    ) -> None:
        self.connector = connector
        self.instance = instance
        self.queue_name = topology.owner_queue(connector)
        self.fence_after = fence_after
        self.renew_every = renew_every
        self.role: Role = "standby"
        self.owned = asyncio.Event()  # set while role == "owner"
        self.seeded = 0  # leases this instance published into an empty queue
        self.dropped = 0  # extra leases this instance acked away
        self.renewed = 0  # leases this instance replaced while owning
        self._connection = connection
        self._queue_type = topology.queue_type
        self._sealer = sealer
        self._metrics = metrics
        self._on_acquired = on_acquired
        self._on_suspended = on_suspended
        self._on_lost = on_lost
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._competing = False  # consuming the lease queue (not after release/stop)
        self._held: AbstractIncomingMessage | None = None
        self._expect: str | None = None  # message_id of our replacement lease in flight
        self._replaced = asyncio.Event()  # set when no replacement is in flight
        self._replaced.set()
        self._sealed: str | None = None  # the session to write into the next lease
        self._stale = False  # _sealed changed while a replacement was in flight
        self._since = 0.0
        self._lock = asyncio.Lock()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._fence: asyncio.TimerHandle | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._log = logs.get_logger("bridge.ownership", connector=connector, instance=instance)
        self._callbacks = InOrder(self._log, "ownership.callback_failed", f"ownership-{connector}")
        self._gauge()

    @property
    def owner(self) -> bool:
        """True while this instance holds the lease."""
        return self.role == "owner"

    @property
    def replacing(self) -> bool:
        """A replacement lease is on its way (or another is due after it)."""
        return not self._replaced.is_set()

    def status(self) -> dict[str, Any]:
        """JSON-able role for ``/status`` (the owner's id is known only to the owner)."""
        return {"role": self.role, "owner": self.instance if self.role == "owner" else None}

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open a channel, seed the lease if the queue is new, and compete for it."""
        if self._channel is not None:
            return
        self._stopping = False
        await self._callbacks.start()
        channel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        await channel.set_qos(prefetch_count=2)
        self._queue = await channel.declare_queue(
            self.queue_name,
            durable=True,
            arguments={"x-queue-type": self._queue_type, "x-single-active-consumer": True},
        )
        await self._seed_if_empty(consumers_besides_us=0)
        self._competing = True
        self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)
        channel.close_callbacks.add(self._on_channel_close)
        reopen = getattr(channel, "reopen_callbacks", None)  # robust channels only
        if reopen is not None:
            reopen.add(self._on_channel_reopen)
        self._log.info("ownership.competing", queue=self.queue_name)

    async def stop(self) -> None:
        """Give up the role (the broker requeues the lease) and close the channel."""
        self._stopping = True
        self._cancel_fence()
        # a replacement in flight would be left beside the requeued lease: let it land
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._replaced.wait(), 2.0)
        if self.role != "standby":
            self._lose("released")
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = self._queue = None
        for task in list(self._tasks):
            task.cancel()
        await self._callbacks.join()
        await self._callbacks.stop()

    async def release(self, session: str | None = None) -> bool:
        """Planned handover: stop competing and pass the lease, carrying `session` (or
        the last one given), to the next instance. Call it after the contact consumers
        stopped and in-flight contacts finished (not from a callback: it waits for them).
        True when the lease was handed over."""
        self._competing = False  # no new replacement from here on
        if self._renewer is not None:
            self._renewer.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._replaced.wait(), 2.0)
        try:
            return await self._hand_over(session)
        finally:
            await self._callbacks.join()

    async def _hand_over(self, session: str | None) -> bool:
        async with self._lock:
            if self._queue is not None and self._consumer_tag is not None:
                with contextlib.suppress(Exception):
                    await self._queue.cancel(self._consumer_tag)
                self._consumer_tag = None
            held, self._held = self._held, None
            if self.role == "standby" or held is None:
                return False
            if session is not None:
                self._sealed = self._sealer.seal(session)
            handed = False
            try:
                # the next active consumer gets this one; ours is acked only afterwards
                await self._publish(
                    Lease(instance=self.instance, session=self._sealed, since=self._since)
                )
                await held.ack()
                handed = True
            except Exception as exc:  # the broker requeues the old lease when we close
                self._log.warning("ownership.handover_failed", error=str(exc))
            self._cancel_fence()
            self._lose("released")
            return handed

    async def update_session(self, session: str | None) -> None:
        """Carry `session` (the OSCC session token, None when there is none) in the lease
        from now on; the owner replaces its lease at once."""
        self._sealed = self._sealer.seal(session) if session is not None else None
        if self.role == "owner":
            await self._replace()

    # -- broker link signals ------------------------------------------------------------
    def connection_lost(self) -> None:
        """The broker link is down: the broker requeues our lease. An owner is suspended
        and fenced after `fence_after` s unless the lease comes back."""
        self._held = None  # its delivery tag died with the channel
        self._expect = None
        self._replaced.set()
        if self.role != "owner" or self._stopping:
            return
        self.role = "suspended"
        self.owned.clear()
        loop = asyncio.get_running_loop()
        self._fence = loop.call_later(self.fence_after, self._fenced)
        self._log.warning("ownership.suspended", fence_after=self.fence_after)
        if self._on_suspended is not None:
            self._callbacks.put(self._on_suspended)

    def connection_restored(self) -> None:
        """The broker link is back: re-seed if the lease vanished (the consumer itself is
        restored by the robust channel; the lease's arrival makes us owner again)."""
        if self._stopping or self._channel is None:
            return
        self._spawn(self._seed_if_empty(consumers_besides_us=1), "reseed")

    # -- internals ----------------------------------------------------------------------
    def _on_channel_close(self, *_: Any) -> None:
        if not self._stopping:
            self.connection_lost()

    def _on_channel_reopen(self, *_: Any) -> None:
        self.connection_restored()

    async def _seed_if_empty(self, *, consumers_besides_us: int) -> None:
        assert self._channel is not None
        if await lease.seed_if_empty(
            self._channel,
            self.queue_name,
            self.instance,
            consumers_besides_us=consumers_besides_us,
        ):
            self.seeded += 1
            self._log.info("ownership.seeded")

    async def _publish(self, body: Lease) -> str:
        assert self._channel is not None
        return await lease.publish(self._channel, self.queue_name, body)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with self._lock:
            if self._held is not None and message.message_id == self._expect:
                old, self._held, self._expect = self._held, message, None
                self.renewed += 1
                await _settle(old.ack())
                if self._stale:  # a session given meanwhile: it goes in the next one
                    self._spawn(self._replace(), "replace")
                else:
                    self._replaced.set()
            elif self._stopping or not self._competing:
                await _settle(message.reject(requeue=True))
            elif self._held is None:
                self._take(message)
            else:
                self.dropped += 1
                self._log.info("ownership.extra_lease_dropped")
                await _settle(message.ack())

    def _take(self, message: AbstractIncomingMessage) -> None:
        previous, session, self._sealed = lease.read(message.body, self._sealer)
        self._held = message
        self._cancel_fence()
        if self.role == "standby":
            self._since = time.time()
            self._count("acquired")
        self.role = "owner"
        self.owned.set()
        self._gauge()
        self._log.info("ownership.acquired", previous=previous, session=session is not None)
        if self._renewer is None or self._renewer.done():
            self._renewer = self._spawn(self._renew_loop(), "renew")
        # the lease names its holder from now on (whoever gets it after a crash sees it)
        self._spawn(self._replace(), "replace")
        if self._on_acquired is not None:
            callback = self._on_acquired
            self._callbacks.put(lambda: callback(session))

    async def _replace(self) -> None:
        """Publish a fresh lease; `_on_message` acks the old one when it arrives."""
        async with self._lock:
            if self._expect is not None:
                # one in flight already: its arrival publishes another with the newest
                self._stale = True
                return
            if self.role != "owner" or self._held is None or not self._competing:
                self._stale = False
                self._replaced.set()
                return
            fresh = Lease(instance=self.instance, session=self._sealed, since=self._since)
            self._stale = False
            self._replaced.clear()
            try:
                self._expect = await self._publish(fresh)
            except Exception as exc:
                self._replaced.set()  # the link is going down; its signal follows
                self._log.warning("ownership.renew_failed", error=str(exc))

    async def _renew_loop(self) -> None:
        while self.role != "standby":
            await asyncio.sleep(self.renew_every)
            await self._replace()

    def _fenced(self) -> None:
        self._fence = None
        if self.role == "suspended":
            self._log.warning("ownership.fenced", fence_after=self.fence_after)
            self._lose("fenced")

    def _lose(self, reason: LostReason) -> None:
        self.role = "standby"
        self.owned.clear()
        self._held = self._expect = None
        self._replaced.set()
        self._count(reason)
        self._gauge()
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        self._log.info("ownership.lost", reason=reason)
        if self._on_lost is not None:
            callback = self._on_lost
            self._callbacks.put(lambda: callback(reason))

    def _cancel_fence(self) -> None:
        if self._fence is not None:
            self._fence.cancel()
            self._fence = None

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.connector_owner.labels(self.connector).set(
                0 if self.role == "standby" else 1
            )

    def _count(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.ownership_changes.labels(self.connector, reason).inc()

    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("ownership.task_failed", task=what)

        task = asyncio.create_task(run(), name=f"ownership-{self.connector}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _settle(op: Awaitable[Any]) -> None:
    """Ack/reject on a channel that may be gone: the broker then requeues by itself."""
    with contextlib.suppress(Exception):
        await op


__all__ = ["DEFAULT_RENEW_EVERY", "Lease", "Ownership", "Role"]
