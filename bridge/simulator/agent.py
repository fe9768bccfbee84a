"""A scripted contact-center agent: what OSCC sends to a connector's webhookURL.

For each accepted contact of a session with listen-for-events enabled, one task walks
the script, one call after the other::

    Delivered -> Established -> [Transferred] -> [Stream request] -> [Held -> Retrieved]
              -> Outgoing Publication (the reply) -> Disconnected

Bracketed steps happen with the configured probabilities, drawn from a seeded RNG when
the contact is accepted (so a seed and an arrival order give the same scripts). Bodies
follow the guide's *examples*, quirks included (``date`` for ``dateTime`` in Delivered and
Retrieved, ``additionalInfo``, ``url``, nulls, the TransferParty's ``lSiteKey``/``callId``),
because that is what a connector meets in the field. A call answered non-2xx, or one that
cannot connect, is retried with capped exponential backoff; every attempt is recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import msgspec

from bridge import logs
from bridge.oscc import codec, models
from bridge.simulator.state import Session, State, WebhookCall

_log = logs.get_logger("bridge.simulator.agent")
_json = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentOptions:
    """How the agent behaves. Probabilities are per contact."""

    enabled: bool = True
    step_delay: float = 0.0  # seconds between two calls of one contact's script
    hold_probability: float = 0.3
    transfer_probability: float = 0.1
    stream_probability: float = 0.2
    retry_attempts: int = 20
    retry_base: float = 0.05
    retry_cap: float = 2.0
    webhook_timeout: float = 10.0
    agent_id: str = "100"


@dataclass(frozen=True, slots=True)
class _Plan:
    contact_id: str
    title: str
    contact: dict[str, Any]  # canonical New Contact body
    transfer: bool
    stream: bool
    hold: bool


def _event_time() -> str:
    """The events' timestamp form: ``2018-02-20 15:08:40.994``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class Agent:
    """Runs one script per accepted contact and makes webhook calls with retries."""

    def __init__(self, state: State, options: AgentOptions, seed: int = 0) -> None:
        self.state = state
        self.options = options
        self.gave_up: list[WebhookCall] = []  # last attempts of calls that never got a 2xx
        self._rng = random.Random(f"agent:{seed}")
        self._prefix = f"{self._rng.getrandbits(32):08X}"
        self._counter = 0x0300
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the HTTP client used for webhook calls."""
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.options.webhook_timeout)
        )

    async def close(self) -> None:
        """Cancel running scripts and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def idle(self) -> bool:
        """True when no contact script is running."""
        return not self._tasks

    def next_contact_id(self) -> str:
        """A contact id in the guide's style (``O553A8C5A0300``), unique per simulator."""
        contact_id = f"O{self._prefix}{self._counter:04X}"
        self._counter += 1
        return contact_id

    # --- scripts ----------------------------------------------------------------------

    def contact_accepted(self, session: Session, contact: codec.Parsed[models.NewContact]) -> None:
        """Schedule the script for an accepted contact (when enabled and listened for)."""
        if not (self.options.enabled and session.listen):
            return
        rng, opts = self._rng, self.options
        plan = _Plan(
            contact_id=self.next_contact_id(),
            title=session.title,
            contact=contact.body,
            transfer=rng.random() < opts.transfer_probability,
            stream=rng.random() < opts.stream_probability,
            hold=rng.random() < opts.hold_probability,
        )
        task = asyncio.create_task(self._run(plan), name=f"sim-agent-{plan.contact_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("sim.agent_script_failed", exc_info=task.exception())

    async def _run(self, plan: _Plan) -> None:
        c, cid = plan.contact, plan.contact_id
        agent = self.options.agent_id
        # partial, not lambda: each body binds the agent id current at its step.
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("delivered", partial(_delivered, cid, agent, c)),
            ("established", partial(_event, cid, agent, "EstablishedEvent")),
        ]
        if plan.transfer:
            target = str(int(agent) + 1) if agent.isdigit() else f"{agent}-2"
            steps.append(("transferred", partial(_transferred, cid, agent, target)))
            agent = target
        if plan.stream:
            steps.append(("stream", partial(_stream_request, c)))
        if plan.hold:
            steps.append(("held", partial(_held, cid, agent, c)))
            steps.append(("retrieved", partial(_retrieved, cid, agent, c)))
        steps.append(("publication", partial(_publication, cid, agent, c)))
        steps.append(("disconnected", partial(_disconnected, cid, agent)))
        for i, (kind, build) in enumerate(steps):
            if i and self.options.step_delay > 0:
                await asyncio.sleep(self.options.step_delay)
            await self.call(plan.title, build(), kind=kind, contact_id=cid)

    # --- webhook calls ----------------------------------------------------------------

    async def call(
        self, title: str, body: Any, *, kind: str = "custom", contact_id: str | None = None
    ) -> WebhookCall:
        """POST `body` to `title`'s webhookURL until it answers 2xx or attempts run out.

        The URL is looked up on every attempt, so a connector that re-registered with a
        new webhookURL gets the retries there. Returns the last attempt.
        """
        if self._http is None:
            raise RuntimeError("the agent is not started")
        opts = self.options
        delay = opts.retry_base
        data = codec.encode(body)
        last: WebhookCall | None = None
        for attempt in range(1, max(1, opts.retry_attempts) + 1):
            url = self.state.webhooks.get(title)
            if url is None:
                raise LookupError(f"no webhookURL registered for {title!r}")
            last = await self._post(url, data, title, body, kind, contact_id, attempt)
            self.state.webhook_calls.append(last)
            if last.ok:
                return last
            if attempt < opts.retry_attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, opts.retry_cap)
        assert last is not None
        self.gave_up.append(last)
        _log.warning(
            "sim.webhook_given_up", connector=title, kind=kind, contact_id=contact_id,
            status=last.status, attempts=last.attempt,
        )  # fmt: skip
        return last

    async def _post(
        self,
        url: str,
        data: bytes,
        title: str,
        body: Any,
        kind: str,
        contact_id: str | None,
        attempt: int,
    ) -> WebhookCall:
        assert self._http is not None
        status: int | None
        try:
            async with self._http.post(
                url, data=data, headers={"Content-Type": "application/json"}
            ) as resp:
                status = resp.status
                raw = await resp.read()
            try:
                answer: Any = _json.decode(raw)
            except msgspec.DecodeError:
                answer = raw.decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, answer = None, f"{type(exc).__name__}: {exc}"
        return WebhookCall(
            title=title,
            body=body,
            status=status,
            answer=answer,
            kind=kind,
            contact_id=contact_id,
            attempt=attempt,
            url=url,
            at=time.monotonic(),
        )


# --- bodies, in the guide's example shapes ------------------------------------------------


def _event(cid: str, agent: str, event_type: str, date_key: str = "dateTime") -> dict[str, Any]:
    return {
        "type": "OpenMediaEvent",
        "openMediaEventType": event_type,
        date_key: _event_time(),
        "contactID": cid,
        "agentID": agent,
    }


def _contact_parts(c: dict[str, Any]) -> dict[str, Any]:
    """Source, publishedObject and destination as the events carry them."""
    src, obj, dst = c["source"], c["publishedObject"], c["destination"]
    return {
        "source": {
            "id": src["id"],
            "type": src["type"],
            "name": src["name"],
            "location": src.get("location") or "",
            "language": src.get("language") or "",
            "additionalInfo": src.get("additionalInfos") or [],
        },
        "publishedObject": {
            "id": obj["id"],
            "fatherId": obj.get("fatherId") or "",
            "inReplyTo": obj.get("inReplyTo"),
            "title": obj.get("title") or "",
            "content": obj.get("content") or "",
            "contactData": obj.get("contactData") or None,
            "attachments": obj.get("attachments") or None,
            "tagList": obj.get("tagList") or None,
        },
        "destination": {
            "id": dst["id"],
            "type": None,  # the guide's examples send null here
            "name": dst.get("name") or "",
            "url": dst.get("URL") or "",
            "additionalInfo": dst.get("additionalInfos") or [],
        },
    }


def _delivered(cid: str, agent: str, c: dict[str, Any]) -> dict[str, Any]:
    return _event(cid, agent, "DeliveredOpenMediaEvent", "date") | _contact_parts(c)


def _held(cid: str, agent: str, c: dict[str, Any]) -> dict[str, Any]:
    return _event(cid, agent, "HeldOpenMediaEvent") | _contact_parts(c) | {"heldReason": "0"}


def _retrieved(cid: str, agent: str, c: dict[str, Any]) -> dict[str, Any]:
    return _event(cid, agent, "RetrievedOpenMediaEvent", "date") | _contact_parts(c)


def _party(cid: str, agent: str, agent_key: int) -> dict[str, Any]:
    return {
        "type": 0,
        "callId": cid + cid,
        "lSiteKey": 354091819,
        "deviceId": "",
        "agentId": agent,
        "lAgentKey": agent_key,
        "lTeamKey": 0,
        "teamName": "",
        "state": 2,
        "m_isCtiEventReceived": False,
        "m_isCtiEventExpected": False,
        "m_connectionState": 7,
    }


def _transferred(cid: str, agent: str, target: str) -> dict[str, Any]:
    return _event(cid, agent, "TransferredOpenMediaEvent") | {
        "m_TransferReason": 1,
        "m_TransferTargetType": 1,
        "m_TransferringParty": _party(cid, agent, 7),
        "m_TransferTargetParty": _party(cid, target, 8),
    }


def _disconnected(cid: str, agent: str) -> dict[str, Any]:
    return _event(cid, agent, "DisconnectedEvent") | {
        "discardReason": "0",
        "disconnectReason": "NORMAL",
        "disconnectedParty": {"agentKey": "7", "device": "", "partyType": "0"},
    }


def _stream_request(c: dict[str, Any]) -> dict[str, Any]:
    return stream_request(c["publishedObject"]["id"], c["destination"]["id"])


def stream_request(id: str, destination_id: str | None, number: str = "10") -> dict[str, Any]:
    """A Stream Request body as the guide's example has it."""
    return {
        "type": "Stream",
        "destinationId": destination_id,
        "id": id,
        "numberOfMessages": number,
    }


def _publication(cid: str, agent: str, c: dict[str, Any]) -> dict[str, Any]:
    """The agent's reply: from the page the contact went to, back to whoever wrote it."""
    src, obj, dst = c["source"], c["publishedObject"], c["destination"]
    return {
        "type": c["type"],
        "dateTime": codec.utc_now_iso(),
        "source": {
            "id": dst["id"],
            "type": "Organization",
            "name": dst.get("name") or "",
            "location": "",
            "language": src.get("language") or "",
            "additionalInfo": dst.get("additionalInfos") or [],
        },
        "objectToBePublished": {
            "id": f"{cid}-reply",
            "inReplyTo": {"id": obj["id"]},
            "title": f"Re: {obj.get('title') or ''}".strip(),
            "content": f"Hello {src['name']}, thank you for your message. Agent {agent}.",
            "attachments": [],
        },
        "destination": {
            "id": src["id"],
            "type": "User",
            "name": src["name"],
            "URL": "",
            "additionalInfo": src.get("additionalInfos") or [],
        },
    }
