"""Fuzzing: hostile input at every door the bridge opens.

Three levels, one set of strategies:

- model: the guide's examples (tests/data/guide/), mutated — wrong types, missing and
  extra fields, extreme lengths, odd unicode (escaped surrogates, NUL, RTL, emoji,
  combining marks), deep nesting, numbers out of every range, duplicate keys, non-object
  top levels, bytes that are not UTF-8 — into `decode_inbound`, `decode_new_contact` and
  `decode_stream_response`. Each either returns a body that encodes to JSON which decodes
  back to an equal body and validates again to the same class, or raises
  Rejected(11/12/13); never anything else.
- webhook: the same bodies POSTed over real HTTP to the webhook app, publishing to the
  real RabbitMQ: every answer is 200/400/404/413, never 500; every published message is
  one decode_inbound accepts; published == answered 200.
- consumer: contact bodies published to ``<c>.contact.new``: each reaches the simulator
  as a valid contact or is dead-lettered with ``oscc-error-code``; in == accepted + dead.

``FUZZ_EXAMPLES`` (default 300) is the number of examples per model-level property; the
webhook level runs that many too, the consumer level a third of it. The number of cases
each level tried is printed at the end of the module (and asserted to be non-zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.client
import json
import os
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import webhook
from bridge.broker import Broker
from bridge.config import (
    BrokerConfig,
    Config,
    ConnectorConfig,
    HttpConfig,
    OsccConfig,
    SpoolConfig,
)
from bridge.consumer import Consumer
from bridge.errors import Rejected
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.oscc import models as m
from bridge.oscc.client import OsccClient
from bridge.publisher import Publisher
from bridge.session import SessionSupervisor
from bridge.simulator import Simulator
from bridge.spool import Spool
from bridge.topology import Topology
from tests.harness import message_count, wait_until

_R = TypeVar("_R")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")  # as conftest
GUIDE = Path(__file__).parent / "data" / "guide"

# level/property -> cases tried; outcome -> count (printed at the end of the module)
CASES: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()

REJECT_CODES = {11, 12, 13}


def _guide(*names: str) -> list[Any]:
    return [json.loads((GUIDE / name).read_text(encoding="utf-8")) for name in names]


NEW_CONTACTS = _guide("new_contact.json", "js_new_contact.json")
STREAM_RESPONSES = _guide("stream_response.json", "js_stream_response.json")
INBOUND = _guide(
    "outgoing_publication.json",
    "stream_request.json",
    "event_delivered.json",
    "event_established.json",
    "event_held.json",
    "event_retrieved.json",
    "event_transferred.json",
    "event_disconnected.json",
)
EVERY_EXAMPLE = [*NEW_CONTACTS, *STREAM_RESPONSES, *INBOUND]


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the number of cases tried per level once the module is done."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"fuzz cases tried: {dict(sorted(CASES.items()))}"]
    lines.append(f"fuzz outcomes: {dict(sorted(OUTCOMES.items()))}")
    if path := os.environ.get("FUZZ_REPORT"):
        Path(path).write_text(
            json.dumps({"cases": CASES, "outcomes": OUTCOMES}, indent=2), encoding="utf-8"
        )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    # Outside capture, so the counts show in every run, not only failing ones or with -s.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in lines:
            if reporter is not None:
                reporter.ensure_newline()
                reporter.write_line(line)
            else:  # pragma: no cover - without the terminal reporter (-p no:terminal)
                print(line)


# ---------------------------------------------------------------------------------------
# Building hostile JSON text


@dataclass(frozen=True)
class Raw:
    """A JSON token (or not-quite-JSON text) emitted verbatim: 1e400, deep nesting, ..."""

    text: str


def _nest(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # RTL override
    "\u200f\u200e\u2066x\u2069",  # RTL/LTR marks and isolates
    "😀",
    "👨\u200d👩\u200d👧\u200d👦",  # ZWJ family
    "e\u0301\u0302\u0303\u0304",  # stacked combining marks
    "\ufeff",  # BOM
    "\uffff\ufffe",  # noncharacters
    "\U0010ffff",
    "\ud800",  # lone surrogates: only as \u escapes or invalid UTF-8
    "\udfff",
    "\ud83d",
    "\\",
    '"',
    "\r\nX-Injected: 1",
    "\n\t\x7f\x1b[31m",
    "../../../etc/passwd",
    "${OSCC_TOKEN}",
    "<script>alert(1)</script>",
    "Post",
    "OpenMediaEvent",
    "Stream",
    "POST",
    "true",
    "1e400",
    "2016-09-10T15:04:55Z",
    "not a date",
    "Sat, 10 Sep 2016 15:04:55 GMT",
    "9999-99-99T99:99:99Z",
]
LENGTHS = [49, 50, 51, 255, 256, 257, 4999, 5000, 5001, 70_000, 140_000]
UNITS = ["x", "é", "😀", "e\u0301", "\x00"]

odd_strings = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8", categories=["Cf", "Mn", "Zl", "Zp", "Co"]), max_size=8),
    st.builds(lambda n, u: u * n, st.sampled_from(LENGTHS), st.sampled_from(UNITS)),
)
odd_numbers = st.one_of(
    st.sampled_from(
        [
            Raw("1e400"),
            Raw("-1e400"),
            Raw("1e-400"),
            Raw("1E+2"),
            Raw("-0"),
            Raw("0.1e1"),
            Raw("NaN"),
            Raw("Infinity"),
            Raw("01"),
            Raw("1."),
            Raw("0x10"),
            2**200,
            -(2**200),
            2**63,
            -(2**63) - 1,
            2**64,
            2**31,
            -(2**31) - 1,
            0,
            -0.0,
        ]
    ),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
DEPTHS = [10, 100, 500, 900, 1000, 5000, 100_000]
deep = st.builds(_nest, st.sampled_from(DEPTHS), st.sampled_from(["list", "dict"]))
scalars = st.one_of(st.none(), st.booleans(), odd_numbers, odd_strings)
odd_values = st.one_of(
    scalars,
    deep,
    st.lists(scalars, max_size=4),
    st.dictionaries(odd_strings, scalars, max_size=4),
    st.sampled_from(EVERY_EXAMPLE).map(copy.deepcopy),  # an object where a string belongs
)
odd_keys = st.one_of(
    odd_strings,
    st.sampled_from(
        [
            *("type", "TYPE", "Type", "id", "ID", "openMediaEventType", "openmediaeventtype"),
            *("dateTime", "date", "dateTIme", "source", "additionalInfo", "additionalInfos"),
            *("publishedObject", "objectToBePublished", "destination", "orderedItems"),
            "__proto__",
        ]
    ),
)
NON_OBJECTS = [
    "",
    " ",
    "null",
    "true",
    "0",
    "1e400",
    '"Post"',
    "[]",
    "[{}]",
    '[{"type":"Stream","id":"1"}]',
    "{",
    "}",
    "{}",
    '{"type":"Stream","id":"1"} trailing',
    '{"type":"Stream","id":"1"}{"type":"Stream","id":"2"}',
    "\ufeff{}",
    "{'type': 'Stream'}",
    '{"type":"Stream","id":"1",}',
]


def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position inside a decoded JSON value (the root is the empty path)."""
    yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*at, i))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


ACTIONS = ["restring", "replace", "delete", "insert", "wrap", "recase"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any], strings_only: bool = False) -> Any:
    """A guide example with one to six mutations at random positions.

    `strings_only`: only string values change, and only their content, so the object
    keeps its shape and what is tested is limits, dates, unicode and header values.
    """
    value = json.loads(json.dumps(draw(st.sampled_from(seeds))))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3, 6]))):
        paths = [
            p for p in _paths(value) if not strings_only or (p and isinstance(_get(value, p), str))
        ]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if not path:
            value = draw(odd_values) if draw(st.integers(0, 9)) == 0 else value
            continue
        parent = _get(value, path[:-1])
        step = path[-1]
        action = "restring" if strings_only else draw(st.sampled_from(ACTIONS))
        if action == "restring" and isinstance(parent[step], str):
            # Same type, hostile content: where limits, dates and headers are tested.
            parent[step] = draw(odd_strings)
        elif action in ("replace", "restring"):
            parent[step] = draw(odd_values)
        elif action == "delete":
            del parent[step]
        elif action == "insert" and isinstance(parent, dict):
            parent[draw(odd_keys)] = draw(odd_values)
        elif action == "insert":
            parent.insert(step, draw(odd_values))
        elif action == "wrap":
            parent[step] = draw(st.sampled_from([[parent[step]], {"value": parent[step]}]))
        elif isinstance(parent, dict) and isinstance(step, str):
            item = parent.pop(step)
            parent[draw(st.sampled_from([step.upper(), step.lower(), step.swapcase()]))] = item
    return value


def emit(draw: st.DrawFn, value: Any) -> str:
    """JSON text for `value`, with random escaping and, now and then, duplicate keys."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items()]
        if items and draw(st.integers(0, 7)) == 0:
            # A duplicate key: a second value for an existing key, before or after it.
            key = draw(st.sampled_from([k for k, _ in items]))
            items.insert(draw(st.integers(0, len(items))), (key, draw(odd_values)))
        return "{" + ",".join(f"{_string(draw, str(k))}:{emit(draw, v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(emit(draw, v) for v in value) + "]"
    if isinstance(value, str):
        return _string(draw, value)
    return json.dumps(value)


def _string(draw: st.DrawFn, text: str) -> str:
    # ensure_ascii escapes everything beyond ASCII as \uXXXX (surrogate pairs for emoji);
    # otherwise the text goes out raw, and lone surrogates become invalid UTF-8 bytes.
    return json.dumps(text, ensure_ascii=draw(st.booleans()))


@st.composite
def bodies(draw: st.DrawFn, seeds: list[Any]) -> bytes:
    """Bytes for a hostile request body, mostly mutated guide examples."""
    choice = draw(st.integers(0, 19))
    if choice == 0:
        return draw(st.binary(max_size=64))
    if choice == 1:
        return draw(st.sampled_from(NON_OBJECTS)).encode()
    if choice == 2:
        text = json.dumps(draw(st.sampled_from(seeds)))
        return text[: draw(st.integers(0, len(text) - 1))].encode()  # truncated
    text = emit(draw, draw(mutated(seeds, strings_only=choice < 12)))
    return text.encode("utf-8", errors="surrogatepass")


# ---------------------------------------------------------------------------------------
# Model level

Decoder = Callable[[bytes], codec.Parsed[Any]]


def check_decoder(decode: Decoder, data: bytes) -> str:
    """The model-level property for one input; returns the outcome's name."""
    try:
        parsed = decode(data)
    except Rejected as exc:
        rejected: Rejected | None = exc
    else:
        rejected = None
    if rejected is not None:
        assert rejected.code in REJECT_CODES, rejected.text
        return f"rejected_{rejected.code}"
    out = codec.encode(parsed.body)
    assert msgspec.json.decode(out) == parsed.body
    again = decode(out)
    assert type(again.obj) is type(parsed.obj)
    assert again.body == parsed.body
    return "accepted"


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Seeds: mostly the decoder's own objects, sometimes any other (a contact to the webhook).
MODEL_CASES: list[tuple[str, Decoder, list[Any]]] = [
    ("decode_inbound", codec.decode_inbound, INBOUND * 3 + EVERY_EXAMPLE),
    ("decode_new_contact", codec.decode_new_contact, NEW_CONTACTS * 20 + EVERY_EXAMPLE),
    ("decode_stream_response", codec.decode_stream_response, STREAM_RESPONSES * 20 + EVERY_EXAMPLE),
]


@pytest.mark.parametrize(("name", "decode", "seeds"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_fuzz(name: str, decode: Decoder, seeds: list[Any]) -> None:
    """Hostile bytes into each decoder: a valid, stable body or Rejected 11/12/13."""
    before = CASES[f"model.{name}"]

    @given(bodies(seeds))
    @FUZZ
    def run(data: bytes) -> None:
        CASES[f"model.{name}"] += 1
        OUTCOMES[f"model.{name}.{check_decoder(decode, data)}"] += 1

    run()
    assert CASES[f"model.{name}"] - before >= EXAMPLES
    # Both branches of the property must have been exercised, or the fuzzing is hollow.
    assert OUTCOMES[f"model.{name}.accepted"] > 0
    assert any(OUTCOMES[f"model.{name}.rejected_{code}"] for code in REJECT_CODES)


@pytest.mark.parametrize("depth", [10, codec.MAX_DEPTH + 1, 500, 1000, 100_000])
def test_model_deep_nesting(depth: int) -> None:
    """A JSON bomb (deep nesting) in an unknown field, in a known one, or as the body:
    nested deeper than `codec.MAX_DEPTH` levels it is Rejected 11 wherever it sits (500
    and 1000 levels decode fine without that limit: it is what rejects them); a shallow
    nest in an unknown field is kept."""
    for name, decode, seeds in MODEL_CASES:
        for kind in ("list", "dict"):
            nest = _nest(depth, kind).text
            seed = json.dumps(seeds[0])
            forms = {
                "unknown field": seed[:-1] + ',"x_deep":' + nest + "}",
                "known field": seed[:-1] + ',"source":' + nest + "}",
                "body": nest,
            }
            for form, data in forms.items():
                CASES["model.deep_nesting"] += 1
                outcome = check_decoder(decode, data.encode())
                OUTCOMES[f"model.deep_nesting.{name}.{outcome}"] += 1
                levels = depth if form == "body" else depth + 1
                if levels > codec.MAX_DEPTH:
                    assert outcome == "rejected_11", (name, kind, form, outcome)
                elif form == "unknown field":
                    assert outcome == "accepted", (name, kind, form, outcome)


# ---------------------------------------------------------------------------------------
# Webhook level: real HTTP into the webhook app, real RabbitMQ behind it
#
# The server runs on its own event loop in a thread, like a real server; hypothesis drives
# a plain blocking HTTP client from the test's thread, so every example is one real request.

C = "fb"  # connector without a webhook secret
S, SECRET = "sec", "s3cr3t-Path-Segment"  # connector with one


class LoopThread:
    """An event loop running in a daemon thread; `run` executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _R], timeout: float = 60.0) -> _R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class WebhookHarness:
    """Spool + Publisher + webhook app on 127.0.0.1, and a queue that sees every message."""

    prefix: str
    spool_dir: Path
    max_body: int = 1_048_576

    async def start(self) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.config = Config(
            broker=BrokerConfig(exchange=self.prefix, queue_type="classic"),
            http=HttpConfig(max_body_bytes=self.max_body, read_timeout=5.0),
            spool=SpoolConfig(dir=str(self.spool_dir)),
            connectors=[
                ConnectorConfig(name=C, title="facebook", token="TOKEN-fb"),
                ConnectorConfig(name=S, title="secure", token="TOKEN-sec", webhook_secret=SECRET),
            ],
        )
        self.topology = Topology(self.prefix, "classic")
        self.metrics = Metrics()
        connection = await aio_pika.connect_robust(AMQP_URL)
        self.stack.push_async_callback(connection.close)
        self.channel = await connection.channel()
        self.stack.push_async_callback(self.topology.delete, self.channel, [C, S])
        self.spool = await self.stack.enter_async_context(
            Spool(self.spool_dir, max_bytes=64 * 1024 * 1024, metrics=self.metrics)
        )
        broker = await self.stack.enter_async_context(
            Broker(self.config.broker, self.topology, connectors=[C, S], metrics=self.metrics)
        )
        self.publisher = await self.stack.enter_async_context(Publisher(broker, spool=self.spool))
        self.queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        for c in (C, S):
            await self.queue.bind(self.topology.exchange, f"{c}.#")
        app = web.Application(client_max_size=self.max_body)
        webhook.add_routes(app, self.config, self.publisher, self.metrics)
        runner = web.AppRunner(app, **webhook.server_options(self.config))
        await runner.setup()
        self.stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        await self.stack.aclose()

    async def fence(self, within: float = 15.0) -> list[AbstractIncomingMessage]:
        """Exactly the messages published so far: those queued ahead of a sentinel event
        posted now (through connector `S`, to the same publisher channel), which comes
        behind anything the calls answered before it published. Sentinel left out."""
        marker = f"fence-{uuid.uuid4().hex}"
        sentinel = {"type": "OpenMediaEvent", "openMediaEventType": "EstablishedEvent",
                    "contactID": marker, "agentID": "1"}  # fmt: skip
        url = f"http://127.0.0.1:{self.port}/webhook/{S}/{SECRET}"
        async with aiohttp.ClientSession() as http_, http_.post(url, json=sentinel) as r:
            assert r.status == 200, await r.text()
        got: list[AbstractIncomingMessage] = []

        def is_sentinel(message: AbstractIncomingMessage) -> bool:
            return (message.headers or {}).get("oscc-contact-id") == marker

        async def arrived() -> bool:
            while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
                got.append(message)
            return any(map(is_sentinel, got))

        await wait_until(arrived, within, "the sentinel event")
        return [message for message in got if not is_sentinel(message)]


@pytest.fixture
def harness(prefix: str, tmp_path: Path) -> Iterator[tuple[LoopThread, WebhookHarness]]:
    thread = LoopThread()
    h = WebhookHarness(prefix, tmp_path / "spool")
    try:
        thread.run(h.start())
        yield thread, h
        thread.run(h.stop())
    finally:
        thread.close()


def post(
    conn: http.client.HTTPConnection, path: str, body: bytes, chunked: bool = False
) -> tuple[int, bytes]:
    """One POST on a keep-alive connection; reconnects once if the server closed it."""
    for attempt in (0, 1):
        try:
            if chunked:
                conn.request("POST", path, body=iter([body[:7], body[7:]]), encode_chunked=True)
            else:
                conn.request("POST", path, body=body)
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


paths = st.one_of(
    st.just(f"/webhook/{C}"),
    st.just(f"/webhook/{S}/{SECRET}"),
    st.sampled_from(
        [
            f"/webhook/{S}",
            f"/webhook/{S}/{SECRET[:-1]}",
            f"/webhook/{S}/{SECRET}x",
            f"/webhook/{C}/anything",
            "/webhook/unknown",
            "/webhook/FB",
            "/webhook/%00",
            "/webhook/fb%2F..%2F..",
            "/webhook/../webhook/fb",
            "/webhook/" + "a" * 5000,
        ]
    ),
    st.text(st.characters(codec="utf-8"), max_size=20).map(
        lambda t: "/webhook/" + urllib.parse.quote(t, safe="")
    ),
)


def test_webhook_fuzz(harness: tuple[LoopThread, WebhookHarness]) -> None:
    """Hostile bodies over real HTTP: 200/400/404/413 only; published == answered 200."""
    thread, h = harness
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
    statuses: Counter[int] = Counter()
    seeds = INBOUND * 3 + EVERY_EXAMPLE

    @given(
        st.one_of(
            bodies(seeds),
            st.sampled_from(INBOUND).map(lambda v: json.dumps(v).encode()),  # valid ones too
        ),
        st.one_of(st.just(f"/webhook/{C}"), paths),
        st.booleans(),
    )
    @FUZZ
    def run(data: bytes, path: str, chunked: bool) -> None:
        CASES["webhook"] += 1
        status, answer = post(conn, path, data, chunked)
        statuses[status] += 1
        OUTCOMES[f"webhook.http_{status}"] += 1
        assert status in (200, 400, 404, 413), (status, answer[:200])
        if status == 200:
            assert json.loads(answer)["errorCode"] == 0

    try:
        run()
    finally:
        conn.close()  # also when run() failed: a socket left to the GC is a ResourceWarning
    assert CASES["webhook"] >= EXAMPLES
    assert statuses[200] > 0
    assert statuses[400] > 0

    published = thread.run(h.fence())
    assert h.spool.messages == 0, "something was spooled: the broker stopped confirming"
    assert h.publisher.connected
    assert len(published) == statuses[200]
    for message in published:
        parsed = codec.decode_inbound(message.body)
        assert json.loads(message.body) == parsed.body  # canonical: a fixed point
        assert message.headers["oscc-connector"] in (C, S)
        c = message.headers["oscc-connector"]
        assert message.routing_key == _expected_key(c, parsed.obj)
    OUTCOMES["webhook.published"] += len(published)

    # Still healthy: a guide example goes through.
    good = json.dumps(INBOUND[0]).encode()
    with contextlib.closing(http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)) as c2:
        assert post(c2, f"/webhook/{C}", good)[0] == 200
    assert len(thread.run(h.fence())) == 1


def _expected_key(c: str, obj: Any) -> str:
    match obj:
        case m.OutgoingPublication():
            return f"{c}.publication.{str(obj.type).lower()}"
        case m.StreamRequest():
            return f"{c}.stream.request"
        case m.OpenMediaEvent():
            return f"{c}.event.{obj.kind}"
    raise AssertionError(obj)


# ---------------------------------------------------------------------------------------
# Consumer level: contacts published to <c>.contact.new, the simulator as OSCC

TITLE, TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"


@dataclass
class ConsumerHarness:
    """Simulator + session + client + publisher + consumer for connector `C`."""

    prefix: str
    spool_dir: Path

    async def start(self) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.sim = await self.stack.enter_async_context(
            Simulator(connectors={TITLE: TOKEN}, port=0, agent=False, seed=0)
        )
        self.config = Config(
            broker=BrokerConfig(exchange=self.prefix, queue_type="classic"),
            oscc=OsccConfig(url=self.sim.url, request_timeout=5.0),
            spool=SpoolConfig(dir=str(self.spool_dir)),
            connectors=[ConnectorConfig(name=C, title=TITLE, token=TOKEN, listen_for_events=False)],
        )
        self.topology = Topology(self.prefix, "classic")
        self.metrics = Metrics()
        connection = await aio_pika.connect_robust(AMQP_URL)
        self.stack.push_async_callback(connection.close)
        self.channel = await connection.channel(publisher_confirms=True)
        self.stack.push_async_callback(self.topology.delete, self.channel, [C])
        broker = await self.stack.enter_async_context(
            Broker(self.config.broker, self.topology, connectors=[C], metrics=self.metrics)
        )
        publisher = await self.stack.enter_async_context(Publisher(broker))
        client = await self.stack.enter_async_context(
            OsccClient(self.config.oscc, connector=C, metrics=self.metrics)
        )
        supervisor = await self.stack.enter_async_context(
            SessionSupervisor(self.config, self.config.connectors[0], client, self.metrics)
        )
        self.consumer = await self.stack.enter_async_context(
            Consumer(
                self.config,
                self.config.connectors[0],
                broker,
                publisher,
                supervisor,
                client,
                self.metrics,
                retry_base=0.02,
                retry_cap=0.3,
                drain_timeout=5.0,
            )
        )
        self.exchange = await self.channel.get_exchange(self.topology.exchange, ensure=False)

    async def stop(self) -> None:
        await self.stack.aclose()

    async def publish(self, body: bytes) -> None:
        message = aio_pika.Message(
            body, message_id=uuid.uuid4().hex, content_type="application/json"
        )
        await self.exchange.publish(message, self.topology.contact_new_key(C), timeout=10)

    async def settle(self, sent: int, within: float = 15.0) -> list[AbstractIncomingMessage]:
        """Every dead letter, once a valid sentinel contact published now reached OSCC and
        accepted + dead-lettered reached `sent` + 1 (the sentinel); then the consumer is
        stopped, so nothing more can reach OSCC or the dead-letter queue, and what did
        after the count is taken too."""
        sentinel = copy.deepcopy(NEW_CONTACTS[0])
        marker = sentinel["publishedObject"]["id"] = f"fence-{uuid.uuid4().hex}"
        await self.publish(json.dumps(sentinel).encode())
        queue = await self.channel.get_queue(self.topology.dead_queue(C), ensure=False)
        dead: list[AbstractIncomingMessage] = []

        async def take() -> None:
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                dead.append(message)

        async def settled() -> bool:
            await take()
            accepted = self.sim.contacts(TITLE)
            ids = [body["publishedObject"]["id"] for body in accepted]
            return marker in ids and len(accepted) + len(dead) >= sent + 1

        await wait_until(settled, within, "the sentinel and every contact settled")
        await self.consumer.stop()
        await take()
        return dead

    async def pending(self) -> int:
        return await message_count(self.topology.contact_queue(C))


@pytest.fixture
def consumer_harness(prefix: str, tmp_path: Path) -> Iterator[tuple[LoopThread, ConsumerHarness]]:
    thread = LoopThread()
    h = ConsumerHarness(prefix, tmp_path / "spool")
    try:
        thread.run(h.start())
        yield thread, h
        thread.run(h.stop())
    finally:
        thread.close()


def test_consumer_fuzz(consumer_harness: tuple[LoopThread, ConsumerHarness]) -> None:
    """Hostile contacts: each reaches OSCC valid or is dead-lettered with its error code."""
    thread, h = consumer_harness
    sent = 0

    @given(
        st.one_of(
            bodies(NEW_CONTACTS * 20 + EVERY_EXAMPLE),
            st.sampled_from(NEW_CONTACTS).map(lambda v: json.dumps(v).encode()),
        )
    )
    @settings(FUZZ, max_examples=max(EXAMPLES // 3, 1))
    def run(data: bytes) -> None:
        nonlocal sent
        CASES["consumer"] += 1
        thread.run(h.publish(data))
        sent += 1

    run()
    assert sent >= max(EXAMPLES // 3, 1)
    # The sentinel is a valid contact, published last: it getting through shows that the
    # consumer still works after the fuzz, nothing stuck.
    dead = thread.run(h.settle(sent))
    accepted = h.sim.contacts(TITLE)
    OUTCOMES["consumer.accepted"] += len(accepted) - 1
    for message in dead:
        OUTCOMES[f"consumer.dead_{message.headers.get('oscc-error-code')}"] += 1
    assert len(accepted) + len(dead) == sent + 1, (len(accepted), len(dead), sent)
    assert thread.run(h.pending()) == 0  # the consumer stopped with nothing left over
    assert accepted, "no contact got through: the fuzzing tested only the rejections"
    for body in accepted:
        codec.decode_new_contact(body if isinstance(body, dict) else codec.encode(body))
    for message in dead:
        assert message.headers["oscc-error-code"] in REJECT_CODES, message.headers
        assert message.headers["oscc-connector"] == C
