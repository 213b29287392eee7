"""The proxies' own counts of a release, as the evidence takes them in.

With ``Evidence(traffic_from_proxy=True)`` the traffic (sample ratio, circuit breaker,
the traffic check), the error rate and the latency of every request come from the
proxies' per-minute counts (``coalmine.shared.aggregates``), not from the traces read in
Langfuse: all requests, not the traced or sampled ones. Traces still bring scores, cost
and the Langfuse-side view used by the trace-loss check.

A minute's counts grow while proxies flush, so the evidence takes in what is new since
its last reading of that minute (``MinuteTaken``); counts can only grow (a proxy that
vanished leaves its counts, so a smaller sum is not taken back). A minute's share of a
cell that has closed comes too late and is counted in ``late_requests``.

Trace loss: once a minute is old enough that every trace of it has been read from
Langfuse, the traces found per arm are compared with the requests the proxies counted
(the sampled ones, when a score sample is drawn). Lost = counted - found (never below 0).
The comparison is the coverage check's: a stratified difference of the arms' loss rates,
one stratum a minute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MINUTE = 60
TRACE_LAG_SECONDS = 70.0
"""How long after its request ends a trace may take to be read from Langfuse (SDK export
batches and Langfuse's ingestion queue, as the source's lookback allows for them, and
the source's settle time), beyond the read timeout."""


@dataclass(slots=True)
class MinuteTaken:
    """What the evidence has taken in of one arm's minute of proxy counts."""

    requests: int = 0
    errors: int = 0
    sampled: int = 0
    bins: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MinuteDelta:
    """What is new in one arm's minute since the last reading."""

    requests: int
    errors: int
    bins: dict[int, int]

    @property
    def empty(self) -> bool:
        return self.requests == 0 and self.errors == 0 and not self.bins


def take(
    taken: MinuteTaken, requests: int, errors: int, sampled: int, bins: Mapping[int, int]
) -> MinuteDelta:
    """Update ``taken`` to the counts read now and return what grew (what shrank is
    kept as it was: counts only grow)."""
    new_requests = max(requests - taken.requests, 0)
    new_errors = max(errors - taken.errors, 0)
    taken.requests = max(taken.requests, requests)
    taken.errors = max(taken.errors, errors)
    taken.sampled = max(taken.sampled, sampled)
    grown: dict[int, int] = {}
    held = taken.bins
    for index, count in bins.items():
        before = held.get(index, 0)
        if count > before:
            grown[index] = count - before
            held[index] = count
    return MinuteDelta(new_requests, new_errors, grown)


def minute_of(ts: float) -> int:
    """Start of the UTC minute of ``ts`` (epoch seconds)."""
    return int(ts // MINUTE) * MINUTE
