"""deadline.timeout: a deadline reached while the loop was held does not expire a wait
whose answer had arrived; a deadline reached on time does."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge import deadline


async def answered_during_a_held_loop(cm_factory: object) -> str:
    """Wait (0.1 s deadline) for an answer that arrives at 0.05 s, while the loop is
    held for 0.5 s: both are due when the loop runs again."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.05, answer.set_result, "confirmed")

    async def wait() -> str:
        async with cm_factory(0.1):  # type: ignore[operator]
            return await answer

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)  # the task starts waiting
    time.sleep(0.5)  # noqa: ASYNC251 - holding the loop is what is tested
    return await task


async def test_asyncio_timeout_expires_for_an_answer_that_had_arrived() -> None:
    # The defect, shown on the standard library: why publishes were spooled twice.
    with pytest.raises(TimeoutError):
        await answered_during_a_held_loop(asyncio.timeout)


async def test_a_held_loop_does_not_expire_the_deadline() -> None:
    assert await answered_during_a_held_loop(deadline.timeout) == "confirmed"


async def test_a_deadline_reached_on_time_expires() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline.timeout(0.1):
            await asyncio.Event().wait()
    assert 0.09 < time.monotonic() - started < 1.0


async def test_extensions_are_bounded() -> None:
    """A loop held again and again gets `delay` more seconds in all, not forever."""

    async def held_over_and_over() -> None:
        async with deadline.timeout(0.2, grace=0.1):
            while True:
                await asyncio.sleep(0.01)
                time.sleep(0.3)  # noqa: ASYNC251 - a loop held over and over

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await held_over_and_over()
    # 0.2 s deadline + at most 0.2 s of grace, each step late by up to 0.3 s
    assert time.monotonic() - started < 2.0
