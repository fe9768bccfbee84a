"""A registered connector whose keepalives keep failing is `degraded` (oscc.degraded_after
in a row), in its status and the state gauge, keeps its session, and recovers by itself.
Real simulator over HTTP; the supervisor in-process."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec

from bridge.metrics import Metrics
from bridge.oscc.client import OsccClient
from bridge.session import SessionState, SessionSupervisor
from bridge.simulator import Simulator
from tests.bridge_harness import FB_TITLE, FB_TOKEN, make_config, wait_until


@asynccontextmanager
async def supervised(
    sim: Simulator, tmp_path: Path, degraded_after: int
) -> AsyncIterator[tuple[SessionSupervisor, Metrics]]:
    config = make_config("unused", sim.url, tmp_path / "spool", keepalive_interval=0.1)
    oscc = msgspec.structs.replace(config.oscc, degraded_after=degraded_after)
    config = msgspec.structs.replace(config, oscc=oscc)
    metrics = Metrics()
    async with OsccClient(config.oscc, connector="fb", metrics=metrics) as client:
        sup = SessionSupervisor(
            config, config.connectors[0], client, metrics, None, rng=random.Random(0)
        )
        sup.backoff_base, sup.backoff_cap = 0.02, 0.1
        async with sup:
            yield sup, metrics


def state_gauge(metrics: Metrics, state: str) -> float:
    labels = {"connector": "fb", "state": state}
    return metrics.registry.get_sample_value("oscc_bridge_session_state", labels) or 0.0


def keepalives(sim: Simulator) -> list[int | None]:
    return [r.error_code for r in sim.records if r.endpoint == "keepalive"]


async def test_failing_keepalives_degrade_and_recover(tmp_path: Path) -> None:
    async with (
        Simulator({FB_TITLE: FB_TOKEN}, port=0, agent=False, seed=0) as sim,
        supervised(sim, tmp_path, degraded_after=3) as (sup, metrics),
    ):
        token = await sup.token(timeout=5)
        assert sup.state is SessionState.REGISTERED
        sim.faults.error_5xx_rate = 1.0
        await wait_until(lambda: sup.state is SessionState.DEGRADED, 10, "degraded")
        assert sup.status()["state"] == "degraded"
        assert state_gauge(metrics, "degraded") == 1
        assert state_gauge(metrics, "registered") == 0
        assert sup.ready  # the session is still held: webhooks and contacts go on
        sim.faults.error_5xx_rate = 0.0
        await wait_until(lambda: sup.state is SessionState.REGISTERED, 10, "recovered")
        assert state_gauge(metrics, "degraded") == 0
        assert state_gauge(metrics, "registered") == 1
        assert await sup.token() == token  # the same session throughout
        registrations = [r for r in sim.records if r.endpoint == "registerConnector"]
        assert len(registrations) == 1


async def test_fewer_failures_than_the_threshold_do_not_degrade(
    tmp_path: Path, captured_logs: io.StringIO
) -> None:
    async with (
        Simulator({FB_TITLE: FB_TOKEN}, port=0, agent=False, seed=0) as sim,
        supervised(sim, tmp_path, degraded_after=3) as (sup, _),
    ):
        await sup.token(timeout=5)
        sim.faults.fail_next("keepalive", 7, times=2)
        # two failures, then a success: the fence is a successful keepalive after them
        await wait_until(
            lambda: keepalives(sim).count(7) == 2 and keepalives(sim)[-1] == 0,
            10,
            "two failed keepalives and a good one",
        )
        assert sup.state is SessionState.REGISTERED
    assert "session.degraded" not in captured_logs.getvalue()
    assert "session.keepalive_recovered" in captured_logs.getvalue()
