"""Test and benchmark helpers: waiting on facts, the bridge as a separate process, and
RabbitMQ nodes of the tests' own for broker chaos.

    await wait_until(lambda: len(got) == 3, 10, "three messages")   # poll with a deadline

    async with BridgeProcess(config_text, port=port, workdir=tmp) as bridge:
        await bridge.start()              # python -m bridge run --config F; waits for /readyz
        bridge.rss_kb(), bridge.hwm_kb()  # VmRSS / VmHWM of the running process
        await bridge.kill()               # SIGKILL, reaped
        await bridge.start()              # same config file, so the same spool/dedupe dir
        rc = await bridge.stop()          # SIGTERM, drained, exit code

    brokers = PrivateBrokers(node_script())   # the `private_brokers` session fixture
    node = brokers.node("chaos")          # rabbitmq-node start oscc-<pid>-chaos PORT
    async with chaos_lock():              # flock /tmp/oscc-chaos.lock, as flock(1) does
        async with node.outage():         # stop_app ... start_app (always), on that node
            ...
    brokers.close()                       # rabbitmq-node stop, for every node started

Nothing here mocks anything: the process is the real entry point, the brokers are real
RabbitMQ nodes. Only the private ones are ever stopped: the machine's broker on 5672 is
shared with everyone else's tests.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import fcntl
import inspect
import json
import os
import random
import re
import shutil
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


async def wait_until(
    cond: Callable[[], object], within: float = 20.0, what: str = "condition"
) -> Any:
    """Poll `cond` (a function or a coroutine function) every 20 ms until it returns
    something true, and return that; TimeoutError naming `what` and the last value after
    `within` seconds. The one way tests wait for a fact."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:g} s (last: {value!r})")
        await asyncio.sleep(0.02)


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
    amqp_url: str = AMQP_URL,
    amqp_urls: list[str] | None = None,
    public_url: str = "",
    extra: str = "",
) -> str:
    """TOML for a bridge on 127.0.0.1:`port` with exchange `prefix` on the broker at
    `amqp_url` (or the cluster `amqp_urls`); connectors are (name, title, token);
    `public_url` defaults to the bridge's own address (instances of one fleet share one);
    `extra` is TOML of further tables (``[ha]`` ...)."""
    broker = f"urls = {json.dumps(amqp_urls)}" if amqp_urls else f'url = "{amqp_url}"'
    text = f"""
[broker]
{broker}
exchange = "{prefix}"
prefetch = {prefetch}
confirm_timeout = {confirm_timeout}

[http]
host = "127.0.0.1"
port = {port}
public_url = "{public_url or f"http://127.0.0.1:{port}"}"

[oscc]
url = "{oscc_url}"
keepalive_interval = {keepalive}
request_timeout = {request_timeout}

[spool]
dir = "{spool_dir}"

[log]
level = "{log_level}"
format = "json"

{extra}"""
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
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def ready() -> bool:
                if not self.running:
                    rc = self.proc.returncode if self.proc else None
                    raise RuntimeError(f"bridge exited with {rc}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/readyz") as r:
                        return r.status == 200
                return False

            try:
                await wait_until(ready, within, "bridge ready")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}:\n{self.log_tail()}") from None

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


async def message_count(queue: str, url: str = AMQP_URL) -> int:
    """Ready messages in `queue` on the broker at `url`, asked now (raises when it does
    not exist).

    On a connection of its own, and not with ``declare_queue(name, passive=True)``: on a
    robust channel aio-pika answers that from its cache when the channel declared the
    queue before (with the count of that declaration, or of the last reconnect's), and
    right after a reconnect a robust channel may still hold its closed predecessor.
    """
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True)
        return int(declared.message_count or 0)
    finally:
        await connection.close()


async def _run(argv: list[str], within: float = 120.0) -> str:
    """Run `argv`; its stdout, or RuntimeError (with stderr) when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {err.decode()[-500:]}")
    return out.decode()


async def close_connections_named(name: str, ctl: tuple[str, ...] = ("rabbitmqctl",)) -> int:
    """Have the broker close every connection whose client-provided name is `name`;
    how many it closed. `ctl` is the rabbitmqctl command line of the broker (the
    machine's by default: closing one's own connection disturbs nobody else)."""
    out = await _run(
        [*ctl, "list_connections", "-q", "--no-table-headers", "pid", "client_properties"]
    )
    pids = [
        line.split("\t", 1)[0]
        for line in out.splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]
    for pid in pids:
        await _run([*ctl, "close_connection", pid, "test: connection taken away"])
    return len(pids)


# --- private RabbitMQ nodes --------------------------------------------------------------

NODE_SCRIPT_VAR = "RABBITMQ_NODE_SCRIPT"
DIST_OFFSET = 20000  # rabbitmq-node puts a node's Erlang distribution on PORT + 20000


def node_script() -> Path | None:
    """The project's ``rabbitmq-node`` helper: ``shared/rabbitmq-node`` beside the project
    root (CI clones shared/ there; a worktree's ../shared links to it), else the file
    $RABBITMQ_NODE_SCRIPT names; None when neither exists."""
    candidates = [ROOT.parent / "shared" / "rabbitmq-node"]
    if os.environ.get(NODE_SCRIPT_VAR):
        candidates.append(Path(os.environ[NODE_SCRIPT_VAR]))
    return next((c for c in candidates if c.is_file()), None)


def private_nodes_unavailable() -> str | None:
    """Why no private RabbitMQ node can be started here (a skip reason), or None."""
    if shutil.which("rabbitmq-server") is None:
        return "rabbitmq-server is not installed: no private RabbitMQ node to take away"
    if node_script() is None:
        return (
            f"no rabbitmq-node script at {ROOT.parent / 'shared' / 'rabbitmq-node'} and "
            f"${NODE_SCRIPT_VAR} names none: no private RabbitMQ node to take away"
        )
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_node_port(low: int = 21000, high: int = 44000) -> int:
    """A port P such that P (AMQP) and P + 20000 (distribution) are both free now.

    Below the kernel's ephemeral range, so no outgoing connection takes it meanwhile."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        if _port_free(port) and _port_free(port + DIST_OFFSET):
            return port
    raise RuntimeError(f"no free port pair in {low}..{high}")


class RabbitNode:
    """A RabbitMQ node of the tests' own (``rabbitmq-node start NAME PORT [JOIN]``), that
    they may stop, restart and disconnect without touching the machine's broker.

        async with node.outage():          # stop_app ... start_app (always)
            ...
        await node.close_connections_named("oscc-bridge t-1234")
        await node.ctl("list_queues")      # any rabbitmqctl command against this node
    """

    def __init__(self, script: Path, name: str, port: int) -> None:
        self.script = script
        self.name = name
        self.port = port
        self.app_stopped = False

    def __repr__(self) -> str:
        return f"RabbitNode({self.name}@localhost on {self.port})"

    @property
    def url(self) -> str:
        """Its AMQP URL (guest is allowed from loopback: the script says so)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def ctl_argv(self) -> tuple[str, ...]:
        """The command line prefix of ``rabbitmqctl`` against this node."""
        return (str(self.script), "ctl", self.name)

    def start(self, join: RabbitNode | None = None, within: float = 180.0) -> None:
        """Start it (about 6 s), joined to `join`'s cluster if given; blocking, so a
        synchronous session fixture can call it. RuntimeError with the script's output
        when it fails."""
        argv = [str(self.script), "start", self.name, str(self.port)]
        if join is not None:
            argv.append(join.name)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=within, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr[-800:]}")

    def stop(self) -> None:
        """Stop it and delete its data (the script never fails at that); blocking."""
        subprocess.run(
            [str(self.script), "stop", self.name], capture_output=True, timeout=120, check=False
        )

    async def ctl(self, *args: str, within: float = 120.0) -> str:
        """``rabbitmqctl ARGS`` against this node; its stdout (RuntimeError if it fails)."""
        return await _run([*self.ctl_argv, *args], within)

    async def stop_app(self) -> None:
        """``stop_app``: every connection drops, the node refuses new ones."""
        self.app_stopped = True
        await self.ctl("stop_app")

    async def start_app(self, within: float = 90.0) -> None:
        """``start_app``, then wait until an AMQP connection is accepted again."""
        await self.ctl("start_app", within=within)
        self.app_stopped = False
        await wait_until(self._accepts, within, f"{self.name} accepting AMQP again")

    async def _accepts(self) -> bool:
        try:
            connection = await aio_pika.connect(self.url, timeout=5)
        except Exception:
            return False
        await connection.close()
        return True

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """The node's app stopped for the body; ``start_app`` always runs after."""
        try:
            await self.stop_app()
            yield
        finally:
            await self.start_app()

    def restore(self) -> None:
        """``start_app`` if an outage did not finish (a hard test timeout cut it short);
        blocking, safe to call any time."""
        if self.app_stopped:
            subprocess.run(
                [*self.ctl_argv, "start_app"], capture_output=True, timeout=120, check=False
            )
            self.app_stopped = False

    async def close_connections_named(self, name: str) -> int:
        """Close every connection to this node whose client-provided name is `name`."""
        return await close_connections_named(name, self.ctl_argv)

    async def message_count(self, queue: str) -> int:
        """Ready messages in `queue` on this node (see `message_count`)."""
        return await message_count(queue, self.url)


class PrivateBrokers:
    """Starts private RabbitMQ nodes and clusters on demand and stops every one it started
    at `close` (a session fixture's finalizer; also at interpreter exit, should that not
    run). Node names are ``<tag>-<label>``, so parallel sessions never share one.

        node = brokers.node("chaos")                 # one node
        a, b, c = brokers.cluster("ha", 3)           # b and c joined a's cluster
    """

    def __init__(self, script: Path, tag: str | None = None) -> None:
        self.script = script
        self.tag = tag or f"oscc-{os.getpid()}"
        self.nodes: list[RabbitNode] = []
        self._by_label: dict[str, list[RabbitNode]] = {}
        atexit.register(self.close)

    def node(self, label: str) -> RabbitNode:
        """The single node `label`, started on first use."""
        return self.cluster(label, 1)[0]

    def cluster(self, label: str, size: int) -> list[RabbitNode]:
        """`size` nodes in one cluster, started on first use (the same ones after)."""
        if label in self._by_label:
            nodes = self._by_label[label]
            assert len(nodes) == size, f"{label} has {len(nodes)} nodes, not {size}"
            return nodes
        nodes: list[RabbitNode] = []
        for i in range(size):
            name = f"{self.tag}-{label}" if size == 1 else f"{self.tag}-{label}-{i + 1}"
            node = RabbitNode(self.script, name, free_node_port())
            self.nodes.append(node)  # before start: a half-started node is stopped too
            node.start(join=nodes[0] if nodes else None)
            nodes.append(node)
        self._by_label[label] = nodes
        return nodes

    def close(self) -> None:
        """Stop every node started, last first; idempotent."""
        while self.nodes:
            self.nodes.pop().stop()
        self._by_label.clear()


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

    def taken() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        await wait_until(taken, within, f"{CHAOS_LOCK} free")
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


async def post_all(url: str, bodies: list[bytes]) -> collections.Counter[int]:
    """POST every body at once, each on its own connection; answers by status (-1: no
    answer)."""
    statuses: collections.Counter[int] = collections.Counter()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(body: bytes) -> None:
            try:
                async with http.post(url, data=body) as r:
                    await r.read()
                    statuses[r.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[-1] += 1

        await asyncio.gather(*(one(b) for b in bodies))
    return statuses


POLLER = r"""
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=120)
worst, polls = 0.0, 0
sys.stdout.write("ready\n"); sys.stdout.flush()
while not sys.stdin.readline().startswith("stop"):
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    worst = max(worst, time.perf_counter() - started)
    polls += 1
    sys.stdout.write("%f %d\n" % (worst, polls)); sys.stdout.flush()
"""


@contextlib.asynccontextmanager
async def healthz_poller(port: int) -> AsyncIterator[Callable[[], tuple[float, int]]]:
    """Poll /healthz from a child process about every 10 ms; yields a function that
    returns the worst latency so far (seconds) and the number of polls."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", POLLER, str(port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None
    assert stdout is not None
    await stdout.readline()
    last = (0.0, 0)
    stopping = asyncio.Event()

    async def drive() -> None:
        nonlocal last
        while not stopping.is_set():
            stdin.write(b"go\n")
            await stdin.drain()
            worst, polls = (await stdout.readline()).split()
            last = (float(worst), int(polls))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.01):
                    await stopping.wait()

    task = asyncio.create_task(drive())
    try:
        yield lambda: last
    finally:
        stopping.set()
        await task
        stdin.write(b"stop\n")
        await stdin.drain()
        await proc.wait()
