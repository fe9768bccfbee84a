"""The lease message of a connector's owner queue: its body, publishing one, reading
one, and seeding an empty queue (ownership.py holds the protocol around it).

The body is JSON ``{"instance", "session", "since"}``: who wrote it, the OSCC session
token sealed for this connector (sealing.py), and since when that instance owned the
connector (unix seconds).

Exactly one lease, checked on RabbitMQ 3.10 (see tests/test_ownership.py):

- ``x-max-length=1`` with ``reject-publish`` does not keep it to one (an unacked message
  does not count, and a quorum queue's limit is approximate), so it is not used.
- The lease is *replaced* publish-first: publish the new one, then ack the old one once
  the new one arrived. A crash in between leaves two, never none.
- A brand-new queue is seeded by whoever declares it and sees it empty with no consumer
  (or only itself, after a reconnect). Contenders starting together may each seed one.
- Extra leases all reach the active consumer (nobody else gets messages); the owner acks
  them away at once, keeping the one it holds. Prefetch 2 leaves room for that.
- No ``x-delivery-limit``: a lease must never be dead-lettered however often it moves.
- RabbitMQ closes a channel that holds a delivery longer than ``consumer_timeout``
  (30 min by default): the owner replaces its lease every `renew_every` seconds.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import NamedTuple

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractChannel

from bridge.errors import BrokerUnavailable
from bridge.sealing import Sealer
from bridge.topology import APP_ID

_SEED_ATTEMPTS = 10


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """The lease message's body: who wrote it, the sealed OSCC session, and since when
    that instance owned the connector (unix seconds)."""

    instance: str
    session: str | None = None
    since: float = 0.0


class Opened(NamedTuple):
    """What a received lease says: its writer, the OSCC session, and the sealed session
    to carry on (both None when it does not open here)."""

    previous: str | None
    session: str | None
    sealed: str | None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Lease).decode


def read(body: bytes, sealer: Sealer) -> Opened:
    """Decode and open a lease body; a damaged one says nothing (it is still the lease:
    whoever holds it owns, whatever it says)."""
    try:
        lease: Lease | None = _decode(body)
    except msgspec.DecodeError:
        lease = None
    previous = lease.instance if lease else None
    session = sealer.open(lease.session) if lease else None
    sealed = lease.session if session is not None and lease else None
    return Opened(previous, session, sealed)


async def publish(channel: AbstractChannel, queue: str, lease: Lease) -> str:
    """Publish `lease` persistently to `queue`; its message id (confirmed when the
    channel has publisher confirms)."""
    message_id = uuid.uuid4().hex
    await channel.default_exchange.publish(
        aio_pika.Message(
            _encode(lease),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            app_id=APP_ID,
            type="lease",
        ),
        routing_key=queue,
    )
    return message_id


async def seed_if_empty(
    channel: AbstractChannel, queue: str, instance: str, *, consumers_besides_us: int
) -> bool:
    """Publish the first lease when `queue` is empty and nobody but us consumes it
    (nobody can hold an unacked lease then); True when it did. A passive declare on the
    raw channel, so a robust channel does not collect one more queue to restore.

    A quorum queue declared a moment ago may nack a publish while its members start:
    that seed is tried again (an extra lease that did land is dropped by the owner).
    """
    for attempt in range(1, _SEED_ATTEMPTS + 1):
        raw = await channel.get_underlay_channel()
        result = await raw.queue_declare(queue, passive=True)
        if result.message_count or (result.consumer_count or 0) > consumers_besides_us:
            return False
        try:
            await publish(channel, queue, Lease(instance=instance, session=None, since=0.0))
        except aiormq.exceptions.DeliveryError as exc:
            if attempt == _SEED_ATTEMPTS:
                raise BrokerUnavailable(f"{queue}: the broker refused the lease") from exc
            await asyncio.sleep(0.1 * attempt)
            continue
        return True
    return False
