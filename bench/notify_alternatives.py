"""What the ecosystem offers in place of ``controller.notify.WebhookNotifier``'s queue: the
contenders of the notification queue benchmark, each with the notifier's interface
(``send``, ``close(timeout)``, ``counts()``) and the same payload, retries and logging.

- ``ExecutorNotifier``: ``concurrent.futures.ThreadPoolExecutor(max_workers=1)``, a
  task per event running the notifier's retry loop (``deliver``). Its work queue has no
  bound, so nothing is dropped on the way in; closing waits for what is queued, then
  cancels the rest and counts it as dropped.
- ``QueueNotifier``: ``queue.Queue(maxsize=max_queue)`` drained by one thread running
  the same loop; a full queue drops and counts, like coalmine's.
- ``TenacityNotifier``: the same queue, with the retries done by ``tenacity.Retrying``
  (exponential wait, the receiver's Retry-After first, a sleep that ``close`` cuts short).

The retry loop is the notifier's: ``retries`` tries after the first on no answer, 429
and 5xx, waiting ``backoff`` seconds and doubling up to ``MAX_BACKOFF`` (or what
Retry-After asks); other 4xx are final (``rejected``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Final

import httpx
import tenacity

from coalmine.shared.retry import Backoff, parse_retry_after
from controller.lifecycle import ReleaseState
from controller.notify import MAX_BACKOFF, event_payload

log = logging.getLogger("coalmine.bench.notify")

ABANDON_JOIN_S: Final = 1.0
"""How long closing waits for the thread once it gave up the queue."""

Payload = dict[str, Any]


class TemporaryError(Exception):
    """An attempt that may succeed if made again."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


class AbandonedError(Exception):
    """``close`` gave up waiting: the event is dropped."""


def post_once(client: httpx.Client, url: str, payload: Payload) -> str:
    """One attempt: ``sent`` or ``rejected``; ``TemporaryError`` when worth retrying."""
    try:
        response = client.post(url, json=payload)
    except httpx.HTTPError as error:
        raise TemporaryError(f"{type(error).__name__}: {error}") from None
    if response.is_success:
        return "sent"
    if response.status_code != 429 and response.status_code < 500:
        log.error("notification refused: HTTP %d", response.status_code)
        return "rejected"
    retry_after = parse_retry_after(
        response.headers.get("retry-after"), now=time.time(), cap=MAX_BACKOFF
    )
    raise TemporaryError(f"HTTP {response.status_code}", retry_after)


def backoff_of(retries: int, backoff: float) -> Backoff:
    return Backoff(
        attempts=retries + 1,
        first=backoff,
        factor=2.0,
        cap=MAX_BACKOFF,
        jitter=0.0,
        retry_after_cap=MAX_BACKOFF,
    )


def deliver(
    client: httpx.Client,
    url: str,
    payload: Payload,
    retry: Backoff,
    pause: Callable[[float], bool],
) -> str:
    """The notifier's retry loop; ``pause`` returns True when closing cut a wait short."""
    attempt = 1
    while True:
        try:
            return post_once(client, url, payload)
        except TemporaryError as failure:
            if not retry.more_after(attempt):
                log.error("notification dropped after %d attempts: %s", attempt, failure)
                return "failed"
            wait = retry.delay(attempt, retry_after=failure.retry_after)
            log.warning("notification: %s; retrying in %.1fs", failure, wait)
            if pause(wait):
                return "dropped"
            attempt += 1


class _Counted:
    """Outcome counts, safe across the caller's thread and the delivery thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "rejected": 0, "dropped": 0}

    def count(self, outcome: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[outcome] += amount

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class ExecutorNotifier(_Counted):
    """A single-thread executor, one task per event."""

    def __init__(
        self, url: str, *, retries: int = 3, backoff: float = 1.0, timeout: float = 5.0
    ) -> None:
        super().__init__()
        self._url = url
        self._retry = backoff_of(retries, backoff)
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook")
        self._abandon = threading.Event()
        self._last: Future[None] | None = None
        self._submitted = 0
        self._finished = 0

    def send(self, event: str, release: ReleaseState, reason: str) -> None:
        payload = event_payload(event, release, reason)
        try:
            self._last = self._executor.submit(self._task, payload)
        except RuntimeError:  # shut down
            self.count("dropped")
            log.warning("notification %s of %s dropped: closed", event, release.name)
            return
        self._submitted += 1

    def _task(self, payload: Payload) -> None:
        if self._abandon.is_set():
            outcome = "dropped"
        else:
            outcome = deliver(self._client, self._url, payload, self._retry, self._abandon.wait)
        self.count(outcome)
        with self._lock:
            self._finished += 1

    def close(self, timeout: float = 5.0) -> None:
        self._executor.shutdown(wait=False)
        if self._last is not None and wait_for([self._last], timeout).not_done:
            self._abandon.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            cancelled = self._submitted - self._finished
        self.count("dropped", cancelled)
        self._client.close()


class QueueNotifier(_Counted):
    """A bounded ``queue.Queue`` drained by one thread."""

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 5.0,
        max_queue: int = 1000,
    ) -> None:
        super().__init__()
        self._url = url
        self._retries = retries
        self._backoff = backoff
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)
        self._queue: queue.Queue[Payload | None] = queue.Queue(maxsize=max_queue)
        self._closing = False
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, event: str, release: ReleaseState, reason: str) -> None:
        payload = event_payload(event, release, reason)
        if not self._closing:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                pass
        self.count("dropped")
        log.warning("notification %s of %s dropped: queue full or closed", event, release.name)

    def _run(self) -> None:
        try:
            while (payload := self._queue.get()) is not None:
                self.count("dropped" if self._abandon.is_set() else self.deliver(payload))
        finally:
            self._client.close()

    def deliver(self, payload: Payload) -> str:
        retry = backoff_of(self._retries, self._backoff)
        return deliver(self._client, self._url, payload, retry, self._abandon.wait)

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)  # after what is queued
            stopped = True
        except queue.Full:
            stopped = False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon.set()
            if not stopped:
                self._queue.put(None, timeout=ABANDON_JOIN_S)
            self._thread.join(ABANDON_JOIN_S)


class TenacityNotifier(QueueNotifier):
    """The bounded queue, with tenacity doing the retries."""

    def deliver(self, payload: Payload) -> str:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._retries + 1),
            wait=_retry_after_or(
                tenacity.wait_exponential(multiplier=self._backoff, max=MAX_BACKOFF)
            ),
            retry=tenacity.retry_if_exception_type(TemporaryError),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            outcome: str = retrying(post_once, self._client, self._url, payload)
        except TemporaryError as failure:
            log.error("notification dropped after %d attempts: %s", self._retries + 1, failure)
            return "failed"
        except AbandonedError:
            return "dropped"
        return outcome

    def _sleep(self, seconds: float) -> None:
        if self._abandon.wait(seconds):
            raise AbandonedError


def _retry_after_or(
    fallback: tenacity.wait.wait_base,
) -> Callable[[tenacity.RetryCallState], float]:
    """Tenacity's wait: what the receiver's Retry-After asked, else ``fallback``."""

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TemporaryError) and error.retry_after is not None:
            return error.retry_after
        return float(fallback(state))

    return wait


def _log_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("notification: %s; retrying in %.1fs", error, wait)
