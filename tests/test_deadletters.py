"""``oscc-bridge dead list|show|replay|purge`` (bridge/deadletters.py) against the real
RabbitMQ, as processes: what each prints and exits with, what it leaves in the queues, and
a replay killed half-way (SIGKILL) losing nothing and doubling nothing at OSCC."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bridge import deadletters
from bridge.oscc import codec
from bridge.simulator import Simulator
from bridge.topology import Topology
from tests.bridge_harness import (
    FB_TITLE,
    FB_TOKEN,
    config_toml,
    delete_topology,
    make_config,
    new_contact,
    running_bridge,
    wait_until,
)
from tests.conftest import AMQP_URL
from tests.test_cli import ENV, ROOT, _run

C = "fb"


@pytest.fixture
async def setup(
    prefix: str, amqp: AbstractRobustConnection, tmp_path: Path
) -> AsyncIterator[tuple[Path, Topology, AbstractChannel]]:
    """A config file for exchange `prefix` (OSCC unreachable: no bridge runs), its
    topology declared, and a confirming channel; the topology is deleted afterwards."""
    config = make_config(prefix, "http://127.0.0.1:9", tmp_path / "spool")
    path = tmp_path / "bridge.toml"
    path.write_text(config_toml(config))
    topology = Topology(prefix)
    channel = await amqp.channel(publisher_confirms=True)
    await topology.declare(channel, [C])
    try:
        yield path, topology, channel
    finally:
        await delete_topology(AMQP_URL, topology, [C])


async def dead_letter(
    channel: AbstractChannel,
    topology: Topology,
    n: int,
    *,
    code: int = 13,
    reason: str = "$.dateTime is not a date: 'yesterday'",
    routing_key: str | None = None,
) -> str:
    """Publish what the consumer publishes when it dead-letters contact `n`; its id."""
    exchange = await channel.get_exchange(topology.dead_exchange, ensure=False)
    mid = f"m-{n}"
    body = new_contact(n)
    body["publishedObject"]["id"] = f"post-{n}"
    await exchange.publish(
        aio_pika.Message(
            codec.encode(body),
            message_id=mid,
            correlation_id=f"corr-{n}",
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            timestamp=dt.datetime.now(dt.UTC),
            headers={
                "x-custom": "kept",
                "oscc-connector": C,
                "oscc-error-code": code,
                "oscc-error-text": "WRONG_DATE_FORMAT" if code == 13 else "OTHER",
                "oscc-dead-reason": reason,
                "oscc-original-exchange": topology.exchange,
                "oscc-original-routing-key": topology.contact_new_key(C),
                "oscc-dead-at": "2024-05-06T07:08:09.000+00:00",
            },
        ),
        routing_key or topology.contact_new_key(C),
    )
    return mid


async def count(channel: AbstractChannel, queue: str) -> int:
    """Ready messages in `queue` (asked of the broker: a robust channel's declare_queue
    answers from its cache)."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    return int(declared.message_count or 0)


async def drain(connection: AbstractRobustConnection, queue: str) -> list[Any]:
    """Take every message of `queue` (acked): the messages."""
    channel = await connection.channel()
    q = await channel.declare_queue(queue, passive=True)
    out = []
    while (m := await q.get(no_ack=True, fail=False)) is not None:
        out.append(m)
    await channel.close()
    return out


async def drain_copy(connection: AbstractRobustConnection, queue: str) -> list[Any]:
    """Every message of `queue`, read and put back (in order), once they show as ready."""
    channel = await connection.channel()
    q = await channel.declare_queue(queue, passive=True)
    out = []
    while (m := await q.get(no_ack=False, fail=False)) is not None:
        out.append(m)
    for m in out:
        await m.nack(requeue=True)
    await wait_until_async(lambda: count(channel, queue), len(out))
    await channel.close()
    return out


async def wait_until_async(
    get: Callable[[], Awaitable[int]], want: int, within: float = 10.0
) -> None:
    """Poll `get()` until it is at least `want`."""
    deadline = time.monotonic() + within
    while (got := await get()) < want:
        assert time.monotonic() < deadline, f"{got} < {want} after {within} s"
        await asyncio.sleep(0.02)


async def dead(path: Path, *args: str, within: float = 60.0) -> tuple[int, str, str]:
    return await _run("dead", *args, "--config", str(path), within=within)


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 1, err


# -- list, show -------------------------------------------------------------------------------


async def test_list_and_show_leave_the_queue_as_it_was(
    setup: tuple[Path, Topology, AbstractChannel],
) -> None:
    path, topology, channel = setup
    ids = [await dead_letter(channel, topology, n) for n in range(3)]
    code, out, err = await dead(path, "list")
    assert code == 0, out + err
    lines = out.splitlines()
    for mid in ids:
        (line,) = [x for x in lines if f" {mid} " in x]
        assert "13 WRONG_DATE_FORMAT" in line
        assert "is not a date" in line
        assert "2024-05-06 07:08:09" in line
        assert f"source=user-{mid[2:]}" in line
    assert lines[-1] == f"3 dead letter(s) in {topology.dead_queue(C)}"
    code, out, err = await dead(path, "list", "--json", "--connector", C)
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["message_id"] for r in rows] == ids  # oldest first
    assert {r["code"] for r in rows} == {13}
    assert rows[0]["when"] == "2024-05-06T07:08:09+00:00"
    assert await count(channel, topology.dead_queue(C)) == 3

    code, out, err = await dead(path, "show", "m-1")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["body"]["publishedObject"]["id"] == "post-1"
    assert shown["headers"]["x-custom"] == "kept"
    assert shown["properties"]["correlation_id"] == "corr-1"
    code, out, err = await dead(path, "show", "nope")
    assert code == 1
    assert "no dead letter with message_id 'nope'" in err
    no_traceback(err)
    assert await count(channel, topology.dead_queue(C)) == 3


# -- replay -----------------------------------------------------------------------------------


async def test_replay_by_id_and_by_reason(
    setup: tuple[Path, Topology, AbstractChannel], amqp: AbstractRobustConnection
) -> None:
    path, topology, channel = setup
    for n in range(3):
        await dead_letter(channel, topology, n)
    await dead_letter(channel, topology, 3, code=12, reason="$.source.name is 300 characters")
    code, out, err = await dead(path, "replay", "--connector", C, "--id", "m-1")
    assert code == 0, out + err
    assert "replayed 1, left 3" in out
    (back,) = await drain(amqp, topology.contact_queue(C))
    assert back.message_id == "m-1"  # the consumer's dedupe key, unchanged
    assert back.correlation_id == "corr-1"
    assert back.headers["oscc-replay-count"] == 1
    assert back.headers["x-custom"] == "kept"
    assert not {k for k in back.headers if k.startswith(("oscc-dead", "oscc-error"))}
    assert json.loads(back.body)["publishedObject"]["id"] == "post-1"

    code, out, err = await dead(path, "replay", "--connector", C, "--reason", "300 CHARACTERS")
    assert code == 0, out + err
    assert [m.message_id for m in await drain(amqp, topology.contact_queue(C))] == ["m-3"]
    assert await count(channel, topology.dead_queue(C)) == 2

    code, out, err = await dead(path, "replay", "--connector", C, "--all")
    assert code == 0, out + err
    replayed = await drain(amqp, topology.contact_queue(C))
    assert sorted(m.message_id for m in replayed) == ["m-0", "m-2"]
    assert await count(channel, topology.dead_queue(C)) == 0


async def test_replay_sends_a_stream_response_to_its_queue(
    setup: tuple[Path, Topology, AbstractChannel], amqp: AbstractRobustConnection
) -> None:
    path, topology, channel = setup
    await dead_letter(channel, topology, 1, routing_key=topology.stream_response_key(C))
    code, out, err = await dead(path, "replay", "--connector", C, "--all")
    assert code == 0, out + err
    assert [m.message_id for m in await drain(amqp, topology.stream_response_queue(C))] == ["m-1"]
    assert await count(channel, topology.contact_queue(C)) == 0


async def test_replay_needs_a_selection(setup: tuple[Path, Topology, AbstractChannel]) -> None:
    path, _, _ = setup
    code, _, err = await dead(path, "replay", "--connector", C)
    assert code == 2
    assert "usage:" in err


# -- purge ------------------------------------------------------------------------------------


async def test_purge_asks_for_yes(setup: tuple[Path, Topology, AbstractChannel]) -> None:
    path, topology, channel = setup
    for n in range(3):
        await dead_letter(channel, topology, n)
    code, _, err = await dead(path, "purge", "--connector", C, "--all")
    assert code == 2
    assert "would delete 3 dead letter(s)" in err
    assert "--yes" in err
    assert await count(channel, topology.dead_queue(C)) == 3
    code, out, err = await dead(path, "purge", "--connector", C, "--id", "m-0", "m-2", "--yes")
    assert code == 0, out + err
    assert "purged 2, left 1" in out
    code, out, _ = await dead(path, "list", "--json")
    assert [json.loads(x)["message_id"] for x in out.splitlines()] == ["m-1"]


# -- never guess, one-line errors --------------------------------------------------------------


async def test_dead_without_a_config_file_exits_3(tmp_path: Path) -> None:
    code, _, err = await _run("dead", "list", "--config", str(tmp_path / "missing.toml"))
    assert code == 3
    assert "missing.toml" in err
    no_traceback(err)


async def test_unknown_connector_and_missing_queue_are_one_line(
    prefix: str, tmp_path: Path
) -> None:
    config = make_config(prefix, "http://127.0.0.1:9", tmp_path / "spool")
    path = tmp_path / "bridge.toml"
    path.write_text(config_toml(config))
    code, _, err = await dead(path, "list", "--connector", "nosuch")
    assert code == 2
    assert "no connector 'nosuch'" in err
    no_traceback(err)
    # nothing declared for this prefix: the dead queue does not exist
    code, _, err = await dead(path, "list")
    assert code == 1
    assert "does not exist" in err
    assert "start the bridge" in err
    no_traceback(err)


# -- a replay killed half-way ------------------------------------------------------------------


async def test_a_crash_between_confirm_and_ack_doubles_nothing_at_oscc(
    setup: tuple[Path, Topology, AbstractChannel],
    amqp: AbstractRobustConnection,
    tmp_path: Path,
) -> None:
    """The worst moment, made on purpose: the copy is confirmed, the replaying connection
    dies before its ack. The next replay sends the message again (same message_id, same
    replay count); the bridge's dedupe drops the second copy: OSCC gets it once."""
    path, topology, channel = setup
    await dead_letter(channel, topology, 1)
    await dead_letter(channel, topology, 2)
    doomed = await aio_pika.connect(AMQP_URL)
    ch = await doomed.channel(publisher_confirms=True)
    q = await ch.declare_queue(topology.dead_queue(C), passive=True)
    taken = await q.get(no_ack=False)
    copy = deadletters.replay_message(deadletters.read(taken, C))
    await ch.default_exchange.publish(copy, topology.contact_queue(C))  # confirmed
    await doomed.close()  # no ack: the broker puts it back in the dead queue
    code, out, err = await dead(path, "replay", "--connector", C, "--all")
    assert code == 0, out + err
    queued = await drain_copy(amqp, topology.contact_queue(C))
    assert Counter(m.message_id for m in queued) == {"m-1": 2, "m-2": 1}
    assert {m.headers["oscc-replay-count"] for m in queued} == {1}
    at_oscc = await forward(topology, channel, tmp_path)
    assert at_oscc == {"post-1": 1, "post-2": 1}


async def test_replay_killed_half_way_loses_nothing_and_doubles_nothing(
    setup: tuple[Path, Topology, AbstractChannel],
    amqp: AbstractRobustConnection,
    tmp_path: Path,
) -> None:
    """SIGKILL a replay after its first confirmed message, replay again, then let the bridge
    forward them: every contact reaches OSCC exactly once."""
    path, topology, channel = setup
    n = 600
    await asyncio.gather(*(dead_letter(channel, topology, i) for i in range(n)))
    assert await count(channel, topology.dead_queue(C)) == n
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "dead", "replay", "--connector", C, "--all",
        "--config", str(path),
        cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.startswith(b"replayed m-"), first
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # the broker returns what the dead connection held unacked once it sees it closed
    counts: list[int] = []

    async def both() -> int:
        counts[:] = [
            await count(channel, topology.dead_queue(C)),
            await count(channel, topology.contact_queue(C)),
        ]
        return sum(counts)

    await wait_until_async(both, n)  # nothing lost so far
    assert 0 < counts[1] < n, counts  # really half-way
    print(f"killed after {counts[1]} of {n} replayed")

    code, out, err = await dead(path, "replay", "--connector", C, "--all")
    assert code == 0, out + err
    assert await count(channel, topology.dead_queue(C)) == 0
    queued = await count(channel, topology.contact_queue(C))
    assert n <= queued <= n + 1  # at most the one between confirm and ack, twice

    at_oscc = await forward(topology, channel, tmp_path)
    lost = {f"post-{i}" for i in range(n)} - set(at_oscc)
    assert set(at_oscc) - {f"post-{i}" for i in range(n)} == set()
    doubled = {k: v for k, v in at_oscc.items() if v > 1}
    assert (lost, doubled) == (set(), {})


async def forward(topology: Topology, channel: AbstractChannel, tmp_path: Path) -> Counter[str]:
    """Run a bridge on `topology` against the simulator until it has handled every message
    of the contact queue (its forwards counter, accepted or duplicate, says so):
    publishedObject.id -> times OSCC got it."""
    queued = await count(channel, topology.contact_queue(C))
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=4, agent=False) as sim:
        config = make_config(topology.prefix, sim.url, tmp_path / "spool-forward")
        async with running_bridge(config) as bridge:
            sample = bridge.metrics.registry.get_sample_value

            def handled() -> float:
                return sum(
                    sample(
                        "oscc_bridge_forwards_total",
                        {"connector": C, "kind": "contact", "outcome": outcome},
                    )
                    or 0.0
                    for outcome in ("accepted", "duplicate", "rejected")
                )

            await wait_until(lambda: handled() >= queued, 60, f"{queued} contacts handled")
            assert handled() == queued
            return Counter(c["publishedObject"]["id"] for c in sim.contacts(FB_TITLE))
