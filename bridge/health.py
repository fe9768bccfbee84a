"""Operator routes: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``.

They live on the webhook listener, or on their own listener when ``http.admin_port`` is
set (so they can be bound to an internal address). `/status` never shows a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge import __version__, logs
from bridge.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from bridge.broker import Broker
    from bridge.metrics import Metrics
    from bridge.session import SessionSupervisor
    from bridge.spool import Spool


class Health:
    """What the operator routes report on: the broker link and every session."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        broker: Broker,
        spool: Spool,
        supervisors: Mapping[str, SessionSupervisor],
        extra_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.broker = broker
        self.spool = spool
        self.supervisors = supervisors
        self.extra_status = extra_status
        self.started = time.time()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the broker is connected and every connector is registered."""
        connectors = {name: sup.ready for name, sup in self.supervisors.items()}
        broker = self.broker.connected
        ready = broker and all(connectors.values())
        return ready, {"ready": ready, "broker": broker, "connectors": connectors}

    def status(self) -> dict[str, Any]:
        """Everything an operator wants at a glance; JSON-able, no secrets."""
        out: dict[str, Any] = {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "broker": {"connected": self.broker.connected},
            "spool": self.spool.status(),
            "connectors": {name: sup.status() for name, sup in self.supervisors.items()},
        }
        if self.extra_status is not None:
            out.update(self.extra_status())
        # Error texts quote OSCC, which may quote a token.
        scrubbed: dict[str, Any] = logs.scrub(out)
        return scrubbed

    def add_routes(self, app: web.Application) -> None:
        """Mount the four routes on `app`."""
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, body = self.readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
