"""Soak: mixed traffic both ways for SOAK_SECONDS while faults come and go; then count.

The bridge runs as a child process (``python -m bridge run``) so it can be SIGKILLed and
started again on the same spool and dedupe store. OSCC is the in-process simulator with
its agent on, so every accepted contact comes back as webhook calls (events, the agent's
publication, sometimes a stream request). RabbitMQ is the real one, under a unique prefix.

Traffic:
  - contacts: RATE per second from SOURCES sources, each with message_id and a per-source
    sequence number, published with confirms (a source's next contact only after the
    previous one was confirmed, retried with the same message_id through outages);
  - OSCC's webhook calls, made by the simulator's agent for each accepted contact;
  - a back-end answering every stream request to its reply_to with its correlation id.

Faults, once per cycle of 60 s (scaled down when SOAK_SECONDS is shorter), one at a time
for the broker and the process: 5xx window, latency window, RabbitMQ stop_app/start_app,
NOT_READY window, every session dropped, the bridge SIGKILLed and restarted (in the first
half of the cycles only, so that the last bridge process runs through the second half and
its memory can be watched over minutes in the 10-minute run). RabbitMQ is a private node
of the session's own (the `broker` fixture), never the machine's shared one; the whole
test holds /tmp/oscc-chaos.lock all the same, so other chaos runs do not skew its timing.

Then it waits (with a deadline) until everything settled, prints a report and asserts:
every contact reached OSCC exactly once and in per-source order (except a contact OSCC
accepted at most KILL_WINDOW seconds before a SIGKILL, whose key may not have reached the
dedupe store: OSCC offers no idempotency key, see consumer.py; such resends are counted
and shown apart); every webhook call OSCC saw answered 2xx is on the broker, and any
second copy is explained (an earlier attempt of the same call got no 2xx, or the publisher
re-sent the same message_id after a lost confirm); every stream request answered got its
response to OSCC once; nothing unrouted or dead-lettered; the final SIGTERM exits 0. The
report is printed (past pytest's capture) and written to var/soak-last.txt.

    SOAK_SECONDS=60  .venv/bin/python -m pytest -m soak tests/chaos/test_soak.py
    SOAK_SECONDS=600 ...   (the 10-minute version)
    SOAK_FAULTS=sigkill,5xx ...   (only those faults; e.g. no broker chaos)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage

from bridge.simulator import Simulator, WebhookCall
from bridge.topology import Topology
from tests.harness import (
    ROOT,
    BridgeProcess,
    RabbitNode,
    bridge_config,
    chaos_lock,
    free_port,
    wait_until,
)

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
RATE = float(os.environ.get("SOAK_RATE", "20"))  # contacts per second, all sources together
SOURCES = int(os.environ.get("SOAK_SOURCES", "50"))
CYCLE = min(60.0, SOAK_SECONDS)
FAULTS = ("5xx", "latency", "broker", "not_ready", "drop_sessions", "sigkill")
# SOAK_FAULTS=sigkill,5xx limits the kinds injected (e.g. no broker chaos while debugging).
ENABLED = set(os.environ.get("SOAK_FAULTS", ",".join(FAULTS)).split(",")) & set(FAULTS)
C, TITLE, TOKEN = "facebook", "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
SESSION_TTL = 8.0  # a SIGKILLed bridge's session lingers this long (code 2 meanwhile)
KILL_WINDOW = 2.0  # a contact OSCC accepted this shortly before a SIGKILL may be resent

pytestmark = [pytest.mark.chaos, pytest.mark.soak]
_json = msgspec.json.Decoder()


# --- what happened -----------------------------------------------------------------------


@dataclass
class Seen:
    """One copy of a bridge message on the audit queue."""

    key: tuple[str, str]  # same shape as `call_key`
    message_id: str
    at: float


@dataclass
class Run:
    """Everything the soak counts."""

    prefix: str
    published: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (src, seq)
    publish_retries: int = 0
    seen: list[Seen] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)
    own_redeliveries: int = 0
    answered: set[str] = field(default_factory=set)  # stream request ids answered
    backend_deliveries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    outcome_ids: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    kills: list[float] = field(default_factory=list)  # monotonic times of SIGKILLs
    rss_killed: list[int] = field(default_factory=list)  # RSS just before each SIGKILL
    restart_ready: list[float] = field(default_factory=list)  # seconds to /readyz
    outages: list[float] = field(default_factory=list)  # seconds the broker was away
    memory: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, spool)
    rss_first_ready: int | None = None
    rss_last_ready: int | None = None
    last_ready: float = 0.0  # monotonic time the running process became ready
    rss_end: int | None = None
    hwm_end: int | None = None
    ended: float = 0.0


def call_key(call: WebhookCall) -> tuple[str, str]:
    """What a webhook call is about: (kind, contact id), or ("stream", request id)."""
    if call.kind == "stream":
        return ("stream", str(call.body["id"]))
    return (call.kind, str(call.contact_id))


def message_key(c: str, message: AbstractIncomingMessage) -> tuple[str, str]:
    """The same key, from a message the bridge published."""
    kind = (message.routing_key or "").removeprefix(f"{c}.")
    headers = message.headers or {}
    if kind.startswith("event."):
        return (kind.removeprefix("event."), str(headers.get("oscc-contact-id")))
    if kind.startswith("publication."):
        return ("publication", str(headers.get("oscc-published-id")).removesuffix("-reply"))
    return ("stream", str(message.correlation_id))


# --- traffic -----------------------------------------------------------------------------


def contact(run: Run, src: int, seq: int) -> tuple[str, bytes]:
    """A New Contact from source `src`, its `seq`-th; (message_id, body)."""
    mid = f"{run.prefix}-s{src:02d}-{seq:06d}"
    body = {
        "type": "Post" if (src + seq) % 3 else "DirectMessage",
        "source": {"id": f"src-{src:02d}", "type": "Person", "name": f"Soak Person {src}"},
        "publishedObject": {"id": mid, "title": "soak", "content": f"source {src} seq {seq}"},
        "destination": {"id": "page-1", "type": "Page", "name": "Soak Page"},
        "soakSeq": seq,  # unknown to the guide: carried through unchanged
    }
    return mid, msgspec.json.encode(body)


async def source(
    run: Run, exchange: aio_pika.abc.AbstractExchange, src: int, start: float, end: float
) -> None:
    """Publish this source's contacts at RATE/SOURCES per second until `end`, each one
    confirmed before the next (retried with the same message_id until it is)."""
    interval = SOURCES / RATE
    seq = 0
    while True:
        due = start + (seq + src / SOURCES) * interval
        if due >= end:
            return
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)  # the traffic's rate: part of the scenario
        mid, body = contact(run, src, seq)
        message = aio_pika.Message(
            body, message_id=mid, content_type="application/json", delivery_mode=2
        )
        while True:
            try:
                await asyncio.wait_for(
                    exchange.publish(message, Topology.contact_new_key(C), timeout=5), 6
                )
                break
            except Exception:
                # Broker away or confirm lost: the same message again (the bridge dedupes).
                run.publish_retries += 1
                await asyncio.sleep(0.5)  # a back-end's retry pause: part of the scenario
        run.published[mid] = (src, seq)
        seq += 1


def audit_handler(run: Run) -> Any:
    """Record every bridge message on the audit queue (ack after recording)."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        mid = message.message_id or ""
        if message.redelivered and mid in run.seen_ids:
            run.own_redeliveries += 1  # our ack was cut off by an outage: not the bridge's
        else:
            run.seen.append(Seen(message_key(C, message), mid, time.monotonic()))
            run.seen_ids.add(mid)
        with contextlib.suppress(Exception):
            await message.ack()

    return on_message


def backend_handler(run: Run, channel: aio_pika.abc.AbstractChannel) -> Any:
    """A channel back-end: answer each stream request to its reply_to, correlated."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        run.backend_deliveries += 1
        request_id = str(message.correlation_id)
        body = msgspec.json.encode(
            {
                "type": "Stream",
                "errorCode": 0,
                "errorText": "NO_ERROR",
                "id": request_id,
                "page": 1,
                "lastPage": "true",
                "itemsInPage": 1,
                "totalItems": 1,
                "orderedItems": [
                    {"id": f"{request_id}-1", "type": "Post", "content": "earlier post"}
                ],
            }
        )
        reply = aio_pika.Message(
            body,
            correlation_id=request_id,
            # One answer per request: a redelivered request gets the same message_id,
            # which the bridge's dedupe turns into one streamResponse.
            message_id=f"sr-{request_id}",
            content_type="application/json",
            delivery_mode=2,
        )
        try:
            await channel.default_exchange.publish(
                reply, routing_key=str(message.reply_to), timeout=5
            )
            await message.ack()
        except Exception:
            return  # unacked: redelivered after the outage, answered again
        run.answered.add(request_id)

    return on_message


# --- faults --------------------------------------------------------------------------------


async def faults(
    run: Run, sim: Simulator, bridge: BridgeProcess, broker: RabbitNode, start: float
) -> None:
    """Inject the cycle's faults, one after the other, each restored before the next."""
    scale = CYCLE / 60.0
    plan: list[tuple[float, str]] = [
        (4, "5xx"), (11, "latency"), (17, "broker"), (29, "not_ready"),
        (35, "drop_sessions"), (40, "sigkill"),
    ]  # fmt: skip
    cycles = max(1, int(SOAK_SECONDS // CYCLE))
    kill_cycles = max(1, cycles // 2)
    for cycle in range(cycles):
        for offset, fault in plan:
            due = start + cycle * CYCLE + offset * scale
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)  # the fault schedule: part of the scenario
            if fault not in ENABLED or (fault == "sigkill" and cycle >= kill_cycles):
                continue
            run.faults[fault] += 1
            await inject(run, sim, bridge, broker, fault, scale)


async def inject(
    run: Run, sim: Simulator, bridge: BridgeProcess, broker: RabbitNode, fault: str, scale: float
) -> None:
    """One fault, for its window (the window is the fault's length, not a wait)."""
    match fault:
        case "5xx":
            sim.faults.error_5xx_rate = 0.2
            try:
                await asyncio.sleep(6 * scale)  # the fault window
            finally:
                sim.faults.error_5xx_rate = 0.0
        case "latency":
            sim.faults.latency = 0.15
            try:
                await asyncio.sleep(5 * scale)  # the fault window
            finally:
                sim.faults.latency = 0.0
        case "broker":
            began = time.monotonic()
            async with broker.outage():
                await asyncio.sleep(5 * scale)  # the outage window
            run.outages.append(time.monotonic() - began)
        case "not_ready":
            sim.faults.not_ready(4 * scale)
        case "drop_sessions":
            sim.faults.drop_sessions()
        case "sigkill":
            run.rss_killed.append(bridge.rss_kb() or 0)
            run.kills.append(time.monotonic())
            await bridge.kill()
            began = time.monotonic()
            await bridge.start(ready_within=90)
            run.restart_ready.append(time.monotonic() - began)
            run.rss_last_ready, run.last_ready = bridge.rss_kb(), time.monotonic()


async def sample(run: Run, bridge: BridgeProcess) -> None:
    """Every 2 s: RSS of the bridge and its spool depth, while it runs."""
    while True:
        await asyncio.sleep(2)  # the sampling period
        rss = bridge.rss_kb()
        if rss is None:
            continue  # between a SIGKILL and the restart
        with contextlib.suppress(Exception):
            spool = (await bridge.status())["spool"]["messages"]
            run.memory.append((time.monotonic(), rss, int(spool)))


# --- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(SOAK_SECONDS + 1800)
async def test_soak(
    prefix: str, tmp_path: Path, broker: RabbitNode, capsys: pytest.CaptureFixture[str]
) -> None:
    async with chaos_lock():
        await soak(prefix, tmp_path, broker, capsys)


async def soak(
    prefix: str, tmp_path: Path, broker: RabbitNode, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Run(prefix)
    topology = Topology(prefix, "quorum")
    audit_q, backend_q, outcome_q = (f"{prefix}.soak.{n}" for n in ("audit", "backend", "outcomes"))
    port = free_port()
    connection = await aio_pika.connect_robust(broker.url)
    try:
        async with (
            Simulator(
                connectors={TITLE: TOKEN},
                session_ttl=SESSION_TTL,
                seed=7,
                step_delay=0.1,
                retry_attempts=60,
                retry_cap=2.0,
            ) as sim,
            BridgeProcess(
                bridge_config(
                    prefix=prefix,
                    oscc_url=sim.url,
                    port=port,
                    spool_dir=tmp_path / "spool",
                    connectors=[(C, TITLE, TOKEN)],
                    keepalive=2.0,
                    request_timeout=5.0,
                    amqp_url=broker.url,
                ),
                port=port,
                workdir=tmp_path,
            ) as bridge,
        ):
            # Everything the bridge publishes has a queue before traffic starts.
            channel = await connection.channel(publisher_confirms=True)
            await topology.declare(channel, [C])
            for name, keys in (
                (audit_q, [f"{C}.event.#", f"{C}.publication.#", f"{C}.stream.request"]),
                (backend_q, [f"{C}.stream.request"]),
                (outcome_q, [f"{C}.contact.accepted", f"{C}.contact.rejected", f"{C}.session.#"]),
            ):
                q = await channel.declare_queue(name, durable=True)
                for key in keys:
                    await q.bind(topology.exchange, key)
            await bridge.start()
            run.rss_first_ready = run.rss_last_ready = bridge.rss_kb()
            run.last_ready = time.monotonic()

            consume = await connection.channel()
            await consume.set_qos(prefetch_count=200)
            await (await consume.get_queue(audit_q)).consume(audit_handler(run))

            async def count_outcome(message: AbstractIncomingMessage) -> None:
                run.outcomes[(message.routing_key or "").removeprefix(f"{C}.")] += 1
                if (message.routing_key or "").endswith("contact.accepted"):
                    run.outcome_ids[str(message.correlation_id)] += 1
                with contextlib.suppress(Exception):
                    await message.ack()

            await (await consume.get_queue(outcome_q)).consume(count_outcome)
            backend = await connection.channel(publisher_confirms=True)
            await backend.set_qos(prefetch_count=50)
            await (await backend.get_queue(backend_q)).consume(backend_handler(run, backend))

            exchange = await channel.get_exchange(topology.exchange, ensure=False)
            start = time.monotonic()
            end = start + SOAK_SECONDS
            sampler = asyncio.create_task(sample(run, bridge))
            try:
                async with asyncio.TaskGroup() as tg:
                    for src in range(SOURCES):
                        tg.create_task(source(run, exchange, src, start, end))
                    tg.create_task(faults(run, sim, bridge, broker, start))
                traffic_seconds = time.monotonic() - start
                settled = await settle(run, sim, bridge)
                run.rss_end, run.hwm_end = bridge.rss_kb(), bridge.hwm_kb()
                run.ended = time.monotonic()
            finally:
                sampler.cancel()
                sim.faults.clear()
            exit_code = await bridge.stop()
            if settled is True:
                settled = await fence(run, sim, channel, audit_q)
            unrouted = await broker.message_count(topology.unrouted)
            unrouted_keys = await peek(channel, topology.unrouted)
            dead = await broker.message_count(topology.dead_queue(C))
            report, failures = judge(run, sim, unrouted, unrouted_keys, dead)
            report += (
                f"\ntraffic {traffic_seconds:.0f} s, settled: {settled}; final SIGTERM exit "
                f"code {exit_code}; bridge log: {bridge.log_path}"
            )
    finally:
        with contextlib.suppress(Exception):
            cleanup = await connection.channel()
            for name in (audit_q, backend_q, outcome_q):
                await cleanup.queue_delete(name)
            await topology.delete(cleanup, [C])
        await connection.close()

    with capsys.disabled():
        print("\n" + report, flush=True)
    out = ROOT / "var" / "soak-last.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report + "\n")
    assert exit_code == 0, "SIGTERM did not exit 0"
    assert settled is True, f"did not settle: {settled}"
    assert not failures, "; ".join(failures)


async def settle(run: Run, sim: Simulator, bridge: BridgeProcess) -> bool | str:
    """Wait until everything sent reached its other side and the spool is empty; True,
    or what did not happen within the deadline (`fence`, after the stop, makes it final)."""
    steps: list[tuple[str, Any]] = [
        ("every contact at OSCC", lambda: set(run.published) <= contact_ids(sim)),
        ("the agent finished", lambda: sim.idle),
        ("every 2xx webhook call on the broker", lambda: ok_keys(sim) <= seen_keys(run)),
        (
            "every stream request answered at OSCC",
            lambda: stream_ids(sim) <= stream_response_ids(sim),
        ),
    ]
    within = 120 + SOAK_SECONDS / 5
    deadline = time.monotonic() + within
    try:

        async def spool_empty() -> bool:
            return bool((await bridge.status())["spool"]["messages"] == 0)

        steps.append(("the spool empty", spool_empty))
        for what, cond in steps:
            await wait_until(cond, max(1.0, deadline - time.monotonic()), what)
    except TimeoutError as exc:
        return str(exc)
    return True


async def fence(
    run: Run, sim: Simulator, channel: aio_pika.abc.AbstractChannel, audit_q: str
) -> bool | str:
    """After the final stop: count what was still on its way, then nothing more can come.

    The stopped bridge sends nothing more, so once every call that reached OSCC has its
    record, OSCC's side is final; and a sentinel published to the audit queue now queues
    behind every copy the bridge published (each confirmed before it stopped), so once
    the audit consumer has it, the broker's side is final too. True, or what did not
    happen in time."""
    marker = f"{run.prefix}-fence"
    try:
        await wait_until(
            lambda: sum(sim.state.arrived.values()) == len(sim.records), 30, "OSCC answered all"
        )
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id=marker), routing_key=audit_q, timeout=10
        )
        await wait_until(lambda: marker in run.seen_ids, 30, "the sentinel on the audit queue")
    except TimeoutError as exc:
        return str(exc)
    run.seen = [s for s in run.seen if s.message_id != marker]
    return True


def contact_ids(sim: Simulator) -> set[str]:
    return {b["publishedObject"]["id"] for b in sim.contacts(TITLE)}


def ok_keys(sim: Simulator) -> set[tuple[str, str]]:
    return {call_key(c) for c in sim.webhook_calls if c.ok}


def seen_keys(run: Run) -> set[tuple[str, str]]:
    return {s.key for s in run.seen}


def stream_ids(sim: Simulator) -> set[str]:
    return {str(c.body["id"]) for c in sim.webhook_calls if c.ok and c.kind == "stream"}


def stream_response_ids(sim: Simulator) -> set[str]:
    return {str(b["id"]) for b in sim.stream_responses(TITLE)}


async def peek(channel: aio_pika.abc.AbstractChannel, queue: str, n: int = 5) -> list[str]:
    """Routing keys of up to `n` messages of `queue` (left there)."""
    q = await channel.declare_queue(queue, passive=True)
    keys = []
    for _ in range(n):
        m = await q.get(no_ack=False, fail=False)
        if m is None:
            break
        keys.append(m.routing_key or "")
    return keys


# --- the report ----------------------------------------------------------------------------

Rows = list[tuple[str, object]]


def judge(
    run: Run, sim: Simulator, unrouted: int, unrouted_keys: list[str], dead: int
) -> tuple[str, list[str]]:
    """The report (a text table) and the list of failed checks."""
    failures: list[str] = []
    rows = judge_contacts(run, sim, failures)
    rows += judge_webhooks(run, sim, failures)
    rows += judge_streams(run, sim, failures)
    rows += judge_rest(run, unrouted, unrouted_keys, dead, failures)
    width = max(len(label) for label, _ in rows) + 2
    rule = "=" * (width + 30)
    lines = [f"SOAK REPORT  {SOAK_SECONDS:.0f} s at {RATE:.0f} contacts/s from {SOURCES} sources"]
    lines.append(rule)
    lines += [f"{label:<{width}}{value}" if value != "" else label for label, value in rows]
    lines.append(rule)
    lines.append("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return "\n".join(lines), failures


def judge_contacts(run: Run, sim: Simulator, failures: list[str]) -> Rows:
    """Published -> OSCC: nothing lost, once, in per-source order."""
    accepted = [
        (r.body["publishedObject"]["id"], r.at)
        for r in sim.records
        if r.endpoint == "newContact" and r.title == TITLE and r.error_code == 0
    ]
    times: dict[str, list[float]] = defaultdict(list)
    for mid, at in accepted:
        times[mid].append(at)
    lost = set(run.published) - set(times)
    extra = {mid: ts for mid, ts in times.items() if len(ts) > 1}
    # OSCC has no idempotency key: a contact it accepted just before a SIGKILL, whose key
    # had not reached the dedupe store yet, is sent again after the restart.
    in_flight = {
        mid
        for mid, ts in extra.items()
        if len(ts) == 2 and any(ts[0] <= k <= min(ts[0] + KILL_WINDOW, ts[1]) for k in run.kills)
    }
    unexplained = set(extra) - in_flight
    strangers = set(times) - set(run.published)
    highest: dict[int, int] = {}  # source -> highest seq that reached OSCC so far
    violations = 0
    first: set[str] = set()
    for mid, _ in accepted:
        if mid in first or mid not in run.published:
            continue  # a repeat (counted as duplicate) or a stranger (counted below)
        first.add(mid)
        src, seq = run.published[mid]
        if seq < highest.get(src, -1):
            violations += 1
        highest[src] = max(seq, highest.get(src, -1))
    with_outcome = sum(1 for mid in run.published if run.outcome_ids[mid] >= 1)
    rejected = run.outcomes["contact.rejected"]
    window = f"  of which resent after a SIGKILL <= {KILL_WINDOW:.0f} s after OSCC took it"
    for bad, text in (
        (lost, f"{len(lost)} contacts lost, e.g. {sorted(lost)[:3]}"),
        (unexplained, f"{len(unexplained)} contacts duplicated, e.g. {sorted(unexplained)[:3]}"),
        (strangers, f"{len(strangers)} contacts at OSCC nobody published"),
        (violations, f"{violations} per-source order violations"),
        (rejected, f"{rejected} contacts rejected"),
    ):
        if bad:
            failures.append(text)
    return [
        ("CONTACTS  (back-end -> bridge -> OSCC)", ""),
        ("published (confirmed, distinct message_id)", len(run.published)),
        ("  publish retries (broker away)", run.publish_retries),
        ("reached OSCC (distinct)", len(times)),
        ("lost", len(lost)),
        ("duplicated at OSCC (extra newContact)", sum(len(t) - 1 for t in extra.values())),
        (window, len(in_flight)),
        ("  unexplained", len(unexplained)),
        ("per-source order violations", violations),
        ("contacts with a contact.accepted outcome", with_outcome),
        ("contact.rejected outcomes", rejected),
    ]


def judge_webhooks(run: Run, sim: Simulator, failures: list[str]) -> Rows:
    """OSCC -> broker: nothing OSCC got a 2xx for is lost; every second copy explained."""
    attempts: dict[tuple[str, str], list[WebhookCall]] = defaultdict(list)
    for call in sim.webhook_calls:
        attempts[call_key(call)].append(call)
    ok = {k for k, calls in attempts.items() if any(c.ok for c in calls)}
    copies: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in run.seen:
        copies[s.key].append(s.message_id)
    lost = ok - set(copies)
    same_id = retried = odd = 0
    odd_keys = []
    for key, mids in copies.items():
        # Same message_id twice: the publisher re-sent a message whose confirm was lost.
        same_id += len(mids) - len(set(mids))
        # A new message_id: a new webhook call; only an attempt without a 2xx explains it.
        extra_ids = len(set(mids)) - 1
        failed_attempts = sum(1 for c in attempts.get(key, []) if not c.ok)
        retried += min(extra_ids, failed_attempts)
        if extra_ids > failed_attempts or key not in attempts:
            odd += max(1, extra_ids - failed_attempts)
            odd_keys.append(key)
    if lost:
        failures.append(f"{len(lost)} webhook calls lost, e.g. {sorted(lost)[:3]}")
    if odd:
        failures.append(f"{odd} unexplained webhook duplicates, e.g. {odd_keys[:3]}")
    kinds = Counter(k for k, _ in ok)
    failed = sum(1 for c in sim.webhook_calls if not c.ok)
    return [
        ("", ""),
        ("WEBHOOKS  (OSCC -> bridge -> broker)", ""),
        ("calls OSCC got a 2xx for (distinct)", len(ok)),
        ("  by kind", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))),
        ("  attempts in all / without a 2xx", f"{len(sim.webhook_calls)} / {failed}"),
        ("  calls the agent gave up on", len(sim.agent.gave_up)),
        ("found on the broker (distinct)", len(ok & set(copies))),
        ("lost", len(lost)),
        ("duplicated on the broker (extra copies)", same_id + retried + odd),
        ("  same message_id (confirm lost, re-sent)", same_id),
        ("  new message_id, an earlier attempt got no 2xx", retried),
        ("  unexplained", odd),
        ("audit redeliveries of our own (ignored)", run.own_redeliveries),
    ]


def judge_streams(run: Run, sim: Simulator, failures: list[str]) -> Rows:
    """Stream requests answered by the back-end -> one response each at OSCC."""
    responses = Counter(str(b["id"]) for b in sim.stream_responses(TITLE))
    requested = stream_ids(sim)
    missing = run.answered - set(responses)
    unanswered = requested - run.answered
    duplicated = sum(n - 1 for n in responses.values())
    if unanswered:
        failures.append(f"{len(unanswered)} stream requests never answered")
    if missing:
        failures.append(f"{len(missing)} stream responses missing at OSCC")
    if duplicated:
        failures.append(f"{duplicated} stream responses duplicated at OSCC")
    answered = f"{len(run.answered)} / {run.backend_deliveries}"
    return [
        ("", ""),
        ("STREAM    (request -> back-end -> response -> OSCC)", ""),
        ("stream requests OSCC got a 2xx for", len(requested)),
        ("answered by the back-end (distinct / deliveries)", answered),
        ("responses at OSCC (distinct)", len(responses)),
        ("missing", len(missing)),
        ("duplicated at OSCC", duplicated),
    ]


def judge_rest(
    run: Run, unrouted: int, unrouted_keys: list[str], dead: int, failures: list[str]
) -> Rows:
    """Broker leftovers, sessions, faults, memory."""
    if unrouted:
        failures.append(f"{unrouted} messages unrouted: {unrouted_keys}")
    if dead:
        failures.append(f"{dead} dead letters")
    # The last process's memory once warm (20 s after it was ready), if it ran that long.
    warm = next((rss for t, rss, _ in run.memory if t >= run.last_ready + 20), None)
    base = warm or run.rss_last_ready
    # A leak detector, loose enough for allocator noise: doubling is not noise.
    if run.rss_end and base and run.rss_end > max(2 * base, base + 64 * 1024):
        failures.append(f"RSS grew from {mib(base)} to {mib(run.rss_end)} MiB")
    rss = [m[1] for m in run.memory]
    sessions = sorted((k, n) for k, n in run.outcomes.items() if k.startswith("session."))
    return [
        ("", ""),
        ("BROKER, SESSIONS, FAULTS, MEMORY", ""),
        (
            f"messages in {run.prefix}.unrouted",
            f"{unrouted} {unrouted_keys}" if unrouted_keys else unrouted,
        ),
        ("dead letters", dead),
        ("session messages", ", ".join(f"{k} {n}" for k, n in sessions)),
        ("faults injected", ", ".join(f"{k} {n}" for k, n in run.faults.items())),
        ("broker outages (s)", ", ".join(f"{s:.1f}" for s in run.outages)),
        ("SIGKILL -> ready again (s)", ", ".join(f"{s:.1f}" for s in run.restart_ready)),
        ("max spool depth seen", max((m[2] for m in run.memory), default=0)),
        ("RSS first start, ready (MiB)", mib(run.rss_first_ready)),
        ("RSS just before each SIGKILL (MiB)", ", ".join(mib(k) for k in run.rss_killed)),
        ("RSS last (re)start, ready (MiB)", mib(run.rss_last_ready)),
        ("RSS 20 s later (MiB)", mib(warm)),
        ("last process ran until the end (s)", f"{run.ended - run.last_ready:.0f}"),
        ("RSS at the end (MiB)", mib(run.rss_end)),
        ("RSS max sampled (MiB)", mib(max(rss, default=None))),
        ("VmHWM of the last process (MiB)", mib(run.hwm_end)),
    ]


def mib(kb: int | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f}"


def test_keys_match_between_agent_and_broker() -> None:
    """The report's matching of webhook calls to broker messages, on one of each kind."""

    @dataclass
    class Msg:
        routing_key: str
        headers: dict[str, Any]
        correlation_id: str | None = None

    cid = "O0000ABCD0300"
    pairs = [
        (WebhookCall(TITLE, {}, 200, {}, kind="delivered", contact_id=cid),
         Msg(f"{C}.event.delivered", {"oscc-contact-id": cid})),
        (WebhookCall(TITLE, {}, 200, {}, kind="publication", contact_id=cid),
         Msg(f"{C}.publication.post", {"oscc-published-id": f"{cid}-reply"})),
        (WebhookCall(TITLE, {"id": "po-1"}, 200, {}, kind="stream", contact_id=cid),
         Msg(f"{C}.stream.request", {}, "po-1")),
    ]  # fmt: skip
    for call, msg in pairs:
        assert call_key(call) == message_key(C, msg)  # type: ignore[arg-type]
