"""Benchmark: webhook -> confirmed publish, beside the references it must keep up with.

Every side runs in a process of its own (`servers.py`, or Node-RED) and is driven by the
same load (wrk when installed, else a minimal Python HTTP/1.1 client in a child process):
~1 KB OpenMedia events POSTed over `concurrency` keep-alive connections as fast as they
are answered, for `seconds` per side, in interleaved `rounds` (best round of each kept):

- **bridge**: the bridge's webhook as app.py mounts it (read and bound the body, classify,
  validate and encode it canonically, publish persistent with confirm, spool behind it,
  metrics, logs at warning) -> `servers.py bridge`;
- **bare webhook**: aiohttp reads the body, aio-pika publishes it persistent with the same
  properties and awaits the confirm, then 200 -> `servers.py bare`;
- **Node-RED**: `http in` -> `amqp out` (node-red-contrib-amqp, persistent, NO confirms,
  classic queue) from ../shared/peers/nodered, when `node` is installed (skipped with a
  line saying so otherwise);
- **raw ceiling**: aio-pika alone publishing the same canonical bodies with confirms at
  the same concurrency (no HTTP), in this process.

The bridge and the bare webhook publish to one exchange, bound to a queue of
`queue_type`. Each side's CPU per message (utime + stime of its process from /proc, and
the broker's) and its RSS (VmHWM, peak) are read around its run. Then latency: the bridge
at a constant `rate` per second (open loop, timed from when each request was due).

With BENCH_BEFORE=<another checkout> its bridge is measured too, as `bridge_before` (a
before/after in one run: ``git archive <commit> | tar -x -C /tmp/before``).

    python tests/bench/bench_ingress.py [--seconds 8] [--concurrency 64] [--rounds 3]
                                        [--rate 500] [--queue-type quorum] [--no-nodered]

`run(...)` returns the numbers as a dict (for tests/bench/run.py). Targets (issue 15, in
one run): bridge >= 1.0x the bare webhook and >= 0.8x Node-RED, p99 at `concurrency`
connections <= Node-RED's, CPU per webhook <= 1.1x the bare webhook's; p99 < 25 ms at
500/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from servers import AMQP_URL, C  # noqa: E402

from bridge import logs  # noqa: E402
from bridge.oscc import codec  # noqa: E402
from bridge.topology import Topology  # noqa: E402
from tests.harness import message  # noqa: E402

RATIO_TARGET = 1.0  # x the bare webhook
NODERED_TARGET = 0.8  # x Node-RED
CPU_TARGET = 1.1  # x the bare webhook's CPU per message
P99_TARGET_MS = 25.0  # at `rate`
NODERED_PORT = int(os.environ.get("NR_PORT", "1880"))
NODERED_QUEUE = "peer.events.q"


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


# -- the load --------------------------------------------------------------------------

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
                t0 = time.perf_counter()
                s = await exchange(reader, writer, requests[i % len(requests)])
                latencies.append(time.perf_counter() - t0)
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


async def python_load(port: int, path: str, bodies: list[bytes], **args: Any) -> dict[str, Any]:
    """The Python client in a child process (`mode` throughput or rate)."""
    payload = {
        "host": "127.0.0.1",
        "port": port,
        "path": path,
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


async def drive(
    port: int, path: str, body_file: Path, seconds: float, concurrency: int
) -> dict[str, Any]:
    """`concurrency` connections POSTing the body as fast as answered: requests, per_s,
    p50/p99 (ms) and the statuses that were not 200."""
    if shutil.which("wrk"):
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:g}s",
            "-s",
            str(HERE / "post.lua"),
            f"http://127.0.0.1:{port}{path}",
            env={**os.environ, "BODY_FILE": str(body_file)},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        found = re.search(rb"WRK-RESULT (.*)", out)
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-500:]!r}")
        r = json.loads(found.group(1))
        return {
            "requests": r["requests"],
            "per_s": r["requests"] / r["seconds"],
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "bad": r["non2xx"] + r["socket_errors"],
            "load": "wrk",
        }
    n = max(1000, int(seconds * 3000))
    body = body_file.read_bytes()  # noqa: ASYNC240 - a 1 KB file, before the timing
    r = await python_load(port, path, [body], mode="throughput", n=n, concurrency=concurrency)
    lat = r["latencies"]
    return {
        "requests": n,
        "per_s": n / r["elapsed"],
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "bad": sum(v for k, v in r["statuses"].items() if k != "200"),
        "load": "python",
    }


# -- processes ---------------------------------------------------------------------------


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


def ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def peak_rss_kb(pid: int) -> int:
    """VmHWM of `pid`: the most memory it has held so far."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


TICK = os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def server(
    kind: str, prefix: str, queue_type: str, *options: str, tree: str | None = None
) -> AsyncIterator[tuple[int, int]]:
    """`servers.py kind` in a child process, serving the bridge of checkout `tree` (default
    this one); (port, pid). Stops it on exit (stdin closes)."""
    env = {**os.environ, "BENCH_BRIDGE_TREE": tree} if tree else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "servers.py"),
        kind,
        "--prefix",
        prefix,
        "--queue-type",
        queue_type,
        *options,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"servers.py {kind} did not start: {line!r}")
        yield int(line.split()[1]), proc.pid
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def nodered_script() -> Path | None:
    """The Node-RED peer's run.sh, if `node` is installed and the peer is there."""
    if shutil.which("node") is None:
        return None
    for base in (HERE.parents[2] / "shared", Path("/work/shared")):
        script = base / "peers" / "nodered" / "run.sh"
        if script.exists():
            return script
    return None


@contextlib.asynccontextmanager
async def nodered(script: Path) -> AsyncIterator[tuple[int, int]]:
    """The Node-RED peer started (installed into /tmp on first use); (port, pid)."""
    env = {**os.environ, "NR_PORT": str(NODERED_PORT)}
    proc = await asyncio.create_subprocess_exec(
        str(script), "start", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    found = re.search(rb"pid (\d+)", out)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"node-red did not start: {out[-500:]!r}")
    try:
        yield NODERED_PORT, int(found.group(1))
    finally:
        stop = await asyncio.create_subprocess_exec(
            str(script), "stop", env=env, stdout=asyncio.subprocess.DEVNULL
        )
        await stop.wait()


# -- the raw ceiling ---------------------------------------------------------------------


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


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def measure(
    port: int,
    pids: list[int],
    path: str,
    body_file: Path,
    seconds: float,
    concurrency: int,
    broker: int | None,
) -> dict[str, Any]:
    """One side for `seconds`: throughput, latency, CPU per message (its processes, summed,
    and the broker's), peak RSS (summed)."""
    start = sum(ticks(p) for p in pids), ticks(broker) if broker else 0
    r = await drive(port, path, body_file, seconds, concurrency)
    if r["bad"]:
        raise RuntimeError(f"{path} on port {port}: {r['bad']} answers were not 200")
    n = r["requests"]
    r["cpu_us"] = round((sum(ticks(p) for p in pids) - start[0]) / TICK / n * 1e6, 1)
    r["broker_us"] = round((ticks(broker) - start[1]) / TICK / n * 1e6, 1) if broker else None
    r["peak_rss_kb"] = sum(peak_rss_kb(p) for p in pids)
    return r


async def raw_ceiling(
    topology: Topology, bodies: list[bytes], n: int, concurrency: int, broker: int | None
) -> dict[str, Any]:
    """One round of the raw ceiling (`ceiling`, in this process), with its CPU."""
    start = ticks(os.getpid()), ticks(broker) if broker else 0
    per_s = await ceiling(topology, bodies, n, concurrency)
    cpu = (ticks(os.getpid()) - start[0]) / TICK / n * 1e6
    broker_us = (ticks(broker) - start[1]) / TICK / n * 1e6 if broker else None
    return {"per_s": per_s, "cpu_us": round(cpu, 1), "broker_us": broker_us}


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rounds, key=lambda r: r["per_s"])


def judge(
    top: dict[str, dict[str, Any]], many: str, p99_rate: float
) -> tuple[dict[str, float], dict[str, bool]]:
    """The ratios between the sides, and which targets were met."""
    bridge, bare = top["bridge"], top["bare_webhook"]
    ratios = {
        "vs_bare_webhook": round(bridge["per_s"] / bare["per_s"], 3),
        "vs_raw_ceiling": round(bridge["per_s"] / top["raw_ceiling"]["per_s"], 3),
        "cpu_vs_bare_webhook": round(bridge["cpu_us"] / bare["cpu_us"], 3),
    }
    checks = {
        "ratio_vs_bare_webhook": ratios["vs_bare_webhook"] >= RATIO_TARGET,
        "cpu_vs_bare_webhook": ratios["cpu_vs_bare_webhook"] <= CPU_TARGET,
        "p99_at_rate": p99_rate < P99_TARGET_MS,
    }
    if "nodered" in top:
        ratios["vs_nodered"] = round(bridge["per_s"] / top["nodered"]["per_s"], 3)
        checks["ratio_vs_nodered"] = ratios["vs_nodered"] >= NODERED_TARGET
        checks["p99_vs_nodered"] = bridge["p99_ms"] <= top["nodered"]["p99_ms"]
    if many in top:  # the scale-out figure, and what the targets say of it
        ratios[f"{many}_vs_bare_webhook"] = round(top[many]["per_s"] / bare["per_s"], 3)
        if "nodered" in top:
            ratios[f"{many}_vs_nodered"] = round(top[many]["per_s"] / top["nodered"]["per_s"], 3)

    return ratios, checks


@dataclass
class Side:
    """One thing measured: where to POST, which processes to count, what to purge."""

    name: str
    port: int
    pids: list[int]
    path: str
    purge: Callable[[], Awaitable[None]]


async def start_sides(
    stack: contextlib.AsyncExitStack,
    prefix: str,
    queue_type: str,
    workers: int,
    script: Path | None,
    purge_sink: Callable[[], Awaitable[None]],
    purge_nodered: Callable[[], Awaitable[None]],
) -> tuple[list[Side], str | None]:
    """Start the bridge, the bare webhook, `workers` bridges on one port and Node-RED;
    the sides, and why Node-RED is not one of them (None when it is)."""
    path = f"/webhook/{C}"
    sides = []
    for kind in ("bridge", "bare"):
        port, pid = await stack.enter_async_context(server(kind, prefix, queue_type))
        sides.append(
            Side(kind if kind == "bridge" else "bare_webhook", port, [pid], path, purge_sink)
        )
    if before := os.environ.get("BENCH_BEFORE"):  # another checkout's bridge, same run
        port, pid = await stack.enter_async_context(
            server("bridge", prefix, queue_type, tree=before)
        )
        sides.append(Side("bridge_before", port, [pid], path, purge_sink))
    if workers > 1:
        pids, port = [], 0
        for _ in range(workers):
            options = ("--reuse-port", "--port", str(port))
            port, pid = await stack.enter_async_context(
                server("bridge", prefix, queue_type, *options)
            )
            pids.append(pid)
        sides.append(Side(f"bridge_x{workers}", port, pids, path, purge_sink))
    if script is None:
        return sides, "Node-RED skipped: node is not installed (or --no-nodered)"
    try:
        port, pid = await stack.enter_async_context(nodered(script))
    except RuntimeError as exc:
        return sides, f"Node-RED skipped: {exc}"
    sides.append(Side("nodered", port, [pid], "/hook", purge_nodered))
    return sides, None


async def run(
    seconds: float = 8.0,
    concurrency: int = 64,
    rate: float = 500.0,
    latency_seconds: float = 10.0,
    rounds: int = 3,
    queue_type: str = "quorum",
    with_nodered: bool = True,
    workers: int = 2,
) -> dict[str, Any]:
    """Measure every side `rounds` times, interleaved (best of each), then the bridge's
    latency at a constant `rate`. With `workers` > 1 also `bridge_x<workers>`: that many
    bridge instances sharing one port (SO_REUSEPORT), each with its own spool."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    bodies = [event_body(i) for i in range(100)]
    results: dict[str, list[dict[str, Any]]] = {"raw_ceiling": []}
    broker = broker_pid()
    topology = Topology(prefix, queue_type)
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()

    async def purge_nodered() -> None:
        ch = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            await (await ch.get_queue(NODERED_QUEUE, ensure=False)).purge()
        with contextlib.suppress(Exception):
            await ch.close()

    with tempfile.TemporaryDirectory(prefix="oscc-bench-") as tmp:
        body_file = Path(tmp) / "event.json"
        body_file.write_bytes(bodies[1])
        async with contextlib.AsyncExitStack() as stack:
            sink: Any = None

            async def purge_sink() -> None:
                await sink.purge()

            script = nodered_script() if with_nodered else None
            sides, skipped = await start_sides(
                stack, prefix, queue_type, workers, script, purge_sink, purge_nodered
            )
            if skipped:
                print(skipped, flush=True)
            sink = await channel.declare_queue(
                f"{prefix}.sink", durable=True, arguments={"x-queue-type": queue_type}
            )
            await sink.bind(topology.exchange, f"{C}.event.*")
            try:
                for side in sides:  # warm up
                    await drive(side.port, side.path, body_file, 2, concurrency)
                for _ in range(rounds):
                    await purge_sink()
                    n = int(4000 * seconds)
                    results["raw_ceiling"].append(
                        await raw_ceiling(topology, bodies, n, concurrency, broker)
                    )
                    for side in sides:
                        await side.purge()
                        r = await measure(
                            side.port, side.pids, side.path, body_file, seconds, concurrency, broker
                        )
                        results.setdefault(side.name, []).append(r)
                await purge_sink()
                timed = await python_load(
                    sides[0].port,
                    sides[0].path,
                    bodies,
                    mode="rate",
                    n=int(rate * latency_seconds),
                    rate=rate,
                    concurrency=concurrency,
                )
                if set(timed["statuses"]) != {"200"}:
                    raise RuntimeError(f"bridge answered {timed['statuses']}")
            finally:
                await sink.delete(if_unused=False, if_empty=False)
                await topology.delete(channel, [C])
                await purge_nodered()
                await connection.close()
    many = f"bridge_x{workers}"
    top = {side: best(rs) for side, rs in results.items() if rs}
    latencies = timed["latencies"]
    ratios, checks = judge(top, many, percentile(latencies, 99) * 1000)
    bridge, bare = top["bridge"], top["bare_webhook"]
    p99_rate = percentile(latencies, 99) * 1000

    def side(r: dict[str, Any]) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}

    return {
        "bench": "ingress",
        "load": bridge.get("load"),
        "concurrency": concurrency,
        "seconds": seconds,
        "body_bytes": len(bodies[1]),
        "queue_type": queue_type,
        # run.py's table: "ceiling" is the bare webhook, the reference the targets name
        "bridge_per_s": round(bridge["per_s"], 1),
        "ceiling_per_s": round(bare["per_s"], 1),
        "ratio": ratios["vs_bare_webhook"],
        "ratio_target": RATIO_TARGET,
        "ceiling": "bare aiohttp + aio-pika webhook awaiting the same confirm (servers.py bare)",
        "bridge_cpu_us": bridge["cpu_us"],
        "ceiling_cpu_us": bare["cpu_us"],
        "bridge_p50_ms": round(bridge["p50_ms"], 1),
        "bridge_p99_ms": round(bridge["p99_ms"], 1),
        "ceiling_p50_ms": round(bare["p50_ms"], 1),
        "ceiling_p99_ms": round(bare["p99_ms"], 1),
        "bridge_peak_rss_kb": bridge["peak_rss_kb"],
        "ceiling_peak_rss_kb": bare["peak_rss_kb"],
        "references": {name: side(r) for name, r in top.items()},
        "ratios": ratios,
        "checks": checks,
        "nodered": skipped or "measured",
        "latency_rate": rate,  # not "rate": the table's p50/p99 are at `concurrency`
        "rate_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "rate_p99_ms": round(p99_rate, 2),
        "rate_max_ms": round(latencies[-1] * 1000, 2),
        "p99_target_ms": P99_TARGET_MS,
        "ok": all(checks.values()),
        "rounds": {name: [round(r["per_s"]) for r in rs] for name, rs in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--no-nodered", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="bridges sharing one port")
    args = parser.parse_args()
    logs.configure("warning", "console")
    r = asyncio.run(
        run(
            args.seconds,
            args.concurrency,
            args.rate,
            rounds=args.rounds,
            queue_type=args.queue_type,
            with_nodered=not args.no_nodered,
            workers=args.workers,
        )
    )
    for name, ref in r["references"].items():
        rss = (ref.get("peak_rss_kb") or 0) / 1024
        print(
            f"{name:13s} {ref['per_s']:8,.0f}/s  p50 {ref.get('p50_ms', 0) or 0:5.1f} ms  "
            f"p99 {ref.get('p99_ms', 0) or 0:5.1f} ms  CPU {ref.get('cpu_us')} us/msg  "
            f"broker {ref.get('broker_us')} us/msg  peak RSS {rss:.0f} MiB"
        )
    print(f"ratios {r['ratios']}; at {r['latency_rate']:.0f}/s p99 {r['rate_p99_ms']} ms")
    print(f"checks {r['checks']}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
