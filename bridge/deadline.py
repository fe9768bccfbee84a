"""A timeout that does not expire because the event loop itself was held.

``asyncio.timeout`` measures wall time. When something holds the loop past the deadline
(a wide body decoded on it held it for 15 s before issue 10), the deadline is checked
in the same loop iteration that first reads the socket again: the answer waiting in the
socket (a broker's confirm) is not yet delivered to the waiting task, so the timeout
fires for an answer that had arrived. For a publish, that false timeout spools the
message and the replay publishes it a second time (30 webhooks became 41 messages).

`timeout` gives up only when its deadline passes *on time*: a check that runs late by
more than `LATE` seconds means the loop was held, so it grants `grace` more seconds of a
running loop each time, `delay` more in all::

    async with deadline.timeout(5.0):
        await channel.basic_publish(...)   # TimeoutError only if 5 s of loop passed

Every publish has one, so it is cheap (issue 15): no timer per deadline, but one `_Watch`
per loop that ticks every `TICK` seconds while any deadline is open, and a deadline is a
set entry. A deadline therefore expires up to `TICK` after it is due.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType

LATE = 0.25  # seconds a check may run late before the loop counts as held
GRACE = 1.0  # seconds of running loop granted after a held one
TICK = 0.05  # seconds between checks while a deadline is open


class _Watch:
    """The open deadlines of one loop and the one timer that checks them."""

    __slots__ = ("_armed", "loop", "open")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the watch is the value of a WeakKeyDictionary keyed by this loop.
        self.loop = weakref.ref(loop)
        self.open: set[_Deadline] = set()
        self._armed = False

    def add(self, d: _Deadline, loop: asyncio.AbstractEventLoop) -> None:
        self.open.add(d)
        if not self._armed:
            self._armed = True
            due = loop.time() + TICK
            loop.call_at(due, self._check, due)

    def _check(self, scheduled: float) -> None:
        loop = self.loop()
        if loop is None:
            return
        now = loop.time()
        held = now - scheduled > LATE  # this check ran late: the loop was held
        for d in [d for d in self.open if d.due <= now]:
            if held and d.granted < d.delay:
                d.granted += d.grace
                d.due = now + d.grace
            else:
                d.expire()
        if self.open:
            due = now + TICK
            loop.call_at(due, self._check, due)
        else:
            self._armed = False


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()
_last: _Watch | None = None  # the last one used: a WeakKeyDictionary lookup costs more


def _watch(loop: asyncio.AbstractEventLoop) -> _Watch:
    global _last
    watch = _last
    if watch is None or watch.loop() is not loop:
        watch = _watches.get(loop)
        if watch is None:
            watch = _watches[loop] = _Watch(loop)
        _last = watch
    return watch


class _Deadline:
    """``async with``: TimeoutError when `delay` seconds of running loop passed (plus up
    to `TICK`); cancels the task as ``asyncio.timeout`` does, and only the task."""

    __slots__ = ("_cancelling", "_expired", "_task", "_w", "delay", "due", "grace", "granted")

    def __init__(self, delay: float, grace: float) -> None:
        self.delay = delay
        self.grace = grace
        self.granted = 0.0
        self.due = 0.0
        self._expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline.timeout must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        loop = task.get_loop()
        self._w = watch = _watch(loop)
        self.due = loop.time() + self.delay
        watch.add(self, loop)

    def expire(self) -> None:
        self._w.open.discard(self)
        self._expired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._w.open.discard(self)
        # As asyncio.timeout: our cancellation becomes TimeoutError, anyone else's stays.
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


def timeout(delay: float, *, grace: float = GRACE) -> _Deadline:
    """Like ``asyncio.timeout(delay)`` (raises TimeoutError), but a deadline reached
    while the loop was held is extended by `grace`, at most `delay` seconds in all."""
    return _Deadline(delay, grace)
