"""Release approval through a Langfuse annotation queue: the queue's items and the
reviewers' verdicts.

coalmine puts canary traces in front of reviewers as TRACE items of one long-lived
queue (``choose_traces``: the worst traces plus a seeded random sample of the others)
and reads their verdicts back as annotation scores of the approval score config:

* ``GET /api/public/annotation-queues`` finds the queue by name (names are unique per
  project; config names are not, so the config is named by id).
* ``GET`` and ``POST /api/public/annotation-queues/{id}/items`` list and add items.
  Langfuse neither checks the object nor de-duplicates items, so a trace is added only
  when the queue's item list does not hold it already.
* ``GET /api/public/v3/scores`` with ``queueId``, ``traceId``, ``configId``,
  ``source=ANNOTATION``, ``fromTimestamp`` and ``fields=annotation,details,subject``
  reads the verdicts. Only a score with an ``authorUserId`` is a reviewer's: the UI
  writes the reviewer there, the ingestion API never does, so an API-written score
  (a prefill, or anyone with a key) is reported as ignored and never approves. Item
  status is not read at all: any API key can set COMPLETED, and a reviewer can complete
  an item without scoring it.

A score's time is its ``timestamp``, not its ``createdAt``: when a reviewer changes a
verdict, Langfuse overwrites the score in place (same id and ``createdAt``) with a new
value, author and timestamp, and the change is a decision made now. One ANNOTATION
score per trace and config exists, so the last reviewer wins; re-read on every poll.

Rate limits: the queue routes take from the ``annotation-queues`` bucket (Hobby 100 a
minute), the score reads from the General bucket (Hobby 30 a minute, shared with the
sample source). Each is drawn from its own ``RequestBudget``. Nothing is retried here:
an error is ``TemporaryError`` (429, which holds the budget for its ``Retry-After``,
5xx, timeouts, connection failures, an answer that is not what the API documents, the
budget spent) or ``PermanentError`` (bad keys, no such queue, a request Langfuse
refuses), and the caller tries again on its own schedule (``coalmine.shared.errors``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote

import httpx

from coalmine.shared.errors import PermanentError, TemporaryError
from coalmine.shared.retry import Outcome, outcome_of, status_class
from controller.source.budget import RequestBudget
from controller.source.langfuse import error_detail
from controller.source.public_api import PublicApiClient, read_time

__all__ = [
    "MAX_ITEMS_PER_CALL",
    "Ignored",
    "Review",
    "ReviewQueue",
    "Verdict",
    "Verdicts",
    "choose_traces",
]

QUEUES_PATH: Final = "/api/public/annotation-queues"
SCORES_PATH: Final = "/api/public/v3/scores"
SCORE_FIELDS: Final = "annotation,details,subject"
QUEUES_PAGE: Final = 100
ITEMS_PAGE: Final = 100
"""Langfuse's largest page of queue items."""
SCORES_PAGE: Final = 100
"""Langfuse's largest page of scores v3."""
MAX_ITEMS_PER_CALL: Final = 50
"""Trace ids ``add_items`` takes at most: each new item is one request of the
annotation-queues bucket (Hobby: 100 a minute)."""
MAX_LIST_PAGES: Final = 20
"""Pages of a list read at most per call (2,000 queues or items). Items come newest
first, so the items of a running release are on the first pages; a trace whose item
lies beyond is added again, which costs the reviewers a duplicate, never a verdict."""
TRACE_BATCH: Final = 50
"""Trace ids per score read; one ANNOTATION score per trace and config keeps a batch's
verdicts within one page."""
MAX_TRACE_QUERY: Final = 4000
"""Characters of the ``traceId`` list of one score read at most, so that the URL stays
under the 8 KiB that servers and proxies commonly accept."""


class Verdict(StrEnum):
    """What a reviewer decided about a trace."""

    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Review:
    """A reviewer's verdict on one trace."""

    trace_id: str
    author: str
    """The reviewer's Langfuse user id."""
    verdict: Verdict
    at: float
    """When the verdict was given (the score's timestamp), seconds since the epoch."""
    score_id: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A score that was read and is not a verdict, with why: ``no_author`` (written
    through the API), ``other_config``, ``other_queue``, ``not_annotation``,
    ``before_since``, ``not_trace`` (on an observation or session), ``other_trace``,
    ``unmapped_value`` (a value neither approves nor rejects) or ``malformed``."""

    score_id: str | None
    trace_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The verdicts on the traces asked for, and the scores left out."""

    reviews: tuple[Review, ...] = ()
    ignored: tuple[Ignored, ...] = ()


def choose_traces(
    worst: Sequence[str], candidates: Iterable[str], k: int, seed: int | str
) -> list[str]:
    """The traces to review: ``worst`` in its order, then a random sample of the other
    ``candidates``, no trace twice, at most ``k`` in all. The sample depends only on
    ``seed`` and the set of candidates, not on their order."""
    if k < 0:
        raise ValueError(f"k must be at least 0, not {k}")
    chosen = list(dict.fromkeys(worst))[:k]
    taken = set(chosen)
    others = sorted(set(candidates) - taken)
    room = min(k - len(chosen), len(others))
    return chosen + random.Random(seed).sample(others, room)


class ReviewQueue(PublicApiClient):
    """An annotation queue in Langfuse, through the public API.

    ``queue_budget`` is the request budget of the annotation-queues bucket,
    ``score_budget`` that of the General bucket (shared with the other clients of that
    bucket in this process). ``request_counts[(endpoint, status_class)]`` counts
    requests for metrics (endpoints ``queues``, ``queue_items``, ``queue_item_add`` and
    ``scores``; status classes as ``coalmine.shared.retry.status_class``, plus
    ``timeout``, ``connection`` and ``error``).
    """

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        queue_budget: RequestBudget,
        score_budget: RequestBudget,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(base_url, public_key, secret_key, timeout=timeout, transport=transport)
        self.queue_budget = queue_budget
        self.score_budget = score_budget
        self.timeout = timeout

    # ------------------------------------------------------------------------- queue

    def queue_id(self, name: str) -> str:
        """The id of the queue called ``name``; ``PermanentError`` when there is none."""
        for page in self._pages("queues", QUEUES_PATH, QUEUES_PAGE):
            for queue in page:
                if isinstance(queue, dict) and queue.get("name") == name:
                    found = queue.get("id")
                    if not isinstance(found, str) or not found:
                        raise TemporaryError(f"annotation queue '{name}' has no id in the answer")
                    return found
        raise PermanentError(
            f"no annotation queue named '{name}' in the Langfuse project: create it with "
            "the approval score config first"
        )

    def add_items(self, queue_id: str, trace_ids: Sequence[str]) -> list[str]:
        """Put each trace in the queue as a TRACE item, unless an item of it is there
        already. The item ids, one per distinct trace in the order given (the existing
        item's, else the new one's). At most ``MAX_ITEMS_PER_CALL`` traces a call.

        Safe to call again after an error: the items added before it are found then."""
        wanted = list(dict.fromkeys(trace_ids))
        if len(wanted) > MAX_ITEMS_PER_CALL:
            raise ValueError(f"at most {MAX_ITEMS_PER_CALL} traces a call, not {len(wanted)}")
        if not wanted:
            return []
        items = self._existing_items(queue_id, set(wanted))
        path = f"{_queue_path(queue_id)}/items"
        for trace_id in wanted:
            if trace_id in items:
                continue
            body = self._json(
                "queue_item_add",
                self.queue_budget,
                "POST",
                path,
                f"adding trace '{trace_id}' to annotation queue '{queue_id}'",
                json={"objectId": trace_id, "objectType": "TRACE"},
            )
            item_id = body.get("id")
            if not isinstance(item_id, str) or not item_id:
                raise TemporaryError(
                    f"annotation queue '{queue_id}': the new item of trace '{trace_id}' has no id"
                )
            items[trace_id] = item_id
        return [items[trace_id] for trace_id in wanted]

    def _existing_items(self, queue_id: str, wanted: set[str]) -> dict[str, str]:
        """Trace id to the newest TRACE item of it, for the ``wanted`` traces in the
        queue's first ``MAX_LIST_PAGES`` pages of items."""
        found: dict[str, str] = {}
        path = f"{_queue_path(queue_id)}/items"
        for page in self._pages("queue_items", path, ITEMS_PAGE):
            for item in page:
                if not isinstance(item, dict) or item.get("objectType") != "TRACE":
                    continue
                object_id, item_id = item.get("objectId"), item.get("id")
                if (
                    object_id in wanted
                    and isinstance(object_id, str)
                    and isinstance(item_id, str)
                    and object_id not in found  # newest first: keep the first seen
                ):
                    found[object_id] = item_id
            if len(found) == len(wanted):
                break
        return found

    # ------------------------------------------------------------------------- verdicts

    def verdicts(
        self,
        queue_id: str,
        config_id: str,
        trace_ids: Sequence[str],
        since: float,
        *,
        approve: Collection[str] = ("approve",),
        reject: Collection[str] = ("reject",),
    ) -> Verdicts:
        """The reviewers' verdicts on ``trace_ids``: annotation scores of the config
        ``config_id`` given in the queue at or after ``since`` (seconds since the
        epoch), newest first.

        A BOOLEAN score approves when true and rejects when false. A CATEGORICAL
        score approves when its label is in ``approve`` and rejects when it is in
        ``reject``; any other value is ignored. Scores without an author, and anything
        the filters should have left out, are in ``Verdicts.ignored``."""
        overlap = set(approve) & set(reject)
        if overlap:
            raise ValueError(f"labels both approve and reject: {', '.join(sorted(overlap))}")
        wanted = list(dict.fromkeys(trace_ids))
        reviews: list[Review] = []
        ignored: list[Ignored] = []
        reading = _Reading(queue_id, config_id, set(wanted), since, set(approve), set(reject))
        for batch in _batches(wanted):
            query = {
                "queueId": queue_id,
                "configId": config_id,
                "source": "ANNOTATION",
                "traceId": ",".join(batch),
                "fromTimestamp": _iso(since),
                "fields": SCORE_FIELDS,
            }
            for page in self._cursor_pages("scores", SCORES_PATH, query):
                for raw in page:
                    outcome = reading.read(raw)
                    if isinstance(outcome, Review):
                        reviews.append(outcome)
                    else:
                        ignored.append(outcome)
        reviews.sort(key=lambda review: (-review.at, review.trace_id))
        return Verdicts(reviews=tuple(reviews), ignored=tuple(ignored))

    # ------------------------------------------------------------------------- HTTP

    def _pages(self, endpoint: str, path: str, limit: int) -> Iterator[list[Any]]:
        """The ``data`` of each page of a page-numbered queue list, up to
        ``MAX_LIST_PAGES``."""
        for number in range(1, MAX_LIST_PAGES + 1):
            body = self._json(
                endpoint,
                self.queue_budget,
                "GET",
                path,
                f"listing {path}",
                params={"page": str(number), "limit": str(limit)},
            )
            data, meta = body.get("data"), body.get("meta")
            if not isinstance(data, list) or not isinstance(meta, dict):
                raise TemporaryError(f"{path}: the answer has no data list or meta")
            yield data
            pages = meta.get("totalPages")
            if not isinstance(pages, int) or number >= pages or not data:
                return

    def _cursor_pages(self, endpoint: str, path: str, query: dict[str, str]) -> Iterator[list[Any]]:
        """The ``data`` of each page of a cursor-paged list, up to ``MAX_LIST_PAGES``."""
        params = {**query, "limit": str(SCORES_PAGE)}
        for _ in range(MAX_LIST_PAGES):
            body = self._json(
                endpoint, self.score_budget, "GET", path, f"reading {path}", params=params
            )
            data, meta = body.get("data"), body.get("meta")
            if not isinstance(data, list) or not isinstance(meta, dict):
                raise TemporaryError(f"{path}: the answer has no data list or meta")
            yield data
            cursor = meta.get("cursor")
            if not isinstance(cursor, str) or not cursor:
                return
            params = {**params, "cursor": cursor}
        raise TemporaryError(f"{path}: more than {MAX_LIST_PAGES} pages of scores")

    def _json(
        self,
        endpoint: str,
        budget: RequestBudget,
        method: str,
        path: str,
        what: str,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One request's JSON object; 404 and other refusals are ``PermanentError``."""
        if not budget.try_acquire():
            raise TemporaryError(f"{endpoint}: request budget spent")
        response = self._send(endpoint, budget, method, f"{self.base_url}{path}", **kwargs)
        status = response.status_code
        if not 200 <= status < 300:
            detail = f"{what}: HTTP {status}{error_detail(response)}"
            if outcome_of(status) is Outcome.TEMPORARY:
                raise TemporaryError(detail)
            raise PermanentError(detail)
        try:
            body = response.json()
        except ValueError:
            raise TemporaryError(f"{what}: Langfuse answered something that is not JSON") from None
        if not isinstance(body, dict):
            raise TemporaryError(f"{what}: Langfuse answered JSON that is not an object")
        return body

    def _send(
        self, endpoint: str, budget: RequestBudget, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            self._count(endpoint, "timeout")
            raise TemporaryError(f"{endpoint}: no answer within {self.timeout:g}s") from None
        except httpx.TransportError as error:
            self._count(endpoint, "connection")
            raise TemporaryError(
                f"{endpoint}: connection failed ({type(error).__name__})"
            ) from None
        except httpx.HTTPError as error:
            self._count(endpoint, "error")
            raise TemporaryError(f"{endpoint}: request failed ({type(error).__name__})") from None
        self._count(endpoint, status_class(response.status_code))
        if response.status_code == 429:
            wait = budget.hold_off(response.headers.get("retry-after"))
            raise TemporaryError(
                f"{endpoint}: rate limited (429), retry after {wait:g}s", delay=wait
            )
        return response


@dataclass(frozen=True, slots=True)
class _Reading:
    """How one ``verdicts`` call reads a score row."""

    queue_id: str
    config_id: str
    trace_ids: set[str]
    since: float
    approve: set[str]
    reject: set[str]

    def read(self, raw: object) -> Review | Ignored:
        if not isinstance(raw, dict):
            return Ignored(None, None, "malformed")
        score_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        trace_id = _trace_of(raw.get("subject"))
        at = read_time(raw.get("timestamp"))
        if score_id is None or at is None:
            return Ignored(score_id, trace_id, "malformed")
        if trace_id is None:
            return Ignored(score_id, None, "not_trace")
        reason = self._left_out(raw, trace_id, at)
        if reason is not None:
            return Ignored(score_id, trace_id, reason)
        author = raw.get("authorUserId")
        if not isinstance(author, str) or not author:
            return Ignored(score_id, trace_id, "no_author")
        verdict = self._verdict(raw.get("dataType"), raw.get("value"))
        if verdict is None:
            return Ignored(score_id, trace_id, "unmapped_value")
        return Review(trace_id=trace_id, author=author, verdict=verdict, at=at, score_id=score_id)

    def _left_out(self, raw: dict[str, Any], trace_id: str, at: float) -> str | None:
        """Why a row the query's filters should have excluded is not a verdict."""
        if raw.get("source") != "ANNOTATION":
            return "not_annotation"
        if raw.get("configId") != self.config_id:
            return "other_config"
        if raw.get("queueId") != self.queue_id:
            return "other_queue"
        if trace_id not in self.trace_ids:
            return "other_trace"
        if _ms(at) < _ms(self.since):  # Langfuse compares milliseconds
            return "before_since"
        return None

    def _verdict(self, data_type: object, value: object) -> Verdict | None:
        if data_type == "BOOLEAN" and isinstance(value, bool):
            return Verdict.APPROVE if value else Verdict.REJECT
        if data_type == "CATEGORICAL" and isinstance(value, str):
            if value in self.approve:
                return Verdict.APPROVE
            if value in self.reject:
                return Verdict.REJECT
        return None


def _trace_of(subject: object) -> str | None:
    """The trace a score is on, when it is on a trace itself."""
    if not isinstance(subject, dict) or subject.get("kind") != "trace":
        return None
    trace_id = subject.get("id")
    return trace_id if isinstance(trace_id, str) and trace_id else None


def _batches(trace_ids: list[str]) -> Iterator[list[str]]:
    """Trace ids in batches of at most ``TRACE_BATCH`` and ``MAX_TRACE_QUERY`` characters."""
    batch: list[str] = []
    length = 0
    for trace_id in trace_ids:
        if batch and (len(batch) >= TRACE_BATCH or length + 1 + len(trace_id) > MAX_TRACE_QUERY):
            yield batch
            batch, length = [], 0
        batch.append(trace_id)
        length += len(trace_id) + 1
    if batch:
        yield batch


def _queue_path(queue_id: str) -> str:
    return f"{QUEUES_PATH}/{quote(queue_id, safe='')}"


def _ms(seconds: float) -> int:
    # round first: a time read from milliseconds may come back a hair below them
    return math.floor(round(seconds * 1000, 3))


def _iso(seconds: float) -> str:
    """``2026-01-01T00:00:00.000Z``, milliseconds floored, as Langfuse writes times."""
    millis = _ms(seconds)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"
