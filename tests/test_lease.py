"""Reading a lease body: whatever it says, a damaged or foreign one opens to nothing."""

from __future__ import annotations

import msgspec

from bridge.lease import Lease, Opened, read
from bridge.sealing import Sealer


def sealer(connector: str = "fb") -> Sealer:
    return Sealer(connector=connector, title="FB", token="connector-token", oscc_url="http://o")


def test_a_lease_opens_to_its_writer_session_and_sealed_box() -> None:
    box = sealer().seal("session-token")
    body = msgspec.json.encode(Lease(instance="a", session=box, since=1.0))
    assert read(body, sealer()) == Opened("a", "session-token", box)


def test_a_foreign_or_damaged_lease_carries_no_session() -> None:
    box = sealer("other").seal("session-token")
    body = msgspec.json.encode(Lease(instance="a", session=box))
    assert read(body, sealer()) == Opened("a", None, None)  # sealed for another connector
    assert read(b'{"instance": "a"}', sealer()) == Opened("a", None, None)
    assert read(b"not json", sealer()) == Opened(None, None, None)
