"""Notifications of what releases do (promote, rollback, pause, await and get approval),
sent without blocking.

The loop calls ``send`` while it holds its lock, so ``send`` only queues: a background
thread delivers, retries with backoff when the receiver is down or answers 5xx, and
drops (and counts) what it could not deliver. A slow or dead webhook never slows a
rollback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx

from coalmine.shared.retry import Backoff, Outcome, outcome_of, parse_retry_after
from controller.lifecycle import ReleaseState
from controller.stream import format_ts

log = logging.getLogger("coalmine.controller.notify")

MAX_BACKOFF: Final = 60.0
"""Longest wait between two attempts, whatever Retry-After or doubling say."""


class Notifier(Protocol):
    """Where release events go. ``send`` never blocks; ``close`` delivers what is queued
    within ``timeout`` seconds and stops."""

    def send(self, event: str, release: ReleaseState, reason: str) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


class NoopNotifier:
    """Sends nothing."""

    def send(self, event: str, release: ReleaseState, reason: str) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass


class MultiNotifier:
    """Sends every event to each of several notifiers."""

    def __init__(self, notifiers: Iterable[Notifier]) -> None:
        self.notifiers = tuple(notifiers)

    def send(self, event: str, release: ReleaseState, reason: str) -> None:
        for notifier in self.notifiers:
            try:
                notifier.send(event, release, reason)
            except Exception:  # one broken notifier never keeps the event from the others
                log.exception("notifier %r failed to queue %s", notifier, event)

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for notifier in self.notifiers:
            notifier.close(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True, slots=True)
class _Message:
    event: str
    release: str
    payload: dict[str, Any]


class WebhookNotifier:
    """POSTs each event as JSON to a URL: coalmine's own payload, or a Slack incoming
    webhook's (``slack=True``).

    Delivery is retried ``retries`` times after the first attempt on connection errors,
    timeouts and the answers ``coalmine.shared.retry`` calls temporary (408, 425, 429, 5xx
    but 501 and 505), waiting ``backoff`` seconds and doubling up to
    ``MAX_BACKOFF`` (or what Retry-After says, up to ``MAX_BACKOFF``); other answers are
    final. ``counts()`` tells how many were sent, dropped after the retries (``failed``),
    refused by the receiver (``rejected``) and dropped because the queue was full or the
    notifier closed (``dropped``).

    ``pause(seconds)`` is how the delivery thread waits between attempts; it returns
    True when ``close`` cut the wait short.
    """

    def __init__(
        self,
        url: str,
        *,
        slack: bool = False,
        transport: httpx.BaseTransport | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 5.0,
        max_queue: int = 1000,
        headers: dict[str, str] | None = None,
    ) -> None:
        if retries < 0 or backoff < 0 or max_queue < 1:
            raise ValueError("retries and backoff must not be negative, max_queue at least 1")
        self._url = url
        parts = urlsplit(url)
        # webhook URLs carry their credential in the path (Slack's do): logs get the host
        self._where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.slack = slack
        self.retries = retries
        self.backoff = backoff
        # no jitter: only the acting controller notifies, so no replicas retry in step
        self._retry = Backoff(
            attempts=retries + 1,
            first=backoff,
            factor=2.0,
            cap=MAX_BACKOFF,
            jitter=0.0,
            retry_after_cap=MAX_BACKOFF,
        )
        self._abandon = threading.Event()
        self.pause: Callable[[float], bool] = self._abandon.wait
        self.max_queue = max_queue
        self._client = httpx.Client(
            transport=transport, timeout=timeout, headers=headers, follow_redirects=False
        )
        self._queue: deque[_Message] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        self._counts = {"sent": 0, "failed": 0, "rejected": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._run, name="coalmine-webhook", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------

    def send(self, event: str, release: ReleaseState, reason: str) -> None:
        """Queue one event; returns at once."""
        build = slack_payload if self.slack else event_payload
        payload = build(event, release, reason)
        with self._wakeup:
            if self._closing or len(self._queue) >= self.max_queue:
                self._counts["dropped"] += 1
                log.warning(
                    "notification %s of %s dropped: queue full or closed", event, release.name
                )
                return
            self._queue.append(_Message(event, release.name, payload))
            self._wakeup.notify()

    def counts(self) -> dict[str, int]:
        """Notifications by outcome so far: sent, failed, rejected, dropped."""
        with self._wakeup:
            return dict(self._counts)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then give up the rest."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # stop waiting between retries; what is left is dropped and counted
            self._abandon.set()
            self._thread.join(timeout=1.0)

    # -- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._wakeup:
                    while not self._queue and not self._closing:
                        self._wakeup.wait()
                    if not self._queue:
                        return
                    message = self._queue.popleft()
                if self._abandon.is_set():
                    self._count("dropped")
                    continue
                self._count(self._deliver(message))
        finally:
            self._client.close()

    def _count(self, outcome: str) -> None:
        with self._wakeup:
            self._counts[outcome] += 1

    def _deliver(self, message: _Message) -> str:
        attempt = 1
        while True:
            answer = self._post(message)
            if isinstance(answer, str):
                return answer
            if not self._retry.more_after(attempt):
                log.error(
                    "notification %s of %s dropped after %d attempts: %s",
                    message.event,
                    message.release,
                    attempt,
                    answer.problem,
                )
                return "failed"
            wait = self._retry.delay(attempt, retry_after=answer.retry_after)
            log.warning(
                "notification %s of %s: %s; retrying in %.1fs",
                message.event,
                message.release,
                answer.problem,
                wait,
            )
            if self.pause(wait):
                return "dropped"
            attempt += 1

    def _post(self, message: _Message) -> str | _Failure:
        """One attempt: ``sent``, ``rejected`` (final), or a failure worth retrying."""
        try:
            response = self._client.post(self._url, json=message.payload)
        except httpx.HTTPError as error:
            return _Failure(f"{type(error).__name__}: {error}")
        if response.is_success:
            return "sent"
        if outcome_of(response.status_code) is Outcome.PERMANENT:
            log.error(
                "notification %s of %s refused by %s: HTTP %d",
                message.event,
                message.release,
                self._where,
                response.status_code,
            )
            return "rejected"
        retry_after = parse_retry_after(
            response.headers.get("retry-after"), now=time.time(), cap=MAX_BACKOFF
        )
        return _Failure(f"HTTP {response.status_code}", retry_after)


@dataclass(frozen=True, slots=True)
class _Failure:
    """An attempt that may succeed if made again."""

    problem: str
    retry_after: float | None = None
    """Seconds the receiver's Retry-After asked to wait (None: it did not say)."""


# -- payloads ---------------------------------------------------------------------------------


def _step(release: ReleaseState) -> int | None:
    return release.step + 1 if release.started_at is not None else None


def _at(release: ReleaseState, clock: Callable[[], float]) -> str:
    return format_ts(release.updated_at or clock())


def event_payload(
    event: str, release: ReleaseState, reason: str, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """coalmine's own webhook payload; ``at`` is when the decision was made (ISO 8601)."""
    return {
        "event": event,
        "release": release.name,
        "rollout": release.rollout,
        "phase": release.phase.value,
        "step": _step(release),
        "canaryWeight": release.canary_weight,
        "reason": reason,
        "at": _at(release, clock),
    }


_EMOJI: Final = {
    "rollback": ":rotating_light:",
    "pause": ":double_vertical_bar:",
    "await_approval": ":raising_hand:",
    "promote": ":white_check_mark:",
    "approve": ":white_check_mark:",
}


def _escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(
    event: str, release: ReleaseState, reason: str, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` for notifications, ``blocks`` to show."""
    step = _step(release)
    where = f"step {step}, canary {release.canary_weight:g}%" if step is not None else "not started"
    emoji = _EMOJI.get(event, ":information_source:")
    name = _escape(release.name)
    rollout = f" rollout {release.rollout}" if release.rollout else ""
    text = (
        f"coalmine: release {name}{rollout}: {event} ({release.phase.value}, {where}): "
        f"{_escape(reason)}"
    )
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{emoji} *{name}*: {event}\n{_escape(reason)}",
                },
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"phase {release.phase.value} · {where} · {_at(release, clock)}",
                    }
                ],
            },
        ],
    }
