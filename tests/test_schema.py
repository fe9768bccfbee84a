"""The JSON Schema of the AMQP interface covers every message family, agrees with the models
(limits included), and deploy/asyncapi.yaml is in step with both."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridge import cli, schema
from bridge.asyncapi import asyncapi, to_yaml
from bridge.errors import Rejected
from bridge.oscc import codec, models
from bridge.schema import ContactOutcome, SessionChange, schemas
from bridge.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
ASYNCAPI_FILE = ROOT / "deploy" / "asyncapi.yaml"
GUIDE = ROOT / "tests" / "data" / "guide"
C = "<c>"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return schemas()


def validator(doc: dict[str, Any], routing_key: str) -> jsonschema.Draft202012Validator:
    """A validator for the body of `routing_key`, resolving refs inside `doc`."""
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator({**doc, "$ref": f"#/messages/{routing_key}"})


def errors(doc: dict[str, Any], routing_key: str, body: Any) -> list[str]:
    """Every error message, those under anyOf branches included."""
    todo = list(validator(doc, routing_key).iter_errors(body))
    out = []
    while todo:
        error = todo.pop()
        out.append(error.message)
        todo += error.context or []
    return out


def every_routing_key() -> set[str]:
    """Every routing key family DESIGN.md lists, built with Topology's own functions."""
    t = Topology
    return {
        t.contact_new_key(C),
        t.stream_response_key(C),
        *(t.event_key(C, kind) for kind in models.EVENT_KINDS),
        t.publication_key(C, "<type>"),
        t.stream_request_key(C),
        t.contact_outcome_key(C, True),
        t.contact_outcome_key(C, False),
        *(t.session_key(C, change) for change in ("registered", "lost", "failed")),
    }


# -- coverage -------------------------------------------------------------------------------


def test_schema_covers_every_routing_key_family(doc: dict[str, Any]) -> None:
    assert set(doc["messages"]) == every_routing_key()


def test_design_event_kinds_are_all_there(doc: dict[str, Any]) -> None:
    kinds = "delivered established held retrieved transferred disconnected diverted unknown"
    assert {f"<c>.event.{k}" for k in kinds.split()} <= set(doc["messages"])


def test_every_body_is_the_model_for_its_key(doc: dict[str, Any]) -> None:
    expected = {
        "<c>.contact.new": "NewContact",
        "<c>.stream.response": "StreamResponse",
        "<c>.publication.<type>": "OutgoingPublication",
        "<c>.stream.request": "StreamRequest",
        "<c>.contact.accepted": "ContactOutcome",
        "<c>.contact.rejected": "ContactOutcome",
        "<c>.session.registered": "SessionChange",
        "<c>.session.lost": "SessionChange",
        "<c>.session.failed": "SessionChange",
        "<c>.event.unknown": "OpenMediaEvent",
        **{f"<c>.event.{cls.kind}": cls.__name__ for cls in models.EVENT_CLASSES.values()},
    }
    got = {key: m["$ref"].removeprefix("#/$defs/") for key, m in doc["messages"].items()}
    assert got == expected


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in doc["$defs"], ref


def test_schema_is_valid_json_schema(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(doc)


# -- limits ---------------------------------------------------------------------------------


def _limited_structs() -> list[type[models.Wire]]:
    structs = schema.structs([m.body for m in schema.catalogue()])
    return [cls for cls in structs if issubclass(cls, models.Wire) and cls.__limits__]


def test_every_model_limit_is_a_max_length(doc: dict[str, Any]) -> None:
    structs = _limited_structs()
    assert {c.__name__ for c in structs} >= {"Source", "PublishedObject", "Destination"}
    for cls in structs:
        props = doc["$defs"][cls.__name__]["properties"]
        for field, limit in cls.__limits__.items():
            prop = props[field]
            strings = [b for b in prop.get("anyOf", [prop]) if b.get("type") == "string"]
            assert [b["maxLength"] for b in strings] == [limit], (cls.__name__, field)


def test_new_contact_limits_are_the_guides(doc: dict[str, Any]) -> None:
    defs = doc["$defs"]

    def limit(struct: str, field: str) -> int:
        prop = defs[struct]["properties"][field]
        [string] = [b for b in prop.get("anyOf", [prop]) if b.get("type") == "string"]
        return int(string["maxLength"])

    assert limit("Source", "id") == limit("Source", "name") == 256
    assert limit("Source", "location") == limit("Source", "language") == 256
    assert limit("PublishedObject", "content") == 5000
    assert limit("PublishedObject", "title") == limit("PublishedObject", "fatherId") == 256
    assert limit("Destination", "id") == limit("Destination", "name") == 256
    assert limit("InReplyTo", "id") == 256


def new_contact(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Post",
        "dateTime": "2016-09-10T15:04:55Z",
        "source": {"id": "s-1", "type": "Person", "name": "Abigail"},
        "publishedObject": {"id": "p-1", "content": "hello"},
        "destination": {"id": "d-1", "type": "Page", "name": "Shop"},
    }
    for path, value in changes.items():
        node = body
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return body


def test_contact_at_the_limits_is_valid(doc: dict[str, Any]) -> None:
    body = new_contact(source__id="s" * 256, publishedObject__content="c" * 5000)
    assert errors(doc, "<c>.contact.new", body) == []
    codec.decode_new_contact(body)  # and the bridge agrees


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source__id", "s" * 257),
        ("source__name", "n" * 257),
        ("destination__id", "d" * 257),
        ("publishedObject__content", "c" * 5001),
        ("publishedObject__title", "t" * 257),
    ],
)
def test_contact_over_a_limit_is_invalid_for_schema_and_bridge(
    doc: dict[str, Any], field: str, value: str
) -> None:
    body = new_contact(**{field: value})
    assert any("is too long" in e for e in errors(doc, "<c>.contact.new", body))
    with pytest.raises(Rejected) as info:
        codec.decode_new_contact(body)
    assert info.value.code == 12


def test_contact_missing_required_field_is_invalid(doc: dict[str, Any]) -> None:
    body = new_contact()
    del body["source"]["id"]
    assert errors(doc, "<c>.contact.new", body)
    body = new_contact(type="Telegram")
    assert errors(doc, "<c>.contact.new", body)


def test_unknown_fields_are_allowed(doc: dict[str, Any]) -> None:
    """The bridge carries fields it does not model through; the schema must not forbid them."""
    body = new_contact(source__nickname="abby", extra={"a": 1})
    assert errors(doc, "<c>.contact.new", body) == []


# -- the guide's own examples, canonicalized, validate -----------------------------------------


def _guide(name: str) -> Any:
    path = GUIDE / name
    if not path.exists():
        pytest.skip(f"{path} is not there")
    return json.loads(path.read_text())


def test_guide_new_contact_validates(doc: dict[str, Any]) -> None:
    parsed = codec.decode_new_contact(_guide("new_contact.json"))
    assert errors(doc, "<c>.contact.new", parsed.body) == []


def test_guide_stream_response_validates(doc: dict[str, Any]) -> None:
    parsed = codec.decode_stream_response(_guide("stream_response.json"))
    assert errors(doc, "<c>.stream.response", parsed.body) == []


@pytest.mark.parametrize(
    "name",
    [
        "event_delivered.json",
        "event_established.json",
        "event_held.json",
        "event_retrieved.json",
        "event_transferred.json",
        "event_disconnected.json",
        "outgoing_publication.json",
        "stream_request.json",
    ],
)
def test_guide_inbound_objects_validate_under_their_routing_key(
    doc: dict[str, Any], name: str
) -> None:
    parsed = codec.decode_inbound(_guide(name))
    match parsed.obj:
        case models.OpenMediaEvent(kind=kind):
            key = Topology.event_key(C, kind)
        case models.OutgoingPublication():
            key = Topology.publication_key(C, "<type>")
        case models.StreamRequest():
            key = Topology.stream_request_key(C)
    assert errors(doc, key, parsed.body) == []


def test_unknown_event_validates(doc: dict[str, Any]) -> None:
    body = {"type": "OpenMediaEvent", "openMediaEventType": "FutureEvent", "contactID": "x"}
    parsed = codec.decode_inbound(body)
    assert type(parsed.obj) is models.OpenMediaEvent
    assert errors(doc, Topology.event_key(C, parsed.obj.kind), parsed.body) == []


# -- the bodies only the bridge makes -----------------------------------------------------------


def test_contact_outcome_encodes_to_a_valid_body(doc: dict[str, Any]) -> None:
    outcome = ContactOutcome(
        message_id="m-1",
        published_object_id="p-1",
        source_id="s-1",
        error_code=12,
        error_text="STRING_OUT_OF_BOUND",
        reason="$.source.id is 300 characters, the limit is 256",
    )
    body = json.loads(msgspec.json.encode(outcome))
    assert set(body) == {
        "messageId",
        "publishedObjectId",
        "sourceId",
        "errorCode",
        "errorText",
        "reason",
    }
    for key in ("<c>.contact.accepted", "<c>.contact.rejected"):
        assert errors(doc, key, body) == []
    assert errors(doc, "<c>.contact.rejected", {**body, "errorCode": "12"})


def test_session_change_encodes_to_a_valid_body(doc: dict[str, Any]) -> None:
    change = SessionChange(
        connector="facebook",
        title="facebook",
        state="registered",
        at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        user_credentials=models.UserCredentials(user_name="u", password="p"),
    )
    body = json.loads(msgspec.json.encode(change))
    assert body["at"] == "2024-01-02T03:04:05Z"
    assert body["userCredentials"] == {"userName": "u", "password": "p"}
    for key in ("<c>.session.registered", "<c>.session.lost", "<c>.session.failed"):
        assert errors(doc, key, body) == []
    back = msgspec.json.decode(msgspec.json.encode(change), type=SessionChange)
    assert back == change
    assert "p'" not in repr(back.user_credentials)  # the password stays masked in repr


def test_the_supervisors_change_bodies_are_session_changes() -> None:
    """The body bridge.session hands to on_change converts to a SessionChange."""
    from bridge import session, session_status

    body = {
        "connector": "facebook",
        "title": "facebook",
        "state": str(session.SessionState.BACKOFF),
        "at": session_status.iso(1_700_000_000.5),
        "errorCode": 7,
        "errorText": "NOT_READY",
    }
    change = msgspec.convert(body, SessionChange)
    assert change.at == dt.datetime.fromtimestamp(1_700_000_000.5, dt.UTC)


def test_the_consumers_outcome_ids_are_contact_outcome_fields() -> None:
    from bridge import delivery

    ids = delivery.ids_of(delivery.MessageKind.CONTACT, new_contact())
    assert ids == {"publishedObjectId": "p-1", "sourceId": "s-1"}
    fields = {f.encode_name for f in msgspec.structs.fields(ContactOutcome)}
    assert set(ids) | {"messageId", "errorCode", "errorText", "reason"} == fields


def test_session_change_needs_an_aware_time() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {"connector": "c", "title": "t", "state": "lost", "at": "2024-01-02T03:04:05"},
            SessionChange,
        )


# -- main() -------------------------------------------------------------------------------------


def test_cli_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schemas()


def test_cli_prints_the_asyncapi_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "--asyncapi"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == asyncapi()


def test_schema_does_not_import_asyncapi() -> None:
    """No import circle: asyncapi builds on schema, never the other way round."""
    import ast

    tree = ast.parse(Path(schema.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not any("asyncapi" in name or name == "bridge.cli" for name in imported)


# -- deploy/asyncapi.yaml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI_FILE.read_text())
    return loaded


def test_asyncapi_file_is_up_to_date(api: dict[str, Any]) -> None:
    """Regenerate with: oscc-bridge schema --asyncapi > deploy/asyncapi.yaml"""
    assert api == asyncapi()
    assert ASYNCAPI_FILE.read_text() == to_yaml(asyncapi()) + "\n"


def _resolve(api: dict[str, Any], ref: str) -> Any:
    node: Any = api
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _as_asyncapi(node: Any) -> Any:
    """`node` with its refs moved from #/$defs/ to #/components/schemas/."""
    text = json.dumps(node).replace('"#/$defs/', '"#/components/schemas/')
    return json.loads(text)


def test_asyncapi_payloads_are_the_schema_bodies(api: dict[str, Any], doc: dict[str, Any]) -> None:
    by_key = {m["title"]: m for m in api["components"]["messages"].values()}
    for key, entry in doc["messages"].items():
        message = by_key[key]
        payload = _resolve(api, message["payload"]["$ref"])
        body = doc["$defs"][entry["$ref"].removeprefix("#/$defs/")]
        assert payload == _as_asyncapi(body), key
    assert api["components"]["schemas"] == _as_asyncapi(doc["$defs"])


def test_asyncapi_refs_resolve(api: dict[str, Any]) -> None:
    for ref in _refs(api):
        assert ref.startswith("#/"), ref
        _resolve(api, ref)


def test_asyncapi_channels_are_every_queue_and_routing_key(api: dict[str, Any]) -> None:
    top = Topology("oscc")
    conn = "{connector}"
    queues = {
        top.contact_queue(conn),
        top.stream_response_queue(conn),
        top.dead_queue(conn),
        top.unrouted,
    }
    keys = {k.replace(C, conn).replace("<type>", "{type}") for k in every_routing_key()}
    channels = api["channels"].values()
    by_kind: dict[str, set[str]] = {"queue": set(), "routingKey": set()}
    for channel in channels:
        by_kind[channel["bindings"]["amqp"]["is"]].add(channel["address"])
    assert by_kind["queue"] == queues
    assert by_kind["routingKey"] == keys
    exchanges = {
        c["bindings"]["amqp"]["exchange"]["name"]
        for c in channels
        if c["bindings"]["amqp"]["is"] == "routingKey"
    }
    assert exchanges == {top.exchange}


def test_asyncapi_headers_are_designs(api: dict[str, Any]) -> None:
    messages = api["components"]["messages"]

    def headers(name: str) -> set[str]:
        return set(messages[name]["headers"]["properties"])

    assert headers("eventDelivered") == {
        "oscc-connector",
        "oscc-contact-id",
        "oscc-agent-id",
        "oscc-event",
    }
    assert headers("publication") == {"oscc-connector", "oscc-published-id", "oscc-in-reply-to"}
    assert headers("contactRejected") >= {"oscc-error-code", "oscc-error-text"}
    assert headers("sessionLost") == {"oscc-connector"}
    published = [m for m in messages.values() if "headers" in m and m["name"] != "deadLetter"]
    assert all("oscc-connector" in m["headers"]["required"] for m in published)


def test_asyncapi_operations_point_at_their_channels(api: dict[str, Any]) -> None:
    for name, op in api["operations"].items():
        channel = _resolve(api, op["channel"]["$ref"])
        for ref in op["messages"]:
            assert ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), name
            assert _resolve(api, ref["$ref"]) in channel["messages"].values()
    receives = {
        op["channel"]["$ref"] for op in api["operations"].values() if op["action"] == "receive"
    }
    assert receives == {"#/channels/contactNewQueue", "#/channels/streamResponseQueue"}


def _official_schema() -> dict[str, Any] | None:
    """The AsyncAPI 3.0.0 JSON Schema from the npm package @asyncapi/specs, if installed."""
    candidates = [os.environ.get("ASYNCAPI_SPEC_SCHEMA", "")]
    for base in (ROOT, Path.home()):
        candidates.append(str(base / "node_modules/@asyncapi/specs/schemas/3.0.0-without-$id.json"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            loaded: dict[str, Any] = json.loads(Path(candidate).read_text())
            return loaded
    return None


def test_asyncapi_is_valid_against_the_official_schema(api: dict[str, Any]) -> None:
    official = _official_schema()
    if official is None:
        pytest.skip(
            "AsyncAPI 3.0.0 JSON Schema not found: `npm install @asyncapi/specs` in the project "
            "root, or set ASYNCAPI_SPEC_SCHEMA to its schemas/3.0.0-without-$id.json"
        )
    check = jsonschema.Draft7Validator(official)
    assert [e.message for e in check.iter_errors(api)] == []
    broken = copy.deepcopy(api)
    broken["operations"]["consumeContactNew"]["action"] = "eat"
    assert list(check.iter_errors(broken))  # the official schema does look inside


# -- to_yaml ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_to_yaml_round_trips_through_a_yaml_reader(value: Any) -> None:
    assert yaml.safe_load(to_yaml(value)) == value


@pytest.mark.parametrize("key", ["yes", "No", "on", "null", "true", "y", "1", "a b", "$ref", ""])
def test_to_yaml_quotes_keys_a_reader_would_change(key: str) -> None:
    assert yaml.safe_load(to_yaml({key: 1})) == {key: 1}
