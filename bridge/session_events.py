"""Listen For Events on a newly registered or resumed session.

Done before anyone gets the session's token, so no contact is forwarded on a session
that would not report its events. OSCC's guide gives no path for the call: ours
(``oscc.listen_for_events_path``) is a guess, so a refusal leaves the connector running
without events rather than not at all.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from bridge import errors
from bridge.backoff import retry
from bridge.oscc.client import OsccClient


async def enable_events(
    client: OsccClient,
    token: str,
    *,
    base: float,
    cap: float,
    rng: random.Random,
    note: Callable[[errors.BridgeError], None],
    log: Any,
) -> bool:
    """Enable events on `token`'s session: True when OSCC agreed, False when it refused.

    Transient failures are retried (the session is ours and these calls keep it alive)
    and each is handed to `note`; SessionLost is raised (back to registration); any other
    refusal, or HTTP 404/405 (OSCC has no such path), is noted, logged, and False.
    """

    def failed(exc: BaseException, _: float) -> None:
        assert isinstance(exc, errors.Transient)
        if exc.http_status in (404, 405):
            raise exc
        note(exc)

    try:
        await retry(
            lambda: client.listen_for_events(token, enabled=True),
            retry_on=errors.Transient,
            base=base,
            cap=cap,
            rng=rng,
            on_retry=failed,
        )
    except (errors.Transient, errors.Rejected) as exc:
        # Transient here is 404/405 only: `failed` gives up on those.
        note(exc)
        log.error(
            "session.listen_for_events_refused",
            error_code=exc.code,
            error_text=exc.text,
            hint="check oscc.listen_for_events_path; running without events",
        )
        return False
    return True
