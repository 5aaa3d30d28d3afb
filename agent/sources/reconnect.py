"""When to connect again: exponential backoff with full jitter, and an attempt budget.

`ReconnectPolicy` is pure: it never sleeps and never reads a clock. The socket code asks it
`next_delay(now)` before every connection attempt, sleeps that long itself, and tells it
`on_connected(now)` when a link is up. Tests drive it with plain numbers for `now`.

Rules, in order:

1. The first attempt, and an attempt the server asked for (Twitch's `RECONNECT`), wait 0 s.
2. After a failure the delay is drawn uniformly from [0, min(cap, initial * multiplier**n)]
   ("full jitter", so many agents that lost the same server do not return in step); n counts
   failures since the last stable connection. The upper bound comes from tenacity's
   `wait_exponential`; the draw uses an injectable random source so tests are exact.
3. A connection that stayed up for `stable_after` seconds resets n to 0.
4. Whatever 1-3 say, no more than `max_attempts_per_minute` attempts start in any 60 s, so a
   server that accepts and drops at once is never hammered.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, wait_exponential

BUDGET_WINDOW = 60.0


class ReconnectPolicy:
    """Backoff and attempt budget for one source. Not thread-safe; one event loop owns it."""

    def __init__(
        self,
        *,
        initial: float = 1.0,
        cap: float = 60.0,
        multiplier: float = 2.0,
        stable_after: float = 60.0,
        max_attempts_per_minute: int = 6,
        random_unit: Callable[[], float] | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or multiplier < 1:
            raise ValueError(
                f"backoff needs 0 < initial <= cap and multiplier >= 1, got initial={initial}, "
                f"cap={cap}, multiplier={multiplier}"
            )
        if max_attempts_per_minute < 1:
            raise ValueError(f"max_attempts_per_minute must be >= 1, got {max_attempts_per_minute}")
        self.initial = initial
        self.cap = cap
        self.multiplier = multiplier
        self.stable_after = stable_after
        self.max_attempts_per_minute = max_attempts_per_minute
        self._random_unit = random_unit or random.random
        self._bound = wait_exponential(multiplier=initial, max=cap, exp_base=multiplier)
        self._retry_state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
        self.failures = 0  # failed or short-lived connections since the last stable one
        self._attempts: deque[float] = deque()  # start times of recent attempts
        self._connected_at: float | None = None
        self._started = False

    def upper_bound(self, failures: int) -> float:
        """The largest delay the n-th consecutive failure may draw (tenacity's formula)."""
        if failures <= 0:
            return 0.0
        self._retry_state.attempt_number = failures
        return float(self._bound(self._retry_state))

    def next_delay(self, now: float, *, immediate: bool = False) -> float:
        """Seconds to wait before the next attempt, which is then booked in the budget.

        `now` is when the previous link ended (or when the source starts). `immediate` is for
        a reconnect the server asked for: no backoff, but the budget still applies.
        """
        if self._connected_at is not None:
            if now - self._connected_at >= self.stable_after:
                self.failures = 0
            self._connected_at = None
        if not self._started or immediate:
            self._started = True
            delay = 0.0
        else:
            self.failures += 1
            delay = self._random_unit() * self.upper_bound(self.failures)
        start = max(now + delay, self._earliest_within_budget(now + delay))
        self._attempts.append(start)
        return start - now

    def on_connected(self, now: float) -> None:
        """A link is up; if it lasts `stable_after` seconds the backoff starts again from 0."""
        self._connected_at = now

    def on_stable(self, now: float) -> None:
        """The link has been up long enough: forget past failures right away."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_after:
            self.failures = 0

    def attempts_in_window(self, now: float) -> int:
        self._forget_before(now - BUDGET_WINDOW)
        return len(self._attempts)

    def _earliest_within_budget(self, at: float) -> float:
        """The first moment >= `at` when one more attempt keeps any 60 s within budget."""
        self._forget_before(at - BUDGET_WINDOW)
        if len(self._attempts) < self.max_attempts_per_minute:
            return at
        # Wait until enough booked attempts have left the window (t - 60, t].
        return self._attempts[-self.max_attempts_per_minute] + BUDGET_WINDOW

    def _forget_before(self, horizon: float) -> None:
        while self._attempts and self._attempts[0] <= horizon:
            self._attempts.popleft()
