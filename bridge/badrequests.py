"""Malformed HTTP requests: counted, and told in one warning line a minute at most.

aiohttp answers a request it cannot parse (bytes that are no HTTP, a bad request line or
header, broken chunked framing) with 400 itself, and logs each as an ERROR with a
traceback. Anyone who can reach the port could fill the log and trip error alerts that
way, so `BadRequestLog` stands in for aiohttp's server logger: such requests are counted
in ``oscc_bridge_http_bad_requests_total`` and reported as one ``http.bad_requests``
warning, then at most one line per `INTERVAL` saying how many more there were. Anything
else aiohttp logs (a handler's unhandled exception: our bug) passes through unchanged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from bridge import logs
from bridge.metrics import Metrics

log = logs.get_logger("bridge.http")

INTERVAL = 60.0  # seconds between two warning lines
MAX_ERROR_TEXT = 200  # characters of aiohttp's message (it quotes what was sent)


class BadRequestLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's ``logger`` for the bridge's listeners (``web.AppRunner(logger=...)``)."""

    def __init__(
        self,
        metrics: Metrics,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})
        self._clock = clock
        self._counter = metrics.http_bad_requests
        self._last_line = -INTERVAL
        self._unreported = 0

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        # aiohttp logs the first request of a connection that is not HTTP at all at debug.
        if not self._bad_request(kwargs.get("exc_info")):
            super().debug(msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._bad_request(exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs

    def _bad_request(self, exc_info: Any) -> bool:
        """Count and maybe report `exc_info` when it is a malformed request."""
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if exc_info is True:
            exc = sys.exc_info()[1]
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 0) < 500:
            return False
        self._counter.inc()
        self._unreported += 1
        now = self._clock()
        if now - self._last_line >= INTERVAL:
            log.warning(
                "http.bad_requests",
                count=self._unreported,
                error=f"{type(exc).__name__}: {exc.message}"[:MAX_ERROR_TEXT],
                next_report_in=INTERVAL,
            )
            self._last_line, self._unreported = now, 0
        return True
