"""The outage gate: probes rotate, a lone failure followed by a success is charged, an
outage charges nobody."""

from __future__ import annotations

import asyncio

from bridge.gate import Gate


def quick(calls: list[int] | None = None) -> Gate:
    def backoff(n: int) -> float:
        if calls is not None:
            calls.append(n)
        return 0.001

    return Gate(backoff)


async def admitted(gate: Gate, who: object) -> asyncio.Task[None]:
    """A task waiting at the gate for `who`, already parked (or through)."""
    task = asyncio.create_task(gate.wait(who))
    await asyncio.sleep(0)  # let it reach its await; not a timing assumption
    return task


async def test_open_gate_lets_everyone_through() -> None:
    gate = quick()
    await asyncio.wait_for(gate.wait("a"), 1)
    assert not gate.closed


async def test_a_lone_failure_then_another_source_succeeding_charges_the_failed_one() -> None:
    gate = quick()
    gate.failed("poison")
    assert gate.closed
    waiter = await admitted(gate, "healthy")
    await asyncio.wait_for(waiter, 1)  # the probe goes to someone other than the failer
    gate.succeeded("healthy")
    assert not gate.closed
    assert gate.strikes("poison") == 1
    assert gate.strikes("healthy") == 0


async def test_the_next_probe_prefers_someone_else_over_the_one_that_failed() -> None:
    gate = quick()
    gate.failed("x")
    first = await admitted(gate, "x")
    second = await admitted(gate, "y")
    done, _ = await asyncio.wait({first, second}, timeout=1, return_when=asyncio.FIRST_COMPLETED)
    assert done == {second}
    assert not first.done()
    gate.succeeded("y")
    await asyncio.wait_for(first, 1)  # an open gate releases every waiter


async def test_an_outage_charges_nobody_and_backs_off_longer_each_time() -> None:
    calls: list[int] = []
    gate = quick(calls)
    gate.failed("a")
    for who in ("b", "c", "d"):
        await asyncio.wait_for(await admitted(gate, who), 1)
        gate.failed(who)
    await asyncio.wait_for(await admitted(gate, "e"), 1)
    gate.succeeded("e")
    assert [gate.strikes(w) for w in "abcde"] == [0, 0, 0, 0, 0]
    assert calls == [1, 2, 3, 4]


async def test_failing_alone_then_succeeding_itself_is_not_charged() -> None:
    gate = quick()
    gate.failed("only")
    await asyncio.wait_for(await admitted(gate, "only"), 1)  # no one else: it probes
    gate.failed("only")
    await asyncio.wait_for(await admitted(gate, "only"), 1)
    gate.succeeded("only")
    assert gate.strikes("only") == 0


async def test_only_one_probe_at_a_time_while_closed() -> None:
    gate = quick()
    gate.failed("x")
    waiters = [await admitted(gate, w) for w in ("a", "b", "c")]
    done, pending = await asyncio.wait(waiters, timeout=0.2)
    assert len(done) == 1
    assert len(pending) == 2
    for task in pending:
        task.cancel()


async def test_leave_passes_the_turn_on_at_once() -> None:
    gate = Gate(lambda n: 0.001)
    gate.failed("x")
    a = await admitted(gate, "a")
    await asyncio.wait_for(a, 1)
    b = await admitted(gate, "b")
    assert not b.done()
    gate.leave("a")  # a gave up before sending
    await asyncio.wait_for(b, 1)


async def test_a_forgotten_culprit_is_never_charged() -> None:
    gate = quick()
    gate.failed("gone")
    gate.forget("gone")
    await asyncio.wait_for(await admitted(gate, "b"), 1)
    gate.succeeded("b")
    assert gate.strikes("gone") == 0


async def test_strikes_add_up_over_rounds_and_forget_drops_them() -> None:
    gate = quick()
    for round_ in range(3):
        gate.failed("poison")
        await asyncio.wait_for(await admitted(gate, f"ok{round_}"), 1)
        gate.succeeded(f"ok{round_}")
    assert gate.strikes("poison") == 3
    gate.forget("poison")
    assert gate.strikes("poison") == 0
