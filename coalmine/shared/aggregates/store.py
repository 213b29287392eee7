"""Where proxies write their counts and the controller reads their sums.

A proxy writes the running totals of its own cells (the same cell again as it grows:
writes replace, so a write retried after a failure never counts twice); the store keeps
the minutes of the last retention. A reader sums the cells of every proxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from coalmine.shared.aggregates.model import MinuteCell
from policies.domain import Arm


@dataclass(frozen=True, slots=True)
class Readout:
    """One release's cells in a range of minutes, summed over the proxies."""

    cells: dict[tuple[Arm, int], MinuteCell]
    """(arm, minute) → the cell summed over every proxy that wrote one."""
    proxies: frozenset[str]
    """The proxies whose counts are in ``cells``."""
    problems: tuple[str, ...] = ()
    """Stored documents refused (each names where it is): their counts are left out."""


class AggregateWriter(Protocol):
    """One proxy's side of a store."""

    proxy_id: str

    def write(self, cells: Sequence[MinuteCell], now: float) -> int:
        """Store the totals of these cells (replacing what this proxy stored for them)
        and forget minutes older than the retention, ``now`` being epoch seconds; returns
        how many cells a bound of the store left out. Raises on failure: nothing is then
        known to be stored."""
        ...

    def close(self) -> None: ...


class AggregateReader(Protocol):
    """The controller's side of a store."""

    def read(self, release: str, since: int, until: int) -> Readout:
        """Cells of ``release`` whose minute is in [since, until) (epoch seconds)."""
        ...
