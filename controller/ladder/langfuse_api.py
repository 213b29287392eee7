"""The Langfuse calls of a dataset run: the project, the dataset and its items, the
experiment spans (OTLP), score writes and the managed judges' scores (v3).

A temporary answer (429, most 5xx, a timeout, no connection) is tried again after the
backoff of ``coalmine.shared.retry`` (a ``Retry-After`` wins); a refusal (any other
4xx) or a temporary answer past the last try ends the run without a verdict:
``LangfuseCallError`` names the endpoint and the status. Every wait gives up at once when
the run is stopped (``RunStoppedError``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import quote

import httpx

from coalmine.shared.retry import Backoff, Outcome, outcome_of, parse_retry_after, status_class
from controller.source.langfuse import error_detail
from controller.source.public_api import PublicApiClient

__all__ = ["DEFAULT_RETRY", "LadderApi", "LangfuseCallError", "RunStoppedError"]

PROJECTS_PATH: Final = "/api/public/projects"
DATASETS_PATH: Final = "/api/public/v2/datasets"
ITEMS_PATH: Final = "/api/public/dataset-items"
OTLP_PATH: Final = "/api/public/otel/v1/traces"
SCORES_PATH: Final = "/api/public/scores"
SCORES_V3_PATH: Final = "/api/public/v3/scores"

ITEMS_PAGE: Final = 100
MAX_ITEM_PAGES: Final = 100
"""Pages of dataset items read at most (10,000 items); a larger dataset is refused."""
SCORES_PAGE: Final = 100
MAX_SCORE_PAGES: Final = 20
TRACE_BATCH: Final = 50
"""Trace ids per score read."""

DEFAULT_RETRY: Final = Backoff(attempts=5, first=1.0, factor=2.0, cap=30.0, retry_after_cap=60.0)
"""Tries per request: waits of about 1, 2, 4 and 8 s, or what ``Retry-After`` asks."""

_OTLP_HEADERS: Final = {
    "Content-Type": "application/x-protobuf",
    # Langfuse writes the spans at once only for exporters of ingestion version 4.
    "x-langfuse-ingestion-version": "4",
}


class LangfuseCallError(Exception):
    """Langfuse refused a call, or kept failing it: the run ends without a verdict."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RunStoppedError(Exception):
    """The run was stopped while a call waited to be tried again."""


class LadderApi(PublicApiClient):
    """Langfuse's public API for the dataset runs of this process (thread-safe).

    ``request_counts[(endpoint, status_class)]`` counts requests for metrics; the
    endpoints are ``projects``, ``datasets``, ``dataset_items``, ``otel_traces``,
    ``scores_write`` and ``scores``.
    """

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retry: Backoff = DEFAULT_RETRY,
    ) -> None:
        super().__init__(base_url, public_key, secret_key, timeout=timeout, transport=transport)
        self.timeout = timeout
        self.retry = retry

    # ------------------------------------------------------------------------- reads

    def project_id(self, stop: threading.Event) -> str:
        """The id of the keys' project (part of every experiment id)."""
        body = self._json("projects", "GET", PROJECTS_PATH, stop)
        data = body.get("data")
        project = data[0] if isinstance(data, list) and data else None
        found = project.get("id") if isinstance(project, dict) else None
        if not isinstance(found, str) or not found:
            raise LangfuseCallError(f"GET {PROJECTS_PATH}: the answer names no project")
        return found

    def dataset_id(self, name: str, stop: threading.Event) -> str | None:
        """The id of the dataset called ``name``; None when there is none."""
        path = f"{DATASETS_PATH}/{quote(name, safe='')}"
        try:
            body = self._json("datasets", "GET", path, stop)
        except LangfuseCallError as failure:
            if failure.status == 404:
                return None
            raise
        found = body.get("id")
        if not isinstance(found, str) or not found:
            raise LangfuseCallError(f"GET {path}: the answer has no dataset id")
        return found

    def dataset_items(self, name: str, stop: threading.Event) -> list[dict[str, Any]]:
        """The dataset's ACTIVE items, each once, in the order Langfuse lists them."""
        found: dict[str, dict[str, Any]] = {}
        for number in range(1, MAX_ITEM_PAGES + 1):
            params = {"datasetName": name, "page": str(number), "limit": str(ITEMS_PAGE)}
            body = self._json("dataset_items", "GET", ITEMS_PATH, stop, params=params)
            data, meta = body.get("data"), body.get("meta")
            if not isinstance(data, list) or not isinstance(meta, dict):
                raise LangfuseCallError(f"GET {ITEMS_PATH}: the answer has no data list or meta")
            for item in data:
                item_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(item_id, str) and item.get("status", "ACTIVE") == "ACTIVE":
                    found.setdefault(item_id, item)
            pages = meta.get("totalPages")
            if not data or not isinstance(pages, int) or number >= pages:
                return list(found.values())
        raise LangfuseCallError(
            f"dataset '{name}' has more than {MAX_ITEM_PAGES * ITEMS_PAGE} items, the most "
            "a dataset rung runs"
        )

    def eval_scores(
        self, trace_ids: Sequence[str], name: str, stop: threading.Event
    ) -> Iterator[dict[str, Any]]:
        """The EVAL scores called ``name`` on the traces, newest first per batch."""
        for start in range(0, len(trace_ids), TRACE_BATCH):
            batch = trace_ids[start : start + TRACE_BATCH]
            params = {
                "traceId": ",".join(batch),
                "name": name,
                "source": "EVAL",
                "fields": "core,subject",
                "limit": str(SCORES_PAGE),
            }
            for _ in range(MAX_SCORE_PAGES):
                body = self._json("scores", "GET", SCORES_V3_PATH, stop, params=params)
                data, meta = body.get("data"), body.get("meta")
                if not isinstance(data, list) or not isinstance(meta, dict):
                    raise LangfuseCallError(
                        f"GET {SCORES_V3_PATH}: the answer has no data list or meta"
                    )
                yield from (score for score in data if isinstance(score, dict))
                cursor = meta.get("cursor")
                if not isinstance(cursor, str) or not cursor:
                    break
                params = {**params, "cursor": cursor}

    # ------------------------------------------------------------------------- writes

    def export_spans(self, body: bytes, stop: threading.Event) -> None:
        """Send one OTLP export (protobuf)."""
        self._request("otel_traces", "POST", OTLP_PATH, stop, content=body, headers=_OTLP_HEADERS)

    def write_score(self, score: dict[str, Any], stop: threading.Event) -> None:
        """Create (or, with the same id, replace) one score."""
        self._request("scores_write", "POST", SCORES_PATH, stop, json=score)

    # ------------------------------------------------------------------------- HTTP

    def _json(
        self, endpoint: str, method: str, path: str, stop: threading.Event, **kwargs: Any
    ) -> dict[str, Any]:
        response = self._request(endpoint, method, path, stop, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise LangfuseCallError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise LangfuseCallError(f"{method} {path}: the answer is not a JSON object")
        return body

    def _request(
        self, endpoint: str, method: str, path: str, stop: threading.Event, **kwargs: Any
    ) -> httpx.Response:
        """The 2xx answer to one request, tried again as ``retry`` says."""
        problem = ""
        last_status: int | None = None
        for attempt in range(1, self.retry.attempts + 1):
            if stop.is_set():
                raise RunStoppedError
            response: httpx.Response | None = None
            last_status = None
            try:
                response = self._http.request(method, f"{self.base_url}{path}", **kwargs)
            except httpx.TimeoutException:
                self._count(endpoint, "timeout")
                problem = f"no answer within {self.timeout:g}s"
            except httpx.TransportError as error:
                self._count(endpoint, "connection")
                problem = f"connection failed ({type(error).__name__})"
            else:
                status = last_status = response.status_code
                self._count(endpoint, status_class(status))
                outcome = outcome_of(status)
                if outcome is Outcome.DONE:
                    return response
                problem = f"HTTP {status}{error_detail(response)}"
                if outcome is Outcome.PERMANENT:
                    raise LangfuseCallError(
                        f"Langfuse refused {method} {path}: {problem}", status=status
                    )
            if self.retry.more_after(attempt):
                header = None if response is None else response.headers.get("retry-after")
                asked = parse_retry_after(header, now=time.time(), cap=self.retry.retry_after_cap)
                if stop.wait(self.retry.delay(attempt, retry_after=asked)):
                    raise RunStoppedError
        raise LangfuseCallError(
            f"{method} {path}: {problem} after {self.retry.attempts} tries",
            status=last_status,
        )
