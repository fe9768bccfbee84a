"""Benchmark: end to end, a contact published to RabbitMQ until its Disconnected event
comes back from RabbitMQ, against a ceiling measured in the same run.

    contact ─► RabbitMQ ─► [bridge] ─► OSCC simulator ─► agent: Delivered, Established,
    Outgoing Publication, Disconnected ─► [bridge] ─► RabbitMQ ─► subscriber

The agent's script is fixed (no hold, transfer or stream request): four webhook calls per
contact, each made after the previous one was answered, so one contact is five HTTP round
trips (newContact and four webhook calls) and four confirmed publishes, plus the
contact.accepted outcome the bridge publishes and the ceiling does not.

Ceiling: the same flow with [bridge] replaced by the least code that does its two hops,
in a process of its own like the bridge: an aio-pika consumer that POSTs each contact to
newContact and acks, and a bare aiohttp webhook that publishes each call's body with a
confirm, under a routing key read off the JSON, and answers 200. No validation,
normalisation, limits, ordering lanes, dedupe store, outcomes, spool, session supervision
or metrics: everything the bridge adds is what the ratio prices. The simulator (agent
included) runs in a third process; RabbitMQ and this measuring process are shared by both.

Figures per side: throughput (a burst of `n` contacts from `sources` sources, first
publish to last Disconnected), latency (`latency_n` contacts paced at `rate` per second,
p50/p99 of publish -> Disconnected received), CPU of the bridge (or ceiling) process per
contact during the burst, its peak RSS (VmHWM), and how many cores the simulator and the
whole machine were busy during the burst (simulator near 1.0: OSCC's stand-in bounds both
sides; machine near its core count: the box does, and CPU per contact is the figure that
carries over to a bigger one).

    python tests/bench/bench_e2e.py [--n 2000] [--rate 40] [--latency-n 1000] [--rounds 2]

`run(...)` returns the numbers as a dict (for tests/bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aiohttp import web

from bridge import logs
from bridge.topology import Topology

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for harness
from harness import (
    AMQP_URL,
    BridgeProcess,
    bridge_config,
    free_port,
    proc_status_kb,
    simulator_process,
)

TITLE, TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
BARE_TITLE, BARE_TOKEN = "bench-bare", "BENCHBARETOKEN0123456789"
BASE = "/openmedia/webapi/main"
CEILING = (
    "same flow with the bridge replaced by a bare aio-pika consumer (POST newContact, ack) "
    "and a bare aiohttp webhook (publish with confirm, answer 200), in its own process"
)
EVENT_KINDS = {
    "DeliveredOpenMediaEvent": "delivered",
    "EstablishedEvent": "established",
    "HeldOpenMediaEvent": "held",
    "RetrievedOpenMediaEvent": "retrieved",
    "TransferredOpenMediaEvent": "transferred",
    "DisconnectedEvent": "disconnected",
    "DivertedOpenMediaEvent": "diverted",
}


# --- the ceiling: the least code that does the bridge's two hops ----------------------------


async def bare_bridge(
    oscc: str, exchange_name: str, c: str, title: str, token: str, port: int, prefetch: int
) -> None:
    """Contacts queue -> newContact; webhook -> publish with confirm. Until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name, ensure=False)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        obj = json.loads(body)
        kind = obj.get("type")
        if kind == "OpenMediaEvent":
            key = f"{c}.event.{EVENT_KINDS.get(obj.get('openMediaEventType'), 'unknown')}"
        elif kind == "Stream":
            key = f"{c}.stream.request"
        else:
            key = f"{c}.publication.{str(kind).lower()}"
        message = aio_pika.Message(body, content_type="application/json", delivery_mode=2)
        await exchange.publish(message, key)
        return web.json_response({"errorCode": 0, "errorText": "NO_ERROR"})

    app = web.Application()
    app.router.add_post(f"/webhook/{c}", webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        registration = {
            "type": "Registration",
            "webhookURL": f"http://127.0.0.1:{port}/webhook/{c}",
            "openMedia": {"openMediaTitle": title, "token": token},
        }
        async with http.post(f"{oscc}{BASE}/registerConnector", json=registration) as r:
            session = (await r.json())["sessionToken"]
        headers = {"Content-Type": "application/json", "Authorization": session}
        async with http.post(
            f"{oscc}{BASE}/listenForEvents", json={"enabledListenForEvent": True}, headers=headers
        ) as r:
            assert (await r.json())["errorCode"] == 0

        async def on_contact(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with http.post(
                f"{oscc}{BASE}/newContact", data=message.body, headers=headers
            ) as r:
                answer = await r.json()
            if answer.get("errorCode") == 0:
                await message.ack()
            else:
                await message.nack()

        consume = await connection.channel()
        await consume.set_qos(prefetch_count=prefetch)
        queue = await consume.get_queue(Topology(exchange_name).contact_queue(c), ensure=False)
        await queue.consume(on_contact)
        print("READY", flush=True)
        await stop.wait()
        await consume.close()
    await runner.cleanup()
    await connection.close()


class BareProcess:
    """`bare_bridge` in a child process (this file with ``--bare``)."""

    def __init__(self, oscc: str, exchange: str, c: str, prefetch: int) -> None:
        self.args = [oscc, exchange, c, BARE_TITLE, BARE_TOKEN, str(free_port()), str(prefetch)]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--bare", *self.args, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"READY":
            raise RuntimeError(f"bare bridge did not start: {line!r}")

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 30)


# --- the measurement ------------------------------------------------------------------------


def contact(tag: str, i: int, sources: int) -> tuple[str, bytes]:
    """A New Contact (~400 bytes); (publishedObject.id, body)."""
    pid = f"{tag}-{i}"
    body = {
        "type": "Post",
        "dateTime": "2016-09-10T15:04:55Z",
        "source": {"id": f"src-{i % sources}", "type": "Person", "name": "Bench Person"},
        "publishedObject": {
            "id": pid,
            "title": "benchmark",
            "content": "The quick brown fox jumps over the lazy dog. " * 4,
        },
        "destination": {"id": "page-1", "type": "Page", "name": "Bench Page"},
    }
    return pid, json.dumps(body).encode()


class Subscriber:
    """Receives Delivered (contact id -> our id) and Disconnected (done) events."""

    def __init__(self) -> None:
        self.contact_of: dict[str, str] = {}
        self.done: dict[str, float] = {}  # our id -> monotonic time Disconnected arrived
        self.want = 0
        self.complete = asyncio.Event()

    def expect(self, count: int) -> None:
        self.want = len(self.done) + count
        self.complete.clear()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        now = time.monotonic()
        body = json.loads(message.body)
        cid = str(body.get("contactID"))
        if (message.routing_key or "").endswith(".delivered"):
            self.contact_of[cid] = str(body["publishedObject"]["id"])
        elif cid in self.contact_of:
            self.done.setdefault(self.contact_of[cid], now)
            if len(self.done) >= self.want:
                self.complete.set()


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not waiting on I/O)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    side: str,
    oscc: str,
    sim_pid: int,
    *,
    n: int,
    rate: float,
    latency_n: int,
    sources: int,
    prefetch: int,
) -> dict[str, Any]:
    """One side ("bridge" or "ceiling"): throughput, latency, CPU and peak RSS."""
    prefix = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    c = "fb"
    async with aiohttp.ClientSession() as http:
        # A fresh OSCC for each side: no session left from the previous one (it would
        # answer 2 ALREADY_REGISTERED_ON), no history to search through.
        (await http.delete(f"{oscc}/admin/sessions")).raise_for_status()
        (await http.post(f"{oscc}/admin/reset")).raise_for_status()
    topology = Topology(prefix, "quorum")
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await topology.declare(channel, [c])
    sub = Subscriber()
    events = await channel.declare_queue(exclusive=True, auto_delete=True)
    for kind in ("delivered", "disconnected"):
        await events.bind(prefix, topology.event_key(c, kind))
    await events.consume(sub.on_message, no_ack=True)
    exchange = await channel.get_exchange(prefix, ensure=False)
    key = topology.contact_new_key(c)

    async def publish(pid: str, body: bytes) -> None:
        await exchange.publish(
            aio_pika.Message(
                body, message_id=pid, content_type="application/json", delivery_mode=2
            ),
            key,
        )

    async def burst(tag: str, count: int) -> tuple[float, float]:
        sub.expect(count)
        bodies = [contact(tag, i, sources) for i in range(count)]
        started = time.monotonic()
        for at in range(0, count, 500):
            await asyncio.gather(*(publish(p, b) for p, b in bodies[at : at + 500]))
        await asyncio.wait_for(sub.complete.wait(), 60 + count / 20)
        return started, max(sub.done[p] for p, _ in bodies)

    with tempfile.TemporaryDirectory() as tmp:
        process: BridgeProcess | BareProcess
        if side == "bridge":
            port = free_port()
            process = BridgeProcess(
                bridge_config(
                    prefix=prefix,
                    oscc_url=oscc,
                    port=port,
                    spool_dir=Path(tmp) / "spool",
                    connectors=[(c, TITLE, TOKEN)],
                    prefetch=prefetch,
                ),
                port=port,
                workdir=Path(tmp),
            )
        else:
            process = BareProcess(oscc, prefix, c, prefetch)
        try:
            await process.start()
            await burst("warmup", 200)
            cpu, sim_cpu = cpu_seconds(process.pid), cpu_seconds(sim_pid)
            machine = machine_cpu_seconds()
            started, finished = await burst("burst", n)
            cpu = cpu_seconds(process.pid) - cpu
            # What bounds the burst: the simulator (near 1.0 core, OSCC's stand-in is the
            # limit for both sides) or the whole machine (near os.cpu_count()).
            sim_busy = (cpu_seconds(sim_pid) - sim_cpu) / (finished - started)
            machine_busy = (machine_cpu_seconds() - machine) / (time.monotonic() - started)
            throughput = n / (finished - started)

            sub.expect(latency_n)
            sent: dict[str, float] = {}
            t0 = time.monotonic()
            for i in range(latency_n):
                if (delay := t0 + i / rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                pid, body = contact("paced", i, sources)
                sent[pid] = time.monotonic()
                await publish(pid, body)
            await asyncio.wait_for(sub.complete.wait(), 60)
            latencies = sorted(sub.done[p] - t for p, t in sent.items())
            hwm = proc_status_kb(process.pid, "VmHWM")
            assert await process.stop() == 0, f"{side} did not stop cleanly"
        finally:
            if process.proc is not None and process.proc.returncode is None:
                process.proc.kill()
                await process.proc.wait()
            with contextlib.suppress(Exception):
                await topology.delete(channel, [c])
            await connection.close()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "per_s": throughput,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        # p99 of 1,000 is the 10th slowest: these say whether a tail is many or a few
        "slowest_ms": [round(x * 1000, 1) for x in latencies[-6:]],
        "cpu_us": cpu / n * 1e6,
        "peak_rss_kb": hwm,
        "simulator_busy": sim_busy,
        "machine_busy": machine_busy,
    }


async def run(
    n: int = 2000,
    rate: float = 40.0,
    latency_n: int = 1000,
    sources: int = 50,
    prefetch: int = 64,
    rounds: int = 2,
) -> dict[str, Any]:
    """Measure ceiling and bridge `rounds` times, interleaved; keep the best round of each
    (highest throughput; its latencies, CPU and RSS come from that same round)."""
    results: dict[str, list[dict[str, Any]]] = {"ceiling": [], "bridge": []}
    async with simulator_process(
        {TITLE: TOKEN, BARE_TITLE: BARE_TOKEN},
        agent=True,
        hold_probability=0.0,  # a fixed four-call script per contact
        transfer_probability=0.0,
        stream_probability=0.0,
        session_ttl=3600.0,
    ) as (url, sim_pid):
        for _ in range(rounds):
            for side in ("ceiling", "bridge"):
                results[side].append(
                    await measure(
                        side,
                        url,
                        sim_pid,
                        n=n,
                        rate=rate,
                        latency_n=latency_n,
                        sources=sources,
                        prefetch=prefetch,
                    )
                )
    best = {side: max(rs, key=lambda r: r["per_s"]) for side, rs in results.items()}
    bridge, ceiling = best["bridge"], best["ceiling"]
    out: dict[str, Any] = {
        "bench": "e2e",
        "n": n,
        "rate": rate,
        "latency_n": latency_n,
        "sources": sources,
        "prefetch": prefetch,
        "bridge_per_s": round(bridge["per_s"], 1),
        "ceiling_per_s": round(ceiling["per_s"], 1),
        "ratio": round(bridge["per_s"] / ceiling["per_s"], 3),
        "ceiling": CEILING,
        "rounds": {side: [round(r["per_s"]) for r in rs] for side, rs in results.items()},
    }
    for side, r in best.items():
        out[f"{side}_p50_ms"] = round(r["p50_ms"], 1)
        out[f"{side}_p99_ms"] = round(r["p99_ms"], 1)
        out[f"{side}_slowest_ms"] = r["slowest_ms"]
        out[f"{side}_cpu_us"] = round(r["cpu_us"])
        out[f"{side}_peak_rss_kb"] = r["peak_rss_kb"]
        out[f"{side}_simulator_busy"] = round(r["simulator_busy"], 2)
        out[f"{side}_machine_busy"] = round(r["machine_busy"], 2)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--bare"]:
        oscc, exchange, c, title, token, port, prefetch = sys.argv[2:9]
        asyncio.run(bare_bridge(oscc, exchange, c, title, token, int(port), int(prefetch)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="contacts in the burst")
    parser.add_argument("--rate", type=float, default=40.0, help="paced contacts per second")
    parser.add_argument("--latency-n", type=int, default=1000, help="paced contacts")
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logs.configure("warning", "console")
    r = asyncio.run(
        run(args.n, args.rate, args.latency_n, args.sources, args.prefetch, args.rounds)
    )
    print(
        f"e2e: ceiling {r['ceiling_per_s']:.0f} contacts/s, bridge {r['bridge_per_s']:.0f}/s, "
        f"ratio {r['ratio']:.2f}; latency at {args.rate:.0f}/s p50/p99: ceiling "
        f"{r['ceiling_p50_ms']:.0f}/{r['ceiling_p99_ms']:.0f} ms, bridge "
        f"{r['bridge_p50_ms']:.0f}/{r['bridge_p99_ms']:.0f} ms; CPU per contact: ceiling "
        f"{r['ceiling_cpu_us']} us, bridge {r['bridge_cpu_us']} us; simulator busy (cores) "
        f"{r['ceiling_simulator_busy']:.2f} / {r['bridge_simulator_busy']:.2f}, machine busy "
        f"(of {os.cpu_count()} cores) {r['ceiling_machine_busy']:.2f} / "
        f"{r['bridge_machine_busy']:.2f}\n"
        f"ceiling: {CEILING}"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
