"""The disk spool: FIFO, group commit, crash recovery (torn tail, SIGKILL), bound, restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.errors import BrokerUnavailable
from bridge.metrics import Metrics
from bridge.segment import frame
from bridge.spool import Spool, SpoolRecord

ROOT = Path(__file__).resolve().parent.parent


def rec(i: int, size: int = 10) -> SpoolRecord:
    return SpoolRecord(
        connector="facebook",
        routing_key=f"facebook.event.delivered.{i}",
        body=b'{"n":%d,"pad":"%s"}' % (i, b"x" * size),
        message_id=f"m-{i}",
        timestamp=dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
        headers={"oscc-contact-id": f"c{i}", "n": i},
    )


async def numbers(spool: Spool, limit: int = 100_000) -> list[int]:
    return [int(e.record.message_id[2:]) for e in await spool.read(limit)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


async def test_record_round_trips_every_field(tmp_path: Path) -> None:
    r = SpoolRecord(
        connector="email",
        routing_key="email.stream.request",
        body=b"\x00\xffbinary-safe",
        message_id="abc",
        timestamp=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        exchange="",
        headers={"a": "b", "n": 3, "t": True},
        correlation_id="205056409590639",
        reply_to="oscc.email.stream.response",
    )
    async with Spool(tmp_path, max_bytes=1 << 20) as spool:
        await spool.enqueue(r)
        [entry] = await spool.read(10)
    assert entry.record == r


async def test_fifo_across_concurrent_appends_and_segments(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=1 << 24, segment_bytes=2048) as spool:
        # Appends queued in call order are written in that order, whatever the batching
        # (a segment is closed after the batch that filled it).
        for start in range(0, 500, 50):
            await asyncio.gather(*(spool.enqueue(rec(i)) for i in range(start, start + 50)))
        assert spool.messages == spool.committed == 500
        assert len(segments(tmp_path)) > 5
        assert await numbers(spool) == list(range(500))
        assert await numbers(spool, 7) == list(range(7))


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    writes = 0

    class Counting(Spool):
        def _write(self, fd: int, at: int, data: bytes) -> None:
            nonlocal writes
            writes += 1
            super()._write(fd, at, data)

    async with Counting(tmp_path, max_bytes=1 << 24) as spool:
        await asyncio.gather(*(spool.enqueue(rec(i)) for i in range(300)))
    assert writes < 30, writes  # one fsync per batch, not per record


async def test_ack_drops_records_and_segments(tmp_path: Path) -> None:
    metrics = Metrics()
    async with Spool(tmp_path, max_bytes=1 << 24, segment_bytes=1024, metrics=metrics) as spool:
        for i in range(40):
            await spool.enqueue(rec(i))
        assert metrics.spool_messages._value.get() == 40
        assert metrics.spool_bytes._value.get() == spool.nbytes > 0
        before = len(segments(tmp_path))
        entries = await spool.read(25)
        await spool.ack(entries)
        assert spool.messages == 15
        assert await numbers(spool) == list(range(25, 40))
        assert len(segments(tmp_path)) < before
        await spool.ack(await spool.read(100))
        assert spool.messages == spool.nbytes == 0
        assert metrics.spool_messages._value.get() == 0
        assert segments(tmp_path) == []  # nothing left behind once drained
        await spool.enqueue(rec(99))
        assert await numbers(spool) == [99]
        assert spool.status() == {
            "messages": 1,
            "bytes": spool.nbytes,
            "max_bytes": 1 << 24,
            "segments": 1,
            "dir": str(tmp_path),
        }


async def test_restart_resumes_after_the_last_ack(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=1 << 24, segment_bytes=700) as spool:
        for i in range(30):
            await spool.enqueue(rec(i))
        await spool.ack(await spool.read(12))
    async with Spool(tmp_path, max_bytes=1 << 24, segment_bytes=700) as spool:
        assert spool.messages == 18
        assert await numbers(spool) == list(range(12, 30))
        await spool.enqueue(rec(30))
        assert await numbers(spool) == list(range(12, 31))
        await spool.ack(await spool.read(5))
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        assert await numbers(spool) == list(range(17, 31))
        await spool.ack(await spool.read(100))
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        assert spool.messages == 0
        assert await numbers(spool) == []


async def test_an_ack_cancelled_by_a_stop_still_lands_before_close(tmp_path: Path) -> None:
    """A stop cancels the replayer while it waits on an ack's file work: close waits for
    that work, so the next start does not replay what the broker already confirmed."""
    async with Spool(tmp_path, max_bytes=1 << 24, segment_bytes=700) as spool:
        for i in range(30):
            await spool.enqueue(rec(i))
        entries = await spool.read(12)
        acking = asyncio.create_task(spool.ack(entries))
        await asyncio.sleep(0)  # the ack has started: counted, its file work handed off
        acking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acking
    async with Spool(tmp_path, max_bytes=1 << 24, segment_bytes=700) as spool:
        assert await numbers(spool) == list(range(12, 30))


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda good: good[:-3], id="cut-short"),
        pytest.param(lambda good: b"\0" * 64, id="zeros"),
        pytest.param(lambda good: good[:8], id="header-only"),
        pytest.param(lambda good: good[:5], id="partial-header"),
        pytest.param(lambda good: good[:-1] + bytes([good[-1] ^ 1]), id="bad-crc"),
        pytest.param(lambda good: b"\xff\xff\xff\xff" + good[4:], id="huge-length"),
    ],
)
async def test_torn_last_record_is_dropped_and_earlier_ones_kept(
    tmp_path: Path, tail: Callable[[bytes], bytes]
) -> None:
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        for i in range(5):
            await spool.enqueue(rec(i))
    [segment] = segments(tmp_path)
    good_size = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(tail(frame(rec(5))))
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        assert spool.messages == 5
        assert await numbers(spool) == list(range(5))
        assert segment.stat().st_size == good_size  # the torn bytes are gone
        await spool.enqueue(rec(6))
        assert await numbers(spool) == [0, 1, 2, 3, 4, 6]
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        assert await numbers(spool) == [0, 1, 2, 3, 4, 6]


async def test_full_spool_raises_broker_unavailable(tmp_path: Path) -> None:
    one = len(frame(rec(0)))
    async with Spool(tmp_path, max_bytes=one * 10 + one // 2) as spool:
        for i in range(10):
            await spool.enqueue(rec(i))
        with pytest.raises(BrokerUnavailable, match="spool full"):
            await spool.enqueue(rec(10))
        assert spool.messages == 10
        await spool.ack(await spool.read(1))
        await spool.enqueue(rec(10))  # room again
        assert await numbers(spool) == list(range(1, 11))


async def test_a_failed_disk_write_fails_the_append_and_leaves_no_garbage(tmp_path: Path) -> None:
    fail = True

    class Flaky(Spool):
        def _write(self, fd: int, at: int, data: bytes) -> None:
            if fail:
                os.write(fd, data[: len(data) // 2])  # half written, then the disk fills
                os.ftruncate(fd, at)
                raise OSError(28, "No space left on device")
            super()._write(fd, at, data)

    async with Flaky(tmp_path, max_bytes=1 << 24) as spool:
        with pytest.raises(BrokerUnavailable, match="spool write failed"):
            await spool.enqueue(rec(1))
        assert spool.messages == 0
        fail = False
        await spool.enqueue(rec(2))
        assert await numbers(spool) == [2]
    async with Spool(tmp_path, max_bytes=1 << 24) as spool:
        assert await numbers(spool) == [2]


CHILD = textwrap.dedent(
    """
    import asyncio, datetime as dt, sys
    from bridge.spool import Spool, SpoolRecord

    async def main():
        async with Spool(sys.argv[1], max_bytes=1 << 30, segment_bytes=64 * 1024) as spool:
            n = 0
            while True:
                batch = [
                    SpoolRecord(connector="c", routing_key="c.event.x", body=b"x" * 300,
                                message_id=f"m-{n + i}", timestamp=dt.datetime.now(dt.UTC))
                    for i in range(20)
                ]
                await asyncio.gather(*(spool.enqueue(r) for r in batch))
                n += len(batch)
                print(n, flush=True)  # every record up to n is on disk

    asyncio.run(main())
    """
)


async def test_sigkill_while_appending_loses_nothing_acknowledged(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(tmp_path), stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    acknowledged = 0
    try:
        async with asyncio.timeout(30):
            while acknowledged < 3000:
                line = await proc.stdout.readline()
                if not line:
                    break
                acknowledged = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert acknowledged >= 3000
    async with Spool(tmp_path, max_bytes=1 << 30) as spool:
        found = await numbers(spool)
    assert len(found) >= acknowledged
    assert found == list(range(len(found)))  # in order, no gap, no torn record
