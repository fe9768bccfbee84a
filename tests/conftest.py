"""Shared fixtures: the real RabbitMQ, private RabbitMQ nodes to take away, a unique
topology prefix per test."""

from __future__ import annotations

import io
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
import structlog
from hypothesis import settings

from bridge import logs
from tests.harness import PrivateBrokers, RabbitNode, node_script, private_nodes_unavailable

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

# Under CI every property and fuzz test draws the same examples on every run, so a red
# build means the code changed, not the dice. Anywhere else they draw new ones each run
# (that is how the fuzz suite finds things); a failure prints its seed to replay with
# ``--hypothesis-seed``, and FUZZ_EXAMPLES=6000 explores further.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def prefix() -> str:
    """A unique exchange/queue prefix, so tests never see each other's messages."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A connection to the real RabbitMQ."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def private_brokers() -> Iterator[PrivateBrokers]:
    """Starts RabbitMQ nodes of this session's own (``shared/rabbitmq-node``), one or a
    cluster, for tests that stop, restart or partition a broker; every one is stopped at
    the end of the session. Skips the test where no node can be started here."""
    reason = private_nodes_unavailable()
    script = node_script()
    if reason or script is None:
        pytest.skip(reason or "no rabbitmq-node script")
    brokers = PrivateBrokers(script, tag=f"oscc-{os.getpid()}")
    try:
        yield brokers
    finally:
        brokers.close()


@pytest.fixture(scope="session")
def chaos_node(private_brokers: PrivateBrokers) -> RabbitNode:
    """The private node the chaos tests take away (``oscc-<pid>-chaos``), started once
    per session; never the machine's broker on 5672."""
    return private_brokers.node("chaos")


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything structlog and the stdlib root logger write, as the CLI configures them
    (JSON, debug), in one buffer; logging is put back as it was afterwards."""
    out = io.StringIO()
    saved = sys.stderr
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.stderr = out
    try:
        logs.configure("debug", "json")
        yield out
    finally:
        sys.stderr = saved
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()
