"""The outage gate: one prober at a time while OSCC fails, and which failures a message is
charged with.

OSCC failing a request transiently (1, 7, 5xx, a timeout) means one of two things: OSCC
is down (an *outage*: every request would fail), or OSCC dislikes this one message (a
*poison* message: others go through). The gate tells them apart by asking someone else::

    X fails ──► gate closes; after backoff(streak) ONE other waiter probes
                  ├─ it succeeds: OSCC is up; X was the only failure since the last
                  │  success, so X is charged one strike; the gate opens
                  └─ it fails too: an outage; nobody is charged; the next probe comes
                     from yet another waiter, after a longer backoff

A message charged `max_attempts` strikes is dead-lettered by the consumer; in an outage
no message is charged (unless the outage was a single failed request, which looks
exactly like a poison message). While closed, the gate lets one request through per
backoff step, so an outage costs one request per step, not one per message; other
sources wait behind a poison message at most one short probe backoff, because a probe
from a healthy source reopens the gate.

Each waiter is any hashable object (the consumer uses its work items); `forget` drops
what the gate knows about one when it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Gate:
    """Open while OSCC answers; closed behind one prober at a time while it does not.

    `backoff(n)` is the pause before the next probe after the n-th failure in a row.
    """

    def __init__(self, backoff: Callable[[int], float]) -> None:
        self._backoff = backoff
        self._closed = False
        # failures since the last success: how many, and who when it was only one item
        self._streak = 0
        self._culprit: object | None = None
        self._mixed = False
        self._strikes: dict[object, int] = {}
        self._waiters: dict[object, asyncio.Future[None]] = {}  # FIFO: dicts keep order
        self._prober: object | None = None
        self._any_next = False  # no one was waiting when a probe was due: the next one is it
        self._timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        """True while OSCC is failing and only probes go through."""
        return self._closed

    def strikes(self, who: object) -> int:
        """Failures `who` was charged with: OSCC failed it while it accepted others."""
        return self._strikes.get(who, 0)

    async def wait(self, who: object) -> None:
        """Return when the gate is open, or when it is `who`'s turn to probe."""
        if not self._closed or self._prober is who:
            return
        if self._any_next:
            self._any_next = False
            self._prober = who
            return
        turn = self._waiters[who] = asyncio.get_running_loop().create_future()
        try:
            await turn
        finally:
            if self._waiters.get(who) is turn:
                del self._waiters[who]

    def succeeded(self, who: object) -> None:
        """OSCC answered `who`: it is up. Charge a lone earlier failure; open the gate."""
        culprit = self._culprit
        if self._streak and not self._mixed and culprit is not None and culprit is not who:
            self._strikes[culprit] = self._strikes.get(culprit, 0) + 1
        self._streak, self._culprit, self._mixed = 0, None, False
        if not self._closed:
            return
        self._closed, self._prober, self._any_next = False, None, False
        self._cancel_timer()
        for turn in self._waiters.values():
            if not turn.done():
                turn.set_result(None)

    def failed(self, who: object) -> None:
        """OSCC failed `who` transiently (or no session could be had: pass an object of
        its own). Close the gate; the next probe comes after the backoff, from someone
        else when anyone else is waiting."""
        self._streak += 1
        if self._culprit is None:
            self._culprit = who
        elif self._culprit is not who:
            self._mixed = True
        self._closed = True
        if self._prober is who:
            self._prober = None
        if self._prober is None:
            # The timer restarts with every failure: a longer streak, a longer pause.
            self._cancel_timer()
            delay = self._backoff(self._streak)
            self._timer = asyncio.get_running_loop().call_later(delay, self._next_probe, who)

    def leave(self, who: object) -> None:
        """`who` will not probe after all (stopping, its channel is gone): pass the turn
        on at once."""
        if self._closed and self._prober is who:
            self._prober = None
            self._next_probe(who)

    def forget(self, who: object) -> None:
        """`who` is done (answered, dead-lettered or abandoned)."""
        self._strikes.pop(who, None)
        if self._culprit is who:
            self._mixed = True  # never charge it; nor anyone else for this streak
        self.leave(who)

    def _next_probe(self, last: object) -> None:
        self._timer = None
        if not self._closed or self._prober is not None:
            return
        waiting = [w for w, turn in self._waiters.items() if not turn.done()]
        others = [w for w in waiting if w is not last]
        chosen = others[0] if others else (waiting[0] if waiting else None)
        if chosen is None:
            self._any_next = True
            return
        self._prober = chosen
        self._waiters[chosen].set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["Gate"]
