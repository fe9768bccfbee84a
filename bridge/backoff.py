"""Capped exponential backoff with full jitter, and the one retry loop built on it.

Every retry in the bridge (re-registration, listen-for-events, the consumer's prober and
its broker publishes, the broker's topology re-declaration) waits `backoff_delay`::

    attempt   0      1       2       3   ...   n
    wait in   [b,b]  [b,2b]  [b,4b]  [b,8b]    [b, min(cap, b * 2**n)]   (b = base)

Full jitter spreads many retrying clients apart (AWS Architecture Blog, "Exponential
Backoff And Jitter"); the floor at `base` keeps a run of unlucky draws from becoming a
tight loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter, never below `base`.

    Attempt ``n`` (from 0) waits a uniform random time in ``[0, min(cap, base * 2**n)]``,
    raised to `base` so a run of unlucky draws can never become a tight loop.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return max(min(base, cap), rng.uniform(0.0, ceiling))


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    base: float,
    cap: float,
    rng: random.Random,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Await `operation` until it returns, waiting `backoff_delay` after each failure
    of a `retry_on` kind; any other exception ends the loop.

    `on_retry(exc, delay)` runs before each wait (to log, count, note the error); it may
    raise to give up instead.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except retry_on as exc:
            delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
            attempt += 1
            if on_retry is not None:
                on_retry(exc, delay)
        await asyncio.sleep(delay)
