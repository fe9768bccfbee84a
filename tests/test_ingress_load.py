"""A bridge process under wide megabyte webhooks (issue 10, defects 4 and 5).

Thirty 1 MB bodies of a few hundred thousand empty objects at once used to hold the event
loop for 15 s: /healthz went unanswered, the broker's confirms were taken for timeouts,
and the spool's replay published 41 messages for 30. Three hundred at once took the
process to 4.4 GB. Measured here on the real entry point (``python -m bridge run``), the
simulator and RabbitMQ; /healthz is polled from a child process, so the load this test
generates does not delay the measurement. tests/bench/probe_wide.py prints the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bridge.broker import Broker
from bridge.config import BrokerConfig
from bridge.metrics import Metrics
from bridge.publisher import Publisher
from bridge.spool import Spool
from bridge.topology import Topology
from tests.harness import (
    AMQP_URL,
    BridgeProcess,
    bridge_config,
    free_port,
    healthz_poller,
    post_all,
    sample,
    simulator_process,
    wait_until,
)

C, TITLE, TOKEN = "facebook", "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
GUIDE = Path(__file__).resolve().parent / "data" / "guide"
# The contract is 100 ms (DESIGN.md, Webhook HTTP interface); measured 54-81 ms on a
# shared 2-core host, 15 s before the fix. The bound leaves room for a noisy neighbour.
HEALTHZ_BOUND = 1.0
# Peak RSS under 300 parallel 1 MB webhooks: 4.4 GB before, ~340 MB after (256 bodies
# read at once, the rest refused unread).
RSS_BOUND_KB = 768 * 1024


def wide_publication(n: int, size: int = 1_000_000, shape: str = "wide") -> bytes:
    """An Outgoing Publication of about `size` bytes, wide rather than deep: an unknown
    field (kept and published) holding a few hundred thousand empty objects (or, shape
    "string", one long string: as many bytes, next to nothing to decode)."""
    body = json.loads((GUIDE / "outgoing_publication.json").read_text())
    body["objectToBePublished"]["id"] = f"wide-{n}"
    body["extra"] = "x" * size if shape == "string" else [{}] * (size // 3)
    return json.dumps(body, separators=(",", ":")).encode()


@contextlib.asynccontextmanager
async def bridge_with_sink(
    prefix: str, tmp_path: Path, **http: int
) -> AsyncIterator[tuple[BridgeProcess, list[AbstractIncomingMessage]]]:
    """A bridge process (simulator behind it) and every publication it publishes."""
    topology = Topology(prefix, "quorum")
    received: list[AbstractIncomingMessage] = []
    async with simulator_process({TITLE: TOKEN}) as (oscc_url, _):
        port = free_port()
        config = bridge_config(
            prefix=prefix,
            oscc_url=oscc_url,
            port=port,
            spool_dir=tmp_path / "spool",
            connectors=[(C, TITLE, TOKEN)],
        )
        extra = "".join(f"{k} = {v}\n" for k, v in http.items())
        config = config.replace("[http]\n", "[http]\n" + extra, 1)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            async with BridgeProcess(config, port=port, workdir=tmp_path) as b:
                await b.start()
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(topology.exchange, f"{C}.publication.#")

                async def collect(m: AbstractIncomingMessage) -> None:
                    received.append(m)

                await queue.consume(collect, no_ack=True)
                yield b, received
        finally:
            await topology.delete(await connection.channel(), [C])
            await connection.close()


async def metric(bridge: BridgeProcess, line_start: str) -> float:
    """The sum of the /metrics samples whose line starts with `line_start`."""
    async with aiohttp.ClientSession() as http, http.get(f"{bridge.url}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


async def test_wide_bodies_keep_healthz_answering_and_publish_each_once(
    prefix: str, tmp_path: Path
) -> None:
    async with bridge_with_sink(prefix, tmp_path) as (bridge, received):
        url = f"{bridge.url}/webhook/{C}"
        async with healthz_poller(bridge.port) as healthz:
            statuses = await post_all(url, [wide_publication(n) for n in range(30)])
            worst, polls = healthz()
        assert statuses == {200: 30}
        assert polls >= 3, "the poller never got going"
        assert worst < HEALTHZ_BOUND, f"/healthz took {worst * 1000:.0f} ms"
        # A sentinel, published after every answer: had anything been spooled, it would
        # have been spooled behind it (the spool keeps arrival order).
        assert await post_all(url, [wide_publication(99, size=100)]) == {200: 1}
        await wait_until(lambda: len(received) == 31, 60, "30 publications and the sentinel")
        ids = [json.loads(m.body)["objectToBePublished"]["id"] for m in received]
        assert sorted(ids) == sorted([f"wide-{n}" for n in range(30)] + ["wide-99"])
        assert ids[-1] == "wide-99"
        assert len({m.message_id for m in received}) == 31
        assert await metric(bridge, "oscc_bridge_spool_replayed_total") == 0
        assert await metric(bridge, 'oscc_bridge_publishes_total{outcome="failed"}') == 0


async def test_memory_under_300_parallel_megabytes_is_bounded(prefix: str, tmp_path: Path) -> None:
    """300 wide 1 MB webhooks at once: at most http.max_concurrency (here 64) are read,
    the rest answered 503 unread; the peak RSS stays far below what 300 decoded trees
    took (4.4 GB with the default 256)."""
    async with bridge_with_sink(prefix, tmp_path, max_concurrency=64) as (bridge, received):
        body = wide_publication(0)
        statuses = await post_all(f"{bridge.url}/webhook/{C}", [body] * 300)
        hwm = bridge.hwm_kb()
        assert hwm is not None
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 64, statuses
        busy = await metric(bridge, 'oscc_bridge_webhook_requests_total{connector="facebook",'
                            'kind="invalid",outcome="busy"}')  # fmt: skip
        assert busy == statuses[503]
        assert hwm < RSS_BOUND_KB, f"peak RSS {hwm // 1024} MiB"
        await wait_until(lambda: len(received) == statuses[200], 60, "every answered body")


async def test_a_held_loop_does_not_turn_a_late_confirm_into_a_second_copy(
    prefix: str, tmp_path: Path, amqp: AbstractRobustConnection
) -> None:
    """The loop held past confirm_timeout while a publish waits for its confirm: the
    confirm is in the socket when the loop runs again, so the publish is confirmed, not
    spooled and replayed as a second copy (how 30 webhooks became 41 messages)."""
    topology, metrics = Topology(prefix, "quorum"), Metrics()
    config = BrokerConfig(url=AMQP_URL, exchange=prefix, confirm_timeout=0.2)
    got: list[AbstractIncomingMessage] = []

    async def collect(m: AbstractIncomingMessage) -> None:
        got.append(m)

    try:
        async with (
            Spool(tmp_path / "spool", max_bytes=1 << 20, metrics=metrics) as spool,
            Broker(config, topology, connectors=[C], metrics=metrics) as link,
            Publisher(link, spool=spool) as pub,
        ):
            channel = await amqp.channel()
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(prefix, f"{C}.#")
            await queue.consume(collect, no_ack=True)
            key = f"{C}.event.delivered"
            task = asyncio.create_task(pub.publish_or_spool(key, b'{"n": 1}', connector=C))
            for _ in range(5):
                await asyncio.sleep(0)  # the publish goes out and waits for its confirm
            time.sleep(1.0)  # noqa: ASYNC251 - the loop held, as a wide body held it
            assert await task == "published"
            # The sentinel: anything spooled would be replayed before it.
            assert await pub.publish_or_spool(key, b'{"n": 2}', connector=C) == "published"
            await wait_until(lambda: len(got) >= 2, 20, "both messages")
            assert [m.body for m in got] == [b'{"n": 1}', b'{"n": 2}']
            assert sample(metrics, "spool_replayed_total") == 0
    finally:
        await topology.delete(await amqp.channel(), [C])
