"""Kubernetes Events for the controller's decisions and actions.

``record`` never blocks the control loop: events go through a bounded queue to a sender
thread, and a full queue drops (and counts) the newest. Repeats of one event (same
object, reason and message within ``REPEAT_SECONDS``) update the first one's ``count``
and ``lastTimestamp``, as client-go's correlator does, instead of piling up objects.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from coalmine.shared.kube.client import KubeError, KubeNotFoundError, kube_call

log = logging.getLogger("coalmine.controller")

QUEUE_SIZE = 1000
REPEAT_SECONDS = 600.0
COMPONENT = "coalmine"


class EventRecorder(Protocol):
    """Reports what happened to a release where its operators look."""

    def record(self, release: str, reason: str, message: str, *, warning: bool = False) -> None:
        """One event: ``reason`` is a CamelCase word (``Promoted``), ``message`` a
        sentence for people."""
        ...


class NoopEventRecorder:
    """Records nothing: local mode."""

    def record(self, release: str, reason: str, message: str, *, warning: bool = False) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an event is about."""

    api_version: str
    kind: str
    name: str
    uid: str | None = None

    def body(self, namespace: str) -> dict[str, Any]:
        ref = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "namespace": namespace,
        }
        if self.uid:
            ref["uid"] = self.uid
        return ref


@dataclass(frozen=True, slots=True)
class _Pending:
    release: str
    reason: str
    message: str
    warning: bool
    at: datetime
    clock: float
    """``clock()`` when it was recorded (repeats are judged by when they happened)."""


class KubeEventRecorder:
    """core/v1 Events in one namespace, sent from a background thread."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        instance: str,
        pod: ObjectRef,
        targets: Callable[[], Mapping[str, ObjectRef]] = dict,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client  # noqa: PLC0415

        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.instance = instance
        self.pod = pod
        self.targets = targets
        """The object named by each release's policy (``kubernetes.eventTarget``)."""
        self._clock = clock
        self._queue: queue.Queue[_Pending | None] = queue.Queue(QUEUE_SIZE)
        self._sent: dict[tuple[str, str, str], tuple[str, int, float]] = {}
        """(object, reason, message) → (event name, count, when first sent)."""
        self.counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()

    def record(self, release: str, reason: str, message: str, *, warning: bool = False) -> None:
        try:
            self._queue.put_nowait(
                _Pending(release, reason, message, warning, datetime.now(UTC), self._clock())
            )
        except queue.Full:
            self.counts["dropped"] += 1

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            try:
                self._send(pending)
                self.counts["sent"] += 1
            except KubeError as error:
                self.counts["failed"] += 1
                log.warning("event %s of %s not sent: %s", pending.reason, pending.release, error)

    def _send(self, pending: _Pending) -> None:
        target = self.targets().get(pending.release, self.pod)
        message = f"release {pending.release}: {pending.message}"[:1024]
        key = (f"{target.kind}/{target.name}", pending.reason, message)
        now = pending.clock
        stamp = pending.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        earlier = self._sent.get(key)
        if earlier is not None and now - earlier[2] < REPEAT_SECONDS:
            name, count, first = earlier
            try:
                kube_call(
                    f"patch event {self.namespace}/{name}",
                    self._core.patch_namespaced_event,
                    name,
                    self.namespace,
                    {"count": count + 1, "lastTimestamp": stamp},
                )
                self._sent[key] = (name, count + 1, first)
                return
            except KubeNotFoundError:
                pass  # expired on the server (events live an hour): create a new one
        name = f"{target.name}.{secrets.token_hex(8)}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"coalmine.dev/release": pending.release},
            },
            "involvedObject": target.body(self.namespace),
            "reason": pending.reason,
            "message": message,
            "type": "Warning" if pending.warning else "Normal",
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT, "host": self.instance},
            "reportingComponent": f"{COMPONENT}.dev/controller",
            "reportingInstance": self.instance,
            "action": pending.reason,
        }
        kube_call(
            f"create event {self.namespace}/{name}",
            self._core.create_namespaced_event,
            self.namespace,
            body,
        )
        self._sent = {k: v for k, v in self._sent.items() if now - v[2] < REPEAT_SECONDS}
        self._sent[key] = (name, 1, now)
