"""The one retry loop: retries what it is told to, gives up on anything else."""

from __future__ import annotations

import random

import pytest

from bridge.backoff import retry


async def test_retry_retries_listed_errors_with_growing_delays() -> None:
    calls: list[int] = []
    delays: list[float] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("down")
        return "up"

    result = await retry(
        flaky,
        retry_on=ConnectionError,
        base=0.001,
        cap=0.004,
        rng=random.Random(1),
        on_retry=lambda _, delay: delays.append(delay),
    )
    assert result == "up"
    assert len(calls) == 4
    assert len(delays) == 3
    assert all(0.001 <= d <= 0.004 for d in delays)


async def test_retry_gives_up_on_other_errors_and_when_on_retry_raises() -> None:
    async def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await retry(broken, retry_on=ConnectionError, base=0.001, cap=0.001, rng=random.Random())

    async def down() -> None:
        raise ConnectionError("for good")

    def give_up(exc: BaseException, _: float) -> None:
        raise exc

    with pytest.raises(ConnectionError, match="for good"):
        await retry(
            down,
            retry_on=ConnectionError,
            base=0.001,
            cap=0.001,
            rng=random.Random(),
            on_retry=give_up,
        )
