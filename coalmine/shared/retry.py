"""Retrying a request: which answers are worth another try, how long to wait, and what a
``Retry-After`` header asks for. One helper for every caller (the Langfuse reads and label
moves, the webhook notifier, the proxy's span exporter), so they all agree.

The helper does not sleep and does no I/O: each caller waits its own way (a thread's event,
``asyncio.sleep``, or a request budget that refuses until a time) and asks ``Backoff`` only
how long. Delays grow by ``factor`` from ``first``, are capped at ``cap``, and are spread by
a random factor in ``[1 - jitter, 1 + jitter]`` so that replicas retrying after the same
outage do not come back in step. A server's ``Retry-After`` wins over the doubling, up to
``retry_after_cap``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Final, Protocol

TEMPORARY_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Answers that say "not now" rather than "no": a timeout, too early, too many requests,
and the server errors that a retry can outlast (RFC 9110 section 15.6; 501 and 505 say
"never", so they are permanent)."""


class Outcome(StrEnum):
    """What one HTTP answer means for the request that got it."""

    DONE = "done"
    """2xx: the request did what it asked."""
    TEMPORARY = "temporary"
    """Try again later (``TEMPORARY_STATUSES``, or no answer at all)."""
    PERMANENT = "permanent"
    """Another try would get the same answer (most 4xx, 501, 505)."""


def outcome_of(status: int) -> Outcome:
    """Classify an HTTP status code."""
    if 200 <= status < 300:
        return Outcome.DONE
    if status in TEMPORARY_STATUSES or (status >= 500 and status not in (501, 505)):
        return Outcome.TEMPORARY
    return Outcome.PERMANENT


def status_class(status: int) -> str:
    """A metric label for a status: ``2xx`` … ``5xx``, with ``429`` on its own."""
    return "429" if status == 429 else f"{status // 100}xx"


_SECONDS: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
"""Delay-seconds: ASCII digits (RFC 9110), with a fraction or a sign read as a server
might mean them. ``float`` alone would also take ``nan``, ``inf``, ``1e3``, ``1_0`` and
other scripts' digits."""


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """The wait, in seconds, that a ``Retry-After`` header asks for (RFC 9110 section
    10.2.3): delay-seconds or an HTTP date, read against ``now`` (seconds since the epoch).
    Every caller reads the header here, so every wait is finite, ``>= 0`` and ``<= cap``.

    None when the header is missing or says nothing usable (neither a number of seconds
    nor an HTTP date: ``nan``, ``inf``, ``1e3`` and ``soon`` are refused, never waited
    on); the caller then waits its own backoff. A negative number or a date in the past
    is 0; a number or a date too far ahead, however large, is ``cap``.
    """
    if not (math.isfinite(cap) and cap >= 0):
        raise ValueError(f"cap must be finite and >= 0, not {cap}")
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)  # a number past float's range is +-inf: capped below
    else:
        try:
            moment = parsedate_to_datetime(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


class Random(Protocol):
    """Where the jitter comes from: ``random`` itself, or a seeded ``random.Random``."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """How often to try one request and how long to wait between tries."""

    attempts: int = 4
    """Tries in all, the first included; 1 never retries."""

    first: float = 1.0
    """Seconds before the second try (before jitter)."""

    factor: float = 2.0
    """Each further wait is this many times the one before."""

    cap: float = 60.0
    """Longest wait the doubling reaches, in seconds."""

    jitter: float = 0.5
    """Each wait is multiplied by a random number in ``[1 - jitter, 1 + jitter]``."""

    retry_after_cap: float = 60.0
    """Longest wait a server's ``Retry-After`` may impose, in seconds."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        numbers = (self.first, self.factor, self.cap, self.jitter, self.retry_after_cap)
        if not all(math.isfinite(number) and number >= 0 for number in numbers):
            raise ValueError("first, factor, cap, jitter and retry_after_cap must be finite, >= 0")
        if self.jitter > 1:
            raise ValueError(f"jitter must be at most 1, not {self.jitter}")

    def delay(
        self, attempt: int, *, retry_after: float | None = None, rng: Random = random
    ) -> float:
        """Seconds to wait after try number ``attempt`` (1 for the first) failed.

        ``retry_after`` is what the server asked for (see ``parse_retry_after``); it is
        honoured as given, without jitter, up to ``retry_after_cap``.
        """
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, not {attempt}")
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), self.retry_after_cap)
        grown = min(self.first * self.factor ** min(attempt - 1, 64), self.cap)
        if self.jitter == 0:
            return grown  # no draw: a caller without jitter leaves the random stream alone
        return grown * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def more_after(self, attempt: int) -> bool:
        """Whether another try follows try number ``attempt``."""
        return attempt < self.attempts
