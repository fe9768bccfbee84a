"""Shared fixtures: the real RabbitMQ, a unique topology prefix per test."""

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
