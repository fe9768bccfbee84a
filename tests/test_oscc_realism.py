"""The whole bridge against an OSCC as awkward as a real servlet container.

The real bridge (`bridge.app.Bridge`) runs against the real RabbitMQ and the simulator over
real HTTP, with the simulator writing answers in pieces, answering late, with HTML error
pages and redirects, or failing one contact. Every count comes from what the simulator
saw (`sim.seen`, `sim.created()`), what the broker holds, and the bridge's metrics.
"""

from __future__ import annotations

import io
import json
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bridge.app import Bridge
from bridge.oscc.codes import ErrorCode
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    Watch,
    make_config,
    new_contact,
    publish_json,
    running_bridge,
    wait_until,
)
from tests.harness import message_count

C = "fb"


@dataclass
class Run:
    """A running bridge, its simulator, and a watch on everything it publishes."""

    sim: Simulator
    bridge: Bridge
    channel: AbstractChannel
    watch: Watch
    topology: Topology

    async def send(self, body: dict[str, Any]) -> str:
        """Publish a contact like a back-end; its message_id."""
        return await publish_json(self.channel, self.topology.exchange, "fb.contact.new", body)

    def outcomes(self, accepted: bool) -> dict[str, Any]:
        """correlation_id -> outcome body, of fb.contact.accepted / .rejected."""
        key = "fb.contact.accepted" if accepted else "fb.contact.rejected"
        return {s.message.correlation_id or "": s.body for s in self.watch.keys(key)}

    @property
    def ambiguous_resends(self) -> float:
        value = self.bridge.metrics.registry.get_sample_value(
            "oscc_bridge_ambiguous_resends_total", {"connector": C}
        )
        return value or 0.0

    async def dead_letters(self) -> int:
        return await message_count(self.topology.dead_queue(C))


@asynccontextmanager
async def running(
    prefix: str,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    *,
    request_timeout: float = 5.0,
    **sim_options: Any,
) -> AsyncIterator[Run]:
    """Simulator (no agent) + the whole bridge, ready to forward contacts."""
    async with Simulator({FB_TITLE: FB_TOKEN}, agent=False, seed=0, **sim_options) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        oscc = msgspec.structs.replace(config.oscc, request_timeout=request_timeout)
        config = msgspec.structs.replace(config, oscc=oscc)
        topology = Topology(prefix)
        channel = await amqp.channel(publisher_confirms=True)
        watch = await Watch(channel, topology, [C]).start("fb.contact.*")
        async with running_bridge(config) as bridge:
            yield Run(sim, bridge, channel, watch, topology)


STREAMED = {"answer_pieces": 4, "piece_gap": 0.02}


async def test_answers_in_pieces_register_and_forward_each_contact_once(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    async with running(prefix, amqp, tmp_path, **STREAMED) as run:
        bodies = [new_contact(n, source_id=f"user-{n % 3}") for n in range(9)]
        mids = [await run.send(b) for b in bodies]
        await wait_until(lambda: len(run.outcomes(True)) == 9, within=30, what="9 accepted")
        assert sorted(run.outcomes(True)) == sorted(mids)
        ids = [b["publishedObject"]["id"] for b in bodies]
        assert run.sim.seen == dict.fromkeys(ids, 1)  # each sent once: no resend
        assert run.sim.created() == dict.fromkeys(ids, 1)
        assert run.ambiguous_resends == 0


async def test_a_streamed_code_11_is_dead_lettered_after_one_call(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    async with running(prefix, amqp, tmp_path, **STREAMED) as run:
        poison, sentinel = new_contact(1, source_id="same"), new_contact(2, source_id="same")
        poison_id = poison["publishedObject"]["id"]
        run.sim.faults.fail_contact(poison_id, code=ErrorCode.WRONG_API_REQUEST)
        poison_mid = await run.send(poison)
        sentinel_mid = await run.send(sentinel)  # same source: after the poison, in order
        await wait_until(lambda: sentinel_mid in run.outcomes(True), within=30, what="sentinel")
        assert poison_mid in run.outcomes(False)
        assert run.outcomes(False)[poison_mid]["errorCode"] == ErrorCode.WRONG_API_REQUEST
        assert run.sim.seen[poison_id] == 1
        assert await run.dead_letters() == 1


async def test_an_html_503_page_is_retried_not_dead_lettered(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    async with running(prefix, amqp, tmp_path, **STREAMED) as run:
        body = new_contact(1)
        cid = body["publishedObject"]["id"]
        run.sim.faults.fail_contact(cid, http=503, times=2)
        mid = await run.send(body)
        await wait_until(lambda: mid in run.outcomes(True), within=30, what="accepted")
        pages = [r for r in run.sim.records if r.status == 503]
        assert len(pages) == 2
        assert run.sim.seen[cid] == 3
        assert run.sim.created() == {cid: 1}
        assert run.outcomes(False) == {}
        assert await run.dead_letters() == 0
        assert run.ambiguous_resends == 0  # OSCC said it failed: no duplicate possible


async def test_a_redirect_is_retried_and_logged(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    async with running(prefix, amqp, tmp_path) as run:
        body = new_contact(1)
        cid = body["publishedObject"]["id"]
        run.sim.faults.fail_contact(cid, http=302, times=1, location="https://moved.example/x")
        mid = await run.send(body)
        await wait_until(lambda: mid in run.outcomes(True), within=30, what="accepted")
        assert run.sim.seen[cid] == 2
        assert run.sim.created() == {cid: 1}
        assert await run.dead_letters() == 0
    lines = [json.loads(x) for x in captured_logs.getvalue().splitlines() if x.startswith("{")]
    redirected = [x for x in lines if x.get("event") == "oscc.redirected"]
    assert len(redirected) == 1
    assert redirected[0]["location"] == "https://moved.example/x"


async def test_a_late_answer_is_resent_and_counted_as_ambiguous(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    async with running(prefix, amqp, tmp_path, request_timeout=0.5) as run:
        body = new_contact(1)
        cid = body["publishedObject"]["id"]
        run.sim.faults.fail_contact(cid, slow=1.5, times=1)  # past the 0.5 s timeout
        mid = await run.send(body)
        await wait_until(lambda: mid in run.outcomes(True), within=30, what="accepted")
        assert run.sim.seen[cid] == 2
        assert run.sim.created() == {cid: 2}  # the late answer's contact exists too
        assert run.sim.duplicates() == 1
        assert run.ambiguous_resends == 1
    assert captured_logs.getvalue().count('"consumer.ambiguous_resend"') == 1


async def test_soak_every_answer_in_pieces_loses_nothing_and_counts_every_duplicate(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    """N contacts from several sources, every answer chunked in pieces, some answered
    after the client gave up: none lost, order per source kept, and every copy OSCC
    created twice is one the bridge counted as an ambiguous resend."""
    n, sources, slow = 200, 8, 12
    rng = random.Random(10)
    async with running(
        prefix, amqp, tmp_path, request_timeout=1.0, answer_pieces=3, piece_gap=0.005
    ) as run:
        bodies = [new_contact(i, source_id=f"user-{i % sources}") for i in range(n)]
        ids = [b["publishedObject"]["id"] for b in bodies]
        for cid in rng.sample(ids, slow):
            run.sim.faults.fail_contact(cid, slow=1.6, times=1)
        mids = [await run.send(b) for b in bodies]
        await wait_until(lambda: len(run.outcomes(True)) == n, within=90, what="all accepted")
        assert sorted(run.outcomes(True)) == sorted(mids)  # 0 lost
        created = run.sim.created()
        assert set(created) == set(ids)
        dups, resends = run.sim.duplicates(), run.ambiguous_resends
        print(f"soak: {n} contacts, {dups} duplicates at OSCC, {resends:g} ambiguous resends")
        assert dups == resends
        assert resends >= slow  # every late answer was resent
        assert await run.dead_letters() == 0
        # per source, OSCC first saw each contact in the order the back-end sent them
        first: dict[str, list[str]] = defaultdict(list)
        for body in run.sim.contacts(FB_TITLE):
            pid, src = body["publishedObject"]["id"], body["source"]["id"]
            if pid not in first[src]:
                first[src].append(pid)
        for s in range(sources):
            assert first[f"user-{s}"] == ids[s::sources]
