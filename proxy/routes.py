"""The releases a proxy serves and their current routing tables.

Each release has its policy (fixed for the process) and a routing table (replaced
whenever the store holds a newer one). A table is swapped in whole, so a request sees
either the old table or the new one, never a mix; requests in flight finish on the table
they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coalmine.shared.routing_tables.store import BadRoutingTableError, RoutingTableStore
from coalmine.shared.routing_tables.table import RoutingTable, check_upstreams, initial_table
from policies.model import Policy
from policies.policy_set import check_policy_set

log = logging.getLogger("coalmine.proxy.routing")


@dataclass(slots=True)
class Release:
    """One release behind the proxy: its policy, current table and whether it is pinned."""

    policy: Policy
    table: RoutingTable
    pinned: bool = False
    """Pinned by ``--weight``: the store is not read for this release."""
    sticky_header: bytes | None = field(init=False, default=None)
    """The stickiness header as ASGI spells header names (lower-case bytes), if any."""
    timeout: dict[str, float] = field(init=False, default_factory=dict)
    """The per-request timeouts in the form transports read from request extensions."""

    def __post_init__(self) -> None:
        routing = self.policy.routing
        stickiness = routing.stickiness
        if stickiness is not None and stickiness.header is not None:
            self.sticky_header = stickiness.header.lower().encode()
        self.timeout = {
            "connect": routing.connect_timeout,
            "read": routing.read_timeout,
            "write": routing.read_timeout,
            "pool": routing.connect_timeout,
        }

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def prefix(self) -> str:
        return self.policy.routing.path_prefix


class Releases:
    """Finds the release of a path: the longest matching ``routing.pathPrefix``."""

    def __init__(self, policies: Sequence[Policy], pins: dict[str, float] | None = None) -> None:
        pins = dict(pins or {})
        unknown = sorted(set(pins) - {policy.name for policy in policies})
        if unknown:
            raise ValueError(f"--weight names no release of the given policies: {unknown[0]}")
        # Routing needs one release per name and per prefix; which prompts the releases
        # move is the controller's concern (the commands refuse a shared prompt first).
        conflicts = [
            conflict
            for conflict in check_policy_set(
                (str(index), policy) for index, policy in enumerate(policies)
            )
            if conflict.kind != "prompt"
        ]
        if conflicts:
            raise ValueError(conflicts[0].message)
        by_name: dict[str, Release] = {}
        for policy in policies:
            pinned = policy.name in pins
            table = initial_table(policy, pins.get(policy.name, 0.0))
            by_name[policy.name] = Release(policy, table, pinned)
        self.by_name = by_name
        self._ordered = sorted(by_name.values(), key=lambda release: -len(release.prefix))

    def match(self, path: str) -> Release | None:
        for release in self._ordered:
            prefix = release.prefix
            if path.startswith(prefix) and (
                prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] in "/?"
            ):
                return release
        return None

    def apply(self, table: RoutingTable) -> bool:
        """Swap in a newer table; False when it is not newer or its release is pinned.

        Raises ValueError when the table names an upstream its policy does not.
        """
        release = self.by_name.get(table.release)
        if release is None or release.pinned or table.version <= release.table.version:
            return False
        check_upstreams(table, release.policy)
        release.table = table
        return True


class RoutingRefresher:
    """Polls the store and applies newer tables; a bad table is reported and skipped."""

    def __init__(
        self,
        releases: Releases,
        store: RoutingTableStore,
        *,
        interval: float,
        on_applied: Callable[[RoutingTable], None] | None = None,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.releases = releases
        self.store = store
        self.interval = interval
        self.on_applied = on_applied
        self.on_error = on_error
        self._seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def refresh(self) -> list[RoutingTable]:
        """One look at the store (blocking I/O: run it in a thread). Returns what changed."""
        applied: list[RoutingTable] = []
        try:
            versions = self.store.versions()
        except Exception as error:  # the store is outside the process: report and go on
            self._report("*", f"cannot read the state store: {error}")
            return applied
        for name, version in versions.items():
            release = self.releases.by_name.get(name)
            if release is None or release.pinned or self._seen.get(name) == version:
                continue
            self._seen[name] = version
            try:
                table = self.store.read(name)
                if table is not None and self.releases.apply(table):
                    applied.append(table)
            except (BadRoutingTableError, ValueError) as error:
                self._report(name, str(error))
            except Exception as error:
                self._seen.pop(name, None)
                self._report(name, f"cannot read the routing table: {error}")
        return applied

    def _report(self, release: str, message: str) -> None:
        log.error("routing table not applied: %s", message)
        if self.on_error is not None:
            self.on_error(release, message)

    async def refresh_once(self) -> None:
        """One look at the store, off the event loop; each table applied is logged and
        reported."""
        for table in await asyncio.to_thread(self.refresh):
            log.info(
                "routing table of %s v%d applied: canary weight %s%%",
                table.release,
                table.version,
                f"{table.canary_weight:g}",
            )
            if self.on_applied is not None:
                self.on_applied(table)

    async def run(self) -> None:
        while True:
            await self.refresh_once()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        close = getattr(self.store, "close", None)
        if callable(close):
            close()  # a watching store's threads end with it
