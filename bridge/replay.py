"""The spool replayer: what the disk spool holds goes to the broker, oldest first.

::

    woken by a spool commit, the broker coming back, or a 5 s safety timer
      └─ while records are on disk and the publisher is connected:
           read a batch ── publish each, in order ── ack the confirmed prefix
                                                      └─ not all confirmed: pause 1 s
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from bridge import logs
from bridge.broker import Broker
from bridge.errors import BrokerUnavailable
from bridge.lifecycle import Service, cancel, watch
from bridge.metrics import Metrics
from bridge.segment import Entry, SpoolRecord
from bridge.spool import Spool

log = logs.get_logger("bridge.replay")

REPLAY_BATCH = 256
REPLAY_BACKOFF = 1.0
REPLAY_RECHECK = 5.0


class SpoolReplayer(Service):
    """Drains `spool` through `send` (a confirmed publish) while `ready()` says the
    publisher can publish."""

    def __init__(
        self,
        spool: Spool,
        broker: Broker,
        *,
        send: Callable[[SpoolRecord], Awaitable[None]],
        ready: Callable[[], bool],
        metrics: Metrics,
    ) -> None:
        self.spool = spool
        self._broker = broker
        self._send = send
        self._ready = ready
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start replaying, beginning with whatever a previous run left."""
        if self._task is not None:
            return
        self.spool.on_commit = self._wake.set
        self._broker.add_listener(self._wake.set)
        self._task = watch(
            asyncio.create_task(self._run(), name="spool-replay"), log, "spool.replayer_died"
        )
        self._wake.set()

    async def stop(self) -> None:
        """Stop replaying; what is left stays in the spool."""
        task, self._task = self._task, None
        await cancel(task)
        self.spool.on_commit = None
        self._broker.remove_listener(self._wake.set)

    async def _run(self) -> None:
        spool = self.spool
        while True:
            if spool.messages:
                # Woken by commits and reconnects; the timer is a safety net for a
                # channel that came back without a reconnect.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPLAY_RECHECK):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            replayed = 0
            try:
                while spool.committed and self._ready():
                    entries = await spool.read(REPLAY_BATCH)
                    if not entries:
                        break
                    confirmed = await self._replay_batch(entries)
                    if confirmed:
                        # counted as the spool's gauge drops, before the file work
                        self._metrics.spool_replayed.inc(confirmed)
                        replayed += confirmed
                        await spool.ack(entries[:confirmed])
                    if confirmed < len(entries):
                        # The broker is there but not confirming: try again in a moment,
                        # or as soon as it reconnects.
                        await self._pause()
            except Exception:
                log.exception("spool.replay_failed")
                await self._pause()
                self._wake.set()
            if replayed:
                log.info("spool.replayed", messages=replayed, left=spool.messages)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPLAY_BACKOFF):
                await self._wake.wait()
        self._wake.clear()

    async def _replay_batch(self, entries: list[Entry]) -> int:
        """Publish `entries` in order; return how many, from the first, were confirmed."""
        results = await asyncio.gather(
            *(self._send(e.record) for e in entries), return_exceptions=True
        )
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if not isinstance(result, BrokerUnavailable):
                    log.error("spool.replay_error", exc_info=result)
                else:
                    log.warning("spool.replay_paused", error=result.text, confirmed=i)
                return i
        return len(entries)
