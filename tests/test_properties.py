"""bridge.topology.properties marshal byte for byte as pamqp's own Basic.Properties do
(the bridge encodes them itself, faster: issue 15), whatever the values."""

from __future__ import annotations

import datetime as dt
import random

import aiormq
import pytest

from bridge.topology import properties


def pamqp_marshal(p: aiormq.spec.Basic.Properties) -> bytes:
    names = aiormq.spec.Basic.Properties.__slots__
    return aiormq.spec.Basic.Properties(**{n: getattr(p, n) for n in names}).marshal()


HEADERS = [
    None,
    {},
    {"oscc-contact-id": "0553A8C5A00001", "oscc-agent-id": "100", "oscc-event": "Delivered"},
    {"z": "", "a": "ä" * 300, "m": "x" * 2000},  # sorted keys, UTF-8, a long string
    {"n": -(10**12), "b": True, "none": None, "l": [1, "a"], "d": {"k": 1.5}},  # not strings
    {"k" * 140: "v"},  # a key pamqp cuts to 128 bytes
]


@pytest.mark.parametrize("seed", range(20))
def test_properties_marshal_as_pamqp_does(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        p = properties(
            connector=rng.choice(["facebook", "ß" * 130]),
            routing_key=rng.choice(["facebook.event.delivered", "facebook.stream.request"]),
            message_id=rng.choice(["", "abc", "ü" * 10]),
            headers=rng.choice(HEADERS),
            correlation_id=rng.choice([None, "", "c" * 255, "c" * 256]),
            reply_to=rng.choice([None, "oscc.facebook.stream.response"]),
            timestamp=rng.choice([None, dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)]),
        )
        assert isinstance(p, aiormq.spec.Basic.Properties)
        # aiormq publishes `properties or <defaults>`: pamqp's truthiness is len(__slots__)
        assert p
        assert dict(p) == dict(aiormq.spec.Basic.Properties(**dict(p)))
        assert p.marshal() == pamqp_marshal(p)
