"""Proxy counts in Kubernetes: one ConfigMap per proxy, ``<prefix>-aggregates-<proxy id>``,
labelled ``coalmine.dev/aggregates: "true"``.

A proxy's ConfigMap holds the cells of its last retention's minutes in one document
(key ``aggregates.json``). Only that proxy writes it, by ``replace`` at the
``resourceVersion`` it last wrote or read (a 409 reads it again and retries). A proxy
that starts where its ConfigMap already exists (its container restarted in the same pod)
keeps the counts stored there and adds its own to them. The controller lists the
ConfigMaps by label and sums them.

A ConfigMap holds at most about 1 MiB: a document over ``MAX_DOCUMENT_BYTES`` loses its
oldest minutes until it fits, and the write says how many cells it left out.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from coalmine.shared.aggregates.model import (
    DEFAULT_RETENTION_SECONDS,
    BadAggregatesError,
    CellKey,
    MinuteCell,
    decode_document,
    encode_document,
    merge,
    oldest_minute,
)
from coalmine.shared.aggregates.store import Readout
from coalmine.shared.kube.client import KubeConflictError, KubeNotFoundError, kube_call
from coalmine.shared.kube.objects import configmap_body

log = logging.getLogger("coalmine.shared.aggregates")

AGGREGATES_LABEL = "coalmine.dev/aggregates"
DOCUMENT_KEY = "aggregates.json"
MAX_DOCUMENT_BYTES = 900_000
"""Below the API server's 1 MiB for a ConfigMap, with room for its metadata."""
CONFLICT_TRIES = 3
LIST_PAGE = 100
_NOT_IN_NAME = re.compile(r"[^a-z0-9.-]+")


def aggregates_name(prefix: str, proxy_id: str) -> str:
    """The ConfigMap of one proxy's counts (the id made a valid object name)."""
    name = f"{prefix}-aggregates-{_NOT_IN_NAME.sub('-', proxy_id.lower())}"
    return name[:253].rstrip("-.")


class ConfigMapAggregateStore:
    """Proxy counts in the ConfigMaps of one namespace: written by the proxy
    ``proxy_id`` (None: a reader only), read by the controller."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        prefix: str,
        proxy_id: str | None = None,
        *,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        from kubernetes import client  # noqa: PLC0415 (only in cluster mode)

        self.namespace = namespace
        self.prefix = prefix
        self.proxy_id = proxy_id or ""
        self.retention_seconds = retention_seconds
        self.name = aggregates_name(prefix, self.proxy_id) if proxy_id else ""
        self._core = client.CoreV1Api(api_client)
        self._lock = threading.Lock()
        self._loaded = False
        self._resource_version: str | None = None
        self._previous: list[MinuteCell] = []
        """Counts stored by this proxy's previous run (same pod, restarted container)."""
        self._own: dict[CellKey, MinuteCell] = {}

    @property
    def where(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    # -- the proxy's side ----------------------------------------------------------------

    def write(self, cells: Sequence[MinuteCell], now: float) -> int:
        """Store these cells' totals with the others of the retention; returns how many
        cells the size bound left out."""
        if not self.proxy_id:
            raise PermissionError("proxy counts opened to read, not to write")
        with self._lock:
            if not self._loaded:
                self._load_previous()
            for cell in cells:
                self._own[cell.key] = cell
            oldest = oldest_minute(now, self.retention_seconds)
            self._own = {key: cell for key, cell in self._own.items() if key[2] >= oldest}
            self._previous = [cell for cell in self._previous if cell.minute >= oldest]
            document, left_out = _bounded(
                self.proxy_id, merge([*self._previous, *self._own.values()]).values()
            )
            self._put(document)
            return left_out

    def _load_previous(self) -> None:
        stored = self._get()
        if stored is not None:
            self._resource_version = stored.metadata.resource_version
            try:
                _, self._previous = decode_document(
                    stored_document(stored, self.where), where=self.where
                )
            except BadAggregatesError as error:
                log.warning("proxy counts of a previous run not kept: %s", error)
        self._loaded = True

    def _put(self, document: str) -> None:
        for attempt in range(CONFLICT_TRIES):
            body = configmap_body(
                self.name,
                self.namespace,
                {DOCUMENT_KEY: document},
                role="aggregates",
                resource_version=self._resource_version,
            )
            body["metadata"]["labels"][AGGREGATES_LABEL] = "true"
            try:
                if self._resource_version is None:
                    written = kube_call(
                        f"create {self.where}",
                        self._core.create_namespaced_config_map,
                        self.namespace,
                        body,
                    )
                else:
                    written = kube_call(
                        f"replace {self.where}",
                        self._core.replace_namespaced_config_map,
                        self.name,
                        self.namespace,
                        body,
                    )
            except (KubeConflictError, KubeNotFoundError):
                if attempt == CONFLICT_TRIES - 1:
                    raise
                stored = self._get()
                self._resource_version = (
                    None if stored is None else stored.metadata.resource_version
                )
                continue
            self._resource_version = written.metadata.resource_version
            return

    def _get(self) -> Any:
        try:
            return kube_call(
                f"get {self.where}",
                self._core.read_namespaced_config_map,
                self.name,
                self.namespace,
            )
        except KubeNotFoundError:
            return None

    # -- the controller's side -----------------------------------------------------------

    def read(self, release: str, since: int, until: int) -> Readout:
        cells: list[MinuteCell] = []
        proxies: set[str] = set()
        problems: list[str] = []
        for stored in self._list():
            where = f"configmap {self.namespace}/{stored.metadata.name}"
            try:
                proxy, found = decode_document(stored_document(stored, where), where=where)
            except BadAggregatesError as error:
                log.warning("proxy counts left out: %s", error)
                problems.append(str(error))
                continue
            mine = [c for c in found if c.release == release and since <= c.minute < until]
            if mine:
                proxies.add(proxy)
                cells += mine
        summed = {(cell.arm, cell.minute): cell for cell in merge(cells).values()}
        return Readout(summed, frozenset(proxies), tuple(problems))

    def _list(self) -> Iterator[Any]:
        return list_stored(self._core, self.namespace)

    def close(self) -> None:
        """Nothing to release: each call is a request of its own."""


def list_stored(core: Any, namespace: str) -> Iterator[Any]:
    """Every proxy's counts ConfigMap in ``namespace``, a page of ``LIST_PAGE`` at a time."""
    token: str | None = None
    while True:
        page = kube_call(
            f"list configmaps {namespace} -l {AGGREGATES_LABEL}=true",
            core.list_namespaced_config_map,
            namespace,
            label_selector=f"{AGGREGATES_LABEL}=true",
            limit=LIST_PAGE,
            _continue=token,
        )
        yield from page.items
        token = page.metadata._continue
        if not token:
            return


def stored_document(stored: Any, where: str) -> str:
    """The counts document a listed or read ConfigMap holds.

    Raises BadAggregatesError when it holds none."""
    document = (stored.data or {}).get(DOCUMENT_KEY)
    if not isinstance(document, str):
        raise BadAggregatesError(f"{where}: no {DOCUMENT_KEY} key")
    return document


def _bounded(proxy_id: str, cells: Iterable[MinuteCell]) -> tuple[str, int]:
    """The document of the cells, without its oldest minutes while it is too large."""
    kept = sorted(cells, key=lambda cell: cell.minute)
    document = encode_document(proxy_id, kept)
    left_out = 0
    while len(document.encode()) > MAX_DOCUMENT_BYTES and kept:
        first = kept[0].minute
        dropped = sum(1 for cell in kept if cell.minute == first)
        kept = kept[dropped:]
        left_out += dropped
        document = encode_document(proxy_id, kept)
    return document, left_out
