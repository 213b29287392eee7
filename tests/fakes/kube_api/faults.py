"""Faults a test can switch on at run time: failing the next requests, slowing every
request, and an unavailable server.

``Faults`` only decides; the app consults it for each request and answers with the
``ApiError`` it gets back. Thread-safe, as tests switch faults from their own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from tests.fakes.kube_api import errors
from tests.fakes.kube_api.errors import ApiError


@dataclass
class _Planned:
    remaining: int
    status: int
    verbs: frozenset[str] | None
    resources: frozenset[str] | None

    def applies(self, verb: str, resource: str) -> bool:
        return (self.verbs is None or verb in self.verbs) and (
            self.resources is None or resource in self.resources
        )


def injected_error(status: int, verb: str, group: str, resource: str, name: str) -> ApiError:
    """The Status the real server would answer with that code, for that request."""
    if status == 409:
        if verb == "create":
            return errors.already_exists(group, resource, name)
        return errors.conflict(group, resource, name, errors.OPTIMISTIC_LOCK_MESSAGE)
    if status == 500:
        return ApiError(
            500,
            "InternalError",
            "Internal error occurred: injected fault",
            {"causes": [{"message": "injected fault"}]},
        )
    error = errors.generic(status, group, resource, name)
    if status == 429:
        error.details = {**(error.details or {}), "retryAfterSeconds": 1}
        error.headers["Retry-After"] = "1"
    return error


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: list[_Planned] = []
        self.delay = 0.0
        """Seconds every request waits before it is served."""
        self.unavailable = False
        """Whether every request is answered 503."""

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        verbs: Iterable[str] | None = None,
        resources: Iterable[str] | None = None,
    ) -> None:
        """Fail the next ``n`` requests that match ``verbs`` (get, list, watch, create,
        update, patch, delete, deletecollection) and ``resources`` (configmaps, leases,
        events); None matches any."""
        if n < 1 or not 400 <= status <= 599:
            raise ValueError("n must be at least 1 and status an HTTP error code")
        with self._lock:
            self._planned.append(
                _Planned(
                    n,
                    status,
                    frozenset(verbs) if verbs is not None else None,
                    frozenset(resources) if resources is not None else None,
                )
            )

    def take(self, verb: str, resource: str) -> int | None:
        """The status to fail this request with, using up one planned failure; or None."""
        with self._lock:
            for planned in self._planned:
                if planned.applies(verb, resource):
                    planned.remaining -= 1
                    if planned.remaining == 0:
                        self._planned.remove(planned)
                    return planned.status
        return None

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()
            self.delay = 0.0
            self.unavailable = False
