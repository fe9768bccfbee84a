"""Disk spool: what the broker could not confirm waits here, on disk, in arrival order.

Layout of ``spool.dir``::

    000000000001.seg   append-only segment files, oldest first
    000000000002.seg
    cursor             [segment, offset] of the oldest record not yet confirmed

A segment's records are framed as segment.py says. After a crash the last one may be
torn: opening the spool truncates the segment at the first bad length or CRC.

`enqueue` returns a future done once its record is on disk (written and fsynced). Records
that arrive while an fsync runs are written together by the next one (group commit), so
many concurrent webhooks cost one fsync, not one each. `read` hands out the oldest records;
`ack` drops them once the broker confirmed them, moves the cursor and deletes segments
that were fully replayed. A record is delivered at least once: a crash between the
confirm and the cursor update replays it again after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bridge import logs
from bridge.errors import BrokerUnavailable
from bridge.lifecycle import Service
from bridge.metrics import Metrics
from bridge.segment import (
    HEADER,
    MAX_RECORD,
    Entry,
    SpoolRecord,
    encoder,
    frame,
    lock_directory,
    read_records,
    scan,
)

log = logs.get_logger("bridge.spool")

_SUFFIX = ".seg"


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int  # bytes on disk that hold whole, fsynced records


class Spool(Service):
    """A bounded, crash-safe FIFO of `SpoolRecord` in ``directory``.

    Use as an async context manager (opens, recovers, and closes). Raises BrokerUnavailable
    from `enqueue` when `max_bytes` would be exceeded, and through its future when the disk
    write fails.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int,
        metrics: Metrics | None = None,
        segment_bytes: int = 16 * 1024 * 1024,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # Called (in the loop) whenever records became readable; the publisher's replay
        # task hooks itself here.
        self.on_commit: Callable[[], None] | None = None
        self._segments: deque[_Segment] = deque()
        self._head_offset = 0  # in _segments[0]: start of the oldest unacknowledged record
        self._messages = 0  # unacknowledged records, pending ones included
        self._bytes = 0
        self._committed = 0  # unacknowledged records that are on disk (readable)
        self._next_seq = 1
        self._fd: int | None = None  # the tail segment, open for appending
        self._tail: _Segment | None = None
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._acking: asyncio.Future[None] | None = None  # an ack's file work
        self._opened = False
        self._lock_fd: int | None = None  # <dir>/.lock, flock'ed while open

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open (recover) the spool, off the event loop."""
        if not self._opened:
            await asyncio.to_thread(self.open)

    async def stop(self) -> None:
        """Close it (records stay on disk)."""
        await self.close()

    def open(self) -> None:
        """Create the directory, lock it, recover what a previous run left, and count it.

        ConfigError (key ``spool.dir``) when the directory cannot be created or written,
        or another instance holds it: two instances on one spool would share a session.
        """
        if self._lock_fd is None:
            self._lock_fd = lock_directory(self.directory)
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise

    def _recover(self) -> None:
        cursor_seq, cursor_offset = self._read_cursor()
        found = sorted(
            (int(p.stem), p) for p in self.directory.glob("*" + _SUFFIX) if p.stem.isdigit()
        )
        for seq, path in found:
            if seq < cursor_seq:
                path.unlink()  # fully replayed; the crash came before it was deleted
                continue
            start = cursor_offset if seq == cursor_seq else 0
            size = path.stat().st_size
            start = min(start, size)
            count, nbytes, good = scan(path, start)
            if good < size:
                log.warning(
                    "spool.torn_record_dropped",
                    segment=path.name,
                    offset=good,
                    dropped_bytes=size - good,
                )
                with path.open("r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            if not self._segments:
                self._head_offset = start
            self._segments.append(_Segment(seq, path, good))
            self._messages += count
            self._bytes += nbytes
        self._committed = self._messages
        self._next_seq = max([cursor_seq, *(s for s, _ in found)], default=0) + 1
        self._opened = True
        self._gauge()
        if self._messages:
            log.info("spool.recovered", messages=self._messages)

    async def close(self) -> None:
        """Finish pending writes and close the files (records stay on disk)."""
        for pending in (self._flusher, self._acking):
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tail = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- state --------------------------------------------------------------------------
    @property
    def messages(self) -> int:
        """Records not yet confirmed by the broker (including those being written)."""
        return self._messages

    @property
    def nbytes(self) -> int:
        """Bytes of those records on disk (framing included); bounded by `max_bytes`."""
        return self._bytes

    @property
    def committed(self) -> int:
        """Records on disk and ready to be read."""
        return self._committed

    def __len__(self) -> int:
        return self._messages

    def status(self) -> dict[str, Any]:
        """Depth and bound, JSON-able (for ``/status``)."""
        return {
            "messages": self._messages,
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "segments": len(self._segments),
            "dir": str(self.directory),
        }

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.spool_messages.set(self._messages)
            self.metrics.spool_bytes.set(self._bytes)

    # -- writing ------------------------------------------------------------------------
    def enqueue(self, record: SpoolRecord) -> asyncio.Future[None]:
        """Queue `record` for the next group commit and return a future that completes
        when it is on disk. Synchronous up to the queueing, so records are appended in
        the order of these calls. Raises BrokerUnavailable when the spool is full."""
        if not self._opened:
            raise RuntimeError("spool is not open")
        data = frame(record)
        if len(data) - HEADER.size > MAX_RECORD:
            raise ValueError(f"record of {len(data)} bytes is too large for the spool")
        if self._bytes + len(data) > self.max_bytes:
            raise BrokerUnavailable(
                f"spool full: {self._bytes} of {self.max_bytes} bytes used "
                f"({self._messages} messages)"
            )
        self._messages += 1
        self._bytes += len(data)
        self._gauge()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="spool-flush")
        return future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            data = b"".join(d for d, _ in batch)
            try:
                if self._tail is None or self._tail.size >= self.segment_bytes:
                    await self._rotate()
                assert self._tail is not None
                assert self._fd is not None
                await asyncio.to_thread(self._write, self._fd, self._tail.size, data)
            except Exception as exc:
                self._messages -= len(batch)
                self._bytes -= len(data)
                self._gauge()
                log.error("spool.write_failed", error=repr(exc))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(BrokerUnavailable(f"spool write failed: {exc}"))
                continue
            self._tail.size += len(data)
            self._committed += len(batch)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            if self.on_commit is not None:
                self.on_commit()

    def _write(self, fd: int, at: int, data: bytes) -> None:
        """Write `data` at the end of the tail segment and fsync; on failure cut the
        segment back to `at` so no partial record stays in the middle of it."""
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, at)
            raise

    async def _rotate(self) -> None:
        """Start a new tail segment (file work in a thread, bookkeeping in the loop)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{seq:012d}{_SUFFIX}"
        self._fd = await asyncio.to_thread(self._create, path)
        segment = _Segment(seq, path, 0)
        self._segments.append(segment)
        self._tail = segment

    def _create(self, path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._sync_dir()
        return fd

    def _sync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------
    async def read(self, limit: int, max_bytes: int = 4 * 1024 * 1024) -> list[Entry]:
        """Up to `limit` of the oldest unacknowledged records that are on disk.

        Where to read is taken here, in the loop; the file reads run in a thread."""
        segments = [(s.seq, s.path, s.size) for s in self._segments]
        return await asyncio.to_thread(read_records, segments, self._head_offset, limit, max_bytes)

    async def ack(self, entries: list[Entry]) -> None:
        """Drop `entries` (a prefix of what `read` returned) after the broker confirmed
        them; delete segments replayed to their end and move the cursor (the file work in
        a thread, the bookkeeping here)."""
        if not entries:
            return
        last = entries[-1]
        done: list[Path] = []
        while self._segments and self._segments[0].seq < last.segment:
            done.append(self._drop_head_segment())
        self._head_offset = last.end
        self._messages -= len(entries)
        self._committed -= len(entries)
        self._bytes -= sum(e.size for e in entries)
        head = self._segments[0]
        if self._head_offset >= head.size and (
            head is not self._tail or (not self._pending and not self._busy_writing())
        ):
            done.append(self._drop_head_segment())
        self._gauge()
        # The file work outlives a cancelled caller (a stop mid-ack): close waits for it,
        # or the next start would replay what the broker already confirmed.
        previous = self._acking
        if previous is not None and not previous.done():
            await asyncio.shield(previous)  # cursors land in order
        self._acking = asyncio.ensure_future(
            asyncio.to_thread(self._persist_ack, done, self._cursor_seq())
        )
        await asyncio.shield(self._acking)

    def _persist_ack(self, done: list[Path], cursor: tuple[int, int]) -> None:
        for path in done:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._write_cursor(cursor)

    def _busy_writing(self) -> bool:
        return self._flusher is not None and not self._flusher.done()

    def _drop_head_segment(self) -> Path:
        """Forget the oldest segment; return its path, for the caller to delete."""
        segment = self._segments.popleft()
        if segment is self._tail:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._tail = None
        self._head_offset = 0
        return segment.path

    # -- cursor -------------------------------------------------------------------------
    def _cursor_seq(self) -> tuple[int, int]:
        if self._segments:
            return self._segments[0].seq, self._head_offset
        # Everything replayed: the next segment starts clean.
        return self._next_seq, 0

    def _write_cursor(self, cursor: tuple[int, int]) -> None:
        # Not fsynced: losing an update only replays a few confirmed records again.
        path = self.directory / "cursor"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(encoder.encode(cursor))
        os.replace(tmp, path)

    def _read_cursor(self) -> tuple[int, int]:
        path = self.directory / "cursor"
        try:
            seq, offset = msgspec.msgpack.decode(path.read_bytes(), type=tuple[int, int])
        except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            return 0, 0
        return seq, offset
