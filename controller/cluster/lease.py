"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Every replica tries to take or renew the Lease each ``retry_period``. A Lease held by
another replica is taken only once its record (holder, renew time, transitions) has not
changed for ``lease_duration`` by this replica's own clock, so clocks that disagree
between nodes do not matter. Every write is a replace at the ``resourceVersion`` read,
so of two replicas racing for an expired Lease exactly one wins. A leader that has not
renewed for ``renew_deadline`` (shorter than ``lease_duration``) stops acting before
anyone else may start: ``fence`` raises from then on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coalmine.shared.kube.client import (
    KubeConflictError,
    KubeError,
    KubeNotFoundError,
    kube_call,
)
from controller.errors import NotLeaderError

log = logging.getLogger("coalmine.controller")


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """The election's clock, in seconds (client-go's defaults)."""

    lease_duration: float = 15.0
    """How long a Lease nobody renews stays held."""

    renew_deadline: float = 10.0
    """A leader that could not renew for this long stops acting."""

    retry_period: float = 2.0
    """Time between two attempts to take or renew the Lease."""


class LeaseElector:
    """One replica's side of the election; ``try_acquire_or_renew`` is one step."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        identity: str,
        *,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        from kubernetes import client  # noqa: PLC0415

        self._coordination = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        timing = timing or LeaseTiming()
        self.lease_duration = timing.lease_duration
        self.renew_deadline = timing.renew_deadline
        self.retry_period = timing.retry_period
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._observed: tuple[tuple[Any, ...], float] | None = None
        """The Lease's record as last seen, and when (by ``clock``) it was first seen."""
        self._renewed_at: float | None = None
        self.leader: str | None = None
        """The holder as last seen (None: unknown or nobody)."""
        self.last_error: str | None = None

    def is_leader(self) -> bool:
        with self._lock:
            return self._holds(self._clock())

    def fence(self) -> None:
        """Raise NotLeaderError unless this replica holds the Lease now."""
        if not self.is_leader():
            raise NotLeaderError(
                f"{self.identity} does not hold lease {self.namespace}/{self.name} "
                f"(leader: {self.leader or 'none'})",
                self.leader,
            )

    def try_acquire_or_renew(self) -> bool:
        """Take the Lease if it is free or expired, renew it if held; whether this
        replica is the leader afterwards."""
        with self._lock:
            now = self._clock()
            try:
                lease = self._read()
            except KubeNotFoundError:
                return self._write(None, now, transitions=0, acquired=None)
            except KubeError as error:
                self.last_error = str(error)
                return self._holds(now)
            spec = lease.spec
            holder = spec.holder_identity or None
            record = (
                holder,
                _stamp(spec.renew_time),
                spec.lease_duration_seconds,
                spec.lease_transitions,
            )
            if self._observed is None or self._observed[0] != record:
                self._observed = (record, now)
            self.leader = holder
            duration = float(spec.lease_duration_seconds or self.lease_duration)
            if holder is not None and holder != self.identity:
                if now < self._observed[1] + duration:
                    self._renewed_at = None
                    return False
                log.info("lease %s: %s stopped renewing; taking over", self.name, holder)
            transitions = int(spec.lease_transitions or 0)
            mine = holder == self.identity
            return self._write(
                lease.metadata.resource_version,
                now,
                transitions=transitions if mine else transitions + 1,
                acquired=_stamp(spec.acquire_time) if mine else None,
            )

    def release(self) -> None:
        """Give the Lease up (on shutdown), so a standby takes over at once."""
        with self._lock:
            if not self._holds(self._clock()):
                return
            try:
                lease = self._read()
                if lease.spec.holder_identity != self.identity:
                    return
                body = self._body(
                    lease.metadata.resource_version,
                    holder=None,
                    transitions=int(lease.spec.lease_transitions or 0),
                    acquired=_stamp(lease.spec.acquire_time),
                    duration=1,
                )
                kube_call(
                    f"release lease {self.namespace}/{self.name}",
                    self._coordination.replace_namespaced_lease,
                    self.name,
                    self.namespace,
                    body,
                )
            except KubeError as error:
                log.warning("lease %s: not released: %s", self.name, error)
            finally:
                self._renewed_at = None
                self.leader = None

    def run(
        self,
        stop: threading.Event,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        """Try every ``retry_period`` until ``stop`` is set; ``on_change(leading)`` when
        this replica starts or stops leading."""
        leading = False
        while not stop.is_set():
            now_leading = self.try_acquire_or_renew()
            if now_leading != leading:
                leading = now_leading
                log.info(
                    "lease %s: %s %s leading",
                    self.name,
                    self.identity,
                    "started" if leading else "stopped",
                )
                if on_change is not None:
                    on_change(leading)
            stop.wait(self.retry_period)
        self.release()
        if leading and on_change is not None:
            on_change(False)

    # -- plumbing ------------------------------------------------------------------------

    def _read(self) -> Any:
        return kube_call(
            f"get lease {self.namespace}/{self.name}",
            self._coordination.read_namespaced_lease,
            self.name,
            self.namespace,
        )

    def _holds(self, now: float) -> bool:
        return (
            self._renewed_at is not None
            and self.leader == self.identity
            and now - self._renewed_at < self.renew_deadline
        )

    def _write(
        self, resource_version: str | None, now: float, *, transitions: int, acquired: str | None
    ) -> bool:
        body = self._body(
            resource_version,
            holder=self.identity,
            transitions=transitions,
            acquired=acquired,
            duration=max(1, math.ceil(self.lease_duration)),
        )
        where = f"lease {self.namespace}/{self.name}"
        try:
            if resource_version is None:
                kube_call(
                    f"create {where}",
                    self._coordination.create_namespaced_lease,
                    self.namespace,
                    body,
                )
            else:
                kube_call(
                    f"renew {where}",
                    self._coordination.replace_namespaced_lease,
                    self.name,
                    self.namespace,
                    body,
                )
        except KubeConflictError:
            return self._holds(now)  # another replica wrote first; read again next time
        except KubeError as error:
            self.last_error = str(error)
            return self._holds(now)
        spec = body["spec"]
        record = (
            self.identity,
            spec["renewTime"],
            spec["leaseDurationSeconds"],
            spec["leaseTransitions"],
        )
        self._observed = (record, now)
        self._renewed_at = now
        self.leader = self.identity
        self.last_error = None
        return True

    def _body(
        self,
        resource_version: str | None,
        *,
        holder: str | None,
        transitions: int,
        acquired: str | None,
        duration: int,
    ) -> dict[str, Any]:
        now = _micro_time(self._wall())
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration,
                "acquireTime": acquired or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }


def _micro_time(moment: datetime) -> str:
    # The client turns the text into a datetime and back with isoformat(), which drops a
    # zero fraction, and the API server's MicroTime needs six digits: never send .000000.
    if moment.microsecond == 0:
        moment = moment.replace(microsecond=1)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp(value: Any) -> str | None:
    """A MicroTime as the client gave it (a datetime or a string) in one text form."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return _micro_time(value if value.tzinfo else value.replace(tzinfo=UTC))
    return str(value)
