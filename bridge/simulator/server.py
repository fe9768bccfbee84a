"""`Simulator`: the OSCC stand-in as one async context manager.

    async with Simulator(connectors={"facebook": "TOKEN"}, port=0, seed=0) as sim:
        ...  # point the bridge at sim.url; inspect sim.records, sim.webhook_calls

It serves the OSCC REST commands (`rest.py`) and the admin API (`admin.py`) on one
aiohttp site, and runs the scripted agent (`agent.py`) that calls connectors' webhooks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge import logs
from bridge.lifecycle import Service
from bridge.simulator import admin
from bridge.simulator.agent import Agent, AgentOptions, stream_request
from bridge.simulator.faults import Faults
from bridge.simulator.rest import OsccApi
from bridge.simulator.state import Record, Session, State, WebhookCall

DEFAULT_CONNECTORS = {"facebook": "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"}  # the guide's example

_log = logs.get_logger("bridge.simulator")


class Simulator(Service):
    """A simulated OSCC Application Server on 127.0.0.1 (by default), for tests and demos.

    `connectors` maps each openMediaTitle OSCC knows to its token. `port=0` picks a free
    port (see `url`). `session_ttl`: seconds without an authorized call after which a
    session is gone. `agent`: run the scripted agent. `seed` makes the 5xx draws and the
    agent's scripts reproducible. Other keywords tune the agent (`AgentOptions`) and set
    faults at start (`not_ready` seconds, `error_5xx_rate`, `latency`,
    `refuse_registration`, `answer_pieces`, `piece_gap`). `strict_sessions`: only
    keepalives keep a session alive (see `state`).
    """

    def __init__(
        self,
        connectors: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        session_ttl: float = 90.0,
        agent: bool = True,
        seed: int = 0,
        step_delay: float = 0.0,
        hold_probability: float = 0.3,
        transfer_probability: float = 0.1,
        stream_probability: float = 0.2,
        retry_attempts: int = 20,
        retry_base: float = 0.05,
        retry_cap: float = 2.0,
        webhook_timeout: float = 10.0,
        not_ready: float = 0.0,
        error_5xx_rate: float = 0.0,
        latency: float = 0.0,
        refuse_registration: int | None = None,
        answer_pieces: int = 1,
        piece_gap: float = 0.0,
        strict_sessions: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.state = State(
            dict(connectors or DEFAULT_CONNECTORS),
            session_ttl=session_ttl,
            strict_sessions=strict_sessions,
        )
        self.faults = Faults(self.state, seed=seed)
        self.faults.update(
            {
                "error_5xx_rate": error_5xx_rate,
                "latency": latency,
                "refuse_registration": refuse_registration,
                "answer_pieces": answer_pieces,
                "piece_gap": piece_gap,
            }
        )
        self._not_ready_at_start = not_ready
        self.agent = Agent(
            self.state,
            AgentOptions(
                enabled=agent,
                step_delay=step_delay,
                hold_probability=hold_probability,
                transfer_probability=transfer_probability,
                stream_probability=stream_probability,
                retry_attempts=retry_attempts,
                retry_base=retry_base,
                retry_cap=retry_cap,
                webhook_timeout=webhook_timeout,
            ),
            seed=seed,
        )
        self.api = OsccApi(self.state, self.faults, self.agent)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving; `url` is valid afterwards."""
        app = web.Application()
        self.api.add_routes(app)
        admin.add_routes(app, self)
        await self.agent.start()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        port = self._runner.addresses[0][1]
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        self._url = f"http://{shown}:{port}" if ":" not in shown else f"http://[{shown}]:{port}"
        if self._not_ready_at_start > 0:
            self.faults.not_ready(self._not_ready_at_start)
        _log.info("sim.started", url=self._url, connectors=sorted(self.state.connectors))

    async def stop(self) -> None:
        """Stop the agent's scripts, then the server."""
        await self.agent.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """OSCC base URL, e.g. ``http://127.0.0.1:41365``."""
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    # --- state ------------------------------------------------------------------------

    @property
    def connectors(self) -> dict[str, str]:
        """Titles OSCC knows -> tokens; change it to reconfigure OSCC at run time."""
        return self.state.connectors

    @property
    def session_ttl(self) -> float:
        """Seconds without an authorized call after which a session is gone."""
        return self.state.session_ttl

    @session_ttl.setter
    def session_ttl(self, value: float) -> None:
        self.state.session_ttl = value

    @property
    def sessions(self) -> list[Session]:
        """Live sessions."""
        self.state.expire()
        return list(self.state.sessions.values())

    @property
    def records(self) -> list[Record]:
        """Every REST call, in arrival order (the live list)."""
        return self.state.records

    @property
    def webhook_calls(self) -> list[WebhookCall]:
        """Every webhook call attempt the agent made, in order (the live list)."""
        return self.state.webhook_calls

    @property
    def idle(self) -> bool:
        """True when no agent script is running."""
        return self.agent.idle

    def contacts(self, title: str) -> list[Any]:
        """Bodies of `title`'s newContact calls answered errorCode 0, in order."""
        return self.state.accepted("newContact", title)

    @property
    def seen(self) -> Counter[str]:
        """publishedObject.id -> newContact calls that carried it, whatever the answer."""
        return self.state.seen

    def created(self) -> Counter[str]:
        """publishedObject.id -> newContact calls answered errorCode 0: what OSCC created."""
        return self.state.created()

    def duplicates(self) -> int:
        """Contacts OSCC created more than once: the extra copies, summed."""
        return sum(n - 1 for n in self.created().values() if n > 1)

    @property
    def max_live(self) -> dict[str, int]:
        """Title -> the most sessions of it that were live at once (since start)."""
        return self.state.max_live

    def stream_responses(self, title: str) -> list[Any]:
        """Bodies of `title`'s streamResponse calls answered errorCode 0, in order."""
        return self.state.accepted("streamResponse", title)

    def restart(self, not_ready: float = 0.0) -> None:
        """OSCC restarted: every session (and its listen flag) is gone; optionally it
        answers NOT_READY for `not_ready` seconds. Running agent scripts carry on."""
        self.state.drop_sessions()
        if not_ready > 0:
            self.faults.not_ready(not_ready)
        _log.info("sim.restarted", not_ready=not_ready)

    def reset(self) -> None:
        """Forget records and webhook calls and clear every fault; sessions stay."""
        self.state.clear_history()
        self.agent.gave_up.clear()
        self.faults.clear()

    # --- actions ----------------------------------------------------------------------

    # The agreed interface takes `timeout`, like asyncio.wait_for.
    async def wait_for(
        self,
        condition: Callable[[], object],
        timeout: float = 10.0,  # noqa: ASYNC109
        interval: float = 0.01,
    ) -> None:
        """Poll `condition` until it is true; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)

    async def send_stream_request(
        self, title: str, id: str, destination_id: str | None = None, number: str = "10"
    ) -> WebhookCall:
        """Send a Stream Request to `title`'s webhookURL (with retries); the last attempt.

        LookupError when `title` never registered a webhookURL.
        """
        body = stream_request(id, destination_id, number)
        return await self.agent.call(title, body, kind="stream")

    async def call_webhook(self, title: str, body: Any, kind: str = "custom") -> WebhookCall:
        """Send any `body` to `title`'s webhookURL (with retries); the last attempt."""
        return await self.agent.call(title, body, kind=kind)
