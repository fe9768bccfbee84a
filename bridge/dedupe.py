"""Keys of messages OSCC already accepted, remembered on local disk (one store per connector).

A contact redelivered after a crash must not be created twice, so the consumer remembers
each accepted message's key *before* it acks, and asks the store before it sends::

    async with DedupeStore.for_connector(config.spool.dir, "facebook") as store:
        if key in store:          # seen: ack without calling OSCC
            ...
        await store.add(key)      # returns once the key is on disk (fsync'd)

The file is append-only JSON lines ``[unix_seconds, "key"]``: a torn last line (power cut
mid-write) is skipped on load, and a key whose line never reached the disk was never acked
either, so its message is redelivered and sent again. Concurrent `add` calls share one
fsync (group commit), so the store does not cap the forwarding rate at the disk's fsync
rate. The store is bounded: the newest `max_keys` keys younger than `max_age` are kept; the
file is rewritten (temp file, fsync, rename, fsync of the directory) once it holds half as
many lines again as that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from bridge.lifecycle import Service
from bridge.logs import get_logger

FILE_NAME = "keys.jsonl"
DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_AGE = 7 * 24 * 3600.0

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(tuple[float, str])


class DedupeStore(Service):
    """A bounded, crash-safe set of message keys in ``<dir>/keys.jsonl``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_keys = max_keys
        self.max_age = max_age
        self._clock = clock
        self._keys: dict[str, float] = {}  # insertion order = age order
        self._lines = 0  # lines in the file, to decide when to compact
        self._fd: int | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._log = get_logger("bridge.dedupe", path=str(self.directory))

    @classmethod
    def for_connector(
        cls,
        spool_dir: str | os.PathLike[str],
        connector: str,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> DedupeStore:
        """The store of `connector`: ``<spool_dir>/dedupe/<connector>/``."""
        return cls(Path(spool_dir) / "dedupe" / connector, max_keys=max_keys, max_age=max_age)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """`open`, off the event loop (it reads the whole file)."""
        if self._fd is None:
            await asyncio.to_thread(self.open)

    def open(self) -> None:
        """Load the keys from disk, drop expired ones, and open the file for appending."""
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._keys, self._lines = self._load()
        self._expire()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if self._lines > len(self._keys):
            self._compact()
        _fsync_dir(self.directory)  # the file's directory entry survives a power cut too
        self._log.info("dedupe.opened", keys=len(self._keys))

    async def stop(self) -> None:
        """Wait for pending writes, then close the file."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the set ---------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        at = self._keys.get(key)
        return at is not None and self._clock() - at <= self.max_age

    def __len__(self) -> int:
        return len(self._keys)

    async def add(self, key: str) -> None:
        """Remember `key`; return once it is fsync'd (shared with concurrent adds).

        The line is written at once, in the event loop, so that even a SIGKILL right
        after this call cannot lose it (the kernel has it); only the fsync, which guards
        against a power cut, runs in a thread and is shared.
        """
        if self._fd is None:
            raise RuntimeError("DedupeStore is not open")
        now = self._clock()
        self._keys.pop(key, None)
        self._keys[key] = now
        _write_all(self._fd, _encoder.encode((round(now, 3), key)) + b"\n")
        self._lines += 1
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="dedupe-flush")
        # shield: a cancelled caller must not cancel the fsync others are waiting on
        await asyncio.shield(waiter)

    # -- internals -------------------------------------------------------------------

    async def _flush(self) -> None:
        while self._waiters and self._fd is not None:
            # One loop iteration's grace: adds made by other tasks in the same iteration
            # join this batch, which halves the thread hand-offs at high rates.
            await asyncio.sleep(0)
            waiters, self._waiters = self._waiters, []
            try:
                await asyncio.to_thread(os.fsync, self._fd)
                if self._lines >= self.max_keys * 3 // 2 + 1:
                    self._expire()
                    self._compact()
            except OSError as exc:
                self._log.error("dedupe.write_failed", error=str(exc))
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
            else:
                for w in waiters:
                    if not w.done():
                        w.set_result(None)

    def _load(self) -> tuple[dict[str, float], int]:
        keys: dict[str, float] = {}
        lines = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return keys, 0
        for line in data.splitlines():
            lines += 1
            try:
                at, key = _decoder.decode(line)
            except msgspec.DecodeError:
                continue  # a torn last line: that key was never acked
            keys.pop(key, None)
            keys[key] = at
        while len(keys) > self.max_keys:
            del keys[next(iter(keys))]
        return keys, lines

    def _expire(self) -> None:
        horizon = self._clock() - self.max_age
        while self._keys:
            oldest = next(iter(self._keys))
            if self._keys[oldest] >= horizon:
                break
            del self._keys[oldest]

    def _compact(self) -> None:
        """Rewrite the file with the live keys only. Runs in the event loop, between
        flushes, so no append can interleave with the swap; with the default bound it
        writes ~5 MB once every 50,000 adds."""
        assert self._fd is not None
        tmp = self.path.with_suffix(".tmp")
        body = b"".join(
            _encoder.encode((round(at, 3), key)) + b"\n" for key, at in self._keys.items()
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        self._lines = len(self._keys)
        self._log.debug("dedupe.compacted", keys=len(self._keys))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_KEYS", "DedupeStore"]
