"""Benchmark: webhook -> confirmed publish, against the ceiling of aio-pika alone.

Throughput: `n` ~1 KB OpenMedia events POSTed over `concurrency` keep-alive connections
as fast as they are answered. The bridge side does everything it does in production:
read and bound the body, classify and validate it, encode it canonically, publish it
persistent with a confirm (spool ready behind it), then answer. The ceiling is measured in
the same run: the same canonical bodies, published with the same properties by aio-pika
alone with confirms at the same concurrency. Both publish to the same exchange and routing
key, bound to one queue of `queue_type`.

Latency: events at a constant `rate` per second (open loop; a request that waits for a
free connection is timed from when it was due), p50/p99 from due to answered.

The HTTP load comes from a child process with a minimal HTTP/1.1 client, so it does not
share the measured event loop. For reference the run also measures a bare webhook
(`bare_webhook`: aiohttp + aio-pika, no validation, spool, metrics or logs), which shows
how much of the gap to the ceiling is the HTTP leg itself rather than the bridge. The
result includes CPU per message of this process, the load generator and the broker.

    python tests/bench/bench_ingress.py [--n 5000] [--concurrency 64] [--rate 500]
                                        [--seconds 10] [--rounds 2] [--queue-type quorum]
                                        [--uvloop]

`run(...)` returns the numbers as a dict (for tests/bench/run.py). Targets: ratio >= 0.75,
p99 < 25 ms at 500/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from aiohttp import web

from bridge import logs
from bridge.broker import Broker
from bridge.config import Config, parse
from bridge.metrics import Metrics
from bridge.oscc import codec
from bridge.publisher import Publisher
from bridge.spool import Spool
from bridge.topology import Topology
from bridge.webhook import add_routes, server_options
from tests.harness import message

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
C = "facebook"
RATIO_TARGET = 0.75
P99_TARGET_MS = 25.0


def event_body(i: int) -> bytes:
    """A Delivered event of about 1 KB, as OSCC would send it."""
    return json.dumps(
        {
            "type": "OpenMediaEvent",
            "openMediaEventType": "DeliveredOpenMediaEvent",
            "dateTime": "2018-02-20 15:08:40.994",
            "contactID": f"0553A8C5A{i:05d}",
            "agentID": "100",
            "source": {
                "id": "703545976517482_703546043184142",
                "type": "Person",
                "name": "John Smith",
                "location": "Brasilia, Brasil",
                "language": "pt",
                "additionalInfo": [{"key": "crm", "value": "A-1234"}],
            },
            "publishedObject": {
                "id": "703545976517482_703546026517477",
                "fatherId": "205056409590639_124328589355467",
                "inReplyTo": None,
                "title": "Sales Testing",
                "content": "Hello, I would like to know more about your offer. " * 10,
                "contactData": [{"key": "segment", "value": "gold"}],
                "attachments": None,
                "tagList": None,
            },
            "destination": {
                "id": "Node",
                "type": "Page",
                "name": "Company page",
                "url": "https://example.com/page",
                "additionalInfo": [],
            },
        }
    ).encode()


# -- the load generator (child process) ---------------------------------------------------

CLIENT = r"""
import asyncio, json, sys, time

async def exchange(reader, writer, request):
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])

async def main():
    a = json.loads(sys.stdin.read())
    bodies = [b.encode() for b in a["bodies"]]
    requests = [
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (a["path"].encode(), len(b), b)
        for b in bodies
    ]
    conns = [await asyncio.open_connection(a["host"], a["port"]) for _ in range(a["concurrency"])]
    statuses = {}
    latencies = []
    n = a["n"]
    if a["mode"] == "throughput":
        next_i = 0
        async def worker(reader, writer):
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                s = await exchange(reader, writer, requests[i % len(requests)])
                statuses[s] = statuses.get(s, 0) + 1
        started = time.perf_counter()
        await asyncio.gather(*(worker(r, w) for r, w in conns))
        elapsed = time.perf_counter() - started
    else:
        free = asyncio.Queue()
        for c in conns:
            free.put_nowait(c)
        rate = a["rate"]
        async def one(i, due):
            reader, writer = await free.get()
            s = await exchange(reader, writer, requests[i % len(requests)])
            latencies.append(time.perf_counter() - due)
            statuses[s] = statuses.get(s, 0) + 1
            free.put_nowait((reader, writer))
        started = time.perf_counter()
        tasks = []
        for i in range(n):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    for _, w in conns:
        w.close()
    latencies.sort()
    print(json.dumps({"elapsed": elapsed, "statuses": statuses, "latencies": latencies}))

asyncio.run(main())
"""


def broker_pid() -> int | None:
    """The local RabbitMQ server's pid (the busiest rabbit beam.smp), to read its CPU."""
    best: tuple[int, int] | None = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            ticks = cpu_ticks(int(entry))
        except OSError:
            continue
        server = b"beam" in cmdline and b"rabbit" in cmdline and b"rabbitmqctl" not in cmdline
        if server and (best is None or ticks > best[1]):
            best = (int(entry), ticks)
    return best[0] if best else None


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class CpuMeter:
    """CPU seconds used by this process, its finished children and the broker."""

    def __init__(self) -> None:
        self.broker = broker_pid()
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, ...]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        broker = cpu_ticks(self.broker) / self.tick if self.broker else float("nan")
        return me.ru_utime, me.ru_stime, children.ru_utime + children.ru_stime, broker

    def since(self, start: tuple[float, ...], n: int) -> dict[str, float]:
        names = ("process_user_us", "process_system_us", "client_us", "broker_us")
        return {
            name: round((b - a) / n * 1e6, 1)
            for name, a, b in zip(names, start, self.read(), strict=True)
        }


async def load(port: int, bodies: list[bytes], **args: Any) -> dict[str, Any]:
    payload = {
        "host": "127.0.0.1",
        "port": port,
        "path": f"/webhook/{C}",
        "bodies": [b.decode() for b in bodies],
        **args,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate(json.dumps(payload).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


# -- the two sides ----------------------------------------------------------------------


def bench_config(prefix: str, spool_dir: str, queue_type: str) -> Config:
    return parse(
        f"""
[broker]
url = "{AMQP_URL}"
exchange = "{prefix}"
queue_type = "{queue_type}"
[spool]
dir = "{spool_dir}"
[[connectors]]
name = "{C}"
title = "facebook"
token = "bench-token"
""",
        {},
    )


@contextlib.asynccontextmanager
async def bridge(config: Config) -> AsyncIterator[tuple[int, Publisher]]:
    """Spool + publisher + webhook listener, as app.py mounts them."""
    metrics = Metrics()
    topology = Topology(config.broker.exchange, config.broker.queue_type)
    async with (
        Spool(config.spool.dir, max_bytes=config.spool.max_bytes, metrics=metrics) as spool,
        Broker(config.broker, topology, connectors=[C], metrics=metrics) as broker,
        Publisher(broker, spool=spool) as pub,
    ):
        app = web.Application(client_max_size=config.http.max_body_bytes)
        add_routes(app, config, pub, metrics)
        runner = web.AppRunner(app, **server_options(config))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield runner.addresses[0][1], pub
        finally:
            await runner.cleanup()


async def through_bridge(port: int, bodies: list[bytes], n: int, concurrency: int) -> float:
    result = await load(port, bodies, mode="throughput", n=n, concurrency=concurrency)
    if set(result["statuses"]) != {"200"}:
        raise RuntimeError(f"bridge answered {result['statuses']}")
    return n / float(result["elapsed"])


async def ceiling(topology: Topology, bodies: list[bytes], n: int, concurrency: int) -> float:
    """The same canonical messages, published by aio-pika alone with confirms."""
    canonical = [codec.encode(codec.decode_inbound(b).body) for b in bodies]
    key = topology.event_key(C, "delivered")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.exchange)
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                msg = message(
                    canonical[i % len(canonical)],
                    connector=C,
                    routing_key=key,
                    message_id=uuid.uuid4().hex,
                    headers={"oscc-contact-id": "c", "oscc-agent-id": "100", "oscc-event": "x"},
                )
                await exchange.publish(msg, key, mandatory=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def bare_webhook(topology: Topology) -> AsyncIterator[int]:
    """A naive webhook for reference: aiohttp reads the body and aio-pika publishes it
    with a confirm, then 200. No validation, canonical form, spool, metrics or logs."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.exchange)
    key = topology.event_key(C, "delivered")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        msg = message(body, connector=C, routing_key=key, message_id=uuid.uuid4().hex)
        await exchange.publish(msg, key, mandatory=True)
        return web.json_response({"errorCode": 0, "errorText": "NO_ERROR"})

    app = web.Application()
    app.router.add_post(f"/webhook/{C}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
        await connection.close()


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(
    n: int = 5000,
    concurrency: int = 64,
    rate: float = 500.0,
    seconds: float = 10.0,
    rounds: int = 2,
    queue_type: str = "quorum",
) -> dict[str, Any]:
    """Measure ceiling and bridge `rounds` times, interleaved (best of each), then the
    latency at a constant `rate` for `seconds`."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    bodies = [event_body(i) for i in range(100)]
    ceilings: list[float] = []
    bridges: list[float] = []
    bares: list[float] = []
    cpu: dict[str, dict[str, float]] = {}
    meter = CpuMeter()
    with tempfile.TemporaryDirectory(prefix="oscc-bench-spool-") as spool_dir:
        config = bench_config(prefix, spool_dir, queue_type)
        topology = Topology(prefix, config.broker.queue_type)
        async with bridge(config) as (port, pub):
            channel = await pub.broker.channel()
            sink = await channel.declare_queue(
                f"{prefix}.sink", durable=True, arguments={"x-queue-type": queue_type}
            )
            await sink.bind(topology.exchange, f"{C}.event.*")
            try:
                await through_bridge(port, bodies, 500, concurrency)  # warm up
                await ceiling(topology, bodies, 500, concurrency)
                for _ in range(rounds):
                    await sink.purge()
                    start = meter.read()
                    ceilings.append(await ceiling(topology, bodies, n, concurrency))
                    cpu["ceiling"] = meter.since(start, n)
                    await sink.purge()
                    start = meter.read()
                    bridges.append(await through_bridge(port, bodies, n, concurrency))
                    cpu["bridge"] = meter.since(start, n)
                    await sink.purge()
                    async with bare_webhook(topology) as bare_port:
                        start = meter.read()
                        bares.append(await through_bridge(bare_port, bodies, n, concurrency))
                        cpu["bare_webhook"] = meter.since(start, n)
                await sink.purge()
                timed = await load(
                    port,
                    bodies,
                    mode="rate",
                    n=int(rate * seconds),
                    rate=rate,
                    concurrency=concurrency,
                )
                if set(timed["statuses"]) != {"200"}:
                    raise RuntimeError(f"bridge answered {timed['statuses']}")
            finally:
                await sink.delete(if_unused=False, if_empty=False)
                await topology.delete(channel, [C])
                await channel.close()
    best_ceiling, best_bridge = max(ceilings), max(bridges)
    latencies = timed["latencies"]
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    ratio = best_bridge / best_ceiling
    return {
        "bench": "ingress",
        "loop": type(asyncio.get_running_loop()).__module__,
        "n": n,
        "concurrency": concurrency,
        "body_bytes": len(bodies[0]),
        "queue_type": queue_type,
        "ceiling_per_s": round(best_ceiling, 1),
        "bridge_per_s": round(best_bridge, 1),
        "ratio": round(ratio, 3),
        "ratio_target": RATIO_TARGET,
        # for reference: the naive webhook (see `bare_webhook`) and its ratio
        "bare_webhook_per_s": round(max(bares), 1),
        "bare_webhook_ratio": round(max(bares) / best_ceiling, 3),
        "rate": rate,
        "achieved_rate": round(len(latencies) / timed["elapsed"], 1),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "p99_target_ms": P99_TARGET_MS,
        "ok": ratio >= RATIO_TARGET and p99 < P99_TARGET_MS,
        "rounds": {
            "ceiling": [round(r) for r in ceilings],
            "bridge": [round(r) for r in bridges],
            "bare_webhook": [round(r) for r in bares],
        },
        # CPU per message in the last round: the measuring process (the bridge, or
        # aio-pika alone), the HTTP load generator, the broker
        "cpu_per_message": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument(
        "--uvloop", action="store_true", help="run the measured side on uvloop (if installed)"
    )
    args = parser.parse_args()
    logs.configure("warning", "console")
    factory = None
    if args.uvloop:
        import uvloop  # type: ignore[import-not-found]  # optional, not a dependency

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(
            run(args.n, args.concurrency, args.rate, args.seconds, args.rounds, args.queue_type)
        )
    r = result
    print(
        f"ingress: ceiling {r['ceiling_per_s']:.0f}/s (aio-pika alone), bridge "
        f"{r['bridge_per_s']:.0f}/s, ratio {r['ratio']:.2f} (target {RATIO_TARGET:.2f}); "
        f"bare aiohttp+aio-pika webhook {r['bare_webhook_per_s']:.0f}/s "
        f"({r['bare_webhook_ratio']:.2f}); at {r['rate']:.0f}/s: p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms (target < {P99_TARGET_MS:.0f}) "
        f"{'OK' if r['ok'] else 'BELOW TARGET'}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
