"""Callbacks run one at a time, in the order they were queued, from a task of their own.

The session supervisor hands its changes to `on_change` this way, and Ownership its
acquired/suspended/lost callbacks: the caller queues without awaiting, so a slow or
failing receiver (a broker publish, a consumer stopping) never delays a keepalive or an
AMQP callback, and the receiver still sees the changes in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.lifecycle import Service, cancel, watch

Callback = Callable[[], Awaitable[None]]


class InOrder(Service):
    """A queue of callbacks and the task that awaits them one after the other.

    A callback that raises is logged as `event` (with the context it was queued with)
    and the next one runs. `name` names the task.
    """

    def __init__(self, log: Any, event: str, name: str) -> None:
        self._log = log
        self._event = event
        self._name = name
        self._queue: asyncio.Queue[tuple[Callback, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def put(self, callback: Callback, **context: Any) -> None:
        """Queue `callback`; `context` goes into the log line should it fail."""
        self._queue.put_nowait((callback, context))

    async def start(self) -> None:
        """Start running the queued callbacks."""
        if self._task is None:
            task = asyncio.create_task(self._run(), name=self._name)
            self._task = watch(task, self._log, "inorder.task_died")

    async def join(self) -> None:
        """Wait until every callback queued so far has run (at once when not started)."""
        if self._task is not None:
            await self._queue.join()

    async def stop(self) -> None:
        """Cancel the task; callbacks still queued run after the next `start`."""
        task, self._task = self._task, None
        await cancel(task)

    async def _run(self) -> None:
        while True:
            callback, context = await self._queue.get()
            try:
                await callback()
            except Exception:
                self._log.exception(self._event, **context)
            finally:
                self._queue.task_done()
