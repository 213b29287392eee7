"""A request budget for one Langfuse rate-limit bucket, kept on the client's side.

Langfuse Cloud limits requests per organisation and bucket in fixed windows (General
API: 30 a minute on Hobby) and answers 429 past the limit. The controller is not the
only client of the bucket: the app's SDK and whoever uses the UI or the API draw from
it too. So the controller spends at most its own budget, below the limit, and stops
at once for as long as a 429's ``Retry-After`` says.

The budget is a sliding window: at most ``per_minute`` requests in any 60 seconds (and
likewise per hour and per day when set). A token bucket of the same rate would allow
twice the rate across the edge of one of Langfuse's fixed windows; a sliding window
never exceeds its count in any window, so it stays within a fixed-window limit of the
same count wherever the windows fall.

Time comes from an injected clock, never from sleeping: a request that does not fit is
refused, and ``available_at`` says when one would.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from coalmine.shared.retry import Backoff, parse_retry_after

__all__ = [
    "DAY",
    "DEFAULT_PER_MINUTE",
    "DEFAULT_RETRY_AFTER",
    "HOBBY_PUBLIC_API_LIMIT",
    "HOUR",
    "MAX_RETRY_AFTER",
    "MINUTE",
    "RATE_LIMITED",
    "BudgetSettings",
    "Clock",
    "RequestBudget",
]

Clock = Callable[[], float]
"""Seconds, on any fixed origin; ``time.time`` unless a test moves time itself."""

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0

DEFAULT_RETRY_AFTER: Final = 60.0
"""Seconds to hold off after a 429 that names no wait (Langfuse's windows are a minute)."""
MAX_RETRY_AFTER: Final = DAY

RATE_LIMITED: Final = Backoff(
    attempts=1,
    first=DEFAULT_RETRY_AFTER,
    factor=1.0,
    cap=DEFAULT_RETRY_AFTER,
    jitter=0.0,
    retry_after_cap=MAX_RETRY_AFTER,
)
"""How long a 429 holds the budget: what its ``Retry-After`` asks, up to a day, else a
minute. No jitter: every client of the bucket waits for the same window to pass."""

HOBBY_PUBLIC_API_LIMIT: Final = 30
"""Langfuse Cloud Hobby plan, General API bucket (observations v2, scores v3, score
creation, prompt label moves): requests a minute."""

DEFAULT_PER_MINUTE: Final = 24
"""80 % of the Hobby General API limit: the remaining 6 a minute are left to the app's
own SDK calls (score creation goes through this bucket) and to people using the API."""


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """How many requests the controller may make to one Langfuse rate-limit bucket.

    The defaults fit the General API bucket of the Hobby plan with headroom. On Core
    (100 a minute) or Pro (1,000 a minute) raise ``per_minute`` to about 80 % of the
    plan's limit. For the Metrics v2 bucket (Hobby: 100 a day) set ``per_day`` too.
    """

    per_minute: int = DEFAULT_PER_MINUTE
    """Requests in any 60 seconds."""

    per_hour: int | None = None
    """Requests in any hour; None: no hourly bound."""

    per_day: int | None = None
    """Requests in any 24 hours; None: no daily bound."""

    def __post_init__(self) -> None:
        for name in ("per_minute", "per_hour", "per_day"):
            value = getattr(self, name)
            if value is None and name != "per_minute":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")

    def windows(self) -> tuple[tuple[float, int], ...]:
        """(window length in seconds, requests allowed in it) for each bound that is set."""
        bounds = ((MINUTE, self.per_minute), (HOUR, self.per_hour), (DAY, self.per_day))
        return tuple((length, count) for length, count in bounds if count is not None)


class RequestBudget:
    """Requests allowed to one rate-limit bucket, shared by every client of the bucket
    in this process (the sample source and the label mover draw from the same one).

    Thread-safe: the controller's schedule may run releases in several threads.
    """

    def __init__(self, settings: BudgetSettings | None = None, *, clock: Clock = time.time):
        self.settings = settings or BudgetSettings()
        self._clock = clock
        self._windows: list[tuple[float, int, deque[float]]] = [
            (length, count, deque()) for length, count in self.settings.windows()
        ]
        self._blocked_until = float("-inf")
        self._lock = threading.Lock()

    def now(self) -> float:
        """The budget's clock."""
        return self._clock()

    def try_acquire(self, now: float | None = None) -> bool:
        """Spend one request if the budget allows it at ``now`` (default: the clock)."""
        at = self._clock() if now is None else now
        with self._lock:
            if at < self._blocked_until:
                return False
            for length, count, spent in self._windows:
                _forget(spent, at - length)
                if len(spent) >= count:
                    return False
            for _, _, spent in self._windows:
                spent.append(at)
            return True

    def blocked_until(self, until: float) -> None:
        """Refuse every request before ``until`` (clock time), as a 429's ``Retry-After``
        asks. A block never shortens one already in place."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, until)

    def hold_off(
        self, retry_after: str | None, *, now: float | None = None, wall_now: float | None = None
    ) -> float:
        """Refuse every request for as long as a 429's ``Retry-After`` header asks, from
        ``now`` (default: the clock); the wait, in seconds (see ``RATE_LIMITED``).

        The header holds seconds or an HTTP date, read against ``wall_now`` (seconds since
        the epoch; default: ``time.time()``)."""
        at = self._clock() if now is None else now
        wall = time.time() if wall_now is None else wall_now
        asked = parse_retry_after(retry_after, now=wall, cap=MAX_RETRY_AFTER)
        wait = RATE_LIMITED.delay(1, retry_after=asked)
        self.blocked_until(at + wait)
        return wait

    @property
    def blocked(self) -> float | None:
        """Until when requests are refused because of a 429, or None when they are not."""
        with self._lock:
            return self._blocked_until if self._blocked_until > float("-inf") else None

    def available_at(self, now: float | None = None) -> float:
        """The earliest time at or after ``now`` when ``try_acquire`` would succeed."""
        at = self._clock() if now is None else now
        with self._lock:
            earliest = max(at, self._blocked_until)
            for length, count, spent in self._windows:
                _forget(spent, at - length)
                if len(spent) >= count:
                    # The window must first lose the requests beyond count - 1.
                    earliest = max(earliest, spent[len(spent) - count] + length)
            return earliest

    def used(self, now: float | None = None) -> int:
        """Requests spent in the 60 seconds up to ``now`` (default: the clock)."""
        at = self._clock() if now is None else now
        with self._lock:
            for length, _, spent in self._windows:
                if length == MINUTE:
                    _forget(spent, at - length)
                    return len(spent)
        return 0

    def remaining(self, now: float | None = None) -> int:
        """Requests that could be made at ``now`` (0 while blocked)."""
        at = self._clock() if now is None else now
        with self._lock:
            if at < self._blocked_until:
                return 0
            left = []
            for length, count, spent in self._windows:
                _forget(spent, at - length)
                left.append(count - len(spent))
            return max(0, min(left))


def _forget(spent: deque[float], before: float) -> None:
    """Drop the requests made at or before ``before``: they left the window."""
    while spent and spent[0] <= before:
        spent.popleft()
