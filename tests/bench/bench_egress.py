"""Benchmark: queue -> OSCC forwarding rate of the consumer, against the ceiling.

The ceiling is measured in the same run: the same newContact POSTs, sent by a bare aiohttp
client at the same concurrency (= broker.prefetch) to the same simulator. The simulator
runs in a process of its own, so it does not share a core with what is measured. The
bridge side does everything it does in production: consume with manual ack, decode and
check limits, per-source lanes, POST, fsync the dedupe key and append it to the shared
accepted log (confirmed), publish the outcome with a confirm, ack. ``--breakdown`` adds,
in the same rounds, the bridge without the shared log, without the fsync, without both,
with the log's former one-message-per-key, and a forwarder handling one contact at a time
(docs/PERFORMANCE.md, Egress). The queue is filled before the consumer starts, so only
forwarding is timed.

    python tests/bench/bench_egress.py [--n 5000] [--prefetch 64] [--sources 1000]
                                       [--latency 0] [--rounds 2]
                                       [--queue-type quorum|classic] [--breakdown]

`run(...)` returns the numbers as a dict (for tests/bench/run.py). Targets: ratio >= 0.70
of the raw ceiling, and >= 1.5x the equivalent forwarder measured in the same run
(`forwarder`: consume, POST, confirmed outcome, ack; the reference of issue 15).

Sources: contacts of one source go to OSCC one after the other, so with fewer sources
than prefetch (say 50 of 64) no more than that many are ever in flight, whatever the
bridge costs. The default, 1,000 sources, measures the bridge's own overhead; ``--sources
50`` shows what per-source order costs on top.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from bridge import logs
from bridge.accepted import AcceptedLog
from bridge.broker import Broker
from bridge.config import BrokerConfig, Config, ConnectorConfig, HttpConfig, OsccConfig, SpoolConfig
from bridge.consumer import Consumer
from bridge.dedupe import DedupeStore
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.oscc.client import OsccClient
from bridge.publisher import Publisher
from bridge.session import SessionSupervisor
from bridge.topology import Topology

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for harness
from harness import simulator_process

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TITLE, TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
BARE_TITLE, BARE_TOKEN = "bench-bare", "BENCHBARETOKEN0123456789"
TARGET = 0.70
FORWARDER_TARGET = 1.5  # x the equivalent forwarder (`forwarder`)
NEW_CONTACT = "/openmedia/webapi/main/newContact"
# (name, shared accepted log, local fsync, one log message per key): production first,
# then the breakdown's
VARIANTS = (
    ("bridge", True, True, False),
    ("per_key_log", True, True, True),
    ("no_shared_log", False, True, False),
    ("no_fsync", True, False, False),
    ("neither", False, False, False),
)


def contacts(n: int, sources: int) -> list[bytes]:
    """`n` canonical New Contact bodies from `sources` sources, ~400 bytes each."""
    out = []
    for i in range(n):
        body = {
            "type": "Post",
            "dateTime": "2016-09-10T15:04:55Z",
            "source": {"id": f"src-{i % sources}", "type": "Person", "name": "Bench Person"},
            "publishedObject": {
                "id": f"po-{i}",
                "title": "benchmark",
                "content": "The quick brown fox jumps over the lazy dog. " * 4,
            },
            "destination": {"id": "page-1", "type": "Page", "name": "Bench Page"},
        }
        out.append(codec.encode(codec.decode_new_contact(body).body))
    return out


async def reset(http: aiohttp.ClientSession, url: str) -> None:
    """Forget the simulator's records (memory) but keep its latency (reset clears it)."""
    async with http.get(f"{url}/admin/faults") as r:
        latency = (await r.json())["latency"]
    async with http.post(f"{url}/admin/reset") as r:
        r.raise_for_status()
    async with http.post(f"{url}/admin/faults", json={"latency": latency}) as r:
        r.raise_for_status()


async def count_accepted(http: aiohttp.ClientSession, url: str, title: str) -> int:
    async with http.get(f"{url}/admin/records", params={"endpoint": "newContact"}) as r:
        rows = (await r.json())["records"]
    return sum(1 for row in rows if row["title"] == title and row["error_code"] == 0)


async def register(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """Register BARE_TITLE with the simulator; the headers of its newContact POSTs."""
    registration = {
        "type": "Registration",
        "webhookURL": "http://127.0.0.1:9/webhook/bench",
        "openMedia": {"openMediaTitle": BARE_TITLE, "token": BARE_TOKEN},
    }
    async with http.post(f"{url}/openmedia/webapi/main/registerConnector", json=registration) as r:
        answer = await r.json()
    token = answer.get("sessionToken")
    if not token:  # still registered from an earlier round
        sessions = await (await http.get(f"{url}/admin/sessions")).json()
        raise RuntimeError(f"bare client could not register: {answer} {sessions}")
    return {"Content-Type": "application/json", "Authorization": token}


async def forwarder(
    url: str,
    bodies: list[bytes],
    prefetch: int,
    queue_type: str = "quorum",
    *,
    serial: bool = False,
) -> tuple[float, float]:
    """The equivalent forwarder, the reference issue 15 asks for: the same per-contact
    work as the bridge's consumer without its checks: consume (manual ack, `prefetch`),
    POST newContact, publish the outcome persistent with a confirm (to a queue of
    `queue_type`, as the bridge's lands in one), ack. The queue is filled first; as
    `through_bridge`, (contacts per second, CPU seconds of this process per contact).
    aio-pika runs each delivery's callback in a task of its own, so up to `prefetch`
    contacts are in flight, as in the bridge; `serial` handles them one at a time
    instead (a naive forwarder, for comparison only)."""
    prefix = f"bench-fwd-{uuid.uuid4().hex[:8]}"
    args = {"x-queue-type": queue_type}
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)
        outcomes = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(prefix, aio_pika.ExchangeType.TOPIC)
        contacts_q = await channel.declare_queue(f"{prefix}.contacts", durable=True, arguments=args)
        outcome_q = await channel.declare_queue(f"{prefix}.outcomes", durable=True, arguments=args)
        await contacts_q.bind(exchange, "fwd.contact.new")
        await outcome_q.bind(exchange, "fwd.contact.*ed")
        out_exchange = await outcomes.get_exchange(prefix, ensure=False)
        for start in range(0, len(bodies), 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(b, message_id=uuid.uuid4().hex, delivery_mode=2),
                        "fwd.contact.new",
                    )
                    for b in bodies[start : start + 500]
                )
            )
        done = asyncio.Event()
        one_at_a_time = asyncio.Lock() if serial else contextlib.nullcontext()
        acked = failures = 0
        async with aiohttp.ClientSession() as http:
            headers = await register(http, url)

            async def on_contact(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with one_at_a_time:
                    await forward(message)

            async def forward(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal acked, failures
                async with http.post(url + NEW_CONTACT, data=message.body, headers=headers) as r:
                    answer = await r.read()
                code = json.loads(answer).get("errorCode")
                failures += code != 0
                outcome = aio_pika.Message(
                    answer,
                    delivery_mode=2,
                    content_type="application/json",
                    correlation_id=message.message_id,
                    message_id=uuid.uuid4().hex,
                )
                key = "fwd.contact.accepted" if code == 0 else "fwd.contact.rejected"
                await out_exchange.publish(outcome, key)
                await message.ack()
                acked += 1
                if acked == len(bodies):
                    done.set()

            started, cpu = time.perf_counter(), time.process_time()
            tag = await contacts_q.consume(on_contact)
            await done.wait()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            await contacts_q.cancel(tag)
            await http.delete(f"{url}/admin/sessions")
            await reset(http, url)
        for q in (contacts_q, outcome_q):
            await q.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    finally:
        await connection.close()
    if failures:
        raise RuntimeError(f"forwarder: {failures} contacts not accepted")
    return len(bodies) / elapsed, cpu / len(bodies)


async def bare(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """The raw ceiling: POST every body at `concurrency`; (contacts per second, CPU
    seconds of this process per contact)."""
    async with aiohttp.ClientSession() as http:
        headers = await register(http, url)
        queue = iter(bodies)
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for body in queue:
                async with http.post(url + NEW_CONTACT, data=body, headers=headers) as r:
                    if (await r.json()).get("errorCode") != 0:
                        failures += 1

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if failures:
            raise RuntimeError(f"bare client: {failures} contacts not accepted")
        await http.delete(f"{url}/admin/sessions")  # let the next round register again
        await reset(http, url)
    return len(bodies) / elapsed, cpu / len(bodies)


class NoFsyncStore(DedupeStore):
    """The dedupe store without its fsync (and thread hand-off): the line is still
    written and the adds of one loop turn still released together. Breakdown only."""

    async def _flush(self) -> None:
        while self._waiters:
            await asyncio.sleep(0)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)


class PerKeyLog(AcceptedLog):
    """The accepted log as it was before its group commit: one confirmed message per
    key (the "before" of docs/PERFORMANCE.md's Egress section). Breakdown only."""

    async def record(self, key: str) -> None:
        await self._append(key.encode(), "accepted", message_id=None)


async def through_bridge(
    url: str,
    bodies: list[bytes],
    prefetch: int,
    queue_type: str = "quorum",
    *,
    shared: bool = True,
    fsync: bool = True,
    per_key: bool = False,
) -> tuple[float, float]:
    """Fill the queue, then time the consumer forwarding all of it; as `bare`.

        As in production (duty.py), each accepted key also goes to the shared accepted log
        (a stream, confirmed) and is fsync'd locally before the ack; `shared` False leaves
        the log out, `fsync` False the local fsync, `per_key` records one message per key (the
    breakdown's variants)."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    c = "fb"
    with tempfile.TemporaryDirectory() as spool:
        config = Config(
            broker=BrokerConfig(
                url=AMQP_URL,
                exchange=prefix,
                prefetch=prefetch,
                queue_type=queue_type,  # type: ignore[arg-type]
            ),
            http=HttpConfig(public_url="http://127.0.0.1:9"),
            oscc=OsccConfig(url=url, keepalive_interval=30.0),
            spool=SpoolConfig(dir=spool),
            connectors=[ConnectorConfig(name=c, title=TITLE, token=TOKEN, listen_for_events=False)],
        )
        topology = Topology(prefix, config.broker.queue_type)
        metrics = Metrics()
        async with contextlib.AsyncExitStack() as stack:
            broker = await stack.enter_async_context(
                Broker(config.broker, topology, connectors=[c], metrics=metrics)
            )
            publisher = await stack.enter_async_context(Publisher(broker))
            channel = await broker.channel(publisher_confirms=True)
            stack.push_async_callback(topology.delete, channel, [c])
            exchange = await channel.get_exchange(prefix, ensure=False)
            key = topology.contact_new_key(c)
            for start in range(0, len(bodies), 500):
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(b, message_id=uuid.uuid4().hex, delivery_mode=2),
                            key,
                        )
                        for b in bodies[start : start + 500]
                    )
                )
            client = await stack.enter_async_context(
                OsccClient(config.oscc, connector=c, metrics=metrics)
            )
            supervisor = await stack.enter_async_context(
                SessionSupervisor(config, config.connectors[0], client, metrics)
            )
            await supervisor.token(timeout=10)
            store = DedupeStore if fsync else NoFsyncStore
            dedupe = await stack.enter_async_context(store.for_connector(spool, c))
            log = None
            if shared:
                log = await stack.enter_async_context(
                    (PerKeyLog if per_key else AcceptedLog)(
                        broker.connection, topology=topology, connector=c
                    )
                )
                stack.push_async_callback(channel.queue_delete, topology.accepted_queue(c))

            def accepted() -> float:
                # this family only: collecting the whole registry costs more than a contact
                samples = metrics.forwards.collect()[0].samples
                return sum(
                    x.value
                    for x in samples
                    if x.name.endswith("_total") and x.labels["outcome"] == "accepted"
                )

            consumer = Consumer(
                config,
                config.connectors[0],
                broker,
                publisher,
                supervisor,
                client,
                metrics,
                dedupe,
                accepted=log,
                rng=random.Random(0),
            )
            started, cpu = time.perf_counter(), time.process_time()
            async with consumer:
                while accepted() < len(bodies):  # noqa: ASYNC110 (no event to wait on)
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu
    async with aiohttp.ClientSession() as http:
        got = await count_accepted(http, url, TITLE)
        await http.delete(f"{url}/admin/sessions")
        await reset(http, url)
    if got != len(bodies):
        raise RuntimeError(f"simulator accepted {got} contacts, expected {len(bodies)}")
    return len(bodies) / elapsed, cpu / len(bodies)


async def run(
    n: int = 5000,
    prefetch: int = 64,
    sources: int = 1000,
    latency: float = 0.0,
    rounds: int = 2,
    queue_type: str = "quorum",
    breakdown: bool = False,
) -> dict[str, Any]:
    """Measure ceiling, bridge and forwarder `rounds` times, interleaved; keep the best of
    each. `breakdown`: also the bridge without the shared accepted log, without the local
    fsync, and without both (`variants`), in the same rounds."""
    bodies = contacts(n, sources)
    ceilings: list[tuple[float, float]] = []
    bridges: list[tuple[float, float]] = []
    forwarders: list[tuple[float, float]] = []
    variants: dict[str, list[tuple[float, float]]] = {}
    serials: list[tuple[float, float]] = []
    others = VARIANTS[1:] if breakdown else ()
    async with simulator_process(
        {TITLE: TOKEN, BARE_TITLE: BARE_TOKEN}, agent=False, latency=latency, session_ttl=3600.0
    ) as (url, _):
        for _ in range(rounds):
            ceilings.append(await bare(url, bodies, prefetch))
            bridges.append(await through_bridge(url, bodies, prefetch, queue_type))
            forwarders.append(await forwarder(url, bodies, prefetch, queue_type))
            if breakdown:
                serials.append(await forwarder(url, bodies, prefetch, queue_type, serial=True))
            for name, shared, fsync, per_key in others:
                variants.setdefault(name, []).append(
                    await through_bridge(
                        url,
                        bodies,
                        prefetch,
                        queue_type,
                        shared=shared,
                        fsync=fsync,
                        per_key=per_key,
                    )
                )
    (ceiling, ceiling_cpu), (bridge, bridge_cpu) = max(ceilings), max(bridges)
    fwd, fwd_cpu = max(forwarders)
    best = {"bridge": (bridge, bridge_cpu)} | {k: max(v) for k, v in variants.items()}
    if serials:
        best["forwarder_one_at_a_time"] = max(serials)
    return {
        "bench": "egress",
        "n": n,
        "prefetch": prefetch,
        "sources": sources,
        "latency": latency,
        "queue_type": queue_type,
        "ceiling_per_s": round(ceiling, 1),
        "bridge_per_s": round(bridge, 1),
        "ratio": round(bridge / ceiling, 3),
        "target": TARGET,
        "ok": bridge / ceiling >= TARGET and bridge / fwd >= FORWARDER_TARGET,
        # CPU of the measuring process per contact (the simulator runs elsewhere)
        "ceiling_cpu_us": round(ceiling_cpu * 1e6),
        "bridge_cpu_us": round(bridge_cpu * 1e6),
        # the equivalent forwarder (issue 15: the bridge stays >= FORWARDER_TARGET x it)
        "forwarder_per_s": round(fwd, 1),
        "forwarder_cpu_us": round(fwd_cpu * 1e6),
        "ratio_vs_forwarder": round(bridge / fwd, 3),
        "forwarder_target": FORWARDER_TARGET,
        "forwarder_ok": bridge / fwd >= FORWARDER_TARGET,
        # all in this process, one after the other: run.py reports its peak RSS
        "references": {
            "bridge": {"per_s": round(bridge, 1), "cpu_us": round(bridge_cpu * 1e6)},
            "forwarder": {"per_s": round(fwd, 1), "cpu_us": round(fwd_cpu * 1e6)},
            "raw_ceiling": {"per_s": round(ceiling, 1), "cpu_us": round(ceiling_cpu * 1e6)},
        },
        # the bridge with parts of its per-contact durability left out (`breakdown`)
        "variants": {
            k: {"per_s": round(r, 1), "cpu_us": round(u * 1e6), "vs_forwarder": round(r / fwd, 3)}
            for k, (r, u) in best.items()
        },
        "rounds": {
            "ceiling": [round(r) for r, _ in ceilings],
            "bridge": [round(r) for r, _ in bridges],
            "forwarder": [round(r) for r, _ in forwarders],
        }
        | {k: [round(r) for r, _ in v] for k, v in variants.items()}
        | ({"forwarder_one_at_a_time": [round(r) for r, _ in serials]} if serials else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    parser.add_argument(
        "--breakdown", action="store_true", help="also without the shared log / the fsync"
    )
    args = parser.parse_args()
    logs.configure("warning", "console")
    result = asyncio.run(
        run(
            args.n,
            args.prefetch,
            args.sources,
            args.latency,
            args.rounds,
            args.queue_type,
            args.breakdown,
        )
    )
    print(
        f"egress: ceiling {result['ceiling_per_s']:.0f}/s (bare aiohttp), "
        f"bridge {result['bridge_per_s']:.0f}/s, ratio {result['ratio']:.2f} "
        f"(target {TARGET:.2f}) {'OK' if result['ok'] else 'BELOW TARGET'}; CPU per contact "
        f"{result['ceiling_cpu_us']} us bare, {result['bridge_cpu_us']} us bridge; "
        f"forwarder {result['forwarder_per_s']:.0f}/s ({result['forwarder_cpu_us']} us), "
        f"bridge / forwarder {result['ratio_vs_forwarder']:.2f} (target {FORWARDER_TARGET})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
