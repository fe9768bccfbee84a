"""Test and benchmark helpers for the bridge as a separate process, and broker chaos.

    async with BridgeProcess(config_text, port=port, workdir=tmp) as bridge:
        await bridge.start()              # python -m bridge run --config F; waits for /readyz
        bridge.rss_kb(), bridge.hwm_kb()  # VmRSS / VmHWM of the running process
        await bridge.kill()               # SIGKILL, reaped
        await bridge.start()              # same config file, so the same spool/dedupe dir
        rc = await bridge.stop()          # SIGTERM, drained, exit code

    async with chaos_lock():              # flock /tmp/oscc-chaos.lock, as flock(1) does
        async with broker_outage():       # rabbitmqctl stop_app ... start_app (always)
            ...

Nothing here mocks anything: the process is the real entry point, the broker is the real
RabbitMQ (``rabbitmqctl`` on this host).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika
import aiohttp

from bridge.metrics import Metrics
from bridge.topology import properties

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ROOT = Path(__file__).resolve().parent.parent
CHAOS_LOCK = Path("/tmp/oscc-chaos.lock")


def free_port() -> int:
    """A TCP port nothing listens on right now (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(cond: Callable[[], object], within: float, what: str = "condition") -> None:
    """Poll `cond` every 50 ms; TimeoutError naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {within:.0f} s")
        await asyncio.sleep(0.05)


def proc_status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def bridge_config(
    *,
    prefix: str,
    oscc_url: str,
    port: int,
    spool_dir: Path | str,
    connectors: list[tuple[str, str, str]],
    keepalive: float = 30.0,
    request_timeout: float = 10.0,
    prefetch: int = 64,
    confirm_timeout: float = 5.0,
    log_level: str = "info",
    listen_for_events: bool = True,
) -> str:
    """TOML for a bridge on 127.0.0.1:`port` with exchange `prefix`; connectors are
    (name, title, token)."""
    text = f"""
[broker]
url = "{AMQP_URL}"
exchange = "{prefix}"
prefetch = {prefetch}
confirm_timeout = {confirm_timeout}

[http]
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"

[oscc]
url = "{oscc_url}"
keepalive_interval = {keepalive}
request_timeout = {request_timeout}

[spool]
dir = "{spool_dir}"

[log]
level = "{log_level}"
format = "json"
"""
    for name, title, token in connectors:
        text += f"""
[[connectors]]
name = "{name}"
title = "{title}"
token = "{token}"
listen_for_events = {str(listen_for_events).lower()}
"""
    return text


class BridgeProcess:
    """``python -m bridge run --config F`` as a child process that can be killed and
    started again with the same configuration (so the same spool and dedupe store).

    Its stdout and stderr are appended to ``<workdir>/bridge.log`` across restarts.
    """

    def __init__(self, config_text: str, *, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "bridge.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / "bridge.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def __aenter__(self) -> BridgeProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running:
            await self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ready_within: float = 60.0) -> None:
        """Start the process and wait until /readyz answers 200."""
        assert not self.running, "already running"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("OSCC_URL", None)  # the config file says where OSCC is
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(self.config_path),
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, cwd=ROOT, env=env,
            )  # fmt: skip
        self.starts += 1
        await self.wait_ready(ready_within)

    async def wait_ready(self, within: float = 60.0) -> None:
        """Poll /readyz until 200; RuntimeError (with the log's tail) if the process exits."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if not self.running:
                    rc = self.proc.returncode if self.proc else None
                    raise RuntimeError(f"bridge exited with {rc}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bridge not ready within {within} s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def status(self) -> dict[str, Any]:
        """GET /status."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"{self.url}/status") as r,
        ):
            body: dict[str, Any] = await r.json()
            return body

    async def kill(self, sig: int = signal.SIGKILL, within: float = 60.0) -> int:
        """Send `sig` and reap the process; its exit code (negative: killed by a signal)."""
        assert self.proc is not None, "not started"
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), within)

    async def stop(self, within: float = 60.0) -> int:
        """SIGTERM (drain, exit 0) and reap; the exit code."""
        return await self.kill(signal.SIGTERM, within)

    def rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmRSS") if self.running else None

    def hwm_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmHWM") if self.running else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- broker chaos ------------------------------------------------------------------------


async def message_count(queue: str) -> int:
    """Ready messages in `queue`, asked of the broker now (raises when it does not exist).

    On a connection of its own, and not with ``declare_queue(name, passive=True)``: on a
    robust channel aio-pika answers that from its cache when the channel declared the
    queue before (with the count of that declaration, or of the last reconnect's), and
    right after a reconnect a robust channel may still hold its closed predecessor.
    """
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True)
        return int(declared.message_count or 0)
    finally:
        await connection.close()


async def rabbitmqctl(*args: str, within: float = 120.0) -> None:
    """Run ``rabbitmqctl ARGS``; RuntimeError when it fails."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), within)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: exit {proc.returncode}: {err!r}")


async def broker_up(within: float = 90.0) -> None:
    """``start_app``, then wait until an AMQP connection is accepted again."""
    await rabbitmqctl("start_app", within=within)
    deadline = time.monotonic() + within
    while True:
        try:
            connection = await aio_pika.connect(AMQP_URL, timeout=5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
        else:
            await connection.close()
            return


_broker_stopped = False


@contextlib.asynccontextmanager
async def broker_outage() -> AsyncIterator[None]:
    """RabbitMQ stopped (``stop_app``) for the body; ``start_app`` always runs after.

    Should the event loop never get to the ``finally`` (a hard test timeout), a sync
    ``start_app`` runs at interpreter exit instead (see `restore_broker`).
    """
    global _broker_stopped
    try:
        _broker_stopped = True
        await rabbitmqctl("stop_app")
        yield
    finally:
        await broker_up()
        _broker_stopped = False


def restore_broker() -> None:
    """``rabbitmqctl start_app`` if a `broker_outage` did not finish; safe to call anytime."""
    global _broker_stopped
    if _broker_stopped:
        subprocess.run(["rabbitmqctl", "start_app"], check=False, capture_output=True)
        _broker_stopped = False


atexit.register(restore_broker)


@contextlib.asynccontextmanager
async def chaos_lock(within: float = 1800.0) -> AsyncIterator[None]:
    """Hold /tmp/oscc-chaos.lock (flock, compatible with flock(1)) for the body, so two
    chaos tests never take the broker away under each other. Polls, so the event loop
    keeps running while it waits. Under ``flock /tmp/oscc-chaos.lock pytest ...`` the lock
    is already ours (an inherited descriptor holds it), so it is not taken twice."""
    if _inherited_lock():
        yield
        return
    fd = os.open(CHAOS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + within
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{CHAOS_LOCK} held for over {within} s") from None
                await asyncio.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _inherited_lock() -> bool:
    """True when one of our open descriptors is the lock file (opened by flock(1)) and
    holds the lock."""
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == str(CHAOS_LOCK):
                    # Succeeds at once on the descriptor that already holds the lock.
                    fcntl.flock(int(fd), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
    return False


def message(body: bytes, **kw: Any) -> aio_pika.Message:
    """`body` with the properties the bridge gives every message it publishes
    (`bridge.topology.properties`), for tests that publish like the bridge."""
    p = properties(**kw)
    return aio_pika.Message(
        body,
        content_type=p.content_type,
        delivery_mode=aio_pika.DeliveryMode(p.delivery_mode),
        message_id=p.message_id,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        timestamp=p.timestamp,
        app_id=p.app_id,
        type=p.message_type,
        headers=p.headers,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The value of one bridge metric sample, 0 when it was never observed."""
    return metrics.registry.get_sample_value(f"oscc_bridge_{name}", labels) or 0.0


async def wait_for(cond: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def close_connections_named(name: str) -> int:
    """Have the broker close every connection whose client-provided name is `name`."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    pids = [
        line.split("\t", 1)[0]
        for line in out.decode().splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]
    for pid in pids:
        closer = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "close_connection", pid, "test: connection taken away",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await closer.wait()
    return len(pids)


@contextlib.asynccontextmanager
async def simulator_process(
    connectors: dict[str, str], **options: Any
) -> AsyncIterator[tuple[str, int]]:
    """The simulator in a child process (so its CPU is not the measured process's);
    yields (URL, pid). `options` are `bridge.simulator.serve` keywords."""
    code = (
        "import asyncio\n"
        "from bridge import logs\n"
        "from bridge.simulator import serve\n"
        "logs.configure('warning', 'console')\n"
        f"asyncio.run(serve('127.0.0.1', 0, {connectors!r}, **{options!r}))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        match = re.search(r"(http://\S+)", line.decode())
        if not match:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield match.group(1), proc.pid
    finally:
        proc.terminate()
        await proc.wait()
