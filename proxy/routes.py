"""The releases a proxy serves and their current routing tables.

Each release has its policy (replaced when the policy files change) and a routing table
(replaced whenever the store holds a newer one). Tables and the set of releases are
swapped in whole, so a request sees either the old ones or the new ones, never a mix;
requests in flight finish on what they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from coalmine.shared.conventions import PROMPT_LABEL_HEADER, RELEASE_HEADER
from coalmine.shared.routing_tables.store import BadRoutingTableError, RoutingTableStore
from coalmine.shared.routing_tables.table import (
    ArmRoute,
    RoutingTable,
    check_upstreams,
    initial_table,
)
from policies.model import Policy, RoutingProvider
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
    name: str = field(init=False, default="")
    """The release's name (its policy's)."""
    prefix: str = field(init=False, default="/")
    """The path prefix the release serves."""
    body_limit: int = field(init=False, default=0)
    """Bytes of request body past which a request is refused."""
    release_header: tuple[bytes, bytes] = field(init=False, default=(b"", b""))
    """The ``x-coalmine-release`` header its requests carry upstream."""
    sticky_cookie: str | None = field(init=False, default=None)
    """The stickiness cookie's name, if the release is sticky by cookie."""
    sticky: bool = field(init=False, default=False)
    """The release is sticky (by header or cookie)."""
    routed_cache: Routed | None = field(init=False, default=None, repr=False, compare=False)
    """The table last read as ``routed`` gave it."""

    def routed(self, table: RoutingTable) -> Routed:
        """``table`` (the release's table, read once by the caller) as a request reads it:
        made once per table, not once per request."""
        routed = self.routed_cache
        if routed is None or routed.table is not table:
            routed = self.routed_cache = Routed(table)
        return routed

    def __post_init__(self) -> None:
        routing = self.policy.routing
        self.name = self.policy.name
        self.prefix = routing.path_prefix
        self.body_limit = routing.max_body_bytes
        self.release_header = (RELEASE_HEADER.encode(), self.policy.name.encode())
        stickiness = routing.stickiness
        if stickiness is not None and stickiness.header is not None:
            self.sticky_header = stickiness.header.lower().encode()
        if stickiness is not None:
            self.sticky = True
            self.sticky_cookie = stickiness.cookie
        self.timeout = {
            "connect": routing.connect_timeout,
            "read": routing.read_timeout,
            "write": routing.read_timeout,
            "pool": routing.connect_timeout,
        }


class Routed:
    """A routing table's values as plain attributes: a pydantic model's are read through
    its ``__getattr__`` hook, at several times the cost, and a request reads a dozen."""

    __slots__ = (
        "baseline",
        "canary",
        "canary_weight",
        "score_sample",
        "shadow",
        "table",
        "version",
    )

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.canary_weight = table.canary_weight
        self.version = table.version
        self.score_sample = bool(table.score_sample)
        self.shadow = table.shadow
        self.baseline = RoutedArm(table.baseline)
        self.canary = RoutedArm(table.canary)


class RoutedArm:
    """One arm's route as plain attributes."""

    __slots__ = ("label_header", "prompt_label", "route", "upstream")

    def __init__(self, route: ArmRoute) -> None:
        self.route = route
        self.upstream = route.upstream
        """None: the proxy's application."""
        self.prompt_label = route.prompt_label
        self.label_header: tuple[bytes, bytes] | None = (
            None
            if route.prompt_label is None
            else (PROMPT_LABEL_HEADER.encode(), route.prompt_label.encode())
        )


@dataclass(frozen=True, slots=True)
class Refused:
    """A policy kept out of the releases routed: it clashes with one in force."""

    release: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """What taking a new set of policies changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    edited: tuple[str, ...] = ()
    reset: tuple[tuple[str, str], ...] = ()
    """Edited releases whose table the new policy no longer allows, with why: they start
    again from the new policy's initial table."""
    refused: tuple[Refused, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.edited)


@dataclass(frozen=True, slots=True)
class _View:
    """The releases in force, swapped in whole: a request reads one view."""

    by_name: dict[str, Release]
    ordered: tuple[Release, ...]
    """By path prefix, longest first."""

    @classmethod
    def of(cls, releases: dict[str, Release]) -> _View:
        ordered = sorted(releases.values(), key=lambda release: -len(release.prefix))
        return cls(releases, tuple(ordered))


def _routed(policy: Policy) -> bool:
    """Whether the proxy routes the release (another system may move its traffic)."""
    return policy.routing.provider is RoutingProvider.PROXY


def _clashes(policies: Iterable[Policy]) -> dict[str, str]:
    """The policies that cannot be routed beside the ones before them, by release, with
    why: a release name or a path prefix claimed before (which prompts the releases move
    is the controller's concern)."""
    problems = check_policy_set((policy.name, policy) for policy in policies)
    return {problem.second: problem.message for problem in problems if problem.kind != "prompt"}


class Releases:
    """The releases a proxy routes, found by path: the longest matching
    ``routing.pathPrefix``.

    The set can change while the proxy runs (``update``); it is swapped in whole between
    two requests, as tables are. ``app_url`` is where arms without an upstream of their
    own (prompt-only releases) go.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        pins: dict[str, float] | None = None,
        *,
        app_url: str,
    ) -> None:
        pins = dict(pins or {})
        policies = [policy for policy in policies if _routed(policy)]
        unknown = sorted(set(pins) - {policy.name for policy in policies})
        if unknown:
            raise ValueError(f"--weight names no release of the given policies: {unknown[0]}")
        conflicts = [
            conflict
            for conflict in check_policy_set(
                (str(index), policy) for index, policy in enumerate(policies)
            )
            if conflict.kind != "prompt"
        ]
        if conflicts:
            raise ValueError(conflicts[0].message)
        self.pins = pins
        self.app_url = app_url
        self._lock = threading.Lock()
        self._view = _View.of({policy.name: self._fresh(policy) for policy in policies})

    @property
    def by_name(self) -> dict[str, Release]:
        """The releases in force by name (a snapshot: do not change it)."""
        return self._view.by_name

    def policies(self) -> dict[str, Policy]:
        """The policies in force by release."""
        return {name: release.policy for name, release in self._view.by_name.items()}

    def _fresh(self, policy: Policy, table: RoutingTable | None = None) -> Release:
        pinned = policy.name in self.pins
        if pinned or table is None:
            table = initial_table(policy, self.pins.get(policy.name, 0.0))
        return Release(policy, table, pinned)

    def match(self, path: str) -> Release | None:
        for release in self._view.ordered:
            prefix = release.prefix
            if path.startswith(prefix) and (
                prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] in "/?"
            ):
                return release
        return None

    def upstream_of(self, route: ArmRoute) -> str:
        """Where an arm's requests go: its upstream, or the proxy's application."""
        return self.app_url if route.upstream is None else route.upstream

    def apply(self, table: RoutingTable) -> bool:
        """Swap in a newer table; False when it is not newer, its release is pinned or no
        longer routed.

        Raises ValueError when the table names an upstream its policy does not.
        """
        with self._lock:
            release = self._view.by_name.get(table.release)
            if release is None or release.pinned or table.version <= release.table.version:
                return False
            check_upstreams(table, release.policy)
            release.table = table
            return True

    def update(
        self, policies: Mapping[str, Policy], tables: Mapping[str, RoutingTable] | None = None
    ) -> PolicyUpdate:
        """Take a new set of policies, in its order; ``tables``: stored tables of releases
        it adds.

        An added release starts from its stored table (when its policy allows it) or its
        initial table; a removed one is no longer routed; an edited one routes by its new
        policy at once and keeps its table when the new policy allows it. A policy that
        clashes with one in force, or with one before it in ``policies`` (the same path
        prefix), is kept out.
        """
        tables = tables or {}
        policies = {name: policy for name, policy in policies.items() if _routed(policy)}
        with self._lock:
            old = self._view.by_name
            in_force_first = sorted(policies.values(), key=lambda policy: policy.name not in old)
            clashes = _clashes(in_force_first)
            refused = tuple(Refused(name, message) for name, message in clashes.items())
            kept = {name: policy for name, policy in policies.items() if name not in clashes}
            releases: dict[str, Release] = {}
            added: list[str] = []
            edited: list[str] = []
            reset: list[tuple[str, str]] = []
            for name, policy in kept.items():
                current = old.get(name)
                if current is not None and current.policy == policy:
                    releases[name] = current
                    continue
                table = current.table if current is not None else tables.get(name)
                if table is not None and table.version == 0:
                    table = None  # an initial table, never written: the new policy's own
                why = _not_allowed(table, policy)
                if why is not None:
                    if current is not None:
                        reset.append((name, why))
                    table = None
                elif table is not None:
                    table = _with_shadow_limits(table, policy)
                releases[name] = self._fresh(policy, table)
                (added if current is None else edited).append(name)
            removed = tuple(name for name in old if name not in kept)
            update = PolicyUpdate(tuple(added), removed, tuple(edited), tuple(reset), refused)
            if update.changed:
                self._view = _View.of(releases)
            return update


def _not_allowed(table: RoutingTable | None, policy: Policy) -> str | None:
    """Why ``table`` cannot route ``policy``'s release, None when it can (or is None)."""
    if table is None:
        return None
    try:
        check_upstreams(table, policy)
    except ValueError as error:
        return str(error)
    return None


def _with_shadow_limits(table: RoutingTable, policy: Policy) -> RoutingTable:
    """The table with the shadow limits of ``policy`` (its methods, body size and copies
    in flight): the policy's word on them applies at once; the share mirrored stays the
    controller's."""
    shadow, wanted = table.shadow, policy.shadow
    if shadow is None or wanted is None:
        return table
    limits = {
        "methods": wanted.methods,
        "max_body_bytes": wanted.max_body_bytes,
        "max_in_flight": wanted.max_in_flight,
    }
    return table.model_copy(update={"shadow": shadow.model_copy(update=limits)})


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
        self._seen: dict[str, tuple[int, Release]] = {}
        """Release → the stored version last read for it, and the release it was read
        for (a release replaced by a policy change reads its table again)."""
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
            seen = self._seen.get(name)
            if release is None or release.pinned:
                continue
            if seen is not None and seen[0] == version and seen[1] is release:
                continue
            self._seen[name] = (version, release)
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
        await _cancel(self._task)
        self._task = None
        close = getattr(self.store, "close", None)
        if callable(close):
            close()  # a watching store's threads end with it


PolicySource = Callable[[], Mapping[str, Policy]]
"""The policies in force by release, in their files' order (a reload of the files, or
the snapshot another part of the process reloads)."""


@dataclass(frozen=True, slots=True)
class PolicyFeed:
    """Where a running proxy reads the policies in force."""

    policies: PolicySource
    kept_out: Callable[[], Mapping[str, str]] | None = None
    """What the source itself keeps out for a clash now (release → why), when it checks
    its set before giving it (the policy files do)."""


class PolicyRefresher:
    """Polls the policies in force and applies a changed set between two requests.

    Reading the policies and the stored tables of added releases is blocking I/O: it runs
    off the event loop; the new set is swapped in on it. A policy that clashes is kept
    out and reported, the others go on; a set that cannot be read leaves the releases as
    they are.
    """

    def __init__(
        self,
        releases: Releases,
        source: PolicySource,
        *,
        interval: float,
        tables: Callable[[str], RoutingTable | None] | None = None,
        kept_out: Callable[[], Mapping[str, str]] | None = None,
        on_update: Callable[[PolicyUpdate], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.releases = releases
        self.source = source
        self.interval = interval
        self.tables = tables
        self.kept_out = kept_out
        """What the source itself keeps out for a clash now (release → why), when it
        checks its set before giving it (the policy files do)."""
        self.on_update = on_update
        self.on_failed = on_failed
        self._last: dict[str, Policy] = releases.policies()
        self._kept_out: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def poll(self) -> _Polled:
        """The policies now, the stored tables of the releases they add, and what the
        source newly keeps out (blocking I/O: run it in a thread)."""
        policies = dict(self.source())
        kept_out = dict(self.kept_out()) if self.kept_out is not None else {}
        refused = tuple(
            Refused(name, why) for name, why in kept_out.items() if self._kept_out.get(name) != why
        )
        self._kept_out = kept_out
        if policies == self._last:
            return _Polled(None, {}, refused)
        tables: dict[str, RoutingTable] = {}
        if self.tables is not None:
            for name in policies.keys() - self.releases.by_name.keys():
                try:
                    table = self.tables(name)
                except Exception as error:  # the store is outside the process
                    log.warning("release %s: routing table not read yet: %s", name, error)
                    continue
                if table is not None:
                    tables[name] = table
        return _Polled(policies, tables, refused)

    async def refresh_once(self) -> PolicyUpdate | None:
        """One look at the policies; what changed or was refused, if anything was."""
        try:
            polled = await asyncio.to_thread(self.poll)
        except Exception as error:
            log.error("policies not read: %s; the releases routed stay as they are", error)
            if self.on_failed is not None:
                self.on_failed(str(error))
            return None
        update = PolicyUpdate()
        if polled.policies is not None:
            self._last = polled.policies
            update = self.releases.update(polled.policies, polled.tables)
        if polled.refused:
            update = replace(update, refused=polled.refused + update.refused)
        if not (update.changed or update.refused):
            return None
        _log_update(update)
        if self.on_update is not None:
            self.on_update(update)
        return update

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh_once()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None


@dataclass(frozen=True, slots=True)
class _Polled:
    policies: dict[str, Policy] | None
    """None: the set last applied."""
    tables: dict[str, RoutingTable]
    refused: tuple[Refused, ...]
    """Policies the source newly keeps out."""


def _log_update(update: PolicyUpdate) -> None:
    for name in update.added:
        log.info("release %s added: routed from now on", name)
    for name in update.removed:
        log.warning("release %s removed: its path is no longer routed", name)
    for name in update.edited:
        log.info("release %s: routing by its edited policy", name)
    for name, why in update.reset:
        log.warning("release %s: back to its initial routing table: %s", name, why)
    for refused in update.refused:
        log.error("release %s not routed: %s", refused.release, refused.message)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
