"""The proxies' own counts of every request, as the controller reads them.

Every proxy writes per release, arm and minute how many requests it answered, how many
were errors and their latency bins (``coalmine.shared.aggregates``): in the state file in
local mode, in a ConfigMap per proxy in cluster mode. ``ProxyCounts`` reads either and
sums over the proxies. A stored document that is not valid is left out and reported
(``problems``, and a warning in the log), never read as zero counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from coalmine.shared.aggregates.configmap import ConfigMapAggregateStore
from coalmine.shared.aggregates.model import MinuteCell
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from coalmine.shared.aggregates.store import AggregateReader, Readout
from policies.domain import Arm

_END_OF_TIME = 2**62


class ProxyCounts:
    """Reads the proxies' per-minute counts of one release at a time."""

    def __init__(self, store: AggregateReader) -> None:
        self.store = store
        self.problems: tuple[str, ...] = ()
        """The documents the last read left out, each naming where it is stored."""

    @classmethod
    def local(cls, state: Path) -> ProxyCounts:
        """Counts in the state file's ``proxy_minutes`` table."""
        return cls(SqliteAggregateStore(state))

    @classmethod
    def cluster(cls, api_client: Any, namespace: str, prefix: str) -> ProxyCounts:
        """Counts in the ``<prefix>-aggregates-<proxy>`` ConfigMaps of a namespace."""
        return cls(ConfigMapAggregateStore(api_client, namespace, prefix))

    def readout(self, release: str, since: float, until: float) -> Readout:
        """The cells of ``release`` whose minute starts in [since, until) (epoch
        seconds), with the proxies that wrote them and the documents left out."""
        found = self.store.read(release, math.ceil(since), math.ceil(until))
        self.problems = found.problems
        return found

    def read(self, release: str, since: float, until: float) -> dict[tuple[Arm, int], MinuteCell]:
        """(arm, minute) → the cell summed over every proxy, for minutes starting in
        [since, until)."""
        return self.readout(release, since, until).cells

    def proxies_seen(self, release: str, since: float) -> frozenset[str]:
        """The proxies that counted requests of ``release`` in a minute from ``since``."""
        return self.readout(release, since, _END_OF_TIME).proxies

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if callable(close):
            close()
