"""Routing tables in Kubernetes: one ConfigMap per release, ``<prefix>-<release>-routing``.

The controller writes with compare-and-set twice over: on the table's own version (what
the Protocol promises) and on the ConfigMap's ``resourceVersion`` (what the API server
enforces), so two writers never both win. Proxies do not poll: with ``watch`` on, one
thread per release lists then watches its ConfigMap (by name, so RBAC can restrict it
with ``resourceNames``) and keeps the latest table in memory; ``versions`` and ``read``
answer from there without a request, and a change reaches every proxy as soon as the API
server sends the event.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

from coalmine.shared.kube.client import (
    KubeConflictError,
    KubeError,
    KubeNotFoundError,
    kube_call,
)
from coalmine.shared.kube.objects import configmap_body, routing_name
from coalmine.shared.routing_tables.store import (
    BadRoutingTableError,
    VersionConflictError,
    parse_table,
)
from coalmine.shared.routing_tables.table import RoutingTable

log = logging.getLogger("coalmine.shared.routing_tables")

TABLE_KEY = "routing.json"
VERSION_ANNOTATION = "coalmine.dev/routing-version"
WATCH_SECONDS = 50
"""Server-side timeout of one watch request; the watch then resumes where it was."""
MAX_BACKOFF = 10.0


class ConfigMapRoutingStore:
    """Routing tables of the named releases, in ConfigMaps of one namespace."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        prefix: str,
        releases: Iterable[str],
        *,
        watch: bool = False,
    ) -> None:
        from kubernetes import client  # noqa: PLC0415 (only in cluster mode)

        self.namespace = namespace
        self.prefix = prefix
        self.releases = tuple(sorted(set(releases)))
        self._core = client.CoreV1Api(api_client)
        self._watching = watch
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, str]] = {}
        """release → (table version, document), as last seen by its watch."""
        self._synced: dict[str, threading.Event] = {r: threading.Event() for r in self.releases}
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: list[Any] = []
        self.last_error: str | None = None
        if watch:
            for release in self.releases:
                thread = threading.Thread(
                    target=self._watch, args=(release,), name=f"watch-{release}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    # -- the Protocol --------------------------------------------------------------------

    def versions(self) -> dict[str, int]:
        if self._watching:
            with self._lock:
                return {release: entry[0] for release, entry in self._cache.items()}
        found: dict[str, int] = {}
        for release in self.releases:
            stored = self._get(release)
            if stored is not None:
                found[release] = _stored_version(stored, self._where(release))
        return found

    def read(self, release: str) -> RoutingTable | None:
        if self._watching:
            with self._lock:
                entry = self._cache.get(release)
            if entry is None:
                return None
            return parse_table(entry[1], release, entry[0], where=self._where(release))
        stored = self._get(release)
        if stored is None:
            return None
        where = self._where(release)
        return parse_table(
            _document(stored, where), release, _stored_version(stored, where), where=where
        )

    def write(self, table: RoutingTable, expected_version: int | None) -> RoutingTable:
        name = routing_name(self.prefix, table.release)
        where = self._where(table.release)
        stored = self._get(table.release)
        current = None if stored is None else _stored_version(stored, where)
        if current != expected_version:
            raise VersionConflictError(
                f"routing table of '{table.release}': expected version {expected_version}, "
                f"found {current}"
            )
        fresh = table.model_copy(update={"version": (expected_version or 0) + 1})
        body = configmap_body(
            name,
            self.namespace,
            {TABLE_KEY: fresh.model_dump_json(by_alias=True)},
            role="routing",
            release=table.release,
            resource_version=None if stored is None else stored.metadata.resource_version,
            annotations={VERSION_ANNOTATION: str(fresh.version)},
        )
        try:
            if stored is None:
                kube_call(
                    f"create {where}", self._core.create_namespaced_config_map, self.namespace, body
                )
            else:
                kube_call(
                    f"replace {where}",
                    self._core.replace_namespaced_config_map,
                    name,
                    self.namespace,
                    body,
                )
        except KubeConflictError as error:
            raise VersionConflictError(
                f"routing table of '{table.release}': written by someone else meanwhile ({error})"
            ) from None
        return fresh

    # -- watching ------------------------------------------------------------------------

    def follow(self, releases: Iterable[str]) -> None:
        """Also keep the tables of ``releases`` (a proxy that starts routing a release
        while it runs); with ``watch`` on, each new one gets its watch."""
        with self._lock:
            new = sorted(set(releases) - set(self.releases))
            self.releases = tuple(sorted({*self.releases, *new}))
            for release in new:
                self._synced[release] = threading.Event()
        if not self._watching or self._stopped.is_set():
            return
        for release in new:
            thread = threading.Thread(
                target=self._watch, args=(release,), name=f"watch-{release}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wait_synced(self, timeout: float) -> bool:
        """Whether every release's ConfigMap was listed once within ``timeout`` seconds."""
        return all(event.wait(timeout) for event in self._synced.values())

    def close(self) -> None:
        self._stopped.set()
        for stream in list(self._streams):
            stream.stop()
            # a watch blocks in a read until its next event: end the read now
            response = getattr(stream, "_resp", None)
            if response is not None:
                with contextlib.suppress(Exception):
                    response.shutdown()

    def _watch(self, release: str) -> None:
        from kubernetes import watch  # noqa: PLC0415
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        name = routing_name(self.prefix, release)
        selector = f"metadata.name={name}"
        backoff = 0.25
        resource_version: str | None = None
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    listing = kube_call(
                        f"list {self._where(release)}",
                        self._core.list_namespaced_config_map,
                        self.namespace,
                        field_selector=selector,
                    )
                    self._apply(release, listing.items[0] if listing.items else None)
                    self._synced[release].set()
                    resource_version = listing.metadata.resource_version
                stream = watch.Watch()
                self._streams.append(stream)
                try:
                    for event in stream.stream(
                        self._core.list_namespaced_config_map,
                        self.namespace,
                        field_selector=selector,
                        resource_version=resource_version,
                        timeout_seconds=WATCH_SECONDS,
                        _request_timeout=(3.05, WATCH_SECONDS + 10),
                    ):
                        kind, stored = event["type"], event["object"]
                        self._apply(release, None if kind == "DELETED" else stored)
                        resource_version = stored.metadata.resource_version
                finally:
                    self._streams.remove(stream)
                backoff = 0.25
                self.last_error = None
            except ApiException as error:  # 410 Gone: the watch fell too far behind
                resource_version = None
                if error.status != 410:
                    backoff = self._failed(
                        release, f"watch: {error.status} {error.reason}", backoff
                    )
            except (KubeError, BadRoutingTableError, ValueError) as error:
                resource_version = None
                backoff = self._failed(release, str(error), backoff)
            except Exception as error:  # the network, mid-stream: list again
                resource_version = None
                backoff = self._failed(release, f"watch: {error}", backoff)

    def _failed(self, release: str, message: str, backoff: float) -> float:
        if not self._stopped.is_set():
            self.last_error = message
            log.warning("routing table of %s: %s (retrying in %.1fs)", release, message, backoff)
            self._stopped.wait(backoff)
        return min(backoff * 2, MAX_BACKOFF)

    def _apply(self, release: str, stored: Any) -> None:
        where = self._where(release)
        if stored is None:
            with self._lock:
                self._cache.pop(release, None)
            return
        entry = (_stored_version(stored, where), _document(stored, where))
        with self._lock:
            self._cache[release] = entry

    # -- plumbing ------------------------------------------------------------------------

    def _get(self, release: str) -> Any:
        try:
            return kube_call(
                f"get {self._where(release)}",
                self._core.read_namespaced_config_map,
                routing_name(self.prefix, release),
                self.namespace,
            )
        except KubeNotFoundError:
            return None

    def _where(self, release: str) -> str:
        return f"configmap {self.namespace}/{routing_name(self.prefix, release)}"


def _document(stored: Any, where: str) -> str:
    document = (stored.data or {}).get(TABLE_KEY)
    if not isinstance(document, str):
        raise BadRoutingTableError(f"{where}: no {TABLE_KEY} key")
    return document


def _stored_version(stored: Any, where: str) -> int:
    text = (stored.metadata.annotations or {}).get(VERSION_ANNOTATION, "")
    try:
        return int(text)
    except ValueError:
        raise BadRoutingTableError(
            f"{where}: annotation {VERSION_ANNOTATION} is {text!r}, not a version number"
        ) from None
