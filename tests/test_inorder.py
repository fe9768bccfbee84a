"""InOrder: callbacks one at a time, in queue order; a failing one is logged, not fatal."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.inorder import InOrder


class Log:
    """Records what InOrder logs (the real logger would print it)."""

    def __init__(self) -> None:
        self.exceptions: list[tuple[str, dict[str, Any]]] = []

    def exception(self, event: str, **context: Any) -> None:
        self.exceptions.append((event, context))

    def error(self, event: str, **context: Any) -> None:  # watch() on a dying task
        self.exceptions.append((event, context))


async def test_in_order_one_at_a_time_and_a_failure_is_logged() -> None:
    log = Log()
    runner = InOrder(log, "test.callback_failed", "test-inorder")
    seen: list[int] = []
    running = 0

    def step(n: int) -> Any:
        async def callback() -> None:
            nonlocal running
            running += 1
            assert running == 1  # never two at once
            await asyncio.sleep(0)  # let the next one try to start
            seen.append(n)
            running -= 1
            if n == 2:
                raise RuntimeError("boom")

        return callback

    for n in range(5):
        runner.put(step(n), n=n)  # queued before start: kept
    async with runner:
        await runner.join()
        assert seen == [0, 1, 2, 3, 4]
        assert log.exceptions == [("test.callback_failed", {"n": 2})]
        runner.put(step(5))
        await runner.join()
        assert seen[-1] == 5


async def test_join_before_start_does_not_wait() -> None:
    runner = InOrder(Log(), "test.callback_failed", "test-inorder")

    async def never() -> None:
        raise AssertionError("not started: must not run")

    runner.put(never)
    async with asyncio.timeout(1):
        await runner.join()
    await runner.stop()  # never started: nothing to cancel
