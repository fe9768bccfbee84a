"""Every object of the OpenMedia programming guide, as msgspec Structs.

Field names are the tables' (the canonical spelling); `__aliases__` lists the other
spellings the guide's examples use, and `__limits__` the guide's length limits. Reading
and writing them (every spelling in, one out, unknown fields kept, limits and dates
checked) is `bridge.oscc.codec`.

Objects the bridge *sends* to OSCC (§3 New Contact, §4 Stream Response, Registration) are
strict: enums, required ids, and the guide's length limits (12 STRING_OUT_OF_BOUND) and
date format (13 WRONG_DATE_FORMAT). Objects OSCC *sends us* (§4 Outgoing Publication,
Stream Request, §5 events) are lenient, because OSCC's own examples carry ``""`` and
``null`` where the tables promise an enum; losing an agent's reply over that would be worse.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import msgspec

# ---------------------------------------------------------------------------------------
# Enums of the guide's type strings


class ContactType(enum.StrEnum):
    """New Contact / Outgoing Publication `type`."""

    POST = "Post"
    DIRECT_MESSAGE = "DirectMessage"
    ARTICLE = "Article"
    TICKET = "Ticket"
    EXTERNAL_MEDIA = "ExternalMedia"


class SourceType(enum.StrEnum):
    PERSON = "Person"
    ORGANIZATION = "Organization"


class DestinationType(enum.StrEnum):
    USER = "User"
    PAGE = "Page"


class AttachmentType(enum.StrEnum):
    IMAGE = "Image"
    VIDEO = "Video"
    AUDIO = "Audio"
    DOCUMENT = "Document"


class EventType(enum.StrEnum):
    """`openMediaEventType` values of guide §5."""

    DELIVERED = "DeliveredOpenMediaEvent"
    ESTABLISHED = "EstablishedEvent"
    HELD = "HeldOpenMediaEvent"
    RETRIEVED = "RetrievedOpenMediaEvent"
    TRANSFERRED = "TransferredOpenMediaEvent"
    DISCONNECTED = "DisconnectedEvent"
    DIVERTED = "DivertedOpenMediaEvent"


# ---------------------------------------------------------------------------------------
# Base class


class Wire(msgspec.Struct, kw_only=True, rename="camel"):
    """Base of every wire object.

    `__aliases__` maps alternative spellings to the canonical (encoded) field name; names
    that differ only in case are matched without being listed. `__limits__` maps encoded
    field names to the guide's maximum length (checked by `check_limits`). `__enums__`
    maps encoded names of lenient ``str`` fields to the enum whose values they usually
    hold: a known value is emitted in canonical case (``"PERSON"`` -> ``"Person"``), any
    other value (OSCC's ``""``, ``null``) as sent.
    """

    __aliases__: ClassVar[dict[str, str]] = {}
    __limits__: ClassVar[dict[str, int]] = {}
    __enums__: ClassVar[dict[str, type[enum.Enum]]] = {}


_ADDITIONAL = {"additionalInfo": "additionalInfos"}
_DATE = {"date": "dateTime"}
_ID = 256
_CONTENT = 5000
_CREDENTIAL = 50


class _Secret:
    """Mixin: repr() that masks secret fields."""

    __secret_fields__: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # msgspec's own __rich_repr__ (used by rich and pretty printers) would bypass the
        # masking of __repr__, so it is overridden too.
        return [
            (name, _MASK if name in self.__secret_fields__ else getattr(self, name))
            for name in self.__struct_fields__  # type: ignore[attr-defined]
        ]


class _Masked:
    """Stands for a secret value in reprs: prints as ``***``."""

    def __repr__(self) -> str:
        return "***"


_MASK = _Masked()


# ---------------------------------------------------------------------------------------
# §3 Connector Registration


class OpenMedia(_Secret, Wire, kw_only=True):
    """Credentials configured in OSCC Manager."""

    __limits__ = {"openMediaTitle": _CREDENTIAL, "token": _CREDENTIAL}
    __secret_fields__ = ("token",)
    open_media_title: str
    token: str


class Registration(Wire, kw_only=True):
    """Connector Registration request."""

    type: str = "Registration"
    webhook_url: str = msgspec.field(name="webhookURL")
    open_media: OpenMedia


class UserCredentials(_Secret, Wire, kw_only=True):
    """Credentials for the corporate system / social medium, from registration."""

    __secret_fields__ = ("password",)
    user_name: str | None = None
    password: str | None = None


class Answer(Wire, kw_only=True):
    """Any OSCC answer: `errorCode` and `errorText`, `type` when the command has one."""

    type: str | None = None
    error_code: int = 0
    error_text: str = "NO_ERROR"


class RegistrationResponse(_Secret, Answer, kw_only=True):
    __secret_fields__ = ("session_token",)
    session_token: str | None = None
    user_credentials: UserCredentials | None = None


class ListenForEvents(Wire, kw_only=True):
    enabled_listen_for_event: bool


# ---------------------------------------------------------------------------------------
# §3 New Contact (strict: the bridge sends it)


class AdditionalInfo(Wire, kw_only=True):
    key: str
    value: str | None = None


class ContactData(Wire, kw_only=True):
    key: str
    value: str | None = None


class InReplyTo(Wire, kw_only=True):
    __limits__ = {"id": _ID}
    id: str | None = None


class Attachment(Wire, kw_only=True):
    type: AttachmentType
    content: str | None = None
    url: str | None = None


class Tag(Wire, kw_only=True):
    tag: str


class Source(Wire, kw_only=True):
    __aliases__ = _ADDITIONAL
    __limits__ = {"id": _ID, "name": _ID, "location": _ID, "language": _ID}
    id: str
    type: SourceType
    name: str
    location: str | None = None
    language: str | None = None
    additional_infos: list[AdditionalInfo] | None = None


class PublishedObject(Wire, kw_only=True):
    __limits__ = {"id": _ID, "fatherId": _ID, "title": _ID, "content": _CONTENT}
    id: str
    father_id: str | None = None
    in_reply_to: InReplyTo | None = None
    title: str | None = None
    content: str | None = None
    contact_data: list[ContactData] | None = None
    attachments: list[Attachment] | None = None
    tag_list: list[Tag] | None = None


class Destination(Wire, kw_only=True):
    __aliases__ = _ADDITIONAL
    __limits__ = {"id": _ID, "name": _ID}
    id: str
    type: DestinationType
    name: str
    url: str | None = msgspec.field(default=None, name="URL")
    additional_infos: list[AdditionalInfo] | None = None


class NewContact(Wire, kw_only=True):
    """New Contact request (guide §3)."""

    __aliases__ = _DATE
    type: ContactType
    date_time: str | None = None
    source: Source
    published_object: PublishedObject
    destination: Destination
    is_real_time_handling: bool = False


# ---------------------------------------------------------------------------------------
# §4 Stream Response (strict-ish: the bridge sends it)


class ItemSource(Wire, kw_only=True):
    """Source of an OrderedItem: only type and name."""

    id: str | None = None
    type: SourceType | None = None
    name: str | None = None


class OrderedItem(Wire, kw_only=True):
    """One item of a stream. `id` is optional: the guide's own example has an item
    without one (tests/data/guide/README.md), and the table marks nothing required."""

    __aliases__ = _DATE
    id: str | None = None
    father_id: str | None = None
    in_reply_to: InReplyTo | None = None
    type: ContactType | None = None
    date_time: str | None = None
    source: ItemSource | None = None
    content: str | None = None


class StreamResponse(Wire, kw_only=True):
    """Stream Response (guide §4), sent to /streamResponse."""

    type: str = "Stream"
    error_code: int = 0
    error_text: str = "NO_ERROR"
    id: str
    page: int | None = None
    last_page: str | None = None
    items_in_page: int | None = None
    total_items: int | None = None
    ordered_items: list[OrderedItem] | None = None


# ---------------------------------------------------------------------------------------
# §4 and §5: objects OSCC sends to the webhook (lenient)


class EventSource(Wire, kw_only=True):
    __aliases__ = _ADDITIONAL
    __enums__ = {"type": SourceType}
    id: str | None = None
    type: str | None = None
    name: str | None = None
    location: str | None = None
    language: str | None = None
    additional_infos: list[Any] | None = None


class EventPublishedObject(Wire, kw_only=True):
    id: str | None = None
    father_id: str | None = None
    in_reply_to: InReplyTo | None = None
    title: str | None = None
    content: str | None = None
    contact_data: list[Any] | None = None
    attachments: list[Any] | None = None
    tag_list: list[Any] | None = None


class EventDestination(Wire, kw_only=True):
    __aliases__ = _ADDITIONAL
    __enums__ = {"type": DestinationType}
    id: str | None = None
    type: str | None = None
    name: str | None = None
    url: str | None = msgspec.field(default=None, name="URL")
    additional_infos: list[Any] | None = None


class ObjectToBePublished(Wire, kw_only=True):
    id: str | None = None
    in_reply_to: InReplyTo | None = None
    title: str | None = None
    content: str | None = None
    attachments: list[Any] | None = None


class OutgoingPublication(Wire, kw_only=True):
    """Outgoing Publication (guide §4): an agent's reply, to be posted by the connector."""

    __aliases__ = _DATE
    type: ContactType
    date_time: str | None = None
    source: EventSource | None = None
    object_to_be_published: ObjectToBePublished
    destination: EventDestination | None = None


class StreamRequest(Wire, kw_only=True):
    """Stream Request (guide §4): OSCC asks for a contact's history."""

    type: str = "Stream"
    destination_id: str | None = None
    id: str
    number_of_messages: str | None = None


class TransferParty(Wire, kw_only=True):
    """TransferParty (guide §5). Canonical names are the table's (`ISiteKey`, `called`);
    the example's `lSiteKey`, `callId`, `deviceId`... are accepted. Values are kept as
    sent: the table says String where the example sends numbers."""

    __aliases__ = {
        "callId": "called",
        "lSiteKey": "ISiteKey",
        "lAgentKey": "IAgentKey",
        "lTeamKey": "ITeamKey",
    }
    type: int | str | None = None
    called: str | None = None
    i_site_key: int | str | None = msgspec.field(default=None, name="ISiteKey")
    device_id: str | None = msgspec.field(default=None, name="deviceID")
    agent_id: str | None = msgspec.field(default=None, name="agentID")
    i_agent_key: int | str | None = msgspec.field(default=None, name="IAgentKey")
    i_team_key: int | str | None = msgspec.field(default=None, name="ITeamKey")
    team_name: str | None = None
    state: int | str | None = None
    m_is_cti_event_received: bool | None = msgspec.field(default=None, name="m_isCtiEventReceived")
    m_is_cti_event_expected: bool | None = msgspec.field(default=None, name="m_isCtiEventExpected")
    m_connection_state: int | str | None = msgspec.field(default=None, name="m_connectionState")


class DisconnectedParty(Wire, kw_only=True):
    agent_key: str | None = None
    device: str | None = None
    party_type: str | None = None


class OpenMediaEvent(Wire, kw_only=True):
    """Base of every event (guide §5); also used, as is, for event types it does not know.

    `kind` is the last part of the routing key ``<c>.event.<kind>``.
    """

    kind: ClassVar[str] = "unknown"
    __aliases__ = _DATE
    type: str = "OpenMediaEvent"
    open_media_event_type: str
    date_time: str | None = None
    contact_id: str | None = msgspec.field(default=None, name="contactID")
    agent_id: str | None = msgspec.field(default=None, name="agentID")


class _ContactEvent(OpenMediaEvent, kw_only=True):
    source: EventSource | None = None
    published_object: EventPublishedObject | None = None
    destination: EventDestination | None = None


class DeliveredEvent(_ContactEvent, kw_only=True):
    kind = "delivered"


class EstablishedEvent(OpenMediaEvent, kw_only=True):
    kind = "established"


class HeldEvent(_ContactEvent, kw_only=True):
    kind = "held"
    held_reason: str | None = None


class RetrievedEvent(_ContactEvent, kw_only=True):
    kind = "retrieved"


class TransferredEvent(OpenMediaEvent, kw_only=True):
    kind = "transferred"
    m_transfer_reason: int | str | None = msgspec.field(default=None, name="m_TransferReason")
    m_transfer_target_type: int | str | None = msgspec.field(
        default=None, name="m_TransferTargetType"
    )
    m_transferring_party: TransferParty | None = msgspec.field(
        default=None, name="m_TransferringParty"
    )
    m_transfer_target_party: TransferParty | None = msgspec.field(
        default=None, name="m_TransferTargetParty"
    )


class DisconnectedEvent(OpenMediaEvent, kw_only=True):
    kind = "disconnected"
    discard_reason: str | None = None
    disconnect_reason: str | None = None
    disconnected_party: DisconnectedParty | None = None


class DivertedEvent(OpenMediaEvent, kw_only=True):
    """The guide names DivertedOpenMediaEvent but gives no table: base fields only."""

    kind = "diverted"


EVENT_CLASSES: dict[str, type[OpenMediaEvent]] = {
    EventType.DELIVERED: DeliveredEvent,
    EventType.ESTABLISHED: EstablishedEvent,
    EventType.HELD: HeldEvent,
    EventType.RETRIEVED: RetrievedEvent,
    EventType.TRANSFERRED: TransferredEvent,
    EventType.DISCONNECTED: DisconnectedEvent,
    EventType.DIVERTED: DivertedEvent,
}
EVENT_KINDS: tuple[str, ...] = (*(c.kind for c in EVENT_CLASSES.values()), "unknown")
