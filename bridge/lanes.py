"""Ordering for the consumer: per-key lanes.

Lanes: items with the same key (a contact's ``source.id``, a stream response's ``id``) are
worked one after the other, in the order they were added, by one task per key; different
keys run in parallel. A lane exists while it has work, so the number of tasks is bounded
by what is in flight (the channel's prefetch)::

    lanes.add("src-1", a); lanes.add("src-2", b); lanes.add("src-1", c)
    #  src-1: a, then c        src-2: b        (a and b at the same time)

Draining (`Lanes.drain`): lanes that are not *busy* (the worker is inside ``lane.busy()``:
it has sent something it must hear back about) are cancelled at once; busy ones get a
timeout to finish.

Flow control while OSCC fails is the outage gate's (`bridge.gate`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bridge.lifecycle import watch
from bridge.logs import get_logger

T = TypeVar("T")
_log = get_logger("bridge.lanes")


@dataclass(eq=False, slots=True)
class Lane(Generic[T]):
    """One key's FIFO; the worker holds `busy()` while the head must not be cancelled."""

    items: deque[T] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    _busy: bool = False

    @property
    def is_busy(self) -> bool:
        """True while the worker is inside `busy()`."""
        return self._busy

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark the lane busy for the block: a drain gives it time instead of cancelling."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False


class Lanes(Generic[T]):
    """Per-key FIFO lanes, each worked by ``await work(item, lane)``.

    `work` handles its own errors (an exception escaping it is the worker's bug: it ends
    the lane's task, logged as ``lane.died``). Once `stopping` is set no lane starts another
    item.
    """

    def __init__(
        self,
        work: Callable[[T, Lane[T]], Awaitable[None]],
        stopping: asyncio.Event,
        *,
        name: str = "lane",
    ) -> None:
        self._work = work
        self._stopping = stopping
        self._name = name
        self._lanes: dict[object, Lane[T]] = {}

    def __len__(self) -> int:
        """Lanes with work."""
        return len(self._lanes)

    def add(self, key: Hashable | None, item: T) -> None:
        """Queue `item` behind the other items of `key`; None: a lane of its own."""
        lane_key: object = key if key is not None else object()
        lane = self._lanes.get(lane_key)
        if lane is not None:
            lane.items.append(item)
            return
        lane = self._lanes[lane_key] = Lane(deque([item]))
        lane.task = watch(
            asyncio.create_task(self._run(lane_key, lane), name=self._name), _log, "lane.died"
        )

    async def _run(self, key: object, lane: Lane[T]) -> None:
        try:
            while lane.items and not self._stopping.is_set():
                await self._work(lane.items[0], lane)
                lane.items.popleft()
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109 (a budget, not a deadline)
        """Cancel the lanes that are not busy, give busy ones `timeout` seconds, cancel
        what is left; return how many were cut short."""
        for lane in list(self._lanes.values()):
            if not lane.is_busy and lane.task is not None:
                lane.task.cancel()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(pending)
