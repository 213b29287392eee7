"""What every client of Langfuse's public API holds: the HTTP client with the project's
keys, and the count of its requests by endpoint and outcome for the metrics; and how
its times are read."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Self

import httpx

__all__ = ["PublicApiClient", "read_time"]


class PublicApiClient:
    """An httpx client of one Langfuse project's public API (basic auth with its keys).

    ``request_counts[(endpoint, status_class)]`` counts requests for metrics (status
    classes as ``coalmine.shared.retry.status_class``, plus ``timeout``, ``connection``
    and ``error``)."""

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            auth=httpx.BasicAuth(public_key, secret_key),
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "coalmine-controller"},
        )
        self.request_counts: Counter[tuple[str, str]] = Counter()
        self._counts_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _count(self, endpoint: str, status: str) -> None:
        with self._counts_lock:
            self.request_counts[(endpoint, status)] += 1


def read_time(value: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (no offset: UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
