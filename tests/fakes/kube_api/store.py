"""The in-memory object store behind the fake API server: etcd and the watch cache.

Objects are JSON dicts keyed by (resource, namespace, name). One counter, the store's
resource version, goes up by one on every write; the object written (or, for a delete,
the object removed) carries it in ``metadata.resourceVersion``. The last
``history_limit`` changes are kept, for watches that start from an older version and for
lists of an earlier state (``continue`` tokens, ``resourceVersionMatch=Exact``); asking
for a version older than that raises ``TooOldError``.

Every operation takes the store's lock, so a read-check-write (``transact``) is atomic.
No HTTP here: the app turns these calls into API semantics.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]
"""(namespace, name) within one resource."""


@dataclass(frozen=True)
class Change:
    """One write, as a watch reports it."""

    type: str
    """ADDED, MODIFIED or DELETED."""
    resource: str
    namespace: str
    name: str
    object: dict[str, Any]
    """The object after the write; for DELETED, the last state at the delete's version."""
    previous: dict[str, Any] | None
    resource_version: int


@dataclass(frozen=True)
class Put:
    """Store this object (create or replace) at the next resource version."""

    object: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Remove the object."""


Decision = Put | Delete | None
Deliver = Callable[[Change | None], None]
"""Called, under the store's lock, with each change a watch sees; None when it is closed."""


class TooOldError(Exception):
    """The version asked for is older than the kept history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass
class _Watcher:
    resource: str
    deliver: Deliver


def key_order(key: Key) -> str:
    """The order of keys in etcd: by ``namespace/name`` as one string."""
    return f"{key[0]}/{key[1]}"


def _with_version(obj: dict[str, Any], version: int) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out.setdefault("metadata", {})["resourceVersion"] = str(version)
    return out


class ObjectStore:
    """Thread-safe objects, one resource-version counter, a bounded change history."""

    def __init__(self, history_limit: int = 1000) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self.history_limit = history_limit
        self._lock = threading.Condition()
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {}
        self._version = 0
        self._history: deque[Change] = deque()
        self._floor = 0
        """Every change after this version is in the history."""
        self._watchers: dict[int, _Watcher] = {}
        self._next_watcher = 0
        self._requests_lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        """Requests served, by (verb, resource): e.g. ("update", "configmaps"). Replaced,
        never changed in place, so a reader's copy cannot race a write."""

    # -- reading --------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._version

    @property
    def oldest_available(self) -> int:
        """The oldest version a watch may start from (changes after it are all kept)."""
        with self._lock:
            return self._floor

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get(resource, {}).get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """A snapshot of the stored objects of ``resource`` (in one namespace, or all),
        ordered by namespace and name."""
        items, _ = self.snapshot(resource, namespace)
        return items

    def snapshot(
        self, resource: str, namespace: str | None = None, at: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The objects as they were at version ``at`` (now, if None), and that version."""
        with self._lock:
            current = self._objects.get(resource, {})
            if at is None or at >= self._version:
                state = dict(current)
                version = self._version
            else:
                if at < self._floor:
                    raise TooOldError(at, self._floor)
                state = dict(current)
                for change in reversed(self._history):
                    if change.resource_version <= at:
                        break
                    if change.resource != resource:
                        continue
                    key = (change.namespace, change.name)
                    if change.type == "ADDED":
                        state.pop(key, None)
                    elif change.previous is not None:
                        state[key] = change.previous
                version = at
            chosen = sorted(
                (k for k in state if namespace is None or k[0] == namespace), key=key_order
            )
            return [copy.deepcopy(state[k]) for k in chosen], version

    # -- writing --------------------------------------------------------------------------

    def transact(
        self,
        resource: str,
        namespace: str,
        name: str,
        decide: Callable[[dict[str, Any] | None], Decision],
    ) -> tuple[Change | None, dict[str, Any] | None]:
        """Call ``decide`` with the stored object (or None) and carry out its decision,
        all under the lock. Returns the change made (None if nothing was written) and the
        object as stored after it (as removed, for a delete). Whatever ``decide`` raises
        propagates, and nothing is written."""
        with self._lock:
            bucket = self._objects.setdefault(resource, {})
            key = (namespace, name)
            stored = bucket.get(key)
            decision = decide(copy.deepcopy(stored) if stored is not None else None)
            if decision is None:
                return None, copy.deepcopy(stored) if stored is not None else None
            self._version += 1
            if isinstance(decision, Delete):
                if stored is None:
                    raise KeyError(f"{resource} {namespace}/{name} is not stored")
                del bucket[key]
                change = Change(
                    "DELETED",
                    resource,
                    namespace,
                    name,
                    _with_version(stored, self._version),
                    stored,
                    self._version,
                )
            else:
                written = _with_version(decision.object, self._version)
                bucket[key] = written
                kind = "ADDED" if stored is None else "MODIFIED"
                change = Change(kind, resource, namespace, name, written, stored, self._version)
            self._record(change)
            return change, copy.deepcopy(change.object)

    def _record(self, change: Change) -> None:
        self._history.append(change)
        while len(self._history) > self.history_limit:
            self._floor = self._history.popleft().resource_version
        for watcher in list(self._watchers.values()):
            if watcher.resource == change.resource:
                watcher.deliver(change)
        self._lock.notify_all()

    # -- watching -------------------------------------------------------------------------

    def watch(
        self, resource: str, since: int | None, deliver: Deliver
    ) -> tuple[list[Change], Callable[[], None]]:
        """Subscribe to changes of ``resource`` after version ``since``.

        Returns the kept changes after ``since`` (with ``since`` None: the current
        objects, as ADDED) and a function that ends the subscription. Later changes go
        to ``deliver`` as they happen. Raises ``TooOldError`` if ``since`` is out of history.
        """
        with self._lock:
            if since is None:
                backlog = [
                    Change("ADDED", resource, ns, name, copy.deepcopy(obj), None, self._version)
                    for (ns, name), obj in sorted(
                        self._objects.get(resource, {}).items(), key=lambda item: key_order(item[0])
                    )
                ]
            else:
                if since < self._floor:
                    raise TooOldError(since, self._floor)
                backlog = [
                    c
                    for c in self._history
                    if c.resource == resource and c.resource_version > since
                ]
            number = self._next_watcher
            self._next_watcher += 1
            self._watchers[number] = _Watcher(resource, deliver)

        def cancel() -> None:
            with self._lock:
                self._watchers.pop(number, None)

        return backlog, cancel

    def close_watches(self) -> None:
        """End every open watch, as a dropped connection would."""
        with self._lock:
            watchers = list(self._watchers.values())
            self._watchers.clear()
            for watcher in watchers:
                watcher.deliver(None)

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until the store reaches ``version``, for at most ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: self._version >= version, timeout)

    # -- bookkeeping ----------------------------------------------------------------------

    def count_request(self, verb: str, resource: str) -> None:
        with self._requests_lock:
            counted = self.requests.copy()
            counted[(verb, resource)] += 1
            self.requests = counted

    def resources(self) -> Iterable[str]:
        with self._lock:
            return sorted(self._objects)
