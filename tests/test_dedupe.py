"""DedupeStore: keys survive a restart, torn lines are skipped, the store stays bounded,
and concurrent adds share an fsync."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from bridge.dedupe import FILE_NAME, DedupeStore
from tests.harness import wait_until


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[bytes]:
    return (path / FILE_NAME).read_bytes().splitlines()


async def test_keys_survive_a_restart(tmp_path: Path) -> None:
    keys = ["plain", 'with "quotes"', "new\nline", "ünïcödé", "x" * 300]
    async with DedupeStore(tmp_path) as store:
        for k in keys:
            assert k not in store
            await store.add(k)
            assert k in store
        assert len(store) == len(keys)
    async with DedupeStore(tmp_path) as again:
        assert all(k in again for k in keys)
        assert "other" not in again
        assert 42 not in again


async def test_for_connector_lives_under_spool_dedupe_connector(tmp_path: Path) -> None:
    async with DedupeStore.for_connector(tmp_path, "facebook") as store:
        await store.add("k")
    assert (tmp_path / "dedupe" / "facebook" / FILE_NAME).exists()


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    async with DedupeStore(tmp_path) as store:
        await store.add("whole")
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(b'[1700000000.0, "torn')  # a power cut mid-write
    async with DedupeStore(tmp_path) as again:
        assert "whole" in again
        assert len(again) == 1
        await again.add("after")
    async with DedupeStore(tmp_path) as third:
        assert "whole" in third
        assert "after" in third


async def test_the_line_is_written_before_the_fsync_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILL right after `add` started cannot lose the key: the kernel has the line;
    only the fsync (against a power cut) is awaited."""
    release, entered = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait(5)
        real_fsync(fd)

    async with DedupeStore(tmp_path) as store:
        monkeypatch.setattr(os, "fsync", slow_fsync)
        try:
            task = asyncio.create_task(store.add("early"))
            await wait_until(entered.is_set, 5, "the fsync under way")
            assert not task.done()  # still waiting for the fsync
            assert b"early" in (tmp_path / FILE_NAME).read_bytes()
        finally:
            release.set()
        await task
        monkeypatch.undo()


async def test_concurrent_adds_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real_fsync(fd)

    async with DedupeStore(tmp_path) as store:
        monkeypatch.setattr(os, "fsync", counting)
        await asyncio.gather(*(store.add(f"k{i}") for i in range(500)))
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert len(store) == 500
    assert 1 <= calls < 50  # group commit: far fewer fsyncs than adds
    async with DedupeStore(tmp_path) as again:
        assert all(f"k{i}" in again for i in range(500))


async def test_bounded_by_max_keys_and_compacted(tmp_path: Path) -> None:
    async with DedupeStore(tmp_path, max_keys=10) as store:
        for i in range(100):
            await store.add(f"k{i}")
        assert len(store) == 10
        assert "k99" in store
        assert "k90" in store
        assert "k89" not in store
        # the file is rewritten once it holds 1.5 x max_keys lines
        assert len(lines(tmp_path)) <= 16
    async with DedupeStore(tmp_path, max_keys=10) as again:
        assert [f"k{i}" in again for i in (89, 90, 99)] == [False, True, True]
        assert len(lines(tmp_path)) == 10  # compacted on open too


async def test_keys_expire_after_max_age(tmp_path: Path) -> None:
    clock = Clock()
    async with DedupeStore(tmp_path, max_age=100.0, clock=clock) as store:
        await store.add("old")
        clock.now += 60
        await store.add("young")
        clock.now += 50  # old is 110 s old, young 50 s
        assert "old" not in store
        assert "young" in store
    async with DedupeStore(tmp_path, max_age=100.0, clock=clock) as again:
        assert len(again) == 1
        assert "young" in again
        assert len(lines(tmp_path)) == 1


async def test_adding_a_known_key_refreshes_it(tmp_path: Path) -> None:
    clock = Clock()
    async with DedupeStore(tmp_path, max_keys=2, clock=clock) as store:
        await store.add("a")
        await store.add("b")
        await store.add("a")  # a is now the newest
        await store.add("c")  # evicts b, the oldest
        assert ("a" in store, "b" in store, "c" in store) == (True, False, True)


async def test_a_failing_fsync_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    async with DedupeStore(tmp_path) as store:
        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(OSError, match="Input/output"):
            await store.add("k")
        monkeypatch.undo()


async def test_add_on_a_closed_store_raises(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path)
    with pytest.raises(RuntimeError, match="not open"):
        await store.add("k")
    with pytest.raises(ValueError, match="max_keys"):
        DedupeStore(tmp_path, max_keys=0)
