"""The chaos tests' broker: a private RabbitMQ node, never the machine's shared one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import RabbitNode


@pytest.fixture
def broker(chaos_node: RabbitNode) -> Iterator[RabbitNode]:
    """The session's private chaos node; its app is running again after each test, even
    when a hard timeout cut an outage short."""
    chaos_node.restore()
    yield chaos_node
    chaos_node.restore()
