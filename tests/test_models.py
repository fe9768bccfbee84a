"""The OSCC wire models against the guide's own examples, and their properties.

Golden files: tests/data/guide/ (one per JSON example of the guide and per object its JS
appendix builds; README.md there says what was repaired). Each decodes with the entry
point the bridge uses for it, comes out in the tables' spelling, loses nothing and is a
fixed point of decode(encode(...)). Hypothesis then does the same for random objects in
random alternative spellings with random unknown fields.
"""

from __future__ import annotations

import copy
import datetime as dt
import email.utils
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from bridge.oscc import client as client_module
from bridge.oscc import codec, spelling
from bridge.oscc import models as m
from bridge.oscc.codes import ErrorCode

GUIDE = Path(__file__).parent / "data" / "guide"

Decoder = Callable[[bytes], codec.Parsed[Any]]


def _converting(cls: type[m.Wire]) -> Decoder:
    """Decoder for objects the bridge reads with `convert` (registration, answers)."""
    return lambda data: codec.convert(codec.decode_json(data), cls)


class KeepAlive(m.Wire, kw_only=True):
    """Keep Alive request: an empty object (the client sends it as a constant)."""


# file -> (entry point the bridge uses for it, class it must decode to)
GOLDEN: dict[str, tuple[Decoder, type[m.Wire]]] = {
    "registration_request.json": (_converting(m.Registration), m.Registration),
    "js_registration.json": (_converting(m.Registration), m.Registration),
    "registration_response.json": (_converting(m.RegistrationResponse), m.RegistrationResponse),
    "new_contact.json": (codec.decode_new_contact, m.NewContact),
    "js_new_contact.json": (codec.decode_new_contact, m.NewContact),
    "new_contact_response.json": (_converting(m.Answer), m.Answer),
    "js_keepalive_request.json": (_converting(KeepAlive), KeepAlive),
    "keepalive_response.json": (_converting(m.Answer), m.Answer),
    "listen_for_events_request.json": (_converting(m.ListenForEvents), m.ListenForEvents),
    "listen_for_events_response.json": (_converting(m.Answer), m.Answer),
    "outgoing_publication.json": (codec.decode_inbound, m.OutgoingPublication),
    "outgoing_publication_response.json": (_converting(m.Answer), m.Answer),
    "stream_request.json": (codec.decode_inbound, m.StreamRequest),
    "stream_response.json": (codec.decode_stream_response, m.StreamResponse),
    "js_stream_response.json": (codec.decode_stream_response, m.StreamResponse),
    "event_delivered.json": (codec.decode_inbound, m.DeliveredEvent),
    "event_established.json": (codec.decode_inbound, m.EstablishedEvent),
    "event_held.json": (codec.decode_inbound, m.HeldEvent),
    "event_retrieved.json": (codec.decode_inbound, m.RetrievedEvent),
    "event_transferred.json": (codec.decode_inbound, m.TransferredEvent),
    "event_disconnected.json": (codec.decode_inbound, m.DisconnectedEvent),
}
# The guide prints `[]` where its text asks for `{}`; see test_keepalive_guide_example.
NOT_DECODABLE = {"keepalive_request.json"}


def read(name: str) -> bytes:
    return (GUIDE / name).read_bytes()


def load(name: str) -> Any:
    return json.loads(read(name))


# ---------------------------------------------------------------------------------------
# What "canonical" and "nothing dropped" mean, written down independently of the models

# Spellings DESIGN.md lists (and TransferParty's example names): never in the output.
ALTERNATIVE_KEYS = {
    "additionalInfo",
    "date",
    "dateTIme",
    "isRealtimeHandling",
    "itemsinpage",
    "lSiteKey",
    "lAgentKey",
    "lTeamKey",
    "callId",
    "deviceId",
    "agentId",
}
# Enum-like values the tables spell one way ("Post", never "POST").
CANONICAL_VALUES = {
    v.value
    for e in (m.ContactType, m.SourceType, m.DestinationType, m.AttachmentType, m.EventType)
    for v in e
} | {"OpenMediaEvent"}
_LOWER_CANONICAL = {v.lower() for v in CANONICAL_VALUES}
BOOL_KEYS = {
    "isRealTimeHandling",
    "enabledListenForEvent",
    "m_isCtiEventReceived",
    "m_isCtiEventExpected",
}
INT_KEYS = {"errorCode", "page", "itemsInPage", "totalItems"}
# How an alternative spelling maps onto the table's, compared case-insensitively.
RENAMES = {
    "additionalinfo": "additionalinfos",
    "date": "datetime",
    "callid": "called",
    "lsitekey": "isitekey",
    "lagentkey": "iagentkey",
    "lteamkey": "iteamkey",
}


def non_canonical(value: Any, path: str = "$", parent: str | None = None) -> list[str]:
    """Paths in a body that are not in the tables' spelling (empty when canonical)."""
    problems: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            at = f"{path}.{key}"
            if key.startswith("x_"):
                continue  # unknown field: carried as sent
            if key in ALTERNATIVE_KEYS or (key == "url" and parent == "destination"):
                problems.append(f"{at} (key)")
            if key in BOOL_KEYS and item is not None and not isinstance(item, bool):
                problems.append(f"{at}={item!r} (not a boolean)")
            if key in INT_KEYS and item is not None and type(item) is not int:
                problems.append(f"{at}={item!r} (not an integer)")
            if (
                key in ("type", "openMediaEventType")
                and isinstance(item, str)
                and item not in CANONICAL_VALUES
                and item.lower() in _LOWER_CANONICAL
            ):
                problems.append(f"{at}={item!r} (case)")
            problems += non_canonical(item, at, key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += non_canonical(item, f"{path}[{i}]", parent)
    return problems


def shape(value: Any) -> Any:
    """Keys and values modulo the accepted respellings: equal shapes lose nothing."""
    if isinstance(value, dict):
        return {RENAMES.get(k.lower(), k.lower()): shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value.lower()
    return value


def assert_round_trip(parsed: codec.Parsed[Any], decode: Decoder) -> None:
    """decode(encode(x)) == x, byte for byte."""
    data = codec.encode(parsed.body)
    again = decode(data)
    assert again.body == parsed.body
    assert again.obj == parsed.obj
    assert codec.encode(again.body) == data


# ---------------------------------------------------------------------------------------
# Golden files


def test_every_guide_file_is_tested() -> None:
    assert {p.name for p in GUIDE.glob("*.json")} == set(GOLDEN) | NOT_DECODABLE


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_guide_example_decodes_to_its_class(name: str) -> None:
    decode, cls = GOLDEN[name]
    parsed = decode(read(name))
    assert type(parsed.obj) is cls


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_guide_example_comes_out_canonical(name: str) -> None:
    decode, _ = GOLDEN[name]
    assert non_canonical(decode(read(name)).body) == []


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_guide_example_loses_nothing(name: str) -> None:
    decode, _ = GOLDEN[name]
    assert shape(decode(read(name)).body) == shape(load(name))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_guide_example_round_trips(name: str) -> None:
    decode, _ = GOLDEN[name]
    assert_round_trip(decode(read(name)), decode)


def test_new_contact_example_in_table_spelling() -> None:
    parsed = codec.decode_new_contact(read("new_contact.json"))
    expected = load("new_contact.json")
    for part in ("source", "destination"):
        expected[part]["additionalInfos"] = expected[part].pop("additionalInfo")
    expected["isRealTimeHandling"] = expected.pop("isRealtimeHandling")
    assert parsed.body == expected
    contact = parsed.obj
    assert contact.type is m.ContactType.POST
    assert contact.is_real_time_handling is False
    assert contact.destination.url == "Page address"
    assert [a.key for a in contact.source.additional_infos or ()] == ["info1", "info2"]
    assert contact.published_object.attachments == [
        m.Attachment(
            type=m.AttachmentType.IMAGE,
            content="Description of the attachment",
            url="http://www.example.com/cat.jpeg",
        )
    ]


def test_js_new_contact_in_table_spelling() -> None:
    """The appendix's "POST", "PERSON", "PAGE", dateTIme and "true" come out as the tables say."""
    parsed = codec.decode_new_contact(read("js_new_contact.json"))
    expected = load("js_new_contact.json")
    expected["type"] = "Post"
    expected["dateTime"] = expected.pop("dateTIme")
    expected["source"]["type"] = "Person"
    expected["destination"]["type"] = "Page"
    expected["isRealTimeHandling"] = True
    assert parsed.body == expected
    assert parsed.obj.date_time == "Sat, 10 Sep 2016 15:04:55 GMT", "the date is not rewritten"
    assert parsed.obj.is_real_time_handling is True
    assert parsed.obj.source.type is m.SourceType.PERSON
    assert parsed.obj.destination.type is m.DestinationType.PAGE


def test_js_stream_response_in_table_spelling() -> None:
    parsed = codec.decode_stream_response(read("js_stream_response.json"))
    expected = load("js_stream_response.json")
    expected["itemsInPage"] = 3
    del expected["itemsinpage"]
    expected["totalItems"] = 3
    for item in expected["orderedItems"]:
        item["dateTime"] = item.pop("dateTIme")
    assert parsed.body == expected
    assert parsed.obj.last_page == "true"
    assert parsed.obj.items_in_page == 3
    assert [i.date_time for i in parsed.obj.ordered_items or ()] == [
        "2016-09-10T13:15:00Z",
        "2016-09-10T13:04:55Z",
        "2016-09-10T12:04:55Z",
    ]


def test_stream_response_example_keeps_its_item_without_id() -> None:
    parsed = codec.decode_stream_response(read("stream_response.json"))
    items = parsed.obj.ordered_items or []
    assert [i.id for i in items][3] is None
    assert items[3].content == "This is the original complaint."
    assert parsed.body["itemsInPage"] == 3


def test_events_in_table_spelling() -> None:
    delivered = codec.decode_inbound(read("event_delivered.json"))
    assert delivered.body["dateTime"] == "2018-02-20 15:08:40.994"
    assert "date" not in delivered.body
    assert delivered.body["destination"]["URL"] == ""
    assert delivered.body["source"]["additionalInfos"] == []
    event = delivered.obj
    assert isinstance(event, m.DeliveredEvent)
    assert (event.contact_id, event.agent_id, event.kind) == ("0553A8C5A0300", "100", "delivered")
    assert event.source is not None
    assert event.source.name == "John Smith"
    assert event.published_object is not None
    assert event.published_object.title == "Sales Testing"

    held = codec.decode_inbound(read("event_held.json")).obj
    assert isinstance(held, m.HeldEvent)
    assert held.held_reason == "0"

    transferred = codec.decode_inbound(read("event_transferred.json"))
    party = transferred.body["m_TransferringParty"]
    assert party == {
        "type": 0,
        "called": "0553A8C5A0300O553A8C5A0300",
        "ISiteKey": 354091819,
        "deviceID": "",
        "agentID": "100",
        "IAgentKey": 7,
        "ITeamKey": 0,
        "teamName": "",
        "state": 2,
        "m_isCtiEventReceived": False,
        "m_isCtiEventExpected": False,
        "m_connectionState": 7,
    }
    assert transferred.body["m_TransferTargetParty"] == party
    assert isinstance(transferred.obj, m.TransferredEvent)
    assert transferred.obj.m_transferring_party is not None
    assert transferred.obj.m_transferring_party.i_site_key == 354091819

    disconnected = codec.decode_inbound(read("event_disconnected.json")).obj
    assert isinstance(disconnected, m.DisconnectedEvent)
    assert disconnected.disconnected_party == m.DisconnectedParty(
        agent_key="7", device="PC", party_type="0"
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("event_delivered.json", "delivered"),
        ("event_established.json", "established"),
        ("event_held.json", "held"),
        ("event_retrieved.json", "retrieved"),
        ("event_transferred.json", "transferred"),
        ("event_disconnected.json", "disconnected"),
    ],
)
def test_event_kind(name: str, kind: str) -> None:
    assert codec.decode_inbound(read(name)).obj.kind == kind


def test_event_kinds_are_designs() -> None:
    assert set(m.EVENT_KINDS) == {
        "delivered",
        "established",
        "held",
        "retrieved",
        "transferred",
        "disconnected",
        "diverted",
        "unknown",
    }
    assert {cls.kind for cls in m.EVENT_CLASSES.values()} == set(m.EVENT_KINDS) - {"unknown"}
    assert set(m.EVENT_CLASSES) == {t.value for t in m.EventType}


def test_disconnected_example_joined_verbatim() -> None:
    """The literal join of the guide's two blocks repeats `device`; it still decodes."""
    data = (
        b'{"type": "OpenMediaEvent", "openMediaEventType": "DisconnectedEvent",'
        b' "dateTime": "2018-02-20 15:09:37.253", "contactID": "0553A8C5A0300",'
        b' "agentID": "100", "discardReason": "11", "disconnectReason": "DISCARDED",'
        b' "disconnectedParty": {"agentKey": "7", "device": "PC", "device":"", "partyType":"0"}}'
    )
    parsed = codec.decode_inbound(data)
    assert isinstance(parsed.obj, m.DisconnectedEvent)
    assert parsed.body["disconnectedParty"]["partyType"] == "0"
    assert parsed.body["disconnectedParty"]["agentKey"] == "7"


def test_held_example_literal_nesting_keeps_held_reason() -> None:
    """Read literally, the guide nests heldReason in destination: kept there, not lost."""
    raw = load("event_held.json")
    raw["destination"]["heldReason"] = raw.pop("heldReason")
    parsed = codec.decode_inbound(raw)
    assert isinstance(parsed.obj, m.HeldEvent)
    assert parsed.body["destination"]["heldReason"] == "0"
    assert shape(parsed.body) == shape(raw)


def test_keepalive_guide_example() -> None:
    """The guide prints `[]`; its text (and the JS appendix) say `{}`, which the bridge sends."""
    assert load("keepalive_request.json") == []
    with pytest.raises(Rejected) as caught:
        codec.convert(load("keepalive_request.json"), KeepAlive)
    assert caught.value.code == ErrorCode.WRONG_API_REQUEST
    assert codec.encode(KeepAlive()) == b"{}" == client_module._KEEPALIVE_BODY
    assert codec.convert(load("js_keepalive_request.json"), KeepAlive).body == {}


def test_registration_example_typed() -> None:
    reg = codec.convert(load("registration_request.json"), m.Registration).obj
    assert reg.webhook_url == "https://connectorhostaddress/connectorpath"
    assert reg.open_media.open_media_title == "facebook"
    resp = codec.convert(load("registration_response.json"), m.RegistrationResponse).obj
    assert resp.error_code == ErrorCode.NO_ERROR
    assert resp.session_token is not None
    assert resp.session_token.startswith("a5e272bc")
    assert resp.user_credentials == m.UserCredentials(
        user_name="user name for social media", password="string"
    )
    listen = codec.convert(load("listen_for_events_request.json"), m.ListenForEvents).obj
    assert listen.enabled_listen_for_event is True
    assert codec.convert({"enabledListenForEvent": "true"}, m.ListenForEvents).body == {
        "enabledListenForEvent": True
    }


# ---------------------------------------------------------------------------------------
# Limits: 12 STRING_OUT_OF_BOUND at the first character over the guide's bound

CONTACT_LIMITS = [
    (("source", "id"), 256),
    (("source", "name"), 256),
    (("source", "location"), 256),
    (("source", "language"), 256),
    (("publishedObject", "id"), 256),
    (("publishedObject", "fatherId"), 256),
    (("publishedObject", "title"), 256),
    (("publishedObject", "inReplyTo", "id"), 256),
    (("publishedObject", "content"), 5000),
    (("destination", "id"), 256),
    (("destination", "name"), 256),
]


def _set(body: Any, path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value


@pytest.mark.parametrize(("path", "limit"), CONTACT_LIMITS)
@pytest.mark.parametrize("char", ["a", "é", "字"])
def test_new_contact_limit(path: tuple[str, ...], limit: int, char: str) -> None:
    """Limits count characters, not bytes: 256 two- or three-byte characters pass."""
    raw = load("js_new_contact.json")
    _set(raw, path, char * limit)
    parsed = codec.decode_new_contact(codec.encode(raw))
    value: Any = parsed.body
    for key in path:
        value = value[key]
    assert value == char * limit

    _set(raw, path, char * (limit + 1))
    with pytest.raises(Rejected) as caught:
        codec.decode_new_contact(codec.encode(raw))
    assert caught.value.code == ErrorCode.STRING_OUT_OF_BOUND
    assert caught.value.path == "$." + ".".join(path)


def test_limit_path_uses_table_spelling_and_list_index() -> None:
    raw = load("js_stream_response.json")
    raw["orderedItems"][1]["inReplyTo"]["id"] = "x" * 257
    with pytest.raises(Rejected) as caught:
        codec.decode_stream_response(codec.encode(raw))
    assert caught.value.code == ErrorCode.STRING_OUT_OF_BOUND
    assert caught.value.path == "$.orderedItems[1].inReplyTo.id"


@pytest.mark.parametrize("field", ["openMediaTitle", "token"])
def test_registration_limits(field: str) -> None:
    raw = load("registration_request.json")
    raw["openMedia"][field] = "S" * 50
    codec.check_limits(codec.convert(raw, m.Registration).obj)

    secret = "S" * 49 + "!"
    raw["openMedia"][field] = secret + "?"
    with pytest.raises(Rejected) as caught:
        codec.check_limits(codec.convert(raw, m.Registration).obj)
    assert caught.value.code == ErrorCode.STRING_OUT_OF_BOUND
    assert caught.value.path == f"$.openMedia.{field}"
    assert secret not in str(caught.value), "the error must not carry the token"


# ---------------------------------------------------------------------------------------
# Dates: 13 WRONG_DATE_FORMAT

GOOD_DATES = {
    "Sat, 10 Sep 2016 15:04:55 GMT": dt.datetime(2016, 9, 10, 15, 4, 55, tzinfo=dt.UTC),
    "Sat, 10 Sep 2016 17:04:55 +0200": dt.datetime(2016, 9, 10, 15, 4, 55, tzinfo=dt.UTC),
    "2016-09-10T15:04:55Z": dt.datetime(2016, 9, 10, 15, 4, 55, tzinfo=dt.UTC),
    "2016-09-10T17:04:55+02:00": dt.datetime(2016, 9, 10, 15, 4, 55, tzinfo=dt.UTC),
    "2016-09-10T15:04:55.250Z": dt.datetime(2016, 9, 10, 15, 4, 55, 250000, tzinfo=dt.UTC),
    "2016-09-10T12:04:55.123456-03:00": dt.datetime(2016, 9, 10, 15, 4, 55, 123456, tzinfo=dt.UTC),
    "2018-02-20 15:08:40.994": dt.datetime(2018, 2, 20, 15, 8, 40, 994000),
}
BAD_DATES = [
    "",
    "yesterday",
    "not a date at all",
    "2016-13-45T00:00:00Z",
    "2016-09-10T25:00:00Z",
    "Sat, 32 Sep 2016 15:04:55 GMT",
    "Sat, 10 Sep 2016 25:04:55 GMT",
    "10/09/2016",
    "15:04:55",
    "2016-09-10T15:04:55Z trailing",
]


@pytest.mark.parametrize(("text", "instant"), GOOD_DATES.items())
def test_good_dates(text: str, instant: dt.datetime) -> None:
    assert codec.parse_date(text) == instant
    raw = load("js_new_contact.json")
    raw["dateTIme"] = text
    assert codec.decode_new_contact(codec.encode(raw)).body["dateTime"] == text
    stream = load("js_stream_response.json")
    stream["orderedItems"][0]["dateTIme"] = text
    codec.decode_stream_response(codec.encode(stream))


@pytest.mark.parametrize("text", BAD_DATES)
def test_bad_dates(text: str) -> None:
    assert codec.parse_date(text) is None
    raw = load("js_new_contact.json")
    raw["dateTIme"] = text
    with pytest.raises(Rejected) as caught:
        codec.decode_new_contact(codec.encode(raw))
    assert caught.value.code == ErrorCode.WRONG_DATE_FORMAT
    assert caught.value.path == "$.dateTime"

    stream = load("js_stream_response.json")
    stream["orderedItems"][2]["dateTIme"] = text
    with pytest.raises(Rejected) as caught:
        codec.decode_stream_response(codec.encode(stream))
    assert caught.value.code == ErrorCode.WRONG_DATE_FORMAT
    assert caught.value.path == "$.orderedItems[2].dateTime"


@pytest.mark.parametrize("spelling", [None, "dateTime", "date", "dateTIme", "DATETIME"])
def test_missing_date_is_filled_and_present_date_kept(spelling: str | None) -> None:
    raw = load("js_new_contact.json")
    del raw["dateTIme"]
    if spelling is not None:
        raw[spelling] = "2016-09-10T15:04:55Z"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    body = codec.decode_new_contact(codec.encode(raw)).body
    after = dt.datetime.now(dt.UTC)
    assert [k for k in body if k.lower() in ("date", "datetime")] == ["dateTime"]
    if spelling is None:
        filled = codec.parse_date(body["dateTime"])
        assert filled is not None
        assert before <= filled <= after
    else:
        assert body["dateTime"] == "2016-09-10T15:04:55Z"


def test_null_date_is_filled() -> None:
    raw = load("js_new_contact.json")
    raw["dateTIme"] = None
    body = codec.decode_new_contact(codec.encode(raw)).body
    assert codec.parse_date(body["dateTime"]) is not None


@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 1, 1)))
@settings(max_examples=200, deadline=None)
def test_every_guide_date_form_parses(moment: dt.datetime) -> None:
    utc = moment.replace(tzinfo=dt.UTC)
    whole = utc.replace(microsecond=0)
    assert codec.parse_date(email.utils.format_datetime(whole, usegmt=True)) == whole
    assert codec.parse_date(utc.isoformat()) == utc
    assert codec.parse_date(utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) == utc
    assert codec.parse_date(moment.isoformat(sep=" ", timespec="milliseconds")) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000
    )


# ---------------------------------------------------------------------------------------
# 11 WRONG_API_REQUEST: not an object of the expected kind


def _without(name: str, *path: str) -> dict[str, Any]:
    raw = load(name)
    target = raw
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return dict(raw)


def _with(name: str, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    raw = load(name)
    _set(raw, path, value)
    return dict(raw)


WRONG_CONTACTS = {
    "missing source": (_without("js_new_contact.json", "source"), "$"),
    "missing type": (_without("js_new_contact.json", "type"), "$"),
    "missing publishedObject.id": (
        _without("js_new_contact.json", "publishedObject", "id"),
        "$.publishedObject",
    ),
    "missing destination.name": (
        _without("js_new_contact.json", "destination", "name"),
        "$.destination",
    ),
    "unknown type": (_with("js_new_contact.json", ("type",), "Tweet"), "$.type"),
    "unknown source type": (
        _with("js_new_contact.json", ("source", "type"), "Robot"),
        "$.source.type",
    ),
    "unknown attachment type": (
        _with("new_contact.json", ("publishedObject", "attachments", 0, "type"), "Hologram"),
        "$.publishedObject.attachments[0].type",
    ),
    "not a boolean": (
        _with("js_new_contact.json", ("isRealTimeHandling",), "maybe"),
        "$.isRealTimeHandling",
    ),
    "source not an object": (_with("js_new_contact.json", ("source",), "me"), "$.source"),
    "id not a string": (_with("js_new_contact.json", ("source", "id"), {"a": 1}), "$.source.id"),
}


@pytest.mark.parametrize("case", sorted(WRONG_CONTACTS))
def test_wrong_new_contact(case: str) -> None:
    raw, path = WRONG_CONTACTS[case]
    with pytest.raises(Rejected) as caught:
        codec.decode_new_contact(codec.encode(raw))
    assert caught.value.code == ErrorCode.WRONG_API_REQUEST
    assert caught.value.path == path


def test_wrong_stream_response() -> None:
    for raw in (
        _without("js_stream_response.json", "id"),
        _with("js_stream_response.json", ("itemsinpage",), "three"),
        _with("js_stream_response.json", ("orderedItems",), {"not": "a list"}),
    ):
        with pytest.raises(Rejected) as caught:
            codec.decode_stream_response(codec.encode(raw))
        assert caught.value.code == ErrorCode.WRONG_API_REQUEST


NOT_OBJECTS = [b"[]", b'"text"', b"1", b"null", b"true", b"[{}]"]
NOT_JSON = [b"", b"not json", b"{", b'{"type": "Post",}', b"\xff\xfe", b"{'type': 'Post'}"]


@pytest.mark.parametrize("data", NOT_OBJECTS + NOT_JSON)
@pytest.mark.parametrize(
    "decode",
    [
        codec.decode_new_contact,
        codec.decode_stream_response,
        codec.decode_inbound,
        _converting(m.Registration),
        _converting(m.RegistrationResponse),
        _converting(m.Answer),
    ],
)
def test_not_an_object_is_wrong_api_request(decode: Decoder, data: bytes) -> None:
    with pytest.raises(Rejected) as caught:
        decode(data)
    assert caught.value.code == ErrorCode.WRONG_API_REQUEST


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"type": "Registration"},
        {"type": "Tweet", "objectToBePublished": {}},
        {"type": 7},
        {"type": "OpenMediaEvent"},
        {"type": "OpenMediaEvent", "openMediaEventType": "DeliveredOpenMediaEvent", "source": 5},
        {"type": "Post", "destination": {}},
        {"type": "Stream", "destinationId": "Page id"},
    ],
)
def test_unknown_or_incomplete_inbound_is_wrong_api_request(raw: dict[str, Any]) -> None:
    with pytest.raises(Rejected) as caught:
        codec.decode_inbound(codec.encode(raw))
    assert caught.value.code == ErrorCode.WRONG_API_REQUEST


def test_unknown_event_type_is_kept() -> None:
    raw = {
        "type": "OpenMediaEvent",
        "openMediaEventType": "ConferencedOpenMediaEvent",
        "date": "2018-02-20 15:09:37.253",
        "contactID": "0553A8C5A0300",
        "agentID": "100",
        "conferenceParty": {"agentKey": "8", "list": [1, "two", None]},
        "reason": 3,
    }
    parsed = codec.decode_inbound(codec.encode(raw))
    assert type(parsed.obj) is m.OpenMediaEvent
    assert parsed.obj.kind == "unknown"
    assert parsed.obj.open_media_event_type == "ConferencedOpenMediaEvent"
    expected = dict(raw)
    expected["dateTime"] = expected.pop("date")
    assert parsed.body == expected
    assert_round_trip(parsed, codec.decode_inbound)


def test_diverted_event_has_its_class() -> None:
    parsed = codec.decode_inbound(
        b'{"type": "openmediaevent", "openMediaEventType": "DIVERTEDOPENMEDIAEVENT",'
        b' "dateTime": "2018-02-20 15:09:37.253", "contactID": "1", "divertedTo": "200"}'
    )
    assert type(parsed.obj) is m.DivertedEvent
    assert parsed.obj.kind == "diverted"
    assert parsed.body == {
        "type": "OpenMediaEvent",
        "openMediaEventType": "DivertedOpenMediaEvent",
        "dateTime": "2018-02-20 15:09:37.253",
        "contactID": "1",
        "divertedTo": "200",
    }


def test_dispatch_keys_match_case_insensitively() -> None:
    parsed = codec.decode_inbound(b'{"TYPE": "STREAM", "Id": "1", "NUMBEROFMESSAGES": "3"}')
    assert type(parsed.obj) is m.StreamRequest
    assert parsed.body == {"type": "Stream", "id": "1", "numberOfMessages": "3"}


def test_publication_upper_case_type() -> None:
    """The JS appendix compares OSCC's publication type with "POST"."""
    raw = load("outgoing_publication.json")
    raw["type"] = "POST"
    raw["source"]["type"] = "PERSON"
    raw["destination"]["type"] = "PAGE"
    parsed = codec.decode_inbound(codec.encode(raw))
    assert isinstance(parsed.obj, m.OutgoingPublication)
    assert parsed.obj.type is m.ContactType.POST
    assert (parsed.body["type"], parsed.body["source"]["type"]) == ("Post", "Person")
    assert parsed.body["destination"]["type"] == "Page"


def test_lenient_enum_keeps_unknown_values() -> None:
    """OSCC's examples send "" and null where a table promises Person/Page: kept as sent."""
    body = codec.decode_inbound(read("event_held.json")).body
    assert body["source"]["type"] == ""
    assert body["destination"]["type"] is None
    raw = load("event_retrieved.json")
    raw["source"]["type"] = "Bot"
    assert codec.decode_inbound(codec.encode(raw)).body["source"]["type"] == "Bot"


# ---------------------------------------------------------------------------------------
# Secrets


def test_secrets_masked_in_repr() -> None:
    token = "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
    session = "a5e272bcfa964c6dea958b583da4e721703bb2a74bff8533a5818ccaedd71669"
    registration = codec.convert(load("registration_request.json"), m.Registration)
    response = codec.convert(load("registration_response.json"), m.RegistrationResponse)
    credentials = response.obj.user_credentials
    assert credentials is not None
    shown = [
        registration.obj,
        registration.obj.open_media,
        response.obj,
        credentials,
        registration,
        response,
    ]
    for obj in shown:
        for text in (repr(obj), str(obj), f"{obj!r}"):
            assert token not in text
            assert session not in text
            assert "password='string'" not in text
        rich = getattr(obj, "__rich_repr__", None)
        if rich is not None:
            assert token not in repr(list(rich()))
            assert session not in repr(list(rich()))
    assert "token=***" in repr(registration.obj.open_media)
    assert "session_token=***" in repr(response.obj)
    assert "password=***" in repr(credentials)
    # The masking is only in reprs: the wire form carries the values.
    assert token.encode() in codec.encode(registration.obj)
    assert registration.obj.open_media.token == token


# ---------------------------------------------------------------------------------------
# Properties: random objects in random spellings with random unknown fields

# Canonical key -> spellings a sender may use (DESIGN.md's list, the TransferParty example's).
KEY_SPELLINGS: dict[str, list[str]] = {
    "additionalInfos": ["additionalInfos", "additionalInfo", "ADDITIONALINFOS"],
    "dateTime": ["dateTime", "date", "dateTIme", "datetime"],
    "URL": ["URL", "url"],
    "url": ["url", "URL"],
    "isRealTimeHandling": ["isRealTimeHandling", "isRealtimeHandling"],
    "itemsInPage": ["itemsInPage", "itemsinpage"],
    "ISiteKey": ["ISiteKey", "lSiteKey"],
    "IAgentKey": ["IAgentKey", "lAgentKey"],
    "ITeamKey": ["ITeamKey", "lTeamKey"],
    "called": ["called", "callId"],
    "deviceID": ["deviceID", "deviceId"],
    "agentID": ["agentID", "agentId"],
    "contactID": ["contactID", "contactId"],
}
# String fields that may arrive as numbers (JS sends numbers where the tables say String).
DIGIT_KEYS = {"discardReason", "heldReason", "agentKey", "partyType", "numberOfMessages"}
_DIGITS = re.compile(r"0|[1-9][0-9]{0,8}")


def respell(draw: st.DrawFn, value: Any, key: str | None = None) -> Any:
    """`value` (canonical) as a sender might spell it."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k.startswith("x_"):
                out[k] = v  # unknown: must come out untouched
            else:
                out[draw(st.sampled_from(KEY_SPELLINGS.get(k, [k])))] = respell(draw, v, k)
        return out
    if isinstance(value, list):
        return [respell(draw, v, key) for v in value]
    choices: list[Any] = [value]
    if key in BOOL_KEYS and isinstance(value, bool):
        choices += [str(value).lower(), str(value).upper()]
    elif key in INT_KEYS and type(value) is int:
        choices += [str(value)]
    elif key == "lastPage" and value in ("true", "false"):
        choices += [value == "true"]
    elif key in DIGIT_KEYS and isinstance(value, str) and _DIGITS.fullmatch(value):
        choices += [int(value)]
    elif key in ("type", "openMediaEventType") and value in CANONICAL_VALUES:
        choices += [value.upper(), value.lower()]
    return draw(st.sampled_from(choices))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.from_regex(r"x_[a-z]{0,4}", fullmatch=True), children, max_size=3)
    ),
    max_leaves=6,
)
unknown_fields = st.dictionaries(
    st.from_regex(r"x_[A-Za-z0-9_]{1,8}", fullmatch=True), json_values, max_size=2
)
text = st.text(max_size=12)
opt_text = st.none() | text
digits_or_text = st.none() | text | st.from_regex(_DIGITS, fullmatch=True)
ints = st.integers(-(10**6), 10**6)
int_or_str = st.none() | ints | st.from_regex(_DIGITS, fullmatch=True)


def values(enum: type[Any]) -> st.SearchStrategy[str]:
    return st.sampled_from([e.value for e in enum])


def opt_list(items: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | st.lists(items, max_size=3)


@st.composite
def objects(
    draw: st.DrawFn,
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
) -> dict[str, Any]:
    """A canonical object: every required field, some optional ones, some unknown ones."""
    out = {k: draw(s) for k, s in required.items()}
    for k, s in (optional or {}).items():
        if draw(st.booleans()):
            out[k] = draw(s)
    out.update(draw(unknown_fields))
    return out


def _rfc1123(d: dt.datetime) -> str:
    return email.utils.format_datetime(d.replace(microsecond=0), usegmt=True)


dates = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2999, 1, 1), timezones=st.just(dt.UTC)
).flatmap(
    lambda d: st.sampled_from(
        [
            _rfc1123(d),
            d.strftime("%Y-%m-%dT%H:%M:%SZ"),
            d.isoformat(),
            d.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat(),
            d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            d.replace(tzinfo=None).isoformat(sep=" ", timespec="milliseconds"),
        ]
    )
)

key_values = objects({"key": text}, {"value": opt_text})
in_reply_to = objects({}, {"id": opt_text})
source = objects(
    {"id": text, "type": values(m.SourceType), "name": text},
    {
        "location": opt_text,
        "language": opt_text,
        "additionalInfos": opt_list(key_values),
    },
)
published_object = objects(
    {"id": text},
    {
        "fatherId": opt_text,
        "inReplyTo": st.none() | in_reply_to,
        "title": opt_text,
        "content": st.none() | st.text(max_size=200),
        "contactData": opt_list(key_values),
        "attachments": opt_list(
            objects({"type": values(m.AttachmentType)}, {"content": opt_text, "url": opt_text})
        ),
        "tagList": opt_list(objects({"tag": text})),
    },
)
destination = objects(
    {"id": text, "type": values(m.DestinationType), "name": text},
    {"URL": opt_text, "additionalInfos": opt_list(key_values)},
)
new_contacts = objects(
    {
        "type": values(m.ContactType),
        "dateTime": dates,
        "source": source,
        "publishedObject": published_object,
        "destination": destination,
    },
    {"isRealTimeHandling": st.booleans()},
)

ordered_item = objects(
    {},
    {
        "id": opt_text,
        "fatherId": opt_text,
        "inReplyTo": st.none() | in_reply_to,
        "type": st.none() | values(m.ContactType),
        "dateTime": st.none() | dates,
        "source": st.none()
        | objects({}, {"id": opt_text, "type": st.none() | values(m.SourceType), "name": opt_text}),
        "content": opt_text,
    },
)
stream_responses = objects(
    {"id": text},
    {
        "type": st.just("Stream"),
        "errorCode": st.integers(0, 13),
        "errorText": text,
        "page": st.none() | ints,
        "lastPage": st.none() | st.sampled_from(["true", "false"]) | text,
        "itemsInPage": st.none() | ints,
        "totalItems": st.none() | ints,
        "orderedItems": opt_list(ordered_item),
    },
)

# Lenient objects OSCC sends: enum-like strings may be "" or null.
event_source = objects(
    {},
    {
        "id": opt_text,
        "type": st.none() | st.sampled_from(["Person", "Organization", ""]),
        "name": opt_text,
        "location": opt_text,
        "language": opt_text,
        "additionalInfos": opt_list(key_values | text),
    },
)
event_destination = objects(
    {},
    {
        "id": opt_text,
        "type": st.none() | st.sampled_from(["User", "Page", ""]),
        "name": opt_text,
        "URL": opt_text,
        "additionalInfos": opt_list(key_values | text),
    },
)
event_published_object = objects(
    {},
    {
        "id": opt_text,
        "fatherId": opt_text,
        "inReplyTo": st.none() | in_reply_to,
        "title": opt_text,
        "content": opt_text,
        "contactData": opt_list(key_values),
        "attachments": opt_list(json_values),
        "tagList": opt_list(json_values),
    },
)
publications = objects(
    {
        "type": values(m.ContactType),
        "objectToBePublished": objects(
            {},
            {
                "id": opt_text,
                "inReplyTo": st.none() | in_reply_to,
                "title": opt_text,
                "content": opt_text,
                "attachments": opt_list(json_values),
            },
        ),
    },
    {
        "dateTime": st.none() | dates | text,
        "source": st.none() | event_source,
        "destination": st.none() | event_destination,
    },
)
stream_requests = objects(
    {"type": st.just("Stream"), "id": text},
    {"destinationId": opt_text, "numberOfMessages": digits_or_text},
)

transfer_party = objects(
    {},
    {
        "type": int_or_str,
        "called": opt_text,
        "ISiteKey": int_or_str,
        "deviceID": opt_text,
        "agentID": opt_text,
        "IAgentKey": int_or_str,
        "ITeamKey": int_or_str,
        "teamName": opt_text,
        "state": int_or_str,
        "m_isCtiEventReceived": st.none() | st.booleans(),
        "m_isCtiEventExpected": st.none() | st.booleans(),
        "m_connectionState": int_or_str,
    },
)
_BASE = {"dateTime": st.none() | dates | text, "contactID": opt_text, "agentID": opt_text}
_CONTACT = {
    "source": st.none() | event_source,
    "publishedObject": st.none() | event_published_object,
    "destination": st.none() | event_destination,
}
EVENT_FIELDS: dict[m.EventType, dict[str, st.SearchStrategy[Any]]] = {
    m.EventType.DELIVERED: _CONTACT,
    m.EventType.ESTABLISHED: {},
    m.EventType.HELD: {**_CONTACT, "heldReason": digits_or_text},
    m.EventType.RETRIEVED: _CONTACT,
    m.EventType.TRANSFERRED: {
        "m_TransferReason": int_or_str,
        "m_TransferTargetType": int_or_str,
        "m_TransferringParty": st.none() | transfer_party,
        "m_TransferTargetParty": st.none() | transfer_party,
    },
    m.EventType.DISCONNECTED: {
        "discardReason": digits_or_text,
        "disconnectReason": opt_text,
        "disconnectedParty": st.none()
        | objects(
            {}, {"agentKey": digits_or_text, "device": opt_text, "partyType": digits_or_text}
        ),
    },
    m.EventType.DIVERTED: {},
}


def events(event_type: m.EventType) -> st.SearchStrategy[dict[str, Any]]:
    return objects(
        {"type": st.just("OpenMediaEvent"), "openMediaEventType": st.just(event_type.value)},
        {**_BASE, **EVENT_FIELDS[event_type]},
    )


@st.composite
def spelled(
    draw: st.DrawFn, canonical: st.SearchStrategy[dict[str, Any]]
) -> tuple[dict[str, Any], bytes]:
    """A canonical object and the JSON a sender might send for it."""
    body = draw(canonical)
    return body, codec.encode(respell(draw, body))


PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(body: dict[str, Any], data: bytes, decode: Decoder, cls: type[m.Wire]) -> None:
    """Decoding the respelled form yields exactly the canonical body, a fixed point."""
    parsed = decode(data)
    assert type(parsed.obj) is cls
    assert parsed.body == body
    assert non_canonical(parsed.body) == []
    assert_round_trip(parsed, decode)


@given(spelled(new_contacts))
@PROPERTY
def test_new_contact_any_spelling(case: tuple[dict[str, Any], bytes]) -> None:
    check(*case, codec.decode_new_contact, m.NewContact)


@given(spelled(stream_responses))
@PROPERTY
def test_stream_response_any_spelling(case: tuple[dict[str, Any], bytes]) -> None:
    check(*case, codec.decode_stream_response, m.StreamResponse)


@given(spelled(publications))
@PROPERTY
def test_outgoing_publication_any_spelling(case: tuple[dict[str, Any], bytes]) -> None:
    check(*case, codec.decode_inbound, m.OutgoingPublication)


@given(spelled(stream_requests), st.sampled_from(["Stream", "STREAM", "stream"]))
@PROPERTY
def test_stream_request_any_spelling(case: tuple[dict[str, Any], bytes], tag: str) -> None:
    body, data = case
    raw = json.loads(data)
    raw["type"] = tag
    check(body, codec.encode(raw), codec.decode_inbound, m.StreamRequest)


@pytest.mark.parametrize("event_type", list(m.EventType))
@given(data=st.data())
@PROPERTY
def test_event_any_spelling(event_type: m.EventType, data: st.DataObject) -> None:
    body, sent = data.draw(spelled(events(event_type)))
    check(body, sent, codec.decode_inbound, m.EVENT_CLASSES[event_type])


@given(
    spelled(
        objects(
            {
                "type": st.just("OpenMediaEvent"),
                "openMediaEventType": st.from_regex(r"[A-Z][a-z]{2,8}Event", fullmatch=True).filter(
                    lambda t: t.lower() not in {e.value.lower() for e in m.EventType}
                ),
            },
            {**_BASE, "anything": json_values},
        )
    )
)
@PROPERTY
def test_unknown_event_any_spelling(case: tuple[dict[str, Any], bytes]) -> None:
    body, data = case
    parsed = codec.decode_inbound(data)
    assert parsed.obj.kind == "unknown"
    check(body, data, codec.decode_inbound, m.OpenMediaEvent)


@given(spelled(new_contacts))
@PROPERTY
def test_normalize_is_idempotent(case: tuple[dict[str, Any], bytes]) -> None:
    _, sent = case
    once = spelling.normalize(json.loads(sent), m.NewContact)
    assert spelling.normalize(once, m.NewContact) == once
    assert spelling.normalize(copy.deepcopy(once), m.NewContact) == once


@pytest.mark.parametrize("shape", ["list", "object"])
def test_json_nesting_is_bounded_at_max_depth(shape: str) -> None:
    def nested(levels: int) -> bytes:
        value: object = 1
        for _ in range(levels):
            value = [value] if shape == "list" else {"a": value}
        return json.dumps(value).encode()

    assert codec.decode_json(nested(codec.MAX_DEPTH)) is not None
    with pytest.raises(Rejected) as exc:
        codec.decode_json(nested(codec.MAX_DEPTH + 1))
    assert exc.value.code == 11
    assert f"deeper than {codec.MAX_DEPTH}" in exc.value.text
    assert codec.decode_json(b"5") == 5  # a bare scalar nests nothing
