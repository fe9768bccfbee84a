"""`oscc-bridge schema --input` (bridge/inputschema.py): the lenient schema accepts every
body the bridge's decoder accepts, over the same generator the model tests use, and the
guide's own examples and samples; it still refuses what the decoder refuses for its shape."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from hypothesis import given

from bridge import cli
from bridge.errors import Rejected
from bridge.inputschema import any_case, input_schema
from bridge.oscc import codec
from bridge.schema import schemas
from tests.test_models import PROPERTY, load, new_contacts, spelled, stream_responses

DOC = input_schema()
CONTACT, STREAM = "<c>.contact.new", "<c>.stream.response"


def validator(doc: dict[str, Any], key: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**doc, "$ref": f"#/messages/{key}"})


INPUT = {key: validator(DOC, key) for key in (CONTACT, STREAM)}


def problems(key: str, body: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in INPUT[key].iter_errors(body)]


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(DOC)
    assert set(DOC["messages"]) == {CONTACT, STREAM}


@pytest.mark.parametrize("name", ["new_contact.json", "js_new_contact.json"])
def test_the_guides_contacts_validate(name: str) -> None:
    body = load(name)
    codec.decode_new_contact(codec.encode(body))  # the bridge takes it ...
    assert problems(CONTACT, body) == []  # ... and so does the schema


def test_the_js_sample_fails_the_canonical_schema_but_not_the_input_schema() -> None:
    """Why `--input` exists: the published (canonical) schema refuses the guide's sample."""
    body = load("js_new_contact.json")
    assert list(validator(schemas(), CONTACT).iter_errors(body))
    assert problems(CONTACT, body) == []


@pytest.mark.parametrize("name", ["stream_response.json", "js_stream_response.json"])
def test_the_guides_stream_responses_validate(name: str) -> None:
    body = load(name)
    codec.decode_stream_response(codec.encode(body))
    assert problems(STREAM, body) == []


@given(spelled(new_contacts))
@PROPERTY
def test_every_accepted_contact_validates(case: tuple[dict[str, Any], bytes]) -> None:
    _, data = case
    codec.decode_new_contact(data)
    assert problems(CONTACT, json.loads(data)) == []


@given(spelled(stream_responses))
@PROPERTY
def test_every_accepted_stream_response_validates(case: tuple[dict[str, Any], bytes]) -> None:
    _, data = case
    codec.decode_stream_response(data)
    assert problems(STREAM, json.loads(data)) == []


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        for key in path[:-1]:
            body = body[key]
        body[path[-1]] = value

    return change


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        for key in path[:-1]:
            body = body[key]
        del body[path[-1]]

    return change


@pytest.mark.parametrize(
    "change",
    [
        _drop("source"),
        _drop("publishedObject", "id"),
        _set(("type",), "Tweet"),
        _set(("isRealTimeHandling",), "maybe"),
        _set(("source", "id"), {"a": 1}),
        _set(("source",), "me"),
        _set(("source", "type"), "Robot"),
    ],
    ids=[
        "no-source",
        "no-id",
        "unknown-type",
        "not-a-boolean",
        "id-not-text",
        "not-object",
        "bad-enum",
    ],
)
def test_what_the_bridge_refuses_for_its_shape_the_schema_refuses(
    change: Callable[[dict[str, Any]], None],
) -> None:
    """Lenient, not empty."""
    body = load("js_new_contact.json")
    change(body)
    with pytest.raises(Rejected):
        codec.decode_new_contact(codec.encode(body))
    assert problems(CONTACT, body)


def test_any_case_matches_as_str_lower_does() -> None:
    pattern = re.compile(f"^{any_case('dateTime')}$")
    for spelling in ("dateTime", "DATETIME", "datetime", "dAtEtImE"):
        assert pattern.match(spelling)
    assert not pattern.match("date_time")
    assert re.fullmatch(any_case("key"), "\u212aEY")  # "\u212a".lower() == "k"
    assert "\u212aey".lower() == "key"


def test_cli_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "--input"]) == 0
    assert json.loads(capsys.readouterr().out) == DOC
