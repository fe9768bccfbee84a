"""Operator routes: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``.

They live on the webhook listener, or on their own listener when ``http.admin_port`` is
set (so they can be bound to an internal address). `/status` never shows a secret.

Readiness is "this instance can take webhooks": the broker is connected or the spool has
room. A load balancer must keep sending OSCC's webhooks to an instance whose broker is
down (that is what the spool is for) and to a standby (every instance takes every
connector's webhooks), so roles and sessions are shown, never decisive; they are in
`/status`, the metrics and the alerts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge import __version__, logs
from bridge.config import mask_url
from bridge.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from bridge.broker import Broker
    from bridge.duty import Duty
    from bridge.metrics import Metrics
    from bridge.spool import Spool


class Health:
    """What the operator routes report on: the broker link, the spool, every connector's
    role and session on this instance (`duties`)."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        broker: Broker,
        spool: Spool,
        duties: Mapping[str, Duty],
        instance: str,
        room: int = 1_048_576,
        extra_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.broker = broker
        self.spool = spool
        self.duties = duties
        self.instance = instance
        self.room = room  # spool bytes that must be free to take one more webhook
        self.extra_status = extra_status
        self.started = time.time()

    def spool_has_room(self) -> bool:
        """True while the spool can take a webhook body of the largest size allowed."""
        return self.spool.max_bytes - self.spool.nbytes >= min(self.room, self.spool.max_bytes)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the broker is connected or the spool has room (see the module
        docstring); the body also shows each connector's role and session state."""
        broker, room = self.broker.connected, self.spool_has_room()
        ready = broker or room
        connectors = {
            name: {"role": duty.role, "session": duty.status()["state"]}
            for name, duty in self.duties.items()
        }
        return ready, {
            "ready": ready,
            "broker": broker,
            "spool_room": room,
            "instance": self.instance,
            "connectors": connectors,
        }

    def status(self) -> dict[str, Any]:
        """Everything an operator wants at a glance; JSON-able, no secrets."""
        out: dict[str, Any] = {
            "version": __version__,
            "instance": self.instance,
            "uptime_seconds": round(time.time() - self.started, 1),
            "broker": {"connected": self.broker.connected, "url": mask_url(self.broker.url)},
            "spool": self.spool.status(),
            "connectors": {name: duty.status() for name, duty in self.duties.items()},
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
