"""Deleting the proxy-count ConfigMaps of proxies that are gone.

Each proxy writes its per-minute counts to a ConfigMap named after its pod
(``coalmine.shared.aggregates.configmap``); a pod that goes away (a rollout, a
scale-down, an eviction) leaves it behind. Once the newest minute it holds is past the
retention, no reader uses anything in it, so the leader deletes it, at most once per
``interval_seconds``. Each delete carries the ``resourceVersion`` the sweep listed: a
proxy that wrote in between (a pod of the same name came back, or an idle proxy woke
up) makes the delete fail with 409, and its ConfigMap stays. A live proxy whose
ConfigMap was deleted while it was idle creates it again at its next write. A
ConfigMap whose document cannot be read is never deleted: it is reported, as the
reader reports it, for someone to look at.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from coalmine.shared.aggregates.configmap import list_stored, stored_document
from coalmine.shared.aggregates.model import (
    DEFAULT_RETENTION_SECONDS,
    BadAggregatesError,
    decode_document,
    oldest_minute,
)
from coalmine.shared.kube.client import KubeConflictError, KubeNotFoundError, kube_call

log = logging.getLogger("coalmine.controller")

SWEEP_INTERVAL_SECONDS = 600.0
"""At most one sweep in this time: a stale ConfigMap costs nothing but its storage."""


class AggregatesCleanup:
    """Deletes the ``<prefix>-aggregates-*`` ConfigMaps whose minutes are all past the
    retention; ``leading`` says whether this replica holds the Lease (only the leader
    deletes)."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        prefix: str,
        *,
        leading: Callable[[], bool] = lambda: True,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        interval_seconds: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        from kubernetes import client  # noqa: PLC0415 (only in cluster mode)

        self._client = client
        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.prefix = prefix
        self.leading = leading
        self.retention_seconds = retention_seconds
        self.interval_seconds = interval_seconds
        self.deleted = 0
        """ConfigMaps deleted since this process started."""
        self.problems: tuple[str, ...] = ()
        """The ConfigMaps the last sweep could not read (kept), each naming where."""
        self._last_sweep: float | None = None

    def sweep_if_due(self, now: float) -> int:
        """The scheduled sweep: on the leader only, at most once per interval (a sweep
        that failed counts: it is tried again at the next interval). Returns how many
        ConfigMaps it deleted; never raises."""
        if not self.leading():
            return 0
        if self._last_sweep is not None and now - self._last_sweep < self.interval_seconds:
            return 0
        self._last_sweep = now
        try:
            return self.sweep(now)
        except Exception as error:  # the API server is outside the process: next interval
            log.warning("proxy counts: stale ConfigMaps not cleaned up: %s", error)
            return 0

    def sweep(self, now: float) -> int:
        """Delete this prefix's proxy-count ConfigMaps whose newest minute is past the
        retention at ``now`` (epoch seconds); returns how many were deleted."""
        oldest = oldest_minute(now, self.retention_seconds)
        own = f"{self.prefix}-aggregates-"
        problems: list[str] = []
        deleted = 0
        for stored in list_stored(self._core, self.namespace):
            name = stored.metadata.name
            if not name.startswith(own):
                continue  # another install's, or someone else's carrying the label
            where = f"configmap {self.namespace}/{name}"
            try:
                newest = _newest_minute(stored, where)
            except BadAggregatesError as error:
                log.warning("proxy counts kept, not cleaned up: %s", error)
                problems.append(str(error))
                continue
            if newest is not None and newest >= oldest:
                continue
            if not self.leading():
                break  # a replica that lost the Lease stops at once
            if self._delete(name, stored.metadata.resource_version):
                deleted += 1
                self.deleted += 1
                log.info(
                    "deleted %s: %s, past the retention of %d s",
                    where,
                    "no minutes" if newest is None else f"newest minute {newest}",
                    self.retention_seconds,
                )
        self.problems = tuple(problems)
        return deleted

    def _delete(self, name: str, resource_version: str) -> bool:
        where = f"configmap {self.namespace}/{name}"
        options = self._client.V1DeleteOptions(
            preconditions=self._client.V1Preconditions(resource_version=resource_version)
        )
        try:
            kube_call(
                f"delete {where}",
                self._core.delete_namespaced_config_map,
                name,
                self.namespace,
                body=options,
            )
        except KubeConflictError:
            log.info("kept %s: its proxy wrote to it since it was listed", where)
            return False
        except KubeNotFoundError:
            return False  # already gone
        return True


def _newest_minute(stored: Any, where: str) -> int | None:
    """The newest minute of a stored document (None: it holds none).

    Raises BadAggregatesError when the document cannot be read."""
    _, cells = decode_document(stored_document(stored, where), where=where)
    return max((cell.minute for cell in cells), default=None)
