"""The consumer: new contacts and stream responses from RabbitMQ to OSCC, in order, once.

For each message of ``<p>.<c>.contact.new`` and ``<p>.<c>.stream.response``::

    decode + check limits ──bad──────────────► dead-letter, rejected outcome, ack
      │ key already accepted ────────────────► accepted outcome ("duplicate"), ack
      ▼
    gate ─► token ─► POST ──0─────────────────► remember key (fsync), accepted outcome, ack
      ▲               ├─ 11/12/13 ────────────► dead-letter, rejected outcome, ack
      │               ├─ 6/10/401/403 ────────► session_lost(token), new token, same message
      │               └─ 1/7/5xx/timeout ─────► close the gate (`bridge.gate`); this message
      │                                         waits its own backoff, others probe
      └── charged oscc.max_attempts times ────► dead-letter (Undeliverable), rejected
          (OSCC failed it, accepted others)     outcome, ack

The gate tells a poison message from an outage: after a failure one *other* waiter probes;
when it goes through, the failed message is charged a strike; when everything fails
(several messages in a row), nobody is. So other sources wait behind a poison message at
most one probe backoff, and an outage costs one request per backoff step and no message
its attempts.

Ordering: messages with the same key (a contact's ``source.id``, a stream response's
``id``) go through one *lane* (`bridge.lanes`), a FIFO worked by one task; different keys
run in parallel, bounded by the channel's prefetch. Nothing is nacked with requeue: on a
quorum queue that puts the message at the tail, behind its successors. Unfinished
messages are instead left unacked and returned by closing the channel, which puts them
back at the head, in order (classic and quorum queues alike; tests/test_consumer.py
checks both).

The message's key (AMQP ``message_id``, else ``publishedObject.id``) is fsync'd to the
DedupeStore after OSCC answered 0 and before the ack, so a redelivery after a crash is
acked without a second newContact. What remains: a crash after OSCC created the contact
and before the key reached the store (the request's round trip plus microseconds) sends
it again on redelivery; OSCC offers no idempotency key to close that.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from aio_pika.abc import (
    AbstractIncomingMessage,
)
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from bridge import errors, tracing
from bridge.accepted import AcceptedLog
from bridge.backoff import backoff_delay
from bridge.broker import Broker
from bridge.channels import QueueChannels
from bridge.config import Config, ConnectorConfig
from bridge.dedupe import DedupeStore
from bridge.delivery import Abandoned, Kind, MessageKind, Work, decode, queue_wait, untraced
from bridge.gate import Gate
from bridge.lanes import Lane, Lanes
from bridge.lifecycle import Service
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.oscc import codec, codes, models
from bridge.oscc.client import OsccClient
from bridge.outcomes import Reporter
from bridge.publisher import Publisher
from bridge.session import SessionSupervisor


class Consumer(Service):
    """Forwards one connector's contact and stream-response queues to OSCC.

    ``async with Consumer(config, connector, broker, publisher, supervisor, client,
    metrics, dedupe):`` opens one channel per queue on `broker` (prefetch
    ``broker.prefetch``, manual ack) and starts consuming; exit drains (see `stop`).
    Outcomes and dead letters' outcomes go out through `publisher`.
    `dedupe` None: the consumer opens and closes ``<spool.dir>/dedupe/<c>`` itself.
    `accepted`: the shared log of accepted keys (several instances), appended to before
    each ack. One Consumer serves one ownership term: once the broker link drops, it
    stops taking deliveries at once, even ones a restored robust channel brings back.
    """

    def __init__(
        self,
        config: Config,
        connector: ConnectorConfig,
        broker: Broker,
        publisher: Publisher,
        supervisor: SessionSupervisor,
        client: OsccClient,
        metrics: Metrics,
        dedupe: DedupeStore | None = None,
        *,
        accepted: AcceptedLog | None = None,
        drain_timeout: float = 10.0,
        start_timeout: float = 30.0,
        retry_base: float = 0.1,
        retry_cap: float = 10.0,
        token_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.connector = connector
        self.topology = broker.topology
        self.drain_timeout = drain_timeout
        self.start_timeout = start_timeout
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.token_timeout = token_timeout
        self._broker = broker
        self._publisher = publisher
        self._supervisor = supervisor
        self._client = client
        self._metrics = metrics
        self._owns_dedupe = dedupe is None
        self._dedupe = (
            dedupe
            if dedupe is not None
            else DedupeStore.for_connector(config.spool.dir, connector.name)
        )
        self._accepted_log = accepted
        self._rng = rng or random.Random()
        c = connector.name
        self._kinds = Kind.both(broker.topology, c)
        self._senders: dict[MessageKind, Callable[[str, bytes], Awaitable[models.Answer]]] = {
            MessageKind.CONTACT: client.new_contact,
            MessageKind.STREAM_RESPONSE: client.stream_response,
        }
        self._accepted = {
            k.name: metrics.forwards.labels(c, k.name, "accepted") for k in self._kinds
        }
        self._queue_wait = {k.name: metrics.queue_wait.labels(c, k.name) for k in self._kinds}
        self._stopping = asyncio.Event()
        self._gate = Gate(self._probe_backoff)
        # Stands for "no session could be had" at the gate: a failure, but no message's.
        self._no_session = object()
        self._lanes: Lanes[Work] = Lanes(tracing.consumer(self._work, c), self._stopping)
        self._channels = QueueChannels(
            broker, prefetch=config.broker.prefetch, timeout=config.broker.confirm_timeout
        )
        self._report = Reporter(
            connector=c,
            topology=broker.topology,
            publisher=publisher,
            metrics=metrics,
            confirm_timeout=config.broker.confirm_timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            rng=self._rng,
            check=lambda work: self._check(work, stopping=False),
        )
        self._log = get_logger("bridge.consumer", connector=c)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channels and start consuming both queues.

        BrokerUnavailable when RabbitMQ goes away meanwhile (the connection the broker
        just made is gone), or does not let it happen within `start_timeout`: some
        aio-pika calls wait for a lost connection to come back, for ever."""
        if self._owns_dedupe:
            await self._dedupe.start()
        try:
            async with asyncio.timeout(self.start_timeout):
                self._broker.connection.close_callbacks.add(self._on_connection_lost)
                self._report.dead = await self._channels.dead_letters()
                await self._channels.consume(self._kinds, self._accept)
        except BaseException as exc:
            await self._channels.close()
            if self._owns_dedupe:
                await self._dedupe.stop()
            if isinstance(exc, TimeoutError | AMQPError | OSError | RuntimeError):
                why = (
                    f"no answer within {self.start_timeout:g} s"
                    if isinstance(exc, TimeoutError)
                    else repr(exc)
                )
                raise errors.BrokerUnavailable(
                    f"RabbitMQ went away while the consumer of {self.connector.name!r}"
                    f" started: {why}"
                ) from exc
            raise
        self._log.info("consumer.started", prefetch=self.config.broker.prefetch)

    def _on_connection_lost(self, *_: object) -> None:
        # Synchronous, in the connection's own close callback: aio-pika restores a robust
        # channel's consumers after a reconnect, and by then this instance may no longer
        # own the connector; whatever the restored consumers receive is left unacked and
        # goes back to the queue when `stop` closes the channels.
        self._stopping.set()

    async def stop(self) -> None:
        """Drain: stop consuming, let messages already at OSCC finish (up to
        `drain_timeout`), give up the rest, close the channels (the broker requeues every
        unacked message at the head of its queue, in order)."""
        self._stopping.set()
        with contextlib.suppress(RuntimeError):  # never connected
            self._broker.connection.close_callbacks.discard(self._on_connection_lost)
        await self._channels.cancel()
        # Lanes waiting (gate, backoff, token) have sent nothing for their message: stop
        # them now. Busy ones get the drain timeout to hear OSCC's answer and ack.
        if unfinished := await self._lanes.drain(self.drain_timeout):
            self._log.warning("consumer.drain_timeout", unfinished=unfinished)
        await self._channels.close()
        if self._owns_dedupe:
            await self._dedupe.stop()
        self._log.info("consumer.stopped")

    # -- delivery: decode and put in a lane (`channels` calls it in delivery order) -----

    def _accept(self, kind: Kind, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            return  # left unacked: returned in order when the channel closes
        work = decode(kind, message, self._log, max_bytes=self.config.broker.max_message_bytes)
        if (wait := queue_wait(message)) is not None:
            self._queue_wait[kind.name].observe(wait)
        self._lanes.add(None if work.order_key is None else (kind.name, work.order_key), work)

    async def _work(self, work: Work, lane: Lane[Work]) -> None:
        try:
            await self._process(work, lane)
        except Abandoned as exc:
            work.log.info("consumer.abandoned", why=str(exc))
        except Exception:
            # Unexpected: leave it unacked (redelivered on reconnect or restart) rather
            # than lose it, and keep the lane moving.
            work.log.exception("consumer.failed")

    # -- one message -----------------------------------------------------------------

    async def _process(self, work: Work, lane: Lane[Work]) -> None:
        # The lane is busy from the moment OSCC may have the message (or it is being
        # dead-lettered) until the ack: a drain must let that finish, not cut it short.
        if work.error is not None:
            with lane.busy():
                await self._reject(work, work.error, by_oscc=False)
        elif work.dedupe_key is not None and work.dedupe_key in self._dedupe:
            with lane.busy():
                await self._duplicate(work)
        else:
            try:
                answer = await self._send(work, lane)
            except errors.Rejected as exc:
                untraced(exc)
                with lane.busy():
                    by_oscc = not isinstance(exc, errors.Undeliverable)
                    await self._reject(work, exc, by_oscc=by_oscc)
                return
            with lane.busy():
                self._accepted[work.kind.name].inc()
                # Both before the ack; side by side, as each waits on its own fsync (the
                # key's here, the outcome's in the broker) and neither needs the other.
                await asyncio.gather(
                    self._remember(work), self._report.outcome(work, answer.error_code)
                )
                await self._ack(work)

    async def _duplicate(self, work: Work) -> None:
        self._metrics.forwards.labels(self.connector.name, work.kind.name, "duplicate").inc()
        work.log.info("consumer.duplicate", dedupe_key=work.dedupe_key)
        await self._report.outcome(work, codes.ErrorCode.NO_ERROR, "duplicate")
        await self._ack(work)

    async def _remember(self, work: Work) -> None:
        if work.dedupe_key is None:
            return
        if self._accepted_log is not None:
            await asyncio.gather(
                self._remember_locally(work, work.dedupe_key),
                self._share(work, work.dedupe_key),
            )
        else:
            await self._remember_locally(work, work.dedupe_key)

    async def _remember_locally(self, work: Work, key: str) -> None:
        try:
            await self._dedupe.add(key)
        except OSError as exc:
            # Acking anyway loses nothing: the key only guards a redelivery, and holding
            # the message unacked would make one (a second newContact) more likely.
            work.log.error("consumer.dedupe_failed", error=str(exc))

    async def _share(self, work: Work, key: str) -> None:
        """Append the key to the shared log, so the next owner skips it too."""
        assert self._accepted_log is not None
        try:
            async with asyncio.timeout(self.config.broker.confirm_timeout):
                await self._accepted_log.record(key)
        except (errors.BrokerUnavailable, TimeoutError) as exc:
            # The ack is about to fail too (same broker): the redelivery goes to whoever
            # owns next, and only this key's record is missing there.
            work.log.warning("consumer.accepted_not_shared", error=str(exc))

    async def _send(self, work: Work, lane: Lane[Work]) -> models.Answer:
        """POST until OSCC answers 0 (returned) or 11/12/13 (Rejected raised), or until it
        failed the message `oscc.max_attempts` times while accepting others
        (Undeliverable raised)."""
        assert work.parsed is not None
        body = codec.encode(work.parsed.body)
        send = self._senders[work.kind.name]
        retried = self._metrics.forwards.labels(self.connector.name, work.kind.name, "retried")
        failures = 0
        # The last failure's text and code, not the exception: its traceback would hold
        # this frame, and the body, for as long as the message waits.
        last: tuple[str, int | None] = ("", None)
        ambiguous = False  # the last send may have reached OSCC: the next may duplicate it
        try:
            while True:
                self._check(work)
                await self._gate.wait(work)
                self._give_up_if_charged(work, *last)
                try:
                    token = await self._supervisor.token(timeout=self.token_timeout)
                except errors.Transient as exc:
                    # Like OSCC being down, but no message's doing: charged to nobody.
                    self._gate.failed(self._no_session)
                    failures = await self._pause(work, failures, "consumer.no_session", exc)
                    continue
                try:
                    self._check(work)
                    if ambiguous:
                        ambiguous = False
                        self._metrics.ambiguous_resends.labels(self.connector.name).inc()
                        work.log.warning("consumer.ambiguous_resend")
                    with lane.busy():
                        answer = await send(token, body)
                except errors.SessionLost as exc:
                    untraced(exc)
                    retried.inc()
                    work.log.info("consumer.session_lost", error=exc.text)
                    await self._supervisor.session_lost(token)
                    continue
                except errors.Rejected:
                    self._gate.succeeded(work)  # OSCC is up: it judged the message
                    raise
                except (errors.Transient, errors.StaleSession, errors.ConnectorRefused) as exc:
                    untraced(exc)
                    retried.inc()
                    ambiguous = ambiguous or getattr(exc, "ambiguous", False)
                    self._gate.failed(work)
                    last = (exc.text, exc.code)
                    failures = await self._pause(work, failures, "consumer.oscc_unavailable", exc)
                    continue
                self._gate.succeeded(work)
                return answer
        finally:
            self._gate.forget(work)

    def _give_up_if_charged(self, work: Work, text: str, code: int | None) -> None:
        """Raise Undeliverable once OSCC failed `work` `oscc.max_attempts` times while it
        accepted other messages (the gate's strikes)."""
        strikes = self._gate.strikes(work)
        if strikes < self.config.oscc.max_attempts:
            return
        raise errors.Undeliverable(
            f"{text} (failed {strikes} times while OSCC accepted other"
            f" {'contacts' if work.kind.name is MessageKind.CONTACT else 'messages'})",
            code=code or codes.ErrorCode.GENERAL_ERROR,
        )

    async def _pause(self, work: Work, failures: int, event: str, exc: errors.BridgeError) -> int:
        """Log `event`, wait this message's own backoff after its `failures`-th failure
        (not holding the gate: others probe meanwhile) or until stopping; the next count."""
        delay = backoff_delay(failures, base=self.retry_base, cap=self.retry_cap, rng=self._rng)
        work.log.warning(event, error=exc.text, retry_in=round(delay, 3))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return failures + 1

    def _probe_backoff(self, streak: int) -> float:
        """The gate's pause before the next probe after `streak` failures in a row."""
        return backoff_delay(streak - 1, base=self.retry_base, cap=self.retry_cap, rng=self._rng)

    def _check(self, work: Work, *, stopping: bool = True) -> None:
        """Raise Abandoned when the message's channel is gone (or, before a send, when
        the consumer is stopping)."""
        if stopping and self._stopping.is_set():
            raise Abandoned("stopping")
        try:
            work.message.channel  # noqa: B018 (raises once the channel is closed)
        except ChannelInvalidStateError:
            raise Abandoned("channel closed; the broker redelivers the message") from None

    async def _ack(self, work: Work) -> None:
        # Bounded: an ack sent just as the connection dies can wait for ever in aiormq's
        # write queue of the dead connection (nothing drains it), and would hold its
        # lane, and every message of that source after it, for good.
        try:
            async with asyncio.timeout(self.config.broker.confirm_timeout):
                await work.message.ack()
        except (AMQPError, ChannelInvalidStateError, RuntimeError, TimeoutError) as exc:
            # The broker redelivers it; the dedupe store turns that into a duplicate.
            work.log.warning("consumer.ack_failed", error=repr(exc))

    async def _reject(self, work: Work, exc: errors.Rejected, *, by_oscc: bool) -> None:
        """Dead-letter, publish the rejected outcome, ack; never retry."""
        await self._report.reject(work, exc, by_oscc=by_oscc)
        await self._ack(work)
