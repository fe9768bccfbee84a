"""An OpenScape Contact Center stand-in: the OpenMedia REST side, a scripted agent that
calls connectors' webhooks, fault injection, and an admin API.

    from bridge.simulator import Simulator
    async with Simulator(connectors={"facebook": "TOKEN"}, port=0, seed=0) as sim:
        sim.url, sim.faults.not_ready(5), sim.records, sim.webhook_calls, ...

Modules: `state` (sessions, records), `rest` (the OSCC commands), `agent` (webhook calls),
`faults`, `admin` (HTTP admin API), `server` (`Simulator`). This module also holds the
``oscc-bridge simulator`` verb: `add_arguments`, `run_from_args` and `serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from bridge import logs
from bridge.simulator.agent import AgentOptions
from bridge.simulator.faults import Faults
from bridge.simulator.server import DEFAULT_CONNECTORS, Simulator
from bridge.simulator.state import Record, Session, WebhookCall

__all__ = [
    "DEFAULT_CONNECTORS",
    "AgentOptions",
    "Faults",
    "Record",
    "Session",
    "Simulator",
    "WebhookCall",
    "add_arguments",
    "run_from_args",
    "serve",
]


async def serve(host: str, port: int, connectors: dict[str, str], **options: Any) -> None:
    """Run a simulator until cancelled; print its URL (``OSCC simulator http://...``) first.

    `options` are `Simulator` keywords (session_ttl, agent, seed, faults, agent tuning).
    """
    async with Simulator(connectors or DEFAULT_CONNECTORS, host=host, port=port, **options) as sim:
        print(f"OSCC simulator {sim.url}", flush=True)
        print(f"  connectors: {', '.join(sorted(sim.connectors))}", flush=True)
        print(f"  admin API:  {sim.url}/admin", flush=True)
        await asyncio.Event().wait()


def _connector(text: str) -> tuple[str, str]:
    title, sep, token = text.partition(":")
    if not (sep and title and token):
        raise argparse.ArgumentTypeError(f"expected TITLE:TOKEN, got {text!r}")
    if len(title) > 50 or len(token) > 50:
        raise argparse.ArgumentTypeError("title and token are at most 50 characters each")
    return title, token


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def _pieces(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected 1 to 10000 pieces, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``oscc-bridge simulator`` options to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8443, help="port (0: any free port)")
    parser.add_argument(
        "--connector",
        action="append",
        type=_connector,
        default=[],
        metavar="TITLE:TOKEN",
        help="a connector OSCC knows (repeatable; default facebook with the guide's token)",
    )
    parser.add_argument(
        "--session-ttl", type=_seconds, default=90.0, metavar="S", help="session expiry"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for faults and the agent")
    parser.add_argument("--no-agent", action="store_true", help="never call webhooks")
    parser.add_argument(
        "--step-delay", type=_seconds, default=0.0, metavar="S", help="agent pause between calls"
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--not-ready", type=_seconds, default=0.0, metavar="S", help="answer 7 for S s at start"
    )
    faults.add_argument(
        "--error-5xx-rate", type=_fraction, default=0.0, metavar="F", help="share of HTTP 503s"
    )
    faults.add_argument(
        "--latency", type=_seconds, default=0.0, metavar="S", help="added to every answer"
    )
    faults.add_argument(
        "--answer-pieces",
        type=_pieces,
        default=1,
        metavar="N",
        help="write every answer chunked in N pieces, split mid-token (1: one write)",
    )
    faults.add_argument(
        "--piece-gap", type=_seconds, default=0.0, metavar="S", help="pause between pieces"
    )
    faults.add_argument(
        "--strict-sessions",
        action="store_true",
        help="only keepalives keep a session alive",
    )
    faults.add_argument(
        "--refuse-registration",
        type=int,
        choices=(4, 8, 9),
        default=None,
        help="answer every registration with this code",
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "session_ttl": args.session_ttl,
        "agent": not args.no_agent,
        "seed": args.seed,
        "step_delay": args.step_delay,
        "not_ready": args.not_ready,
        "error_5xx_rate": args.error_5xx_rate,
        "latency": args.latency,
        "refuse_registration": args.refuse_registration,
        "answer_pieces": args.answer_pieces,
        "piece_gap": args.piece_gap,
        "strict_sessions": args.strict_sessions,
    }


async def _run(args: argparse.Namespace) -> None:
    # Signals only set an Event; the serve task is cancelled from here.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = asyncio.create_task(
        serve(args.host, args.port, dict(args.connector), **_options(args))
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({server, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server  # re-raises a start-up failure (port in use, ...)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``oscc-bridge simulator`` with parsed `args`; 0 after SIGINT/SIGTERM.

    Logs go to stderr (`bridge.logs`), so stdout carries only the URL lines.
    """
    logs.configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "auto"))
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0
