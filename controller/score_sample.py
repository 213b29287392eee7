"""How large a release's score sample is: the rate the controller puts in its routing table.

With scores read by trace (``controller.source.langfuse``, sampled reads), the
controller's Langfuse requests grow with the number of sampled traces, not with traffic.
The rate is sized so that every running release's score reads fit an equal share of the
request budget: ``rate = min(1, affordable / requests a minute)``, the requests counted
by the proxies in the last whole minute. Pure functions of numbers; the loop reads the
counts and writes the table.

The rate changes only between minutes and only when it is off by more than a quarter
(a sample that keeps changing is still random, but each change is a table write every
proxy applies): a new entry starts at the first minute at least ``LEAD_SECONDS`` away,
so every proxy has the table before it applies, whenever it reads it.
"""

from __future__ import annotations

import math

from coalmine.shared.routing_tables.table import SampleRate

SCORE_SHARE = 0.75
"""Share of the request budget spent on score reads; the rest reads observations and
moves labels."""
IDS_PER_READ = 100
"""Trace ids a score read asks for at most (one page of 100 scores)."""
READS_PER_TRACE = 1.5
"""Score reads a sampled trace costs on average: one once it is ``first_read`` old, a
second at its ``scoreTimeout`` for those a score is still missing for."""
CHANGE_FACTOR = 1.25
"""The rate is changed when the wanted one is this many times larger or smaller."""
LEAD_SECONDS = 30.0
MINUTE = 60


def affordable_traces(budget_per_minute: float, releases: int, score_names: int) -> float:
    """Sampled traces a minute one release can have its scores read for."""
    if releases <= 0:
        return math.inf
    ids = max(1, IDS_PER_READ // max(1, score_names))
    reads = budget_per_minute * SCORE_SHARE / releases
    return reads * ids / READS_PER_TRACE


def wanted_rate(requests_per_minute: int, affordable: float) -> float:
    """The share of requests to sample: all of them while they fit."""
    if requests_per_minute <= 0 or requests_per_minute <= affordable:
        return 1.0
    return affordable / requests_per_minute


def rate_in_force(entries: tuple[SampleRate, ...], at: float) -> float:
    """The rate a request arriving at ``at`` is sampled at (1 before any entry)."""
    rate = 1.0
    for entry in entries:
        if entry.from_ <= at:
            rate = entry.rate
    return rate


def next_entries(
    entries: tuple[SampleRate, ...], wanted: float, now: float
) -> tuple[SampleRate, ...] | None:
    """The table's new sample entries to move towards ``wanted``, or None to leave it.

    Keeps the entry in force now and adds the new one; an entry not yet in force is
    replaced, never stacked. The first entry applies from the minute in progress: until
    a rate is set every request is sampled, which is the burst to cut short.
    """
    latest = entries[-1].rate if entries else 1.0
    if _close(latest, wanted):
        return None
    if not entries or (len(entries) == 1 and entries[0].rate == 0.0 and entries[0].from_ <= now):
        # the first rate, or the first once traffic is known: nothing was sampled in this
        # minute yet, so it applies at once
        return (
            SampleRate.model_validate({"from": math.floor(now / MINUTE) * MINUTE, "rate": wanted}),
        )
    start = math.ceil((now + LEAD_SECONDS) / MINUTE) * MINUTE
    in_force = [entry for entry in entries if entry.from_ <= now][-1:]
    return (*in_force, SampleRate.model_validate({"from": start, "rate": wanted}))


def _close(rate: float, wanted: float) -> bool:
    if rate == wanted:
        return True
    if rate <= 0.0 or wanted <= 0.0:
        return False
    return 1.0 / CHANGE_FACTOR < rate / wanted < CHANGE_FACTOR
