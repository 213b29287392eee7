"""Notifications: queued at once, delivered by a background thread, retried, counted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.lifecycle import ReleaseState
from controller.notify import (
    MAX_BACKOFF,
    MultiNotifier,
    NoopNotifier,
    Notifier,
    WebhookNotifier,
    event_payload,
    slack_payload,
)
from policies.domain import Phase
from tests.controller.release_rig import RELEASE, T0, make_rig, wait_until

ROLLED_BACK = ReleaseState(
    name="support",
    phase=Phase.ROLLED_BACK,
    step=1,
    step_starts=(T0, T0 + 600),
    canary_weight=0.0,
    updated_at=T0 + 900.5,
    rollout=3,
)


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers ``statuses`` in turn, then 200."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@contextmanager
def receiver(*statuses: int) -> Iterator[Receiver]:
    state = Receiver(list(statuses))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            state.bodies.append(json.loads(self.rfile.read(length)))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_webhook_that_fails_twice_gets_the_event_on_the_third_attempt() -> None:
    with receiver(503, 502) as hook:
        notifier = WebhookNotifier(hook.url, retries=3, backoff=0.0)
        notifier.send("rollback", ROLLED_BACK, "errors: canary worse by 4 points")
        notifier.close(timeout=10)
    assert notifier.counts() == {"sent": 1, "failed": 0, "rejected": 0, "dropped": 0}
    assert len(hook.bodies) == 3
    assert hook.bodies[-1] == {
        "event": "rollback",
        "release": "support",
        "rollout": 3,
        "phase": "rolled_back",
        "step": 2,
        "canaryWeight": 0.0,
        "reason": "errors: canary worse by 4 points",
        "at": "2027-01-15T08:15:00.500Z",
    }


def mock(handler: Any) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def test_an_event_is_dropped_and_counted_after_the_retries() -> None:
    attempts: list[httpx.Request] = []

    def always_down(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        return httpx.Response(500)

    notifier = WebhookNotifier("http://hooks.test/x", transport=mock(always_down), backoff=0.0)
    notifier.send("pause", ROLLED_BACK, "why")
    notifier.close(timeout=10)
    assert len(attempts) == 4
    assert notifier.counts()["failed"] == 1
    assert notifier.counts()["sent"] == 0


def test_connection_errors_and_429_are_retried() -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(429),
        httpx.Response(204),
    ]

    def flaky(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    notifier = WebhookNotifier("http://hooks.test/x", transport=mock(flaky), backoff=0.0)
    notifier.send("promote", ROLLED_BACK, "all metrics pass")
    notifier.close(timeout=10)
    assert answers == []
    assert notifier.counts()["sent"] == 1


@pytest.mark.parametrize(
    ("status", "attempts_made", "outcome"),
    [
        pytest.param(400, 1, "rejected", id="400-final"),
        pytest.param(404, 1, "rejected", id="404-final"),
        pytest.param(501, 1, "rejected", id="501-never-implemented"),
        pytest.param(505, 1, "rejected", id="505-never-supported"),
        pytest.param(408, 3, "failed", id="408-retried"),
        pytest.param(425, 3, "failed", id="425-retried"),
        pytest.param(502, 3, "failed", id="502-retried"),
    ],
)
def test_a_refusal_is_final_and_a_temporary_answer_is_retried(
    status: int, attempts_made: int, outcome: str
) -> None:
    attempts: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        return httpx.Response(status)

    notifier = WebhookNotifier(
        "http://hooks.test/x", transport=mock(answer), backoff=0.0, retries=2
    )
    notifier.send("pause", ROLLED_BACK, "why")
    notifier.close(timeout=10)
    assert len(attempts) == attempts_made
    assert notifier.counts()[outcome] == 1


def test_send_returns_while_the_receiver_hangs_and_a_full_queue_drops() -> None:
    release = threading.Event()
    entered = threading.Event()
    seen: list[str] = []

    def hang(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(timeout=30)
        seen.append(json.loads(request.content)["event"])
        return httpx.Response(200)

    notifier = WebhookNotifier("http://hooks.test/x", transport=mock(hang), max_queue=1)
    notifier.send("pause", ROLLED_BACK, "first")
    entered.wait(timeout=10)
    notifier.send("resume", ROLLED_BACK, "queued")
    notifier.send("rollback", ROLLED_BACK, "no room")
    assert notifier.counts()["dropped"] == 1
    release.set()
    notifier.close(timeout=10)
    assert seen == ["pause", "resume"]
    assert notifier.counts()["sent"] == 2


def test_close_gives_up_on_an_event_still_being_retried() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    notifier = WebhookNotifier("http://hooks.test/x", transport=mock(down), backoff=3600.0)
    notifier.send("rollback", ROLLED_BACK, "why")
    notifier.close(timeout=0.05)
    wait_until(lambda: notifier.counts()["dropped"] == 1, what="the event to be dropped")
    notifier.send("pause", ROLLED_BACK, "after close")
    assert notifier.counts()["dropped"] == 2


def test_retry_after_is_honoured_up_to_a_limit() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(503, headers={"Retry-After": "5"}),
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(200),
    ]
    notifier = WebhookNotifier(
        "http://hooks.test/x", transport=mock(lambda request: answers.pop(0)), backoff=0.5
    )
    waits: list[float] = []

    def pause(seconds: float) -> bool:
        waits.append(seconds)
        return False

    notifier.pause = pause
    notifier.send("pause", ROLLED_BACK, "why")
    notifier.close(timeout=10)
    assert notifier.counts()["sent"] == 1
    # the doubling alone would wait 0.5, 1 and 2 s; Retry-After replaces it, within the limit
    assert waits == [0.0, 5.0, MAX_BACKOFF]


@pytest.mark.parametrize("retry_after", [None, "soon", "nan", "inf"])
def test_without_a_usable_retry_after_the_wait_doubles_up_to_the_limit(
    retry_after: str | None,
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    notifier = WebhookNotifier(
        "http://hooks.test/x",
        transport=mock(lambda request: httpx.Response(503, headers=headers)),
        retries=4,
        backoff=20.0,
    )
    waits: list[float] = []

    def pause(seconds: float) -> bool:
        waits.append(seconds)
        return False

    notifier.pause = pause
    notifier.send("pause", ROLLED_BACK, "why")
    notifier.close(timeout=10)
    assert notifier.counts()["failed"] == 1
    assert waits == [20.0, 40.0, MAX_BACKOFF, MAX_BACKOFF]


def test_slack_payload_has_text_and_blocks_with_escaped_text() -> None:
    payload = slack_payload("rollback", ROLLED_BACK, "p95 latency > 2s & <rising>")
    assert payload["text"] == (
        "coalmine: release support rollout 3: rollback (rolled_back, step 2, canary 0%): "
        "p95 latency &gt; 2s &amp; &lt;rising&gt;"
    )
    section, context = payload["blocks"]
    assert section["type"] == "section"
    assert section["text"]["type"] == "mrkdwn"
    assert "*support*: rollback" in section["text"]["text"]
    assert context["type"] == "context"
    assert "2027-01-15T08:15:00.500Z" in context["elements"][0]["text"]


def test_a_slack_notifier_posts_the_slack_payload() -> None:
    bodies: list[dict[str, Any]] = []

    def accept(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, text="ok")

    notifier = WebhookNotifier("https://hooks.slack.test/T/B/X", slack=True, transport=mock(accept))
    notifier.send("promote", ROLLED_BACK, "all metrics pass")
    notifier.close(timeout=10)
    assert set(bodies[0]) == {"text", "blocks"}


def test_a_release_not_yet_started_has_no_step() -> None:
    pending = ReleaseState(name="support", phase=Phase.PENDING, updated_at=T0)
    assert event_payload("abort", pending, "policy removed")["step"] is None


class Recording:
    def __init__(self, broken: bool = False) -> None:
        self.events: list[str] = []
        self.closed = False
        self.broken = broken

    def send(self, event: str, release: ReleaseState, reason: str) -> None:
        if self.broken:
            raise RuntimeError("broken")
        self.events.append(event)

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


def test_multi_notifier_fans_out_past_a_broken_one() -> None:
    first, broken, last = Recording(), Recording(broken=True), Recording()
    notifiers: list[Notifier] = [first, broken, last, NoopNotifier()]
    fan_out = MultiNotifier(notifiers)
    fan_out.send("pause", ROLLED_BACK, "why")
    fan_out.close(timeout=1)
    assert first.events == last.events == ["pause"]
    assert first.closed and broken.closed and last.closed


def test_the_controller_notifies_a_manual_rollback(tmp_path: Path) -> None:
    with receiver() as hook:
        notifier = WebhookNotifier(hook.url, backoff=0.0)
        rig = make_rig(tmp_path, notify=notifier.send)
        try:
            rig.run(2)
            rig.controller.manual(RELEASE, "rollback", actor="sre", now=rig.now, reason="bad")
        finally:
            notifier.close(timeout=10)
            rig.close()
    assert [(body["event"], body["phase"], body["reason"]) for body in hook.bodies] == [
        ("rollback", "rolled_back", "bad")
    ]


@pytest.mark.parametrize("options", [{"retries": -1}, {"backoff": -1.0}, {"max_queue": 0}])
def test_bad_settings_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WebhookNotifier("http://hooks.test/x", **options)
