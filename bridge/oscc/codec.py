"""Reading and writing the guide's objects: every spelling in, one canonical spelling out.

The guide's examples disagree with its tables (``additionalInfo`` vs ``additionalInfos``,
``date`` vs ``dateTime``, ``url`` vs ``URL``, upper-case ``"POST"``, ``"true"`` as a
string, ...). Input goes through `normalize` (spelling.py), which accepts every spelling and
yields the canonical form (the tables' names); `msgspec.convert` then validates it into a Struct of
`bridge.oscc.models`. The canonical *dict* is what the bridge emits, so fields it does not
model survive::

    >>> parsed = decode_new_contact(b'{"type": "POST", "dateTIme": "...", ...}')
    >>> parsed.obj.type                 # typed access
    <ContactType.POST: 'Post'>
    >>> parsed.body["dateTime"]         # canonical dict, unknown fields kept
    >>> encode(parsed.body)             # canonical JSON bytes

What the bridge sends is checked as OSCC would: 11 WRONG_API_REQUEST (not the object),
12 STRING_OUT_OF_BOUND (`check_limits`), 13 WRONG_DATE_FORMAT (`check_date`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from bridge.errors import Rejected
from bridge.oscc.codes import ErrorCode
from bridge.oscc.models import (
    EVENT_CLASSES,
    ContactType,
    EventType,
    NewContact,
    OpenMediaEvent,
    OutgoingPublication,
    StreamRequest,
    StreamResponse,
    Wire,
)
from bridge.oscc.spelling import enum_values, normalize

_T = TypeVar("_T", bound=Wire)


# ---------------------------------------------------------------------------------------
# Validation: limits and dates


def check_limits(obj: Wire, path: str = "$") -> None:
    """Raise Rejected(12 STRING_OUT_OF_BOUND) for the first field over the guide's limit."""
    limits = obj.__limits__
    for name, encoded in zip(obj.__struct_fields__, obj.__struct_encode_fields__, strict=True):
        value = getattr(obj, name)
        limit = limits.get(encoded)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise Rejected(
                f"{path}.{encoded} is {len(value)} characters, the limit is {limit}",
                code=ErrorCode.STRING_OUT_OF_BOUND,
                path=f"{path}.{encoded}",
            )
        if isinstance(value, Wire):
            check_limits(value, f"{path}.{encoded}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Wire):
                    check_limits(item, f"{path}.{encoded}[{i}]")


def parse_date(text: str) -> dt.datetime | None:
    """Parse the guide's date forms: RFC 1123 (``Date().toUTCString()``) or ISO 8601
    (including the events' ``2018-02-20 15:08:40.994``). None when it is not a date."""
    text = text.strip()
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def check_date(value: str | None, path: str) -> None:
    """Raise Rejected(13 WRONG_DATE_FORMAT) when `value` is present and not a date."""
    if value is not None and parse_date(value) is None:
        raise Rejected(
            f"{path} is not a date: {value[:64]!r}", code=ErrorCode.WRONG_DATE_FORMAT, path=path
        )


def utc_now_iso() -> str:
    """Current UTC time as the guide's example writes it: ``2016-09-10T15:04:55Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------
# Decoding entry points

_json_decoder = msgspec.json.Decoder()
MAX_DEPTH = 64  # levels of objects and arrays a body may nest (the guide's go to 5)
_json_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Parsed(Generic[_T]):
    """A validated object (`obj`) and its canonical dict (`body`, unknown fields kept)."""

    obj: _T
    # Out of repr: the body holds secrets (token, sessionToken, password) in the clear,
    # while `obj`'s repr masks them.
    body: dict[str, Any] = field(repr=False)


def encode(body: Any) -> bytes:
    """Canonical JSON bytes of a body dict or Struct."""
    return _json_encoder.encode(body)


def decode_json(data: bytes | str) -> Any:
    """Decode JSON; Rejected(11) when it is not JSON, or nested deeper than MAX_DEPTH."""
    try:
        value = _json_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec raises UnicodeDecodeError, not DecodeError, for a UTF-8-encoded
        # surrogate in a string (b'"\xed\xa0\x80"'), and RecursionError for nesting
        # deeper than the interpreter's limit (a JSON bomb): not JSON we can take either.
        raise Rejected(f"not JSON: {exc}", code=ErrorCode.WRONG_API_REQUEST) from exc
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if too_deep(raw):
        raise Rejected(
            f"JSON nested deeper than {MAX_DEPTH} levels", code=ErrorCode.WRONG_API_REQUEST
        )
    return value


# A JSON string, escapes included: brackets inside strings do not nest anything.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when valid JSON `data` nests objects/arrays deeper than `limit`.

    The decoder's own bound is the interpreter's recursion limit *from where it is
    called*: a body the webhook could just decode would then be published, and fail to
    decode in a subscriber whose stack is deeper (the fuzz suite found one). A fixed
    bound, far above any object of the guide (5 levels), holds everywhere.

    Read from the bytes, not by walking the decoded value: a walk in Python took 200 ms
    for a 1 MB body of 300 000 empty objects, and held the event loop as long. Here
    every step is a C loop over bytes: strings out, brackets kept (``{}`` as ``[]``:
    valid JSON closes what it opens), then each pass of ``replace("[]", "")`` removes
    the innermost pairs, one level; what is left after `limit` passes is deeper.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the usual small body: too few brackets to nest that deep
    brackets = _STRING.sub(b"", data).translate(_SQUARE, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def convert(raw: Any, cls: type[_T]) -> Parsed[_T]:
    """Normalize decoded JSON `raw` and validate it as `cls`; Rejected(11) if it is not one."""
    if not isinstance(raw, dict):
        raise Rejected(
            f"expected a JSON object, got {type(raw).__name__}", code=ErrorCode.WRONG_API_REQUEST
        )
    body = normalize(raw, cls)
    try:
        obj = msgspec.convert(body, cls)
    except msgspec.ValidationError as exc:
        at = _AT.search(str(exc))
        raise Rejected(
            str(exc), code=ErrorCode.WRONG_API_REQUEST, path=at.group(1) if at else "$"
        ) from exc
    return Parsed(obj, body)


# msgspec ends a validation message with " - at `$.source.type`"; no path means the root.
_AT = re.compile(r" - at `(\$[^`]*)`$")


def decode_new_contact(data: bytes | str | dict[str, Any]) -> Parsed[NewContact]:
    """A New Contact in any accepted spelling, checked as OSCC would check it.

    A missing `dateTime` is filled with the current UTC time. Raises Rejected with 11
    (not a New Contact), 12 (a field over its limit) or 13 (a dateTime that is no date).
    """
    raw = data if isinstance(data, dict) else decode_json(data)
    if isinstance(raw, dict):
        # Normalize first so that every spelling of dateTime (date, dateTIme, DATETIME...)
        # counts as present; normalizing again in `convert` changes nothing.
        raw = normalize(raw, NewContact)
        if raw.get("dateTime") is None:
            raw["dateTime"] = utc_now_iso()
    parsed = convert(raw, NewContact)
    check_limits(parsed.obj)
    check_date(parsed.obj.date_time, "$.dateTime")
    return parsed


def decode_stream_response(data: bytes | str | dict[str, Any]) -> Parsed[StreamResponse]:
    """A Stream Response in any accepted spelling; Rejected 11/12/13 as for contacts."""
    parsed = convert(data if isinstance(data, dict) else decode_json(data), StreamResponse)
    check_limits(parsed.obj)
    for i, item in enumerate(parsed.obj.ordered_items or ()):
        check_date(item.date_time, f"$.orderedItems[{i}].dateTime")
    return parsed


Inbound = OutgoingPublication | StreamRequest | OpenMediaEvent


def decode_inbound(data: bytes | str | dict[str, Any]) -> Parsed[Inbound]:
    """Classify and validate one object OSCC sent to the webhook.

    Dispatches on `type` (case-insensitively): ``OpenMediaEvent`` -> the event class for
    its `openMediaEventType` (OpenMediaEvent itself for types the guide does not list),
    ``Stream`` -> StreamRequest, a publication type -> OutgoingPublication. Anything else
    is Rejected(11 WRONG_API_REQUEST).
    """
    raw = data if isinstance(data, dict) else decode_json(data)
    if not isinstance(raw, dict):
        raise Rejected("expected a JSON object", code=ErrorCode.WRONG_API_REQUEST)
    kind = _get(raw, "type")
    kind = kind.lower() if isinstance(kind, str) else None
    cls: type[Inbound]
    match kind:
        case "openmediaevent":
            tag = _get(raw, "openMediaEventType")
            cls = EVENT_CLASSES.get(_event_type(tag), OpenMediaEvent)
        case "stream":
            cls = StreamRequest
        case str() if kind in enum_values(ContactType):
            cls = OutgoingPublication
        case _:
            raise Rejected(
                f"unknown object type {raw.get('type')!r}", code=ErrorCode.WRONG_API_REQUEST
            )
    parsed: Parsed[Inbound] = convert(raw, cls)
    if isinstance(parsed.obj, OpenMediaEvent):
        parsed.body["type"] = parsed.obj.type = "OpenMediaEvent"
        if cls is not OpenMediaEvent:
            parsed.body["openMediaEventType"] = parsed.obj.open_media_event_type = _event_type(
                parsed.obj.open_media_event_type
            )
    elif isinstance(parsed.obj, StreamRequest):
        parsed.body["type"] = parsed.obj.type = "Stream"
    return parsed


def _get(raw: dict[str, Any], name: str) -> Any:
    """`raw[name]`, matching the key case-insensitively as `normalize` does."""
    if name in raw:
        return raw[name]
    lower = name.lower()
    return next((v for k, v in raw.items() if isinstance(k, str) and k.lower() == lower), None)


def _event_type(tag: Any) -> str:
    if not isinstance(tag, str):
        return ""
    return str(enum_values(EventType).get(tag.lower(), tag))
