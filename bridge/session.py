"""The session supervisor: one OSCC session per connector, kept alive, handed out.

States and what moves between them::

    starting ──► registering ──► registered ──(6, 10, 401/403, session_lost)──► registering
                   │    ▲
                   │    └──────── backoff   (1, 7, 5xx, timeouts, connection errors: capped
                   │              ▲          exponential backoff with full jitter; 2: retry
                   ├──────────────┘          until the stale session expired)
                   └──────────────► failed  (4, 8, 9: OSCC-side configuration is wrong;
                                             retry slowly, recover by itself)
    registered ◄──► degraded  (oscc.degraded_after keepalives failed in a row / one
                               succeeded: the session is kept, the state says OSCC is
                               not answering)
    any ──► stopped (on exit)

Callers get the token with ``await sup.token()`` and report a token OSCC refused with
``await sup.session_lost(token)``. The report clears the token at once, without awaiting,
so however many callers report the same token, only the first one counts and there is one
re-registration (a report for a token that is no longer current is a no-op).

Session changes are handed to `on_change` in order, from a task of their own, so a slow
or failing broker never delays a keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from bridge import errors
from bridge.backoff import backoff_delay
from bridge.config import Config, ConnectorConfig, webhook_url
from bridge.inorder import InOrder
from bridge.lifecycle import Service, cancel, watch
from bridge.logs import forget_secret, get_logger, mask, register_secret
from bridge.metrics import Metrics
from bridge.oscc.client import OsccClient
from bridge.session_events import enable_events
from bridge.session_status import SessionRecord, iso
from bridge.session_store import Resumable, Resumer
from bridge.topology import SessionChange

OnChange = Callable[[SessionChange, dict[str, Any]], Awaitable[None]]


class SessionState(enum.StrEnum):
    """Where a connector's session is; exported as the ``session_state`` gauge."""

    STARTING = "starting"
    REGISTERING = "registering"
    REGISTERED = "registered"
    # registered, but the last oscc.degraded_after keepalives failed (OSCC unreachable?);
    # back to registered on the next one that succeeds
    DEGRADED = "degraded"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


class SessionSupervisor(Service):
    """Registers one connector, keeps its session alive and hands out the session token.

    ``async with SessionSupervisor(config, connector, client, metrics):`` starts the
    background task and stops it (cancels and awaits) on exit. The delays below are
    attributes so tests (and operators embedding the class) can shorten them.
    `resume`: a session token handed over by the previous owner of the connector
    (ownership.py), tried with a keepalive before the locally saved one.
    """

    backoff_base: float = 0.5  # first transient retry after 0.5 s ...
    backoff_cap: float = 30.0  # ... doubling up to 30 s
    stale_retry: float = 10.0  # cap of the retry delay while a stale session holds us (2)
    failed_retry: float = 30.0  # retry delay while OSCC refuses the connector (4, 8, 9)

    def __init__(
        self,
        config: Config,
        connector: ConnectorConfig,
        client: OsccClient,
        metrics: Metrics,
        on_change: OnChange | None = None,
        *,
        rng: random.Random | None = None,
        resume: str | None = None,
    ) -> None:
        self.config = config
        self.connector = connector
        self._client = client
        self._metrics = metrics
        self._on_change = on_change
        self._rng = rng if rng is not None else random.Random()
        self._log = get_logger("bridge.session", connector=connector.name)
        self._webhook_url = webhook_url(config, connector)
        self._resumer = Resumer.for_connector(config, connector, resume, self._log)
        self._token: str | None = None
        self._credentials: dict[str, Any] | None = None  # what came with it (to announce)
        self._ready = asyncio.Event()  # set while _token is a live session token
        self._lost = asyncio.Event()  # set when the current token was reported lost
        self._state = SessionState.STARTING
        self._record = SessionRecord()
        self._changes = InOrder(
            self._log, "session.on_change_failed", f"session-notify:{connector.name}"
        )
        self._failed_code: int | None = None  # the code of the current `failed` spell
        self._tasks: list[asyncio.Task[None]] = []
        self._set_state(SessionState.STARTING)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start registering in the background."""
        if self._tasks:
            return
        await self._changes.start()
        task = asyncio.create_task(self._run(), name=f"session:{self.connector.name}")
        self._tasks.append(watch(task, self._log, "session.task_died"))

    async def stop(self) -> None:
        """Cancel the background tasks and wait for them; the state becomes ``stopped``."""
        tasks, self._tasks = self._tasks, []
        await cancel(*tasks)
        await self._changes.stop()
        self._drop_token()
        self._set_state(SessionState.STOPPED)

    # -- what callers use ----------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def handover(self) -> str | None:
        """What the ownership lease carries: the live session (`Resumable.encode`), None
        while there is none."""
        if self._token is None:
            return None
        return Resumable(self._token, self._credentials, self._webhook_url).encode()

    @property
    def ready(self) -> bool:
        """True while registered, degraded included: the session is still held."""
        return self._state in (SessionState.REGISTERED, SessionState.DEGRADED)

    async def token(self, timeout: float = 30.0) -> str:  # noqa: ASYNC109 (agreed interface)
        """A live session token; waits up to `timeout` while (re)registering.

        Raises Transient when there is none in time (the caller retries later).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._token is not None:
                return self._token
            if self._state is SessionState.STOPPED:
                raise errors.Transient(f"session of {self.connector.name} is stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Transient(
                    f"no OSCC session for {self.connector.name} within {timeout:g} s "
                    f"(state {self._state})"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._ready.wait()

    async def session_lost(self, token: str, error: errors.BridgeError | None = None) -> None:
        """Report that OSCC refused `token`; one re-registration however many report it."""
        self._lose(token, error or errors.SessionLost("reported by a caller"))

    def status(self) -> dict[str, Any]:
        """JSON-able state for /status; never the token."""
        return {
            "connector": self.connector.name,
            "title": self.connector.title,
            "state": str(self._state),
            "ready": self.ready,
            **self._record.status(),
        }

    # -- state ---------------------------------------------------------------------------

    def _set_state(self, state: SessionState) -> bool:
        """Move to `state`; True when it is a change."""
        for s in SessionState:
            self._metrics.session_state.labels(self.connector.name, s.value).set(
                1 if s is state else 0
            )
        if state is self._state:
            return False
        self._state = state
        self._record.since = time.time()
        self._log.debug("session.state", state=str(state))
        return True

    def _drop_token(self) -> None:
        if self._token is not None:
            forget_secret(self._token)
        self._token = self._credentials = None
        self._ready.clear()

    def _lose(self, token: str, error: errors.BridgeError) -> None:
        """Forget `token` if it is the current one; synchronous, hence single-flight."""
        if token != self._token or self._state is SessionState.STOPPED:
            return
        self._drop_token()
        # Never resume a token someone saw refused: OSCC accepting its keepalive while
        # refusing it elsewhere would loop the callers without a backoff.
        self._resumer.forget()
        self._lost.set()
        self._record.note(error)
        self._set_state(SessionState.REGISTERING)
        self._log.warning("session.lost", error_code=error.code, error_text=error.text)
        self._emit("lost", error)

    def _emit(
        self, change: SessionChange, error: errors.BridgeError | None = None, **extra: Any
    ) -> None:
        body: dict[str, Any] = {
            "connector": self.connector.name,
            "title": self.connector.title,
            "state": str(self._state),
            "at": iso(time.time()),
        }
        if error is not None:
            if error.code is not None:
                body["errorCode"] = error.code
            body["errorText"] = mask(error.text)  # OSCC's text may quote a token
        body.update(extra)
        if (on_change := self._on_change) is not None:
            self._changes.put(lambda: on_change(change, body), change=change)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0  # consecutive failures, for the backoff
        while True:
            # retries out of backoff/failed keep that state: it says what we wait for,
            # and `failed` is announced once per spell, not once per attempt
            if self._state not in (SessionState.BACKOFF, SessionState.FAILED):
                self._set_state(SessionState.REGISTERING)
            try:
                token = await self._register()
            except Exception as exc:
                delay = self._registration_failed(exc, attempt)
                attempt += 1
                await asyncio.sleep(delay)
            else:
                attempt = 0
                self._failed_code = None
                await self._hold(token)

    def _registration_failed(self, exc: Exception, attempt: int) -> float:
        """Account for a failed registration; return how long to wait before the next."""
        name = self.connector.name
        match exc:
            case errors.ConnectorRefused():
                self._record.note(exc)
                self._metrics.registrations.labels(name, "refused").inc()
                if self._set_state(SessionState.FAILED) or exc.code != self._failed_code:
                    self._log.error(
                        "session.connector_refused",
                        title=self.connector.title,
                        error_code=exc.code,
                        error_text=exc.text,
                        hint="check the connector's title, token and state in OSCC Manager",
                        retry_in=self.failed_retry,
                    )
                    self._emit("failed", exc)
                self._failed_code = exc.code
                return self.failed_retry * self._rng.uniform(0.8, 1.0)
            case errors.StaleSession():
                self._record.note(exc)
                self._metrics.registrations.labels(name, "stale").inc()
                if self._set_state(SessionState.BACKOFF):
                    self._log.warning("session.stale_session", error_text=exc.text)
                cap = self.stale_retry
            case errors.BridgeError():
                self._record.note(exc)
                self._metrics.registrations.labels(name, "transient").inc()
                if self._set_state(SessionState.BACKOFF):
                    self._log.warning(
                        "session.register_failed", error_code=exc.code, error_text=exc.text
                    )
                cap = self.backoff_cap
            case _:
                # a bug, not an OSCC answer: say so loudly, but keep the connector alive
                self._log.error("session.register_crashed", exc_info=exc)
                self._record.note(errors.Transient(f"{type(exc).__name__}: {exc}"))
                self._metrics.registrations.labels(name, "error").inc()
                self._set_state(SessionState.BACKOFF)
                cap = self.backoff_cap
        return backoff_delay(attempt, base=self.backoff_base, cap=cap, rng=self._rng)

    async def _register(self) -> str:
        """Resume the session a previous owner or process left (session_store.Resumer),
        else register; then enable listen-for-events, install and announce the token."""
        held = await self._resumer.take(self._client.keepalive)
        if held is None:
            response = await self._client.register(
                self.connector.title, self.connector.token, self._webhook_url
            )
            assert response.session_token  # the client raises Transient for an answer without one
            credentials = None
            if self.connector.publish_credentials and response.user_credentials is not None:
                credentials = msgspec.to_builtins(response.user_credentials)
            held = Resumable(response.session_token, credentials)
            self._resumer.save(held)
            self._record.registrations += 1
            outcome = "registered"
        else:
            self._record.last_keepalive = time.time()
            outcome = "resumed"
        token = held.session
        extra: dict[str, Any] = {}
        if held.credentials is not None:
            register_secret(held.credentials.get("password"))  # a resumed one came from disk
            extra["userCredentials"] = held.credentials
        if self.connector.listen_for_events:
            self._record.events_enabled = await enable_events(
                self._client,
                token,
                base=self.backoff_base,
                cap=min(self.backoff_cap, self.config.oscc.keepalive_interval),
                rng=self._rng,
                note=self._record.note,
                log=self._log,
            )
        self._lost.clear()
        self._token, self._credentials = token, held.credentials
        self._ready.set()
        self._metrics.registrations.labels(self.connector.name, outcome).inc()
        self._set_state(SessionState.REGISTERED)
        self._log.info(f"session.{outcome}", title=self.connector.title)
        self._emit("registered", **extra)
        return token

    async def _hold(self, token: str) -> None:
        """Keep `token` alive until OSCC or a caller says it is gone."""
        interval = self.config.oscc.keepalive_interval
        delay = interval
        failures = 0
        while self._token == token:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._lost.wait()
            if self._token != token:
                return
            try:
                await self._client.keepalive(token)
            except errors.Transient as exc:
                self._record.note(exc)
                self._record.keepalive_failures += 1
                self._metrics.keepalive_failures.labels(self.connector.name).inc()
                if failures == 0:
                    self._log.warning("session.keepalive_failed", error_text=exc.text)
                delay = min(
                    interval,
                    backoff_delay(failures, base=self.backoff_base, cap=interval, rng=self._rng),
                )
                failures += 1
                if failures >= self.config.oscc.degraded_after and self._set_state(
                    SessionState.DEGRADED
                ):
                    self._log.warning("session.degraded", failures=failures)
            except errors.BridgeError as exc:
                # 6, 10, 401/403 -- or an answer the guide does not expect for a
                # keepalive (2, 4, 8, 9, 11..13): either way this session is unusable
                self._record.keepalive_failures += 1
                self._metrics.keepalive_failures.labels(self.connector.name).inc()
                self._lose(token, exc)
                return
            else:
                if self._token == token:
                    self._record.last_keepalive = time.time()
                if failures:
                    self._log.info("session.keepalive_recovered", failures=failures)
                if self._state is SessionState.DEGRADED and self._token == token:
                    self._set_state(SessionState.REGISTERED)
                failures = 0
                delay = interval


__all__ = ["OnChange", "SessionState", "SessionSupervisor"]
