"""One shape for the bridge's long-running parts: ``start()``, ``stop()``, and
``async with`` doing both (STYLE.md: each component is an async context manager)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
