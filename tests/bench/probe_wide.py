"""Probe: a bridge process under wide 1 MB webhooks (issue 10, defects 4 and 5).

Starts the simulator and a bridge (``python -m bridge run``) as child processes, then

- `healthz`: `--parallel` (30) wide 1 MB publications at once while /healthz is polled
  every 10 ms; prints the worst /healthz latency and how many messages were published;
- `memory`: `--burst` (300) wide 1 MB publications at once; prints the peak RSS (VmHWM),
  the RSS right after and after `--idle` seconds, and the answers by status.

    python tests/bench/probe_wide.py [--parallel 30] [--burst 300] [--idle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bridge.topology import Topology
from tests.harness import (
    AMQP_URL,
    BridgeProcess,
    bridge_config,
    free_port,
    healthz_poller,
    message_count,
    post_all,
    simulator_process,
)

C, TITLE, TOKEN = "facebook", "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"


def wide_publication(size: int = 1_000_000, tag: str = "") -> bytes:
    """An Outgoing Publication of about `size` bytes, wide rather than deep: an unknown
    field (kept and published) holding a few hundred thousand empty objects."""
    guide = Path(__file__).parents[1] / "data" / "guide" / "outgoing_publication.json"
    body = json.loads(guide.read_text())
    body["objectToBePublished"]["id"] = f"wide-{tag}"
    body["extra"] = [{}] * (size // 3) if os.environ.get("PROBE_SHAPE") != "string" else "x" * size
    return json.dumps(body, separators=(",", ":")).encode()


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"t-probe-{uuid.uuid4().hex[:8]}"
    topology = Topology(prefix, "quorum")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with simulator_process({TITLE: TOKEN}) as (oscc_url, _):
            port = free_port()
            config = bridge_config(
                prefix=prefix,
                oscc_url=oscc_url,
                port=port,
                spool_dir=Path(tmp) / "spool",
                connectors=[(C, TITLE, TOKEN)],
            )
            async with BridgeProcess(config, port=port, workdir=Path(tmp)) as bridge:
                try:
                    await bridge.start()
                    url = f"{bridge.url}/webhook/{C}"
                    out["rss_idle_kb"] = bridge.rss_kb()

                    if args.parallel:
                        bodies = [wide_publication(tag=str(i)) for i in range(args.parallel)]
                        async with healthz_poller(port) as healthz:
                            statuses = await post_all(url, bodies)
                            worst, polls = healthz()
                        published = await metric(
                            bridge.url, 'oscc_bridge_publishes_total{outcome="confirmed"}'
                        )
                        out["healthz_worst_ms"] = round(worst * 1000, 1)
                        out["healthz_polls"] = polls
                        out["parallel_statuses"] = dict(statuses)
                        out["parallel_confirmed"] = published
                        deadline = time.monotonic() + 30
                        count = 0
                        while time.monotonic() < deadline:
                            count = await message_count(topology.unrouted)
                            if count >= args.parallel:
                                break
                            await asyncio.sleep(0.5)
                        await asyncio.sleep(3)  # let a replay finish, if any
                        out["parallel_in_queue"] = await message_count(topology.unrouted)

                    if args.burst:
                        body = wide_publication()
                        statuses = await post_all(url, [body] * args.burst)
                        out["burst_statuses"] = dict(statuses)
                        out["burst_hwm_kb"] = bridge.hwm_kb()
                        out["burst_rss_after_kb"] = bridge.rss_kb()
                        await asyncio.sleep(args.idle)
                        out["burst_rss_idle_kb"] = bridge.rss_kb()
                finally:
                    lines = int(os.environ.get("PROBE_LOG_LINES", "5"))
                    print(bridge.log_tail(lines), file=sys.stderr)
                    connection = await aio_pika.connect(AMQP_URL)
                    async with connection:
                        await topology.delete(await connection.channel(), [C])
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", type=int, default=30)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--idle", type=float, default=5.0)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
