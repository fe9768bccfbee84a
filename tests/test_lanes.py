"""bridge.lanes: per-key order, parallel keys, draining (pure asyncio)."""

from __future__ import annotations

import asyncio
import contextlib

from bridge.lanes import Lane, Lanes
from tests.harness import wait_until


class Recorder:
    """A worker that logs start/end of each item and can hold an item until released."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.hold: dict[str, asyncio.Event] = {}
        self.busy: set[str] = set()  # items that mark their lane busy while held
        self._seen: dict[tuple[str, str], asyncio.Event] = {}

    async def __call__(self, item: str, lane: Lane[str]) -> None:
        self._mark("start", item)
        with lane.busy() if item in self.busy else contextlib.nullcontext():
            if item in self.hold:
                await self.hold[item].wait()
        self._mark("end", item)

    def _event(self, kind: str, item: str) -> asyncio.Event:
        return self._seen.setdefault((kind, item), asyncio.Event())

    def _mark(self, kind: str, item: str) -> None:
        self.events.append((kind, item))
        self._event(kind, item).set()

    def started(self, item: str) -> bool:
        return ("start", item) in self.events

    async def wait(self, kind: str, *items: str, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            for item in items:
                await self._event(kind, item).wait()


async def test_one_key_in_order_and_keys_in_parallel() -> None:
    work = Recorder()
    work.hold["a1"] = asyncio.Event()
    lanes = Lanes(work, asyncio.Event())
    for item in ("a1", "b1", "a2", "b2", "a3"):
        lanes.add(item[0], item)
    await work.wait("start", "b2")
    # a is held at a1: b went on without it, a2 did not start
    assert not work.started("a2")
    assert len(lanes) == 1
    work.hold["a1"].set()
    await work.wait("end", "a3")
    a = [item for kind, item in work.events if kind == "start" and item[0] == "a"]
    assert a == ["a1", "a2", "a3"]
    assert len(lanes) == 0  # a lane ends with its work


async def test_no_key_means_a_lane_of_its_own() -> None:
    work = Recorder()
    work.hold["x"] = asyncio.Event()
    lanes = Lanes(work, asyncio.Event())
    lanes.add(None, "x")
    lanes.add(None, "y")
    await work.wait("end", "y")
    assert ("end", "x") not in work.events
    work.hold["x"].set()
    await work.wait("end", "x")
    assert len(lanes) == 0


async def test_drain_cancels_idle_lanes_and_waits_for_busy_ones() -> None:
    work = Recorder()
    work.hold = {"idle": asyncio.Event(), "busy": asyncio.Event()}
    work.busy = {"busy"}
    stopping = asyncio.Event()
    lanes = Lanes(work, stopping)
    lanes.add("i", "idle")
    lanes.add("b", "busy")
    lanes.add("b", "after-busy")
    await work.wait("start", "idle", "busy")
    stopping.set()
    drained = asyncio.create_task(lanes.drain(timeout=5))
    await wait_until(lambda: len(lanes) == 1, 5, "the idle lane cancelled")
    assert not drained.done()  # the busy one holds it
    work.hold["busy"].set()
    assert await drained == 0
    assert ("end", "busy") in work.events
    assert ("end", "idle") not in work.events  # cancelled
    assert not work.started("after-busy")  # stopping: nothing new starts
    assert len(lanes) == 0


async def test_drain_cuts_a_busy_lane_short_after_the_timeout() -> None:
    work = Recorder()
    work.hold["stuck"] = asyncio.Event()
    work.busy = {"stuck"}
    lanes = Lanes(work, asyncio.Event())
    lanes.add("s", "stuck")
    await work.wait("start", "stuck")
    assert await lanes.drain(timeout=0.05) == 1
    assert ("end", "stuck") not in work.events
    assert len(lanes) == 0
