"""The spool's files: what one record looks like on disk, reading segments back, and the
directory's lock.

A segment is a sequence of records ``length:u32 crc:u32 payload`` (big endian), the CRC
covering the length bytes and the payload, the payload a msgpack `SpoolRecord`. These
functions touch files only, so the spool (`bridge.spool`) runs them in a thread.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bridge.errors import ConfigError

HEADER = struct.Struct(">II")
MAX_RECORD = 256 * 1024 * 1024  # a length beyond this is garbage, not a record
LOCK_FILE = ".lock"


class SpoolRecord(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """Everything needed to publish a message later, exactly as it would have been.

    Stored as a msgpack array: new fields go at the end, with a default.
    """

    connector: str
    routing_key: str
    body: bytes
    message_id: str
    timestamp: dt.datetime
    exchange: str | None = None  # None = the main topic exchange
    headers: dict[str, Any] | None = None
    correlation_id: str | None = None
    reply_to: str | None = None


encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(SpoolRecord)


def frame(record: SpoolRecord) -> bytes:
    """One record as it is written to a segment."""
    payload = encoder.encode(record)
    head = struct.pack(">I", len(payload))
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload


@dataclass(frozen=True, slots=True)
class Entry:
    """A record handed out by `read`, with where it ends (for `ack`)."""

    record: SpoolRecord
    segment: int
    end: int
    size: int


def scan(path: Path, start: int = 0) -> tuple[int, int, int]:
    """Walk the records of a segment file from `start`.

    Returns (records, bytes of those records, offset where the last good record ends).
    """
    count = nbytes = 0
    good = start
    with path.open("rb") as f:
        f.seek(start)
        while True:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            length, crc = HEADER.unpack(head)
            if length == 0 or length > MAX_RECORD:
                break
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload, zlib.crc32(head[:4])) != crc:
                break
            count += 1
            nbytes += HEADER.size + length
            good += HEADER.size + length
    return count, nbytes, good


def read_records(
    segments: list[tuple[int, Path, int]], offset: int, limit: int, max_bytes: int
) -> list[Entry]:
    """Read records from (seq, path, size) segments, the first from `offset` (in a thread:
    it touches files only)."""
    out: list[Entry] = []
    nbytes = 0
    for seq, path, size in segments:
        if len(out) >= limit or nbytes >= max_bytes:
            break
        if offset >= size:
            offset = 0
            continue
        with path.open("rb") as f:
            f.seek(offset)
            while offset < size and len(out) < limit and nbytes < max_bytes:
                head = f.read(HEADER.size)
                length, _ = HEADER.unpack(head)
                record = decoder.decode(f.read(length))
                step = HEADER.size + length
                offset += step
                nbytes += step
                out.append(Entry(record, seq, offset, step))
        offset = 0
    return out


def lock_directory(directory: Path) -> int:
    """Create `directory` and take an exclusive flock on ``<directory>/.lock``; the fd.

    The kernel drops the lock when the process dies, however it dies, so a crashed
    instance never leaves the directory locked."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"spool.dir: cannot use {str(directory)!r}: {exc.strerror}", key="spool.dir"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise ConfigError(
            f"spool.dir: {str(directory)!r} is in use by another bridge instance "
            "(each instance needs its own spool directory)",
            key="spool.dir",
        ) from exc
    return fd
