"""SessionSupervisor against the simulator over real HTTP, plus the backoff function.

Intervals are shortened (keepalive 0.1 s, backoff base 0.05 s) so the file runs in seconds.
Counts come from what the simulator received (`sim.records`), not from the supervisor's
own account of itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge import errors
from bridge.backoff import backoff_delay
from bridge.config import Config, ConnectorConfig, HttpConfig, OsccConfig, SpoolConfig
from bridge.metrics import Metrics
from bridge.oscc.client import OsccClient
from bridge.session import SessionState, SessionSupervisor
from bridge.simulator import Simulator
from tests.harness import wait_until

TITLE, TOKEN = "facebook", "HWJVUAZT1BGx3vBmnwUVUMAMZHKGWX"
PUBLIC = "http://127.0.0.1:9"
REG, KA, LFE = "registerConnector", "keepalive", "listenForEvents"

# -- backoff (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "cap"), [(0.5, 30.0), (0.05, 1.0), (2.0, 1.0)])
def test_backoff_delay_is_capped_full_jitter_with_a_floor(base: float, cap: float) -> None:
    rng = random.Random(1)
    for attempt in range(80):
        ceiling = min(cap, base * 2**attempt)
        draws = [backoff_delay(attempt, base=base, cap=cap, rng=rng) for _ in range(300)]
        assert min(draws) >= min(base, cap)  # never a tight loop
        assert max(draws) <= max(ceiling, min(base, cap))
        if ceiling >= 4 * base:  # full jitter: the draws spread over the whole range
            assert min(draws) < ceiling * 0.3
            assert max(draws) > ceiling * 0.7


def test_backoff_delay_grows_then_plateaus() -> None:
    rng = random.Random(7)

    def mean(attempt: int) -> float:
        return sum(backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(2000)) / 2000

    means = [mean(a) for a in range(10)]
    assert means[0] == pytest.approx(0.5)
    assert means[3] > 1.5 * means[2] > 2 * means[1]
    assert 13 < means[9] < 17  # uniform over [0, 30]
    assert backoff_delay(10_000, base=0.5, cap=30.0, rng=rng) <= 30.0  # no overflow


# -- harness ------------------------------------------------------------------------------------


@dataclass
class Changes:
    """What on_change received, with an Event per change kind."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    async def __call__(self, change: str, body: dict[str, Any]) -> None:
        self.seen.append((change, body))
        if self.fail:
            raise RuntimeError("on_change blew up")

    def of(self, change: str) -> list[dict[str, Any]]:
        return [b for c, b in self.seen if c == change]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(connectors={TITLE: TOKEN}, port=0, agent=False, seed=0) as s:
        yield s


def make_config(url: str, *, interval: float, spool: str, **connector: Any) -> Config:
    return Config(
        http=HttpConfig(public_url=PUBLIC),
        oscc=OsccConfig(url=url, keepalive_interval=interval, request_timeout=2.0),
        spool=SpoolConfig(dir=spool),
        connectors=[ConnectorConfig(name="fb", title=TITLE, token=TOKEN, **connector)],
    )


@asynccontextmanager
async def supervisor(
    sim: Simulator,
    *,
    interval: float = 0.1,
    changes: Changes | None = None,
    metrics: Metrics | None = None,
    connector: dict[str, Any] | None = None,
    spool: Path | None = None,
    **attrs: float,
) -> AsyncIterator[tuple[SessionSupervisor, OsccClient, Metrics]]:
    """A running supervisor. Without `spool` it gets a spool directory of its own, as a
    separate bridge process would; pass one to play a restart of the same bridge."""
    with tempfile.TemporaryDirectory(prefix="oscc-session-") as own:
        config = make_config(
            sim.url, interval=interval, spool=str(spool or own), **(connector or {})
        )
        async with _running(config, changes, metrics, attrs) as running:
            yield running


@asynccontextmanager
async def _running(
    config: Config, changes: Changes | None, metrics: Metrics | None, attrs: dict[str, float]
) -> AsyncIterator[tuple[SessionSupervisor, OsccClient, Metrics]]:
    metrics = metrics or Metrics()
    async with OsccClient(config.oscc, connector="fb", metrics=metrics) as client:
        sup = SessionSupervisor(
            config, config.connectors[0], client, metrics, changes, rng=random.Random(0)
        )
        attrs.setdefault("backoff_base", 0.05)
        attrs.setdefault("backoff_cap", 1.0)
        for name, value in attrs.items():
            setattr(sup, name, value)
        async with sup:
            yield sup, client, metrics


def calls(sim: Simulator, endpoint: str, since: float = 0.0) -> list[Any]:
    return [r for r in sim.records if r.endpoint == endpoint and r.at >= since]


def gauge(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"oscc_bridge_{name}", labels) or 0.0


# -- registration and keepalive ---------------------------------------------------------------


async def test_registers_with_the_guide_body_then_enables_events(sim: Simulator) -> None:
    changes = Changes()
    async with supervisor(sim, interval=5.0, changes=changes) as (sup, _, metrics):
        token = await sup.token(timeout=5)
        assert sup.ready
        assert sup.state is SessionState.REGISTERED
        reg, lfe = sim.records[0], sim.records[1]
        assert reg.endpoint == REG
        assert reg.body == {
            "type": "Registration",
            "webhookURL": f"{PUBLIC}/webhook/fb",
            "openMedia": {"openMediaTitle": TITLE, "token": TOKEN},
        }
        assert reg.authorization is None
        assert reg.error_code == 0
        assert lfe.endpoint == LFE
        assert lfe.body == {"enabledListenForEvent": True}
        assert lfe.authorization == token
        await sim.wait_for(lambda: changes.of("registered"), timeout=5)
        body = changes.of("registered")[0]
        assert body["connector"] == "fb"
        assert body["title"] == TITLE
        assert body["state"] == "registered"
        assert body["at"]
        assert "userCredentials" not in body
        status = sup.status()
        assert status["state"] == "registered"
        assert status["registrations"] == 1
        assert status["listen_for_events"] is True
        assert token not in json.dumps(status)
        assert gauge(metrics, "session_state", connector="fb", state="registered") == 1
        for other in ("starting", "registering", "backoff", "failed", "stopped"):
            assert gauge(metrics, "session_state", connector="fb", state=other) == 0
        assert gauge(metrics, "registrations_total", connector="fb", outcome="registered") == 1
    assert sup.state is SessionState.STOPPED
    assert gauge(metrics, "session_state", connector="fb", state="stopped") == 1
    with pytest.raises(errors.Transient, match="stopped"):
        await sup.token(timeout=0.1)


async def test_credentials_only_when_asked_and_no_events_when_off(sim: Simulator) -> None:
    changes = Changes()
    opts = {"publish_credentials": True, "listen_for_events": False}
    async with supervisor(sim, interval=5.0, changes=changes, connector=opts) as (sup, _, _m):
        await sup.token(timeout=5)
        await sim.wait_for(lambda: changes.of("registered"), timeout=5)
    creds = changes.of("registered")[0]["userCredentials"]
    assert creds["userName"]
    assert creds["password"]
    assert calls(sim, LFE) == []
    assert sup.status()["listen_for_events"] is None


async def test_keepalive_cadence_and_authorization(sim: Simulator) -> None:
    async with supervisor(sim, interval=0.1) as (sup, _, _m):
        token = await sup.token(timeout=5)
        start = time.monotonic()
        await asyncio.sleep(1.0)  # the measurement window itself
        window = calls(sim, KA, since=start)
        status = sup.status()
    # 0.1 s apart plus the round trip: ~8-10 in one second; never a burst, never stalled
    assert 5 <= len(window) <= 11, len(window)
    gaps = [b.at - a.at for a, b in itertools.pairwise(window)]
    assert min(gaps) >= 0.09
    for record in calls(sim, KA):
        assert record.authorization == token
        assert record.body == {}
        assert record.error_code == 0
    assert status["last_keepalive"] is not None
    assert len(calls(sim, REG)) == 1
    # every call but registration carried the token
    assert all(r.authorization == token for r in sim.records if r.endpoint != REG)


# -- session loss -------------------------------------------------------------------------------


async def test_fifty_callers_one_reregistration(sim: Simulator) -> None:
    changes = Changes()
    # a long keepalive interval: the callers, not the keepalive, discover the loss
    async with supervisor(sim, interval=30.0, changes=changes) as (sup, client, _m):
        old = await sup.token(timeout=5)
        sim.faults.drop_sessions()
        gate = asyncio.Event()

        async def caller() -> str:
            await gate.wait()
            token = await sup.token(timeout=5)
            try:
                await client.keepalive(token)
            except errors.SessionLost as exc:
                await sup.session_lost(token, exc)
                token = await sup.token(timeout=5)
                await client.keepalive(token)  # the new token works
            return token

        tasks = [asyncio.create_task(caller()) for _ in range(50)]
        gate.set()
        tokens = await asyncio.gather(*tasks)
        await sim.wait_for(lambda: len(changes.of("registered")) == 2, timeout=5)
        assert set(tokens) == {await sup.token()}
        assert old not in tokens
        assert len(calls(sim, REG)) == 2  # the first registration and exactly one more
        assert len(changes.of("lost")) == 1
        lost = changes.of("lost")[0]
        assert lost["errorCode"] == 10
        assert sup.status()["registrations"] == 2
        # a late report about the old token changes nothing
        await sup.session_lost(old)
        assert sup.ready
        assert len(calls(sim, REG)) == 2


async def test_simulator_restart_reregisters(sim: Simulator) -> None:
    changes = Changes()
    async with supervisor(sim, interval=0.1, changes=changes) as (sup, _, metrics):
        old = await sup.token(timeout=5)
        sim.restart()
        await sim.wait_for(lambda: len(changes.of("registered")) == 2, timeout=5)
        new = await sup.token(timeout=5)
        assert new != old
        refused = [r for r in calls(sim, KA) if r.error_code == 10]
        assert refused
        assert refused[0].authorization == old
        assert [b.get("errorCode") for b in changes.of("lost")] == [10]
        assert gauge(metrics, "keepalive_failures_total", connector="fb") >= 1
        assert len(calls(sim, REG)) == 2


# -- transient trouble ----------------------------------------------------------------------------


async def test_not_ready_at_start_backs_off(sim: Simulator) -> None:
    window, base = 2.0, 0.05
    sim.faults.not_ready(window)
    start = time.monotonic()
    async with supervisor(sim, backoff_base=base, backoff_cap=1.0) as (sup, _, metrics):
        await sim.wait_for(lambda: sup.state is SessionState.BACKOFF, timeout=5)
        assert not sup.ready
        with pytest.raises(errors.Transient):
            await sup.token(timeout=0.1)
        await sup.token(timeout=window + 5)
        registered_after = time.monotonic() - start
    attempts = [r for r in calls(sim, REG) if r.error_code == 7]
    # doubling from 0.05 s: log2(2 / 0.05) ~ 5.3, plus a few for the jitter
    assert 3 <= len(attempts) <= 10, len(attempts)
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= base * 0.9  # never a tight loop
    assert registered_after < window + 1.0 + 1.0  # recovered within the cap after the window
    assert sup.status()["last_error_code"] == 7
    assert gauge(metrics, "registrations_total", connector="fb", outcome="transient") == len(
        attempts
    )


async def test_not_ready_while_registered_keeps_the_session(sim: Simulator) -> None:
    # failed keepalives are retried sooner than the interval (backoff from 0.05 s, capped
    # at the interval) so that the session does not expire meanwhile
    async with supervisor(sim, interval=0.5) as (sup, _, metrics):
        token = await sup.token(timeout=5)
        sim.faults.not_ready(1.0)
        start = time.monotonic()
        await sim.wait_for(lambda: sim.faults.not_ready_remaining == 0, timeout=5)
        await sim.wait_for(
            lambda: any(r.error_code == 0 for r in calls(sim, KA, since=start + 1.0)), timeout=5
        )
        assert sup.ready
        assert await sup.token() == token  # the session survived the outage
        failing = [r for r in calls(sim, KA, since=start) if r.error_code == 7]
        assert 2 <= len(failing) <= 12, len(failing)
        assert gauge(metrics, "keepalive_failures_total", connector="fb") == len(failing)
        assert len(calls(sim, REG)) == 1


async def test_5xx_on_keepalive_is_transient(sim: Simulator) -> None:
    async with supervisor(sim, interval=0.05) as (sup, _, metrics):
        token = await sup.token(timeout=5)
        sim.faults.error_5xx_rate = 1.0
        await sim.wait_for(
            lambda: gauge(metrics, "keepalive_failures_total", connector="fb") >= 3, timeout=5
        )
        sim.faults.error_5xx_rate = 0.0
        assert sup.ready
        assert await sup.token() == token
        assert len(calls(sim, REG)) == 1


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [4, 8, 9])
async def test_refused_connector_fails_then_recovers(sim: Simulator, code: int) -> None:
    changes = Changes()
    sim.faults.refuse_registration = code
    async with supervisor(sim, changes=changes, failed_retry=0.1) as (sup, _, metrics):
        await sim.wait_for(lambda: sup.state is SessionState.FAILED, timeout=5)
        assert not sup.ready
        await sim.wait_for(lambda: len(calls(sim, REG)) >= 4, timeout=5)  # keeps trying
        assert sup.state is SessionState.FAILED
        assert gauge(metrics, "session_state", connector="fb", state="failed") == 1
        with pytest.raises(errors.Transient):
            await sup.token(timeout=0.1)
        sim.faults.refuse_registration = None
        await sup.token(timeout=5)
        await sim.wait_for(lambda: changes.of("registered"), timeout=5)
    failed = changes.of("failed")
    assert len(failed) == 1  # announced once per spell, not per attempt
    assert failed[0]["errorCode"] == code
    assert failed[0]["state"] == "failed"
    assert failed[0]["errorText"]
    assert [c for c, _ in changes.seen] == ["failed", "registered"]
    refused = gauge(metrics, "registrations_total", connector="fb", outcome="refused")
    assert refused == len([r for r in calls(sim, REG) if r.error_code == code]) >= 4


async def test_second_supervisor_waits_for_the_stale_session(sim: Simulator) -> None:
    sim.faults.update({"session_ttl": 0.5})
    async with supervisor(sim, interval=0.1) as (first, _, _m):
        await first.token(timeout=5)
        async with supervisor(sim, stale_retry=0.2) as (second, _, _m2):
            await sim.wait_for(
                lambda: len([r for r in calls(sim, REG) if r.error_code == 2]) >= 3, timeout=5
            )
            assert second.state is SessionState.BACKOFF
            assert not second.ready
            assert second.status()["last_error_code"] == 2
            await first.stop()
            stopped = time.monotonic()
            await second.token(timeout=5)
            waited = time.monotonic() - stopped
    # the old session had to expire first (0.5 s without keepalives)
    assert waited >= 0.3
    assert len([r for r in calls(sim, REG) if r.error_code == 0]) == 2


# -- robustness ---------------------------------------------------------------------------------


async def test_on_change_errors_do_not_stop_the_supervisor(sim: Simulator) -> None:
    changes = Changes(fail=True)
    async with supervisor(sim, interval=0.1, changes=changes) as (sup, _, _m):
        old = await sup.token(timeout=5)
        await sim.wait_for(lambda: changes.of("registered"), timeout=5)
        sim.faults.drop_sessions()  # else OSCC would answer 2: the old session is alive
        await sup.session_lost(old)
        await sim.wait_for(lambda: len(changes.of("registered")) == 2, timeout=5)
        assert sup.ready
        assert [c for c, _ in changes.seen] == ["registered", "lost", "registered"]
        assert await sup.token() != old


async def test_token_waits_while_registering(sim: Simulator) -> None:
    sim.faults.latency = 0.3
    async with supervisor(sim, interval=5.0) as (sup, _, _m):
        assert not sup.ready
        loop = asyncio.get_running_loop()
        started = loop.time()
        token = await sup.token(timeout=5)
        # registration and listenForEvents, each 0.3 s late: token() waited for both
        assert loop.time() - started >= 0.5
        assert token == calls(sim, LFE)[0].authorization


async def test_keepalive_auth_error_reregisters_once_the_old_session_is_gone(
    sim: Simulator,
) -> None:
    # 6 on a keepalive while OSCC still holds the session: registration answers 2 until
    # the old session expires, then succeeds -- the connector heals without help
    sim.faults.update({"session_ttl": 0.3})
    changes = Changes()
    async with supervisor(sim, interval=0.1, changes=changes, stale_retry=0.1) as (sup, _, _m):
        old = await sup.token(timeout=5)
        sim.faults.fail_next(KA, 6)
        await sim.wait_for(lambda: len(changes.of("registered")) == 2, timeout=5)
        assert await sup.token() != old
    assert [b.get("errorCode") for b in changes.of("lost")] == [6]
    assert len([r for r in calls(sim, REG) if r.error_code == 0]) == 2


async def test_unknown_listen_for_events_path_runs_without_events(sim: Simulator) -> None:
    config = make_config(sim.url, interval=5.0, spool=tempfile.mkdtemp(prefix="oscc-session-"))
    oscc = OsccConfig(url=sim.url, keepalive_interval=5.0, listen_for_events_path="/no/such/path")
    metrics = Metrics()
    async with OsccClient(oscc, connector="fb", metrics=metrics) as client:
        sup = SessionSupervisor(config, config.connectors[0], client, metrics)
        async with sup:
            await sup.token(timeout=5)
            assert sup.ready
            assert sup.status()["listen_for_events"] is False
            assert "HTTP 404" in sup.status()["last_error_text"]
    assert calls(sim, LFE) == []


# -- resuming the session after a restart ---------------------------------------------------


def registrations(sim: Simulator) -> list[Any]:
    return [r for r in calls(sim, REG) if r.error_code == 0]


async def test_a_restart_resumes_the_saved_session(sim: Simulator, tmp_path: Path) -> None:
    """A bridge that restarts (deploy, crash) keeps its live session instead of waiting
    for it to expire: no new registration, the same token, listen-for-events again."""
    async with supervisor(sim, spool=tmp_path) as (first, _, _m):
        before = await first.token(timeout=5)
    saved = tmp_path / "session" / "fb.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    lfe_before = len(calls(sim, LFE))
    async with supervisor(sim, spool=tmp_path) as (second, _, metrics):
        assert await second.token(timeout=5) == before
        assert second.state is SessionState.REGISTERED
        assert gauge(metrics, "registrations_total", connector="fb", outcome="resumed") == 1
    assert len(registrations(sim)) == 1
    assert len(calls(sim, LFE)) == lfe_before + 1  # events enabled again, to be sure


async def test_a_saved_session_oscc_forgot_is_replaced(sim: Simulator, tmp_path: Path) -> None:
    async with supervisor(sim, spool=tmp_path) as (first, _, _m):
        old = await first.token(timeout=5)
    sim.restart()  # OSCC forgot every session while the bridge was down
    async with supervisor(sim, spool=tmp_path) as (second, _, _m2):
        new = await second.token(timeout=5)
    assert new != old
    assert len(registrations(sim)) == 2
    assert old not in (tmp_path / "session" / "fb.json").read_text()


async def test_a_session_saved_for_other_settings_is_not_offered(
    sim: Simulator, tmp_path: Path
) -> None:
    """A token issued for another webhookURL (or title, or OSCC) is never sent."""
    async with supervisor(sim, spool=tmp_path) as (first, _, _m):
        old = await first.token(timeout=5)
        await first.stop()
        sim.faults.drop_sessions()
    since = time.monotonic()
    async with supervisor(sim, spool=tmp_path, connector={"webhook_secret": "other-path"}) as (
        second,
        _,
        _m2,
    ):
        assert await second.token(timeout=5) != old
    assert all(r.authorization != old for r in sim.records if r.at >= since)


async def test_a_restart_that_publishes_credentials_resumes_with_them(
    sim: Simulator, tmp_path: Path
) -> None:
    """OSCC gives the user credentials only with a registration: they are saved with the
    token, so a restart resumes the session and announces the same credentials."""
    connector = {"publish_credentials": True}
    first_changes, second_changes = Changes(), Changes()
    async with supervisor(sim, spool=tmp_path, connector=connector, changes=first_changes) as (
        first,
        _,
        _m,
    ):
        before = await first.token(timeout=5)
        await wait_until(lambda: first_changes.of("registered"), 5, "announced")
    async with supervisor(sim, spool=tmp_path, connector=connector, changes=second_changes) as (
        second,
        _,
        metrics,
    ):
        assert await second.token(timeout=5) == before
        await wait_until(lambda: second_changes.of("registered"), 5, "announced again")
        assert gauge(metrics, "registrations_total", connector="fb", outcome="resumed") == 1
    assert len(registrations(sim)) == 1
    [announced] = first_changes.of("registered")
    [again] = second_changes.of("registered")
    assert again["userCredentials"] == announced["userCredentials"]
    assert again["userCredentials"]["password"]


async def test_a_session_saved_without_credentials_is_not_resumed_by_one_that_publishes_them(
    sim: Simulator, tmp_path: Path
) -> None:
    """Saved by a bridge that did not publish credentials: resuming could not announce
    any, so a bridge that must registers anew (and waits for the old session to go)."""
    sim.faults.update({"session_ttl": 0.3})
    async with supervisor(sim, spool=tmp_path) as (first, _, _m):
        await first.token(timeout=5)
    changes = Changes()
    async with supervisor(
        sim,
        spool=tmp_path,
        connector={"publish_credentials": True},
        changes=changes,
        stale_retry=0.1,
    ) as (second, _, _m2):
        await second.token(timeout=5)
        await wait_until(lambda: changes.of("registered"), 5, "announced")
    assert len(registrations(sim)) == 2
    assert changes.of("registered")[0]["userCredentials"]["userName"]


async def test_a_token_reported_lost_is_never_resumed(sim: Simulator, tmp_path: Path) -> None:
    """Only what a previous process left is resumed: after a loss reported in this one,
    the supervisor registers anew even if OSCC would still take the old token."""
    sim.faults.update({"session_ttl": 0.3})
    async with supervisor(sim, spool=tmp_path, stale_retry=0.1) as (sup, _, _m):
        old = await sup.token(timeout=5)
        await sup.session_lost(old)
        assert await sup.token(timeout=5) != old
    assert len(registrations(sim)) == 2
