"""Prometheus metrics, on an injectable registry (tests pass their own).

Labels are few and fixed: connector, kind, outcome, endpoint, code, state, reason.
Never a contact id, a message id or a token.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    generate_latest,
)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST


class Metrics:
    """Every metric family of the bridge, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "oscc_bridge_"
        # webhook ingress: kind = event | publication | stream | invalid;
        # outcome = published | spooled | rejected | refused | not_found | too_large |
        # timeout (body too slow) | busy (http.max_concurrency in progress, answered 503,
        # kind invalid: unread) | error (unexpected, answered 500)
        self.webhook_requests = Counter(
            p + "webhook_requests_total",
            "Webhook calls from OSCC.",
            ["connector", "kind", "outcome"],
            registry=r,
        )
        self.webhook_duration = Histogram(
            p + "webhook_duration_seconds",
            "Webhook handling time, until OSCC is answered.",
            ["connector", "kind"],
            buckets=_FAST,
            registry=r,
        )
        # requests aiohttp could not parse (no HTTP, bad request line, header or chunked
        # framing), answered 400 before any handler: see bridge/badrequests.py
        self.http_bad_requests = Counter(
            p + "http_bad_requests_total",
            "Malformed HTTP requests refused with 400 by the listeners.",
            registry=r,
        )
        # broker publishing: outcome = confirmed | returned | failed
        self.publishes = Counter(
            p + "publishes_total", "Messages published to RabbitMQ.", ["outcome"], registry=r
        )
        self.confirm_latency = Histogram(
            p + "publish_confirm_seconds",
            "Time from publish to broker confirm.",
            buckets=_FAST,
            registry=r,
        )
        self.spool_messages = Gauge(
            p + "spool_messages", "Messages waiting in the disk spool.", registry=r
        )
        self.spool_bytes = Gauge(p + "spool_bytes", "Bytes in the disk spool.", registry=r)
        self.spool_replayed = Counter(
            p + "spool_replayed_total", "Spooled messages replayed to the broker.", registry=r
        )
        # OSCC REST calls: endpoint = registerConnector | newContact | keepalive |
        # streamResponse | listenForEvents; code = the guide's errorCode, or http_<status>,
        # timeout, connection
        self.oscc_requests = Counter(
            p + "oscc_requests_total",
            "Requests to OSCC by endpoint and answer.",
            ["connector", "endpoint", "code"],
            registry=r,
        )
        self.oscc_duration = Histogram(
            p + "oscc_request_duration_seconds",
            "OSCC request duration.",
            ["connector", "endpoint"],
            buckets=_FAST,
            registry=r,
        )
        # session supervisor: one series per state, 1 for the current one
        self.session_state = Gauge(
            p + "session_state",
            "1 for the connector's current session state.",
            ["connector", "state"],
            registry=r,
        )
        # outcome = registered | resumed (a saved session taken over after a restart) |
        # transient | stale | refused | error
        self.registrations = Counter(
            p + "registrations_total",
            "Registration attempts by outcome.",
            ["connector", "outcome"],
            registry=r,
        )
        self.keepalive_failures = Counter(
            p + "keepalive_failures_total", "Keepalives that failed.", ["connector"], registry=r
        )
        # consumer egress: kind = contact | stream_response;
        # outcome = accepted | rejected | duplicate | retried
        self.forwards = Counter(
            p + "forwards_total",
            "Messages forwarded from RabbitMQ to OSCC, by outcome.",
            ["connector", "kind", "outcome"],
            registry=r,
        )
        # a resend after a timeout or an unreadable answer: OSCC may already have created
        # the contact, so each one may be a duplicate there (OSCC has no idempotency key)
        self.ambiguous_resends = Counter(
            p + "ambiguous_resends_total",
            "Messages resent to OSCC after an attempt whose outcome was unknown.",
            ["connector"],
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a message waited in its queue before forwarding.",
            ["connector", "kind"],
            buckets=_SLOW,
            registry=r,
        )
        self.dead_letters = Counter(
            p + "dead_letters_total",
            "Messages dead-lettered, by reason (error text).",
            ["connector", "reason"],
            registry=r,
        )
        self.broker_connected = Gauge(
            p + "broker_connected", "1 while connected to RabbitMQ.", registry=r
        )
        self.broker_reconnects = Counter(
            p + "broker_reconnects_total", "Reconnections to RabbitMQ.", registry=r
        )

        # high availability (ownership.py): 1 on the instance that owns the connector;
        # reason = acquired | released | fenced
        self.connector_owner = Gauge(
            p + "connector_owner",
            "1 while this instance owns the connector (holds its lease).",
            ["connector"],
            registry=r,
        )
        self.ownership_changes = Counter(
            p + "ownership_changes_total",
            "Changes of this instance's role for a connector, by reason.",
            ["connector", "reason"],
            registry=r,
        )

    def add_connector(self, name: str) -> None:
        """Create the per-connector series that start at zero, so dashboards and rate()
        see them before the first event (an absent series is not a zero)."""
        self.ambiguous_resends.labels(name)
        self.connector_owner.labels(name).set(0)
        for reason in ("acquired", "released", "fenced"):
            self.ownership_changes.labels(name, reason)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
