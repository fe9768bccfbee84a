"""One shape for the bridge's long-running parts: ``start()``, ``stop()``, and
``async with`` doing both (STYLE.md: each component is an async context manager); and
`watch`, which every background task goes through so its failure is logged, and
`cancel`, which ends them."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self


class Service:
    """Base of a component that runs between `start` and `stop`."""

    async def start(self) -> None:
        """Begin the component's work (idempotent in every subclass)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """End it and release what `start` took."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def watch(task: asyncio.Task[Any], log: Any, event: str) -> asyncio.Task[Any]:
    """Log `event` with the traceback when `task` ends with an exception, so a background
    task's failure is never lost; returns `task` (keep the reference)."""

    def done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and (exc := t.exception()) is not None:
            log.error(event, task=t.get_name(), exc_info=exc)

    task.add_done_callback(done)
    return task


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task given (None: none) and wait until each has ended."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError):
            await task
