"""A topology the broker refuses is a configuration error: exit 3, one line naming the key.

A queue of the bridge's name exists with another type (here a classic queue where the
bridge declares a quorum queue): RabbitMQ answers PRECONDITION_FAILED and the bridge, the
real entry point against the real broker, exits 3 naming ``broker.queue_type``, without a
traceback (cli._run used to catch it as any BridgeError and exit 1).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aio_pika

from bridge.topology import Topology
from tests.harness import AMQP_URL, ROOT, bridge_config, free_port

C = "facebook"


async def test_a_queue_of_another_type_exits_3_naming_the_key(prefix: str, tmp_path: Path) -> None:
    topology = Topology(prefix, "quorum")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            topology.contact_queue(C), durable=True, arguments={"x-queue-type": "classic"}
        )
        config = tmp_path / "bridge.toml"
        config.write_text(
            bridge_config(
                prefix=prefix,
                oscc_url="http://127.0.0.1:9",
                port=free_port(),
                spool_dir=tmp_path / "spool",
                connectors=[(C, "facebook", "tok-facebook")],
            )
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        channel = await connection.channel()
        await topology.delete(channel, [C])
        await connection.close()
    assert proc.returncode == 3, err.decode()
    errors = [line for line in err.decode().splitlines() if "configuration error" in line]
    assert len(errors) == 1, err.decode()
    assert "broker.queue_type" in errors[0]
    assert "Traceback" not in err.decode() + out.decode()
