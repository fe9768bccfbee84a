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


async def test_many_deadlines_expire_each_on_its_own() -> None:
    """One watch checks every open deadline: the short ones expire, the answered and the
    long ones do not, and the watch stops once none is open."""

    async def wait(delay: float, answer_after: float | None) -> str:
        try:
            async with deadline.timeout(delay):
                if answer_after is None:
                    await asyncio.Event().wait()
                await asyncio.sleep(answer_after)
                return "answered"
        except TimeoutError:
            return "expired"

    started = time.monotonic()
    results = await asyncio.gather(
        *(wait(0.1, None) for _ in range(20)),
        *(wait(0.1, 0.01) for _ in range(20)),
        *(wait(1.0, 0.3) for _ in range(20)),
    )
    assert results == ["expired"] * 20 + ["answered"] * 40
    assert time.monotonic() - started < 1.0
    watch = deadline._watch(asyncio.get_running_loop())
    assert not watch.open


def test_each_loop_has_its_own_watch() -> None:
    """A deadline on a new loop works after the last one closed (the watch is per loop)."""

    async def expires() -> bool:
        try:
            async with deadline.timeout(0.05):
                await asyncio.Event().wait()
        except TimeoutError:
            return True
        return False

    assert asyncio.run(expires())
    assert asyncio.run(expires())


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    async def wait() -> None:
        async with deadline.timeout(5.0):
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
