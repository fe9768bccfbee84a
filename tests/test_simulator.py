"""The OSCC simulator, over real HTTP: the REST side as the guide describes it, faults,
the scripted agent calling a real webhook server, the admin API and the CLI entry points."""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from bridge.oscc import codec, models
from bridge.oscc.codes import ErrorCode
from bridge.simulator import DEFAULT_CONNECTORS, Simulator, add_arguments, serve
from tests.harness import wait_until

TITLE = "facebook"
TOKEN = "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"  # the guide's example token
BASE = "/openmedia/webapi/main"
HEX64 = re.compile(r"[0-9a-f]{64}")

# The guide's New Contact example, verbatim apart from the PDF's line break in inReplyTo.id
# (it spells additionalInfo, not the table's additionalInfos).
GUIDE_CONTACT: dict[str, Any] = {
    "type": "Post",
    "dateTime": "2016-09-10T15:04:55Z",
    "source": {
        "id": "source id",
        "type": "Person",
        "name": "name surname",
        "location": "Town, Country",
        "language": "en",
        "additionalInfo": [
            {"key": "info1", "value": "value1"},
            {"key": "info2", "value": "value2"},
        ],
    },
    "publishedObject": {
        "id": "Object id",
        "fatherId": "Object id",
        "inReplyTo": {"id": "Id of post for which this object is a reply or a comment."},
        "title": "Title of the document",
        "content": "This field contains the content of the post",
        "contactData": [{"key": "key1", "value": "value1"}, {"key": "key2", "value": "value2"}],
        "attachments": [
            {
                "type": "Image",
                "content": "Description of the attachment",
                "url": "http://www.example.com/cat.jpeg",
            }
        ],
        "tagList": [{"tag": "#hashtag"}, {"tag": "@mention"}],
    },
    "destination": {
        "id": "Page id",
        "type": "Page",
        "name": "Page Name",
        "URL": "Page address",
        "additionalInfo": [
            {"key": "info1", "value": "value1"},
            {"key": "info2", "value": "value2"},
        ],
    },
    "isRealtimeHandling": False,
}

# The guide's Stream Response example (first item; the example's `itemsInPage` spelling).
GUIDE_STREAM_RESPONSE: dict[str, Any] = {
    "type": "Stream",
    "errorCode": 0,
    "errorText": "NO_ERROR",
    "id": "205056409590639_124328589355467",
    "page": 1,
    "lastPage": "true",
    "itemsInPage": 1,
    "totalItems": 1,
    "orderedItems": [
        {
            "id": "205056409590639_537658564310000",
            "fatherId": "205056409590639_124328589355467",
            "inReplyTo": {"id": "205056409590639_124328589355467"},
            "type": "Post",
            "dateTime": "2016-09-10T13:15:00Z",
            "source": {"type": "Person", "name": "John Doe"},
            "content": "Please provide more detail about your problem.",
        }
    ],
}


def contact(n: int = 0, **changes: Any) -> dict[str, Any]:
    """The guide's contact with a distinct publishedObject.id (and `changes` on top)."""
    body = copy.deepcopy(GUIDE_CONTACT)
    body["publishedObject"]["id"] = f"post-{n}"
    body["source"]["name"] = f"Customer {n}"
    body.update(changes)
    return body


# --- helpers ---------------------------------------------------------------------------


class Oscc:
    """A tiny OSCC client for the tests: raw calls, answers as (HTTP status, body)."""

    def __init__(self, http: aiohttp.ClientSession, sim: Simulator) -> None:
        self.http, self.sim = http, sim

    async def call(
        self,
        endpoint: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = token
        data = raw if raw is not None else codec.encode(body)
        async with self.http.post(
            f"{self.sim.url}{BASE}/{endpoint}", data=data, headers=headers
        ) as r:
            text = await r.text()
            if r.content_type == "application/json":
                return r.status, codec.decode_json(text)
            return r.status, text

    async def register(
        self, title: str = TITLE, token: str = TOKEN, webhook: str = "http://127.0.0.1:9/hook"
    ) -> dict[str, Any]:
        body = {
            "type": "Registration",
            "webhookURL": webhook,
            "openMedia": {"openMediaTitle": title, "token": token},
        }
        status, answer = await self.call("registerConnector", body)
        assert status == 200
        return dict(answer)

    async def session(self, webhook: str = "http://127.0.0.1:9/hook", listen: bool = True) -> str:
        answer = await self.register(webhook=webhook)
        assert answer["errorCode"] == 0, answer
        token = str(answer["sessionToken"])
        if listen:
            _, ok = await self.call("listenForEvents", {"enabledListenForEvent": True}, token=token)
            assert ok == {"errorCode": 0, "errorText": "NO_ERROR"}
        return token

    async def code(self, endpoint: str, body: Any = None, **kw: Any) -> int:
        status, answer = await self.call(endpoint, body, **kw)
        assert status == 200, (status, answer)
        return int(answer["errorCode"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator({TITLE: TOKEN}, port=0, seed=0, retry_base=0.01) as simulator:
        yield simulator


@pytest.fixture
def oscc(http: aiohttp.ClientSession, sim: Simulator) -> Oscc:
    return Oscc(http, sim)


class Hook:
    """A connector's webhook: answers 503 to the first `fail_first` calls, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.failed = 0
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.failed < self.fail_first:
            self.failed += 1
            return web.Response(status=503, text="busy")
        self.received.append(body)
        return web.json_response({"errorCode": 0, "errorText": "NO_ERROR"})


@asynccontextmanager
async def webhook_server(hook: Hook) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/webhook/facebook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/webhook/facebook"
    finally:
        await runner.cleanup()


async def poll(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline poll, not a call to cancel
) -> float:
    """Await `check()` until true; return the seconds it took; fail after `timeout`."""
    start = time.monotonic()
    await wait_until(check, timeout, "the check")
    return time.monotonic() - start


# --- registration ------------------------------------------------------------------------


async def test_guide_registration_example_gets_the_guides_response_shape(oscc: Oscc) -> None:
    answer = await oscc.register(webhook="https://connectorhostaddress/connectorpath")
    assert set(answer) == {"type", "errorCode", "errorText", "sessionToken", "userCredentials"}
    assert answer["type"] == "Registration"
    assert (answer["errorCode"], answer["errorText"]) == (0, "NO_ERROR")
    assert HEX64.fullmatch(answer["sessionToken"])
    assert set(answer["userCredentials"]) == {"userName", "password"}
    # and the bridge's own model reads it
    parsed = codec.convert(answer, models.RegistrationResponse).obj
    assert parsed.session_token == answer["sessionToken"]
    assert oscc.sim.records[-1].title == TITLE
    assert oscc.sim.records[-1].authorization is None


@pytest.mark.parametrize(
    ("title", "token"), [(TITLE, "wrong-token"), ("unknown", TOKEN), (TITLE, TOKEN.lower())]
)
async def test_wrong_title_or_token_answers_4(oscc: Oscc, title: str, token: str) -> None:
    answer = await oscc.register(title=title, token=token)
    assert answer == {
        "type": "Registration",
        "errorCode": 4,
        "errorText": "WRONG_TITLE_OR_TOKEN_NOT_FOUND",
    }
    assert oscc.sim.sessions == []


def registration(title: str = TITLE, token: str = TOKEN, **changes: Any) -> dict[str, Any]:
    body = {
        "type": "Registration",
        "webhookURL": "http://x/y",
        "openMedia": {"openMediaTitle": title, "token": token},
    }
    return {k: v for k, v in (body | changes).items() if v is not None}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (registration(webhookURL=None), 11),
        (registration(openMedia=None), 11),
        (registration(openMedia={"openMediaTitle": TITLE}), 11),
        (registration(type="Unregister"), 11),
        (registration(webhookURL="not a url"), 11),
        (registration(title="t" * 51), 12),
        (registration(token="k" * 51), 12),
        ([1, 2], 11),
    ],
)
async def test_registration_body_is_checked(oscc: Oscc, body: Any, code: int) -> None:
    assert await oscc.code("registerConnector", body) == code


async def test_registration_that_is_not_json_answers_11(oscc: Oscc) -> None:
    assert await oscc.code("registerConnector", raw=b"type=Registration") == 11
    assert await oscc.code("registerConnector", raw=b"{}", content_type="text/plain") == 11
    assert oscc.sim.records[0].body == "type=Registration"


async def test_registration_limits_are_50_characters(http: aiohttp.ClientSession) -> None:
    title, token = "t" * 50, "k" * 50
    async with Simulator({title: token}, port=0, agent=False) as sim:
        answer = await Oscc(http, sim).register(title=title, token=token)
    assert answer["errorCode"] == 0


async def test_second_registration_answers_2_while_the_first_session_lives(
    http: aiohttp.ClientSession,
) -> None:
    ttl = 0.4
    async with Simulator({TITLE: TOKEN}, port=0, session_ttl=ttl, agent=False) as sim:
        oscc = Oscc(http, sim)
        first = await oscc.session(listen=False)
        registered_at = time.monotonic()
        answer = await oscc.register()
        assert answer == {
            "type": "Registration",
            "errorCode": 2,
            "errorText": "ALREADY_REGISTERED_ON",
        }

        second: dict[str, Any] = {}

        async def accepted() -> bool:
            second.update(await oscc.register())
            return bool(second["errorCode"] == 0)

        await poll(accepted, timeout=5)
        assert time.monotonic() - registered_at >= ttl
        assert second["sessionToken"] != first
        # the expired session is gone for good
        assert await oscc.code("keepalive", {}, token=first) == 10
        assert await oscc.code("keepalive", {}, token=second["sessionToken"]) == 0


async def test_keepalive_refreshes_the_session(http: aiohttp.ClientSession) -> None:
    ttl = 0.8
    async with Simulator({TITLE: TOKEN}, port=0, session_ttl=ttl, agent=False) as sim:
        oscc = Oscc(http, sim)
        token = await oscc.session(listen=False)
        start = time.monotonic()
        # Keepalives every ttl/5 for 2.5 ttl: the session never expires.
        while time.monotonic() - start < 2.5 * ttl:
            _, answer = await oscc.call("keepalive", {}, token=token)
            assert answer == {"type": "keepAlive", "errorCode": 0, "errorText": "NO_ERROR"}
            assert (await oscc.register())["errorCode"] == 2  # still held
            await asyncio.sleep(ttl / 5)  # the keepalive cadence is what is under test

        # Without keepalives it expires.
        async def expired() -> bool:
            return await oscc.code("newContact", contact(), token=token) == 10

        # Polling with newContact would refresh it if it still lived, so poll registration.
        async def free() -> bool:
            return (await oscc.register())["errorCode"] == 0

        await poll(free, timeout=5)
        assert await expired()


# --- authorization and the session's calls ---------------------------------------------------


async def test_new_contact_without_authorization_answers_10(oscc: Oscc) -> None:
    await oscc.session()
    status, answer = await oscc.call("newContact", contact())
    assert (status, answer) == (
        200,
        {"type": "Post", "errorCode": 10, "errorText": "CONNECTOR_NOT_REGISTERED"},
    )
    assert oscc.sim.contacts(TITLE) == []
    assert oscc.sim.records[-1].title is None


@pytest.mark.parametrize("auth", ["", "Bearer {token}", "{token}x", "0" * 64])
async def test_a_token_that_is_not_a_current_session_answers_10(oscc: Oscc, auth: str) -> None:
    token = await oscc.session()
    assert await oscc.code("newContact", contact(), token=auth.format(token=token)) == 10


async def test_old_token_after_drop_sessions_answers_10(oscc: Oscc) -> None:
    token = await oscc.session()
    assert await oscc.code("newContact", contact(1), token=token) == 0
    assert oscc.sim.faults.drop_sessions() == 1
    for endpoint, body in [
        ("newContact", contact(2)),
        ("keepalive", {}),
        ("streamResponse", GUIDE_STREAM_RESPONSE),
        ("listenForEvents", {"enabledListenForEvent": True}),
    ]:
        assert await oscc.code(endpoint, body, token=token) == 10
    # and the connector can register again at once
    assert (await oscc.register())["errorCode"] == 0
    assert [c["publishedObject"]["id"] for c in oscc.sim.contacts(TITLE)] == ["post-1"]


async def test_restart_forgets_sessions_and_listen_flags(http: aiohttp.ClientSession) -> None:
    hook = Hook()
    async with webhook_server(hook) as url, Simulator({TITLE: TOKEN}, port=0) as sim:
        oscc = Oscc(http, sim)
        token = await oscc.session(webhook=url, listen=True)
        sim.restart(not_ready=0.6)
        assert await oscc.code("keepalive", {}, token=token) == 7

        async def registered() -> bool:
            return (await oscc.register(webhook=url))["errorCode"] == 0

        await poll(registered)
        new = str(sim.sessions[0].token)
        assert await oscc.code("keepalive", {}, token=token) == 10
        assert await oscc.code("newContact", contact(), token=new) == 0
        assert sim.idle  # listen-for-events was not enabled again: no agent script
        assert sim.webhook_calls == []


async def test_guide_new_contact_example_is_accepted(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    status, answer = await oscc.call("newContact", GUIDE_CONTACT, token=token)
    assert (status, answer) == (200, {"type": "Post", "errorCode": 0, "errorText": "NO_ERROR"})
    assert oscc.sim.contacts(TITLE) == [GUIDE_CONTACT]  # recorded as sent


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda c: c["source"].update(id="s" * 256), 0),
        (lambda c: c["source"].update(id="s" * 257), 12),
        (lambda c: c["source"].update(name="n" * 257), 12),
        (lambda c: c["publishedObject"].update(content="c" * 5000), 0),
        (lambda c: c["publishedObject"].update(content="c" * 5001), 12),
        (lambda c: c["publishedObject"]["inReplyTo"].update(id="i" * 257), 12),
        (lambda c: c["destination"].update(name="d" * 257), 12),
        (lambda c: c.update(dateTime="yesterday at noon"), 13),
        (lambda c: c.update(dateTime="Sat, 10 Sep 2016 15:04:55 GMT"), 0),
        (lambda c: c.update(type="Tweet"), 11),
        (lambda c: c.update(type="POST"), 0),
        (lambda c: c["source"].update(type="Robot"), 11),
        (lambda c: c.pop("publishedObject"), 11),
        (lambda c: c["source"].pop("id"), 11),
    ],
)
async def test_new_contact_is_checked_as_the_guide_says(
    oscc: Oscc, change: Callable[[dict[str, Any]], Any], code: int
) -> None:
    token = await oscc.session(listen=False)
    body = contact()
    change(body)
    assert await oscc.code("newContact", body, token=token) == code
    assert len(oscc.sim.contacts(TITLE)) == (1 if code == 0 else 0)


async def test_new_contact_that_is_not_json_answers_11(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    assert await oscc.code("newContact", raw=b"<contact/>", token=token) == 11
    assert await oscc.code("newContact", contact(), token=token, content_type="text/plain") == 11
    assert await oscc.code("newContact", raw=b"[]", token=token) == 11
    assert oscc.sim.contacts(TITLE) == []


async def test_keepalive_and_listen_for_events(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    assert await oscc.call("keepalive", {}, token=token) == (
        200,
        {"type": "keepAlive", "errorCode": 0, "errorText": "NO_ERROR"},
    )
    assert await oscc.code("keepalive", [], token=token) == 0  # the guide prints `[]`
    assert await oscc.code("keepalive", raw=b"ping", token=token) == 11
    assert oscc.sim.sessions[0].listen is False
    assert await oscc.call("listenForEvents", {"enabledListenForEvent": True}, token=token) == (
        200,
        {"errorCode": 0, "errorText": "NO_ERROR"},
    )
    assert oscc.sim.sessions[0].listen is True
    assert await oscc.code("listenForEvents", {"enabledListenForEvent": "false"}, token=token) == 0
    assert oscc.sim.sessions[0].listen is False
    assert await oscc.code("listenForEvents", {}, token=token) == 11
    assert await oscc.code("listenForEvents", {"enabledListenForEvent": "maybe"}, token=token) == 11


async def test_stream_response_is_checked_and_recorded(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    assert await oscc.call("streamResponse", GUIDE_STREAM_RESPONSE, token=token) == (
        200,
        {"type": "Stream", "errorCode": 0, "errorText": "NO_ERROR"},
    )
    bad_date = copy.deepcopy(GUIDE_STREAM_RESPONSE)
    bad_date["orderedItems"][0]["dateTime"] = "10/09/2016 at 13h15"
    assert await oscc.code("streamResponse", bad_date, token=token) == 13
    long_id = copy.deepcopy(GUIDE_STREAM_RESPONSE)
    long_id["orderedItems"][0]["inReplyTo"]["id"] = "x" * 257
    assert await oscc.code("streamResponse", long_id, token=token) == 12
    assert await oscc.code("streamResponse", {"type": "Stream"}, token=token) == 11
    assert await oscc.code("streamResponse", raw=b"nope", token=token) == 11
    assert oscc.sim.stream_responses(TITLE) == [GUIDE_STREAM_RESPONSE]


# --- faults ----------------------------------------------------------------------------------


async def test_not_ready_window_answers_7_then_0(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    window = 0.6
    oscc.sim.faults.not_ready(window)
    start = time.monotonic()
    assert await oscc.register() == {
        "type": "Registration",
        "errorCode": 7,
        "errorText": "NOT_READY",
    }
    status, answer = await oscc.call("newContact", contact(), token=token)
    assert (status, answer["errorCode"], answer["errorText"]) == (200, 7, "NOT_READY")
    assert oscc.sim.contacts(TITLE) == []

    async def ready() -> bool:
        return await oscc.code("keepalive", {}, token=token) == 0

    await poll(ready)
    assert time.monotonic() - start >= window
    assert await oscc.code("newContact", contact(), token=token) == 0


async def test_not_ready_at_start(http: aiohttp.ClientSession) -> None:
    async with Simulator({TITLE: TOKEN}, port=0, not_ready=30) as sim:
        assert (await Oscc(http, sim).register())["errorCode"] == 7
        assert sim.sessions == []


async def test_5xx_rate_is_about_as_set_and_reproducible(http: aiohttp.ClientSession) -> None:
    rate, calls = 0.3, 300
    patterns = []
    for _ in range(2):
        async with Simulator({TITLE: TOKEN}, port=0, seed=7, agent=False) as sim:
            oscc = Oscc(http, sim)
            token = await oscc.session(listen=False)
            sim.faults.error_5xx_rate = rate
            statuses = []
            for _ in range(calls):
                status, answer = await oscc.call("keepalive", {}, token=token)
                statuses.append(status)
                if status == 503:
                    assert isinstance(answer, str)  # not JSON
                    with pytest.raises(Exception, match="JSON"):
                        codec.decode_json(answer)
                else:
                    assert answer["errorCode"] == 0
            failed = statuses.count(503)
            assert set(statuses) == {200, 503}
            assert 0.2 * calls <= failed <= 0.4 * calls, failed
            assert [r.status for r in sim.records[1:]] == statuses
            assert all(r.error_code is None for r in sim.records if r.status == 503)
            patterns.append(statuses)
    assert patterns[0] == patterns[1]  # same seed, same calls failed


async def test_latency_is_added_to_every_answer(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    oscc.sim.faults.latency = 0.2
    start = time.monotonic()
    assert await oscc.code("keepalive", {}, token=token) == 0
    assert time.monotonic() - start >= 0.2


@pytest.mark.parametrize("code", [4, 8, 9])
async def test_refuse_registration(oscc: Oscc, code: int) -> None:
    oscc.sim.faults.refuse_registration = code
    answer = await oscc.register()
    assert answer == {"type": "Registration", "errorCode": code, "errorText": ErrorCode(code).name}
    assert oscc.sim.sessions == []
    oscc.sim.faults.refuse_registration = None  # an administrator fixed it
    assert (await oscc.register())["errorCode"] == 0


async def test_refuse_registration_for_one_connector(http: aiohttp.ClientSession) -> None:
    async with Simulator({"a": "ta", "b": "tb"}, port=0, agent=False) as sim:
        sim.faults.refuse_registration_for["a"] = 9
        oscc = Oscc(http, sim)
        assert (await oscc.register("a", "ta"))["errorCode"] == 9
        assert (await oscc.register("b", "tb"))["errorCode"] == 0


async def test_fail_next_scripts_any_code(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    oscc.sim.faults.fail_next("newContact", 1, times=2)
    oscc.sim.faults.fail_next("keepalive", 6)
    assert await oscc.code("newContact", contact(1), token=token) == 1
    assert await oscc.code("keepalive", {}, token=token) == 6
    assert await oscc.code("newContact", contact(2), token=token) == 1
    assert await oscc.code("newContact", contact(3), token=token) == 0
    assert await oscc.code("keepalive", {}, token=token) == 0
    assert [c["publishedObject"]["id"] for c in oscc.sim.contacts(TITLE)] == ["post-3"]
    with pytest.raises(ValueError, match="unknown endpoint"):
        oscc.sim.faults.fail_next("nope", 1)


async def test_every_error_code_the_simulator_answers(http: aiohttp.ClientSession) -> None:
    """One scenario per ErrorCode; the set of codes seen must be all of them."""
    seen: set[int] = set()
    async with Simulator({TITLE: TOKEN}, port=0, agent=False, session_ttl=60) as sim:
        oscc = Oscc(http, sim)
        token = await oscc.session(listen=False)
        seen.add(await oscc.code("newContact", contact(), token=token))  # 0
        sim.faults.fail_next("keepalive", 1)
        seen.add(await oscc.code("keepalive", {}, token=token))  # 1
        seen.add((await oscc.register())["errorCode"])  # 2: the session lives
        seen.add((await oscc.register(token="bad"))["errorCode"])  # 4
        sim.faults.fail_next("newContact", 6)
        seen.add(await oscc.code("newContact", contact(), token=token))  # 6
        sim.faults.not_ready(30)
        seen.add(await oscc.code("keepalive", {}, token=token))  # 7
        sim.faults.not_ready(0)
        for refusal in (8, 9):
            sim.faults.refuse_registration = refusal
            seen.add((await oscc.register())["errorCode"])
        sim.faults.refuse_registration = None
        seen.add(await oscc.code("keepalive", {}))  # 10
        seen.add(await oscc.code("newContact", raw=b"x", token=token))  # 11
        long_source = contact()
        long_source["source"]["id"] = "x" * 300
        seen.add(await oscc.code("newContact", long_source, token=token))  # 12
        seen.add(await oscc.code("newContact", contact(dateTime="not a date"), token=token))  # 13
    assert seen == {int(c) for c in ErrorCode}
    assert [r.error_code for r in sim.records[1:]] == [0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13]


# --- the agent ---------------------------------------------------------------------------------

SCRIPT = re.compile(
    r"delivered established( transferred)?( stream)?( held retrieved)? publication disconnected"
)


def kind_of(body: dict[str, Any]) -> str:
    """What the webhook received, classified by the bridge's own model."""
    obj = codec.decode_inbound(body).obj
    if isinstance(obj, models.StreamRequest):
        return "stream"
    if isinstance(obj, models.OutgoingPublication):
        return "publication"
    return obj.kind


def contact_key(body: dict[str, Any]) -> str:
    """The contact id of an event, the contact a reply/stream request is about otherwise."""
    if body["type"] == "OpenMediaEvent":
        return str(body["contactID"])
    if body["type"] == "Stream":
        return "post:" + body["id"]
    return "post:" + body["objectToBePublished"]["inReplyTo"]["id"]


async def test_agent_calls_the_webhook_with_the_script_in_order(
    http: aiohttp.ClientSession,
) -> None:
    hook, n = Hook(), 20
    async with (
        webhook_server(hook) as url,
        Simulator(
            {TITLE: TOKEN},
            port=0,
            seed=3,
            hold_probability=0.5,
            transfer_probability=0.5,
            stream_probability=0.5,
        ) as sim,
    ):
        oscc = Oscc(http, sim)
        token = await oscc.session(webhook=url)
        types = ["Post", "DirectMessage", "Article", "Ticket", "ExternalMedia"]
        for i in range(n):
            assert await oscc.code("newContact", contact(i, type=types[i % 5]), token=token) == 0
        await sim.wait_for(lambda: sim.idle)  # scripts start while newContact is answered
    assert all(c.status == 200 for c in sim.webhook_calls)
    assert len(hook.received) == len(sim.webhook_calls)

    # Group by contact: events by contactID; the reply and stream request by the post id,
    # mapped to the contact id through the Delivered event that carried it.
    post_to_cid = {
        b["publishedObject"]["id"]: b["contactID"]
        for b in hook.received
        if b.get("openMediaEventType") == "DeliveredOpenMediaEvent"
    }
    assert len(post_to_cid) == n
    assert all(re.fullmatch(r"O[0-9A-F]{12}", cid) for cid in post_to_cid.values())
    assert len(set(post_to_cid.values())) == n  # unique per contact
    scripts: dict[str, list[str]] = {}
    for body in hook.received:
        key = contact_key(body)
        cid = post_to_cid[key[5:]] if key.startswith("post:") else key
        scripts.setdefault(cid, []).append(kind_of(body))
    assert len(scripts) == n
    for cid, kinds in scripts.items():
        assert SCRIPT.fullmatch(" ".join(kinds)), (cid, kinds)
    every = [k for kinds in scripts.values() for k in kinds]
    for optional in ("transferred", "stream", "held"):
        assert optional in every  # seed 3 with p=0.5 over 20 contacts: each occurs

    # Replies: type of the contact, inReplyTo the contact's post, addressed to its source.
    sent = {c["publishedObject"]["id"]: c for c in sim.contacts(TITLE)}
    replies = [b for b in hook.received if kind_of(b) == "publication"]
    assert len(replies) == n
    for reply in replies:
        post = sent[reply["objectToBePublished"]["inReplyTo"]["id"]]
        assert reply["type"] == post["type"]
        assert reply["destination"]["id"] == post["source"]["id"]
        assert reply["source"]["id"] == post["destination"]["id"]


async def test_agent_bodies_carry_the_guides_example_quirks(http: aiohttp.ClientSession) -> None:
    hook = Hook()
    async with (
        webhook_server(hook) as url,
        Simulator({TITLE: TOKEN}, port=0, transfer_probability=1, stream_probability=1) as sim,
    ):
        oscc = Oscc(http, sim)
        token = await oscc.session(webhook=url)
        assert await oscc.code("newContact", GUIDE_CONTACT, token=token) == 0
        await sim.wait_for(lambda: sim.idle and sim.webhook_calls)
    by_kind = {kind_of(b): b for b in hook.received}
    delivered = by_kind["delivered"]
    assert "date" in delivered
    assert "dateTime" not in delivered
    assert delivered["source"]["additionalInfo"] == GUIDE_CONTACT["source"]["additionalInfo"]
    assert delivered["destination"]["url"] == "Page address"
    assert delivered["destination"]["type"] is None
    assert delivered["publishedObject"]["id"] == "Object id"
    party = by_kind["transferred"]["m_TransferringParty"]
    assert party["lSiteKey"] == 354091819
    assert party["callId"] == delivered["contactID"] * 2
    assert by_kind["stream"] == {
        "type": "Stream",
        "destinationId": "Page id",
        "id": "Object id",
        "numberOfMessages": "10",
    }
    assert set(by_kind["established"]) == {
        "type",
        "openMediaEventType",
        "dateTime",
        "contactID",
        "agentID",
    }
    assert codec.parse_date(by_kind["disconnected"]["dateTime"]) is not None
    # The reply gives the contact's additionalInfos back, as the guide promises.
    reply = by_kind["publication"]
    assert reply["destination"]["additionalInfo"] == GUIDE_CONTACT["source"]["additionalInfo"]
    assert [c.kind for c in sim.webhook_calls] == [kind_of(b) for b in hook.received]


async def test_agent_is_silent_without_listen_for_events(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    assert await oscc.code("newContact", contact(), token=token) == 0
    assert oscc.sim.idle  # the script would have been scheduled while answering
    assert oscc.sim.webhook_calls == []


async def test_agent_retries_a_failing_webhook_and_loses_nothing(
    http: aiohttp.ClientSession,
) -> None:
    hook, n, failures = Hook(fail_first=5), 6, 5
    async with (
        webhook_server(hook) as url,
        Simulator({TITLE: TOKEN}, port=0, retry_base=0.01, retry_cap=0.05) as sim,
    ):
        oscc = Oscc(http, sim)
        token = await oscc.session(webhook=url)
        for i in range(n):
            assert await oscc.code("newContact", contact(i), token=token) == 0
        await sim.wait_for(
            lambda: (
                sim.idle and sum(c.kind == "disconnected" and c.ok for c in sim.webhook_calls) == n
            )
        )
    ok = [c for c in sim.webhook_calls if c.ok]
    failed = [c for c in sim.webhook_calls if not c.ok]
    assert len(failed) == failures
    assert all(c.status == 503 and c.answer == "busy" for c in failed)
    assert len(hook.received) == len(ok)  # every call answered 2xx exactly once
    assert sim.agent.gave_up == []
    for kind in ("delivered", "established", "publication", "disconnected"):
        assert sum(c.kind == kind for c in ok) == n
    assert {c.attempt for c in ok} - {1} != set()  # some succeeded on a retry


async def test_agent_gives_up_after_bounded_attempts(http: aiohttp.ClientSession) -> None:
    async with Simulator({TITLE: TOKEN}, port=0, retry_attempts=3, retry_base=0.01) as sim:
        oscc = Oscc(http, sim)
        # Port 9 (discard) on localhost: nothing listens, the connection is refused.
        token = await oscc.session(webhook="http://127.0.0.1:9/webhook/facebook")
        assert await oscc.code("newContact", contact(), token=token) == 0
        await sim.wait_for(lambda: sim.idle)
    deliveries = [c for c in sim.webhook_calls if c.kind == "delivered"]
    assert [(c.attempt, c.status) for c in deliveries] == [(1, None), (2, None), (3, None)]
    assert "Connect" in str(deliveries[0].answer)
    assert len(sim.agent.gave_up) == len(sim.webhook_calls) // 3  # every step gave up


async def test_stream_request_then_stream_response_is_recorded(
    http: aiohttp.ClientSession,
) -> None:
    hook = Hook()
    async with webhook_server(hook) as url, Simulator({TITLE: TOKEN}, port=0) as sim:
        oscc = Oscc(http, sim)
        token = await oscc.session(webhook=url)
        call = await sim.send_stream_request(TITLE, id="205056409590639", destination_id="Page id")
        assert call.ok
        assert hook.received == [
            {
                "type": "Stream",
                "destinationId": "Page id",
                "id": "205056409590639",
                "numberOfMessages": "10",
            }
        ]
        # The connector answers asynchronously with a Stream Response.
        response = copy.deepcopy(GUIDE_STREAM_RESPONSE)
        response["id"] = hook.received[0]["id"]
        assert await oscc.code("streamResponse", response, token=token) == 0
        assert sim.stream_responses(TITLE) == [response]
        with pytest.raises(LookupError):
            await sim.send_stream_request("never-registered", id="1")


# --- admin API -------------------------------------------------------------------------------


async def test_admin_api(http: aiohttp.ClientSession) -> None:
    hook = Hook()
    async with webhook_server(hook) as url, Simulator({TITLE: TOKEN}, port=0) as sim:
        oscc = Oscc(http, sim)
        admin = f"{sim.url}/admin"

        async def get(path: str) -> Any:
            async with http.get(admin + path) as r:
                assert r.status == 200
                return await r.json()

        async def send(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, admin + path, json=body) as r:
                return r.status, await r.json()

        status, faults = await send("POST", "/faults", {"not_ready": 30, "latency": 0.01})
        assert status == 200
        assert 29 < faults["not_ready"] <= 30
        assert faults["latency"] == 0.01
        assert (await oscc.register(webhook=url))["errorCode"] == 7
        assert (await send("POST", "/faults", {"error_5xx_rate": 2}))[0] == 400
        assert (await send("POST", "/faults", {"refuse_registration": 5}))[0] == 400
        assert (await send("POST", "/faults", {"bogus": 1}))[0] == 400
        # a bad request changes nothing
        assert (await send("POST", "/faults", {"latency": 0.5, "bogus": 1}))[0] == 400
        assert (await get("/faults"))["latency"] == 0.01
        await send("POST", "/faults", {"not_ready": 0, "latency": 0, "refuse_registration": 8})
        assert (await oscc.register(webhook=url))["errorCode"] == 8
        fail = {"endpoint": "keepalive", "code": 1}
        _, faults = await send("POST", "/faults", {"refuse_registration": None, "fail_next": fail})
        assert faults["fail_next"] == {"keepalive": {"code": 1, "times": 1}}

        token = await oscc.session(webhook=url)
        assert await oscc.code("keepalive", {}, token=token) == 1
        assert await oscc.code("newContact", contact(), token=token) == 0
        await sim.wait_for(lambda: sim.idle)

        records = (await get("/records?endpoint=newContact&title=facebook"))["records"]
        assert [r["body"] for r in records] == [contact()]
        assert records[0]["error_code"] == 0
        assert records[0]["authorization"] == token
        assert len((await get("/records?since=2"))["records"]) == len(sim.records) - 2
        assert (await get("/contacts?title=facebook"))["contacts"] == [contact()]
        calls = (await get("/webhook-calls?kind=delivered"))["webhook_calls"]
        assert len(calls) == 1
        assert calls[0]["status"] == 200
        summary = await get("")
        assert summary["connectors"] == [TITLE]
        assert summary["sessions"] == 1
        sessions = (await get("/sessions"))["sessions"]
        assert sessions[0]["token_prefix"] == token[:8]
        assert token not in str(sessions)

        status, call = await send(
            "POST", "/stream-request", {"title": TITLE, "id": "42", "destinationId": "Page id"}
        )
        assert (status, call["status"], call["body"]["id"]) == (200, 200, "42")
        assert hook.received[-1] == {
            "type": "Stream",
            "destinationId": "Page id",
            "id": "42",
            "numberOfMessages": "10",
        }
        assert (await send("POST", "/stream-request", {"title": "nobody", "id": "1"}))[0] == 400
        assert (await send("POST", "/stream-request", {"title": TITLE}))[0] == 400
        status, call = await send("POST", "/webhook", {"title": TITLE, "body": {"type": "Odd"}})
        assert (status, call["kind"], hook.received[-1]) == (200, "custom", {"type": "Odd"})

        assert await send("DELETE", "/sessions") == (200, {"dropped": 1})
        assert await oscc.code("keepalive", {}, token=token) == 10
        token = await oscc.session(webhook=url)
        assert (await send("POST", "/restart", {"not_ready": 0.6}))[0] == 200
        assert await oscc.code("keepalive", {}, token=token) == 7

        async def window_over() -> bool:
            return await oscc.code("keepalive", {}, token=token) == 10

        await poll(window_over)
        assert (await send("POST", "/restart", {"not_ready": -1}))[0] == 400

        # OSCC learns a connector at run time
        assert (await send("PUT", "/connectors/email", {"token": "mail-token"}))[0] == 200
        assert (await get("/connectors"))["connectors"] == ["email", TITLE]
        assert (await oscc.register("email", "mail-token", url))["errorCode"] == 0
        assert (await send("DELETE", "/connectors/email"))[0] == 200
        assert (await send("DELETE", "/connectors/email"))[0] == 404

        assert await send("POST", "/reset") == (200, {"reset": True})
        assert sim.records == []
        assert sim.webhook_calls == []
        assert (await get("/faults"))["not_ready"] == 0
        async with http.post(admin + "/faults", data=b"{nope") as r:
            assert r.status == 400


# --- entry points ---------------------------------------------------------------------------


async def test_serve_prints_its_url_and_answers(
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    task = asyncio.create_task(serve("127.0.0.1", 0, {}, agent=False, seed=1))
    try:
        found: list[str] = []

        async def printed() -> bool:
            found.extend(re.findall(r"OSCC simulator (http://\S+)", capsys.readouterr().out))
            return bool(found)

        await poll(printed)
        body = {
            "type": "Registration",
            "webhookURL": "http://127.0.0.1:9/hook",
            "openMedia": {"openMediaTitle": "facebook", "token": DEFAULT_CONNECTORS["facebook"]},
        }
        async with http.post(f"{found[0]}{BASE}/registerConnector", json=body) as r:
            assert (await r.json())["errorCode"] == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.post(f"{found[0]}/admin")


def test_run_from_args_serves_until_sigterm() -> None:
    code = (
        "import argparse, sys\n"
        "from bridge.simulator import add_arguments, run_from_args\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "sys.exit(run_from_args(p.parse_args(sys.argv[1:])))\n"
    )
    args = ["--port", "0", "--connector", "tickets:tok-1", "--no-agent", "--not-ready", "30"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # stdout carries the URL lines only; logs go to stderr
        match = re.fullmatch(r"OSCC simulator (http://\S+)\n", line)
        assert match, line
        body = codec.encode(
            {
                "type": "Registration",
                "webhookURL": "http://127.0.0.1:9/hook",
                "openMedia": {"openMediaTitle": "tickets", "token": "tok-1"},
            }
        )
        answer = asyncio.run(_post(match.group(1) + BASE + "/registerConnector", body))
        assert answer["errorCode"] == 7  # --not-ready 30
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def _post(url: str, body: bytes) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        return await r.json()


def test_add_arguments_parses_the_fault_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--connector", "a:b:c", "--error-5xx-rate", "0.2", "--latency", "0.1",
         "--refuse-registration", "8", "--session-ttl", "5", "--seed", "3"]
    )  # fmt: skip
    assert args.connector == [("a", "b:c")]
    assert (args.error_5xx_rate, args.latency, args.refuse_registration) == (0.2, 0.1, 8)
    assert (args.session_ttl, args.seed, args.no_agent) == (5.0, 3, False)
    for bad in (
        ["--connector", "nocolon"],
        ["--error-5xx-rate", "1.5"],
        ["--refuse-registration", "5"],
    ):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(bad)
        assert exc.value.code == 2


async def test_secrets_never_reach_the_logs(http: aiohttp.ClientSession) -> None:
    sim = Simulator({TITLE: TOKEN}, port=0, retry_attempts=2, retry_base=0.01)
    oscc = Oscc(http, sim)
    # capture_logs sees what the simulator hands to structlog, before any redaction.
    with structlog.testing.capture_logs() as entries:
        async with sim:
            sim.faults.refuse_registration = 9
            await oscc.register()
            sim.faults.refuse_registration = None
            await oscc.register(token="wrong-but-secret")
            token = await oscc.session()
            assert await oscc.code("newContact", contact(), token=token) == 0
            await oscc.code("keepalive", {}, token=token + "x")
            await sim.wait_for(lambda: sim.idle)
            reprs = repr((sim.faults, sim.state, sim.sessions))
    logged = repr(entries)
    assert "sim.registered" in logged  # the logs were captured
    assert "sim.webhook_given_up" in logged  # port 9: every step gives up, and says so
    for secret in (TOKEN, token, "wrong-but-secret", "http://127.0.0.1:9/hook"):
        assert secret not in logged
    for secret in (TOKEN, token):
        assert secret not in reprs  # in case someone logs the simulator's objects


# --- as awkward as a servlet container ---------------------------------------------------------


async def test_answers_in_pieces_are_chunked_and_split_mid_token(oscc: Oscc) -> None:
    oscc.sim.faults.update({"answer_pieces": 4, "piece_gap": 0.02})
    body = {
        "type": "Registration",
        "webhookURL": "http://127.0.0.1:9/hook",
        "openMedia": {"openMediaTitle": TITLE, "token": TOKEN},
    }
    start = time.monotonic()
    async with oscc.http.post(f"{oscc.sim.url}{BASE}/registerConnector", json=body) as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in r.headers
        assert r.content_type == "application/json"
        pieces = [data async for data, _ in r.content.iter_chunks()]
    assert time.monotonic() - start >= 3 * 0.02  # three pauses between four writes
    assert len(pieces) == 4
    with pytest.raises(Exception, match="not JSON"):
        codec.decode_json(pieces[0])  # a piece alone is no answer
    answer = codec.decode_json(b"".join(pieces))
    assert answer["errorCode"] == 0
    assert HEX64.fullmatch(answer["sessionToken"])


def test_split_covers_the_body_in_even_pieces() -> None:
    from bridge.simulator.answers import split

    assert split(b"abcdefgh", 3) == [b"ab", b"cde", b"fgh"]
    assert split(b"ab", 5) == [b"a", b"b"]
    assert split(b"", 3) == [b""]


async def test_http_rules_answer_tomcat_pages_and_redirects(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    faults = oscc.sim.faults
    faults.fail_next("keepalive", http=500)
    status, page = await oscc.call("keepalive", {}, token=token)
    assert status == 500
    assert "<h1>HTTP Status 500 \u2013 Internal Server Error</h1>" in page
    assert "Apache Tomcat" in page
    faults.fail_next("newContact", http=302, location="https://elsewhere.example/oscc")
    async with oscc.http.post(
        f"{oscc.sim.url}{BASE}/newContact",
        json=contact(1),
        headers={"Authorization": token},
        allow_redirects=False,
    ) as r:
        assert (r.status, r.headers["Location"]) == (302, "https://elsewhere.example/oscc")
        assert r.content_type == "text/html"
    faults.fail_next("keepalive", http=307)  # default location: the moved endpoint
    async with oscc.http.post(
        f"{oscc.sim.url}{BASE}/keepalive", json={}, headers={"Authorization": token},
        allow_redirects=False,
    ) as r:  # fmt: skip
        assert r.headers["Location"].endswith("/openmedia/webapi/main/keepalive")
    assert [(r.status, r.error_code) for r in oscc.sim.records[1:]] == [
        (500, None),
        (302, None),
        (307, None),
    ]
    assert oscc.sim.contacts(TITLE) == []  # a redirected contact was not created
    assert oscc.sim.seen == {"post-1": 1}
    with pytest.raises(ValueError, match="exactly one"):
        faults.fail_next("keepalive")
    with pytest.raises(ValueError, match="not both"):
        faults.fail_next("keepalive", code=1, http=500)
    with pytest.raises(ValueError, match="status"):
        faults.fail_next("keepalive", http=200)


async def test_fail_contact_fails_one_contact_while_others_pass(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    oscc.sim.faults.fail_contact("post-1", http=500)  # always
    oscc.sim.faults.fail_contact("post-2", code=1, times=2)
    for _ in range(3):
        assert (await oscc.call("newContact", contact(1), token=token))[0] == 500
    assert await oscc.code("newContact", contact(2), token=token) == 1
    assert await oscc.code("newContact", contact(3), token=token) == 0
    assert await oscc.code("newContact", contact(2), token=token) == 1
    assert await oscc.code("newContact", contact(2), token=token) == 0  # used up
    assert oscc.sim.seen == {"post-1": 3, "post-2": 3, "post-3": 1}
    assert oscc.sim.created() == {"post-2": 1, "post-3": 1}
    assert oscc.sim.faults.as_dict()["fail_contact"] == {"post-1": {"http": 500, "times": None}}
    oscc.sim.faults.fail_contact("post-1", times=0)  # removed
    assert await oscc.code("newContact", contact(1), token=token) == 0


async def test_a_slow_answer_comes_after_the_work_is_done(oscc: Oscc) -> None:
    token = await oscc.session(listen=False)
    oscc.sim.faults.fail_contact("post-1", slow=1.0, times=1)
    with pytest.raises(TimeoutError):
        async with oscc.http.post(
            f"{oscc.sim.url}{BASE}/newContact",
            json=contact(1),
            headers={"Authorization": token},
            timeout=aiohttp.ClientTimeout(total=0.3),
        ) as r:
            await r.read()
    # the client gave up, but OSCC created the contact (and survives the hang-up)
    assert oscc.sim.created() == {"post-1": 1}
    start = time.monotonic()
    assert await oscc.code("newContact", contact(1), token=token) == 0  # rule used up
    assert time.monotonic() - start < 0.9
    assert oscc.sim.duplicates() == 1
    assert oscc.sim.seen == {"post-1": 2}


async def test_strict_sessions_only_keepalive_keeps_a_session_alive(
    http: aiohttp.ClientSession,
) -> None:
    ttl = 0.5
    async with Simulator(
        {TITLE: TOKEN}, port=0, session_ttl=ttl, agent=False, strict_sessions=True
    ) as sim:
        oscc = Oscc(http, sim)
        token = await oscc.session(listen=False)
        assert (await oscc.register())["errorCode"] == ErrorCode.ALREADY_REGISTERED_ON
        start = time.monotonic()
        while time.monotonic() - start < 2 * ttl:  # keepalives every ttl/5: it lives
            assert await oscc.code("keepalive", {}, token=token) == 0
            await asyncio.sleep(ttl / 5)
        assert (await oscc.register())["errorCode"] == ErrorCode.ALREADY_REGISTERED_ON
        # contacts alone do not keep it alive: it expires within a TTL of the last keepalive
        n = 0

        async def expired() -> bool:
            nonlocal n
            n += 1
            return await oscc.code("newContact", contact(n), token=token) == 10

        waited = await poll(expired, timeout=5)
        assert waited < 4 * ttl  # not kept alive by the contacts (they would for ever)
        assert n > 1  # some contacts went through first
        assert (await oscc.register())["errorCode"] == 0
        assert sim.max_live == {TITLE: 1}


async def test_default_sessions_are_kept_alive_by_any_call(http: aiohttp.ClientSession) -> None:
    ttl = 0.5
    async with Simulator({TITLE: TOKEN}, port=0, session_ttl=ttl, agent=False) as sim:
        oscc = Oscc(http, sim)
        token = await oscc.session(listen=False)
        start, n = time.monotonic(), 0
        while time.monotonic() - start < 2 * ttl:
            n += 1
            assert await oscc.code("newContact", contact(n), token=token) == 0
            await asyncio.sleep(ttl / 5)
        assert sim.max_live == {TITLE: 1}
        assert sim.faults.as_dict()["strict_sessions"] is False


async def test_admin_api_for_realistic_faults(http: aiohttp.ClientSession) -> None:
    async with Simulator({TITLE: TOKEN}, port=0, agent=False) as sim:
        oscc = Oscc(http, sim)
        admin = f"{sim.url}/admin"

        async def send(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, admin + path, json=body) as r:
                return r.status, await r.json()

        rules = {
            "answer_pieces": 3,
            "piece_gap": 0.01,
            "strict_sessions": True,
            "fail_next": {"endpoint": "keepalive", "http": 302, "location": "https://x/y"},
            "fail_contact": {"id": "post-1", "http": 503, "times": 1},
        }
        status, faults = await send("POST", "/faults", rules)
        assert status == 200
        assert (faults["answer_pieces"], faults["piece_gap"], faults["strict_sessions"]) == (
            3,
            0.01,
            True,
        )
        assert faults["fail_next"] == {
            "keepalive": {"http": 302, "location": "https://x/y", "times": 1}
        }
        assert faults["fail_contact"] == {"post-1": {"http": 503, "times": 1}}
        for bad in (
            {"answer_pieces": 0},
            {"piece_gap": -1},
            {"strict_sessions": "yes"},
            {"fail_next": {"endpoint": "keepalive"}},
            {"fail_next": {"endpoint": "keepalive", "http": 200}},
            {"fail_contact": {"code": 1}},
            {"fail_contact": {"id": "x", "slow": -1}},
            {"fail_contact": {"id": "x", "http": 302, "location": 5}},
        ):
            status, answer = await send("POST", "/faults", bad)
            assert status == 400, bad
            assert next(iter(bad)) in answer["error"]
        token = await oscc.session(listen=False)
        assert (await oscc.call("newContact", contact(1), token=token))[0] == 503
        assert await oscc.code("newContact", contact(1), token=token) == 0
        status, counts = await send("GET", "/contact-counts")
        assert counts == {"seen": {"post-1": 2}, "created": {"post-1": 1}, "duplicates": 0}
        _, sessions = await send("GET", "/sessions")
        assert sessions["max_live"] == {TITLE: 1}
        _, faults = await send(
            "POST", "/faults", {"fail_next": {"endpoint": "keepalive", "times": 0}}
        )
        assert faults["fail_next"] == {}
        await send("POST", "/reset")
        _, faults = await send("GET", "/faults")
        assert (faults["answer_pieces"], faults["fail_contact"]) == (1, {})
        assert sim.seen == {}


def test_add_arguments_parses_the_realism_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.answer_pieces, args.piece_gap, args.strict_sessions) == (1, 0.0, False)
    args = parser.parse_args(["--answer-pieces", "5", "--piece-gap", "0.1", "--strict-sessions"])
    assert (args.answer_pieces, args.piece_gap, args.strict_sessions) == (5, 0.1, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--answer-pieces", "0"])
