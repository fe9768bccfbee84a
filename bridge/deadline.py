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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

LATE = 0.25  # seconds a timer may run late before the loop counts as held
GRACE = 1.0  # seconds of running loop granted after a held one


@contextlib.asynccontextmanager
async def timeout(delay: float, *, grace: float = GRACE) -> AsyncIterator[None]:
    """Like ``asyncio.timeout(delay)`` (raises TimeoutError), but a deadline reached
    while the loop was held is extended by `grace`, at most `delay` seconds in all."""
    loop = asyncio.get_running_loop()
    granted = 0.0
    async with asyncio.timeout(None) as cm:

        def check(due: float) -> None:
            nonlocal granted
            now = loop.time()
            if now - due > LATE and granted < delay:
                granted += grace
                arm(now + grace)
            else:
                cm.reschedule(now)  # expire: cancels the task in the next iteration

        def arm(due: float) -> None:
            handle[:] = [loop.call_at(due, check, due)]

        handle: list[asyncio.TimerHandle] = []
        arm(loop.time() + delay)
        try:
            yield
        finally:
            handle[0].cancel()
