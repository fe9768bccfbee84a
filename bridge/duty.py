"""What an instance runs for one connector, owner or standby (DESIGN.md, "Several
instances").

Every instance competes for every connector's lease (ownership.py). While it holds the
lease it runs the connector's session supervisor and consumer; one *term* lasts from
the lease's arrival to its loss::

    standby ── lease arrives ──► session: resume the lease's token (keepalive), else register
                                 accepted keys: shared log ──► local dedupe store
                                 consumer: start                                   owner
    owner ── broker link lost ─► consumer stopped at once, session kept            suspended
    suspended ── lease back ───► consumer again (same session)                     owner
    suspended ── fence_after ──► session stopped (no more keepalives)              standby
    owner ── SIGTERM ──────────► consumer drained, lease handed over carrying the
                                 session token, session stopped                   (exit)

The lease carries the session token from each registration on (`update_session`), so
after a crash the next owner resumes the session instead of waiting for OSCC to expire
it (2 ALREADY_REGISTERED_ON).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.accepted import AcceptedLog
from bridge.backoff import backoff_delay
from bridge.broker import BROKER_ERRORS, Broker
from bridge.config import Config, ConnectorConfig
from bridge.consumer import Consumer
from bridge.dedupe import DedupeStore
from bridge.errors import BrokerUnavailable
from bridge.lifecycle import Service
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.oscc.client import OsccClient
from bridge.ownership import LostReason, Ownership
from bridge.publisher import Publisher
from bridge.sealing import Sealer
from bridge.session import OnChange, SessionSupervisor
from bridge.topology import SessionChange

START_RETRY_BASE, START_RETRY_CAP = 0.5, 5.0
START_TIMEOUT = 90.0  # loading the accepted keys (up to 60 s) and opening the consumer
STOP_TIMEOUT = 10.0  # each broker step of a stop (handover, closing channels)
T = TypeVar("T")


class Duty(Service):
    """One connector on this instance: its lease, and while it holds it, its session and
    consumer (see the module docstring).

    ``start()`` opens the local dedupe store; `compete` (once the broker is up) joins the
    contest for the lease; ``stop()`` is the planned handover of SIGTERM.
    """

    def __init__(
        self,
        config: Config,
        connector: ConnectorConfig,
        *,
        broker: Broker,
        publisher: Publisher,
        client: OsccClient,
        metrics: Metrics,
        instance: str,
        on_change: OnChange,
        make_supervisor: Callable[..., SessionSupervisor] = SessionSupervisor,
        make_consumer: Callable[..., Consumer] = Consumer,
    ) -> None:
        self.config = config
        self.connector = connector
        self.instance = instance
        self.broker = broker
        self.publisher = publisher
        self.client = client
        self.metrics = metrics
        self.dedupe = DedupeStore.for_connector(config.spool.dir, connector.name)
        self.ownership: Ownership | None = None
        self.accepted: AcceptedLog | None = None
        self.supervisor: SessionSupervisor | None = None
        self.consumer: Consumer | None = None
        self.terms = 0  # ownership terms begun (lease arrivals)
        self._on_change = on_change
        self._make_supervisor = make_supervisor
        self._make_consumer = make_consumer
        self._rng = random.Random()
        self._log = get_logger("bridge.duty", connector=connector.name)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open the local dedupe store (the broker may not be there yet)."""
        await self.dedupe.start()

    async def compete(self) -> None:
        """Join the contest for the connector's lease (the broker is up). Idempotent, so
        the caller retries it after a failure."""
        if self.ownership is not None:
            return
        c, connection = self.connector, self.broker.connection
        if self.accepted is None:
            self.accepted = AcceptedLog(
                connection,
                topology=self.broker.topology,
                connector=c.name,
                max_age=self.dedupe.max_age,
                confirm_timeout=self.config.broker.confirm_timeout,
            )
        await self.accepted.start()
        ownership = Ownership(
            connection,
            topology=self.broker.topology,
            connector=c.name,
            instance=self.instance,
            sealer=Sealer(
                connector=c.name, title=c.title, token=c.token, oscc_url=self.config.oscc.url
            ),
            fence_after=self.config.ha.fence_after,
            metrics=self.metrics,
            on_acquired=self._acquired,
            on_suspended=self._suspended,
            on_lost=self._lost,
        )
        try:
            await ownership.start()
        except BaseException:
            await self._bounded(ownership.stop(), "ownership.stop")
            raise
        self.ownership = ownership

    async def stop(self) -> None:
        """Planned stop: stop consuming and drain, hand the lease over with the current
        session token, stop the session; a standby just leaves the contest."""
        ownership = self.ownership
        if ownership is not None:
            # Consumers first: nothing in flight when the next owner starts.
            await self._stop_consumer()
            if ownership.role == "owner" and self.broker.connected:
                token = self.supervisor.handover if self.supervisor else None
                handed = await self._bounded(ownership.release(token), "ownership.release")
                self._log.info("duty.handed_over", handed=bool(handed), session=token is not None)
            # Without the broker there is nothing to hand over: the broker requeued the
            # lease when the link dropped. Bounded, as aio-pika may wait for a reconnect.
            await self._bounded(ownership.stop(), "ownership.stop")
        await self._stop_session()
        if self.accepted is not None:
            await self._bounded(self.accepted.stop(), "accepted.stop")
        await self.dedupe.stop()

    async def _bounded(self, op: Awaitable[T], what: str) -> T | None:
        """`op`, given up after `STOP_TIMEOUT` s (logged) so a dead link cannot hold a stop."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                return await op
        except TimeoutError:
            self._log.warning("duty.stop_timeout", step=what, after=STOP_TIMEOUT)
            return None

    # -- what /status and /readyz show ---------------------------------------------------
    @property
    def role(self) -> str:
        """``owner``, ``suspended`` or ``standby``."""
        return self.ownership.role if self.ownership is not None else "standby"

    def status(self) -> dict[str, Any]:
        """JSON-able state of the connector on this instance; never a token."""
        own = self.ownership.status() if self.ownership else {"role": "standby", "owner": None}
        if self.supervisor is not None:
            session = self.supervisor.status()
        else:
            c = self.connector
            session = {"connector": c.name, "title": c.title, "state": "standby", "ready": False}
        return {**session, **own, "terms": self.terms}

    # -- ownership callbacks (run one at a time, in order) --------------------------------
    async def _acquired(self, session: str | None) -> None:
        self.terms += 1
        if self.supervisor is None:
            self.supervisor = self._make_supervisor(
                self.config,
                self.connector,
                self.client,
                self.metrics,
                self._session_changed,
                resume=session,
            )
            await self.supervisor.start()
        attempt = 0
        # Ends when the consumer runs, or at once when the lease is gone meanwhile (the
        # role changes synchronously on a lost link; its callback is queued behind us).
        while self.consumer is None and self.ownership is not None and self.ownership.owner:
            try:
                # Bounded: some aio-pika calls wait for a lost connection to come back.
                async with asyncio.timeout(START_TIMEOUT):
                    await self._start_consumer()
            except (BrokerUnavailable, *BROKER_ERRORS, TimeoutError) as exc:
                delay = backoff_delay(
                    attempt, base=START_RETRY_BASE, cap=START_RETRY_CAP, rng=self._rng
                )
                attempt += 1
                self._log.warning("duty.start_failed", error=repr(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _start_consumer(self) -> None:
        assert self.accepted is not None
        # Before consuming: whatever a previous owner recorded is never sent again.
        added = await self.accepted.load_into(self.dedupe)
        consumer = self._make_consumer(
            self.config,
            self.connector,
            self.broker,
            self.publisher,
            self.supervisor,
            self.client,
            self.metrics,
            self.dedupe,
            accepted=self.accepted,
        )
        await consumer.start()
        self.consumer = consumer
        self._log.info("duty.owner", term=self.terms, keys_loaded=added)

    async def _suspended(self) -> None:
        await self._stop_consumer()

    async def _lost(self, reason: LostReason) -> None:
        await self._stop_consumer()
        await self._stop_session()
        self._log.info("duty.standby", reason=reason)

    async def _stop_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _stop_session(self) -> None:
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            await supervisor.stop()

    async def _session_changed(self, change: SessionChange, body: dict[str, Any]) -> None:
        supervisor, ownership = self.supervisor, self.ownership
        if change == "registered" and supervisor is not None and ownership is not None:
            # The lease carries the live token from now on: whoever owns next resumes it.
            await ownership.update_session(supervisor.handover)
        await self._on_change(change, {**body, "instance": self.instance})


__all__ = ["Duty"]
