"""Langfuse in trouble, end to end on loopback: the controller reads a live emulator
through the real ``LangfuseSource`` and moves its labels through the real
``LangfusePromptLabels`` while Langfuse answers 5xx, garbled JSON, slowly, not at all,
or 429. The release holds (no decision on a failed read, never a promotion) and goes on
when Langfuse is back; the request budget and ``Retry-After`` are kept.

Time is a fake clock. Each tick the test writes the last tick's requests into the
emulator (root spans as the proxy sends them, split by the routing table the controller
writes, and their scores), then calls ``Controller.tick(now)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.emulator.app import create_app
from coalmine.emulator.ratelimit import PUBLIC_API, bucket_of
from coalmine.emulator.settings import EmulatorSettings, Plan
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.admin import not_ready_reason
from controller.labels import LangfusePromptLabels
from controller.loop import Controller, TickReport
from controller.release_store import ControllerState
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from policies import Policy
from policies.domain import Arm, Phase
from policies.loader import load_policy_text
from tests.controller.source_support import (
    SCORES,
    FakeClock,
    add_fault,
    clear_faults,
    iso,
    root,
    send_roots,
)
from tests.emulator.spec_check import Checked, SpecCheckingApp
from tests.proxy.proxy_support import Served, start_server

pytestmark = pytest.mark.slow

RELEASE = "support"
PROMPT = "support-agent"
CONTROLLER_AGENT = "coalmine-controller"

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent}
  upstreams: {stable: "http://127.0.0.1:9"}
routing:
  readTimeout: 5s
steps:
  - {weight: 30, minDuration: 4m}
  - {weight: 60, minDuration: 4m}
analysis:
  interval: 1m
  alpha: 0.05
  minSamples: 30
  scoreTimeout: 3m
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.05, critical: true}
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.1
      effectSize: 0.2
      critical: true
"""


def start_time() -> float:
    """Midnight UTC the day after tomorrow.

    The emulator stamps each score's ``createdAt`` with its own wall clock, and the
    source takes that as the score's arrival. Fake time that runs ahead of the wall
    clock keeps every score created before the trace it belongs to is even seen, so
    what the judge sees depends on fake time alone.
    """
    return (int(time.time()) // 86_400 + 2) * 86_400.0


# ----------------------------------------------------------------------------- Langfuse


@dataclass
class Hit:
    """One request the emulator received, at fake time ``at``."""

    at: float
    method: str
    path: str
    agent: str
    status: int | None = None
    retry_after: float | None = None

    @property
    def public_api(self) -> bool:
        """In Langfuse's General API rate-limit bucket."""
        return bucket_of(self.method, self.path) == PUBLIC_API


class RequestLog:
    """ASGI wrapper: every request, when (fake clock), by whom, and what it got."""

    def __init__(self, app: Any, clock: Callable[[], float]) -> None:
        self.app = app
        self.clock = clock
        self.hits: list[Hit] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        hit = Hit(
            self.clock(),
            scope["method"],
            scope["path"],
            headers.get(b"user-agent", b"").decode("latin-1"),
        )
        self.hits.append(hit)

        async def logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                hit.status = message["status"]
                answered = dict(message.get("headers", []))
                if b"retry-after" in answered:
                    hit.retry_after = float(answered[b"retry-after"])
            await send(message)

        await self.app(scope, receive, logged)

    def controller(self) -> list[Hit]:
        return [hit for hit in self.hits if hit.agent == CONTROLLER_AGENT]


class Langfuse:
    """The emulator on a loopback port that it keeps across a stop and a start, every
    response checked against Langfuse's spec."""

    def __init__(self, settings: EmulatorSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.app = create_app(settings, clock=clock)
        self.checked = Checked()
        self.log = RequestLog(SpecCheckingApp(self.app, self.checked), clock)
        self.served: Served | None = start_server(self.log)
        self.base_url = self.served.base_url
        self.port = int(self.base_url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Langfuse goes away: nothing listens on its port."""
        if self.served is not None:
            self.served.stop()
            self.served = None

    def start(self) -> None:
        """Langfuse comes back on the same port with the same data."""
        self.served = start_server(self.log, port=self.port)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            auth=(self.settings.public_key, self.settings.secret_key),
            timeout=10.0,
        )

    def close(self) -> None:
        self.stop()
        self.app.state.store.close()


# ----------------------------------------------------------------------------- the rig


@dataclass
class Tick:
    at: float
    report: TickReport


@dataclass
class Rig:
    """One release, ``support``, against the emulator; ``clock`` is everyone's time."""

    clock: FakeClock
    langfuse: Langfuse
    http: httpx.Client
    """The app's and the test's client (another user of the Langfuse project)."""
    routing: SqliteRoutingStore
    state: ControllerState
    source: LangfuseSource
    labels: LangfusePromptLabels
    controller: Controller
    step: float = 60.0
    """Fake seconds between two ticks."""
    rate: int = 60
    """Requests a minute."""
    canary_error: float = 0.01
    canary_score: float = 0.8
    ingesting: bool = True
    """The app can write to Langfuse (false while it is down)."""
    neighbour: Callable[[], None] | None = None
    """Runs before each tick: someone else using the project's API."""
    ticks: list[Tick] = field(default_factory=list)
    _random: random.Random = field(default_factory=lambda: random.Random(11))
    _traces: int = 0
    _written_until: float | None = None
    _unsent_scores: list[dict[str, Any]] = field(default_factory=list)

    def run(self, ticks: int, until: Phase | None = None) -> None:
        for _ in range(ticks):
            self.clock.advance(self.step)
            if self.neighbour is not None:
                self.neighbour()
            self.write_traffic()
            report = self.controller.tick(self.clock.now)
            self.ticks.append(Tick(self.clock.now, report))
            if until is not None and self.phase() is until:
                return

    def write_traffic(self) -> None:
        """The requests since the last tick, as the proxy and the evaluator report them."""
        now = self.clock.now
        since = self._written_until if self._written_until is not None else now - self.step
        self._written_until = now
        if not self.ingesting:
            return
        table = self.routing.read(RELEASE)
        weight = 0.0 if table is None else table.canary_weight
        count = int(self.rate * (now - since) / 60.0)
        outcomes = []
        for _ in range(count):
            self._traces += 1
            ts = since + self._random.random() * (now - since - 1.0)
            canary = self._random.random() * 100 < weight
            error = self._random.random() < (self.canary_error if canary else 0.01)
            arm = Arm.CANARY if canary else Arm.BASELINE
            outcomes.append(root(RELEASE, arm, self._traces, ts, status=500 if error else 200))
            if not error:
                mean = self.canary_score if canary else 0.8
                value = min(1.0, max(0.0, self._random.gauss(mean, 0.1)))
                self._unsent_scores.append(
                    {
                        "traceId": f"{self._traces:032x}",
                        "name": "helpfulness",
                        "value": value,
                        "timestamp": iso(ts + 2.0),
                    }
                )
        if outcomes:
            send_roots(self.http, outcomes)
        if self._unsent_scores:
            sent = self.http.post(SCORES, json=self._unsent_scores)
            if sent.status_code == 429:
                return  # the app's client sends them again later
            assert sent.status_code == 202, sent.text
            self._unsent_scores = []

    # -- what the controller did --------------------------------------------------------

    def phase(self) -> Phase:
        release = self.state.release(RELEASE)
        assert release is not None
        return release.phase

    def weight(self) -> float:
        table = self.routing.read(RELEASE)
        assert table is not None
        return table.canary_weight

    def decisions(self) -> list[str]:
        return [record.decision for record in self.state.decisions(RELEASE)]

    def label(self, label: str) -> int:
        response = self.http.get(f"/api/public/v2/prompts/{PROMPT}", params={"label": label})
        response.raise_for_status()
        return int(response.json()["version"])

    def failed_polls(self, since: int = 0) -> list[bool]:
        return [tick.report.poll_error is not None for tick in self.ticks[since:]]

    def assert_nothing_decided_on_a_failed_poll(self) -> None:
        for tick in self.ticks:
            if tick.report.poll_error is not None:
                assert not tick.report.decisions, (tick.at, tick.report)


RigFactory = Callable[..., Rig]


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[RigFactory]:
    """Build the rig: ``plan`` for Langfuse Cloud's rate limits, ``per_minute`` for the
    controller's budget, ``timeout`` for its HTTP calls, ``step`` between ticks."""
    made: list[tuple[Langfuse, httpx.Client, Rig]] = []

    def make(
        *,
        plan: Plan | None = None,
        per_minute: int = 1_000,
        timeout: float = 5.0,
        step: float = 60.0,
    ) -> Rig:
        clock = FakeClock(start_time())
        settings = EmulatorSettings(
            public_key=f"pk-lf-trouble-{len(made)}", secret_key="sk-lf-trouble", plan=plan
        )
        langfuse = Langfuse(settings, clock)
        http = langfuse.client()
        for version, label in ((1, "production"), (2, "canary")):
            created = http.post(
                "/api/public/v2/prompts",
                json={"name": PROMPT, "prompt": f"v{version}", "labels": [label]},
            )
            assert created.status_code == 201, created.text
        state_path = tmp_path / f"state-{len(made)}.db"
        state = ControllerState(state_path)
        routing = SqliteRoutingStore(state_path)
        budget = RequestBudget(BudgetSettings(per_minute=per_minute), clock=clock)
        keys = (langfuse.base_url, settings.public_key, settings.secret_key)
        source = LangfuseSource(
            *keys,
            budget=budget,
            settings=SourceSettings(timeout=timeout),
            rng=random.Random(3),
        )
        labels = LangfusePromptLabels(*keys, budget=budget, timeout=timeout)
        policies: dict[str, Policy] = {RELEASE: load_policy_text(POLICY, "support.yaml")}
        controller = Controller(
            state=state,
            routing=routing,
            source=source,
            labels=labels,
            policies=lambda: policies,
        )
        rig = Rig(clock, langfuse, http, routing, state, source, labels, controller, step=step)
        made.append((langfuse, http, rig))
        return rig

    yield make
    for langfuse, http, rig in made:
        rig.source.close()
        rig.labels.close()
        rig.routing.close()
        rig.state.close()
        http.close()
        langfuse.close()
        assert not langfuse.checked.violations, "\n".join(langfuse.checked.violations)


@pytest.fixture
def rig(make_rig: RigFactory) -> Rig:
    return make_rig()


# ----------------------------------------------------------------------------- tests

OBSERVATIONS = "GET:/api/public/v2/observations"
SCORE_READS = "GET:/api/public/v3/scores"


@pytest.mark.parametrize(
    "fault",
    [
        f"{OBSERVATIONS}=status:503",
        f"{SCORE_READS}=status:502",
        f"{OBSERVATIONS}=malformed",
        f"{SCORE_READS}=malformed",
    ],
    ids=["observations-503", "scores-502", "observations-malformed", "scores-malformed"],
)
def test_a_failing_langfuse_holds_the_release_and_it_resumes(rig: Rig, fault: str) -> None:
    rig.run(3)
    assert rig.decisions() == ["start"]
    assert rig.weight() == 30.0
    add_fault(rig.http, fault)
    rig.run(10)  # the first step's minDuration ends in the meantime
    assert all(rig.failed_polls(since=3))
    assert rig.decisions() == ["start"]
    assert (rig.phase(), rig.weight()) == (Phase.CANARY, 30.0)
    assert rig.controller.last_poll_error is not None

    clear_faults(rig.http)
    rig.run(40, until=Phase.PROMOTED)
    assert rig.phase() is Phase.PROMOTED
    assert rig.decisions() == ["start", "advance", "promote"]
    assert (rig.label("production"), rig.label("canary")) == (2, 2)
    rig.assert_nothing_decided_on_a_failed_poll()


def test_a_slow_langfuse_times_the_poll_out_and_the_release_holds(make_rig: RigFactory) -> None:
    rig = make_rig(timeout=0.5)
    rig.run(3)
    add_fault(rig.http, f"{OBSERVATIONS}=timeout:30s")
    rig.run(8)
    assert all(rig.failed_polls(since=3))
    errors = {tick.report.poll_error for tick in rig.ticks[3:]}
    assert "observations: no answer within 0.5s" in errors
    assert rig.source.request_counts[("observations", "timeout")] >= 1
    assert rig.decisions() == ["start"]
    assert (rig.phase(), rig.weight()) == (Phase.CANARY, 30.0)

    clear_faults(rig.http)
    rig.run(40, until=Phase.PROMOTED)
    assert rig.decisions() == ["start", "advance", "promote"]
    rig.assert_nothing_decided_on_a_failed_poll()


def test_langfuse_down_holds_the_release_and_readiness_says_why(rig: Rig) -> None:
    rig.run(3)
    rig.langfuse.stop()
    rig.ingesting = False
    rig.run(8)
    assert all(rig.failed_polls(since=3))
    assert rig.decisions() == ["start"]
    assert (rig.phase(), rig.weight()) == (Phase.CANARY, 30.0)
    errors = {tick.report.poll_error for tick in rig.ticks[3:]}
    assert "observations: connection failed (ConnectError)" in errors
    why = not_ready_reason(rig.controller, rig.clock.now, stale_after=180.0)
    assert why == f"the last poll failed: {rig.controller.last_poll_error}"

    rig.langfuse.start()
    rig.ingesting = True
    while rig.controller.last_poll_error is not None:
        assert len(rig.ticks) < 30, "the controller never read Langfuse again"
        rig.run(1)
    assert not_ready_reason(rig.controller, rig.clock.now, stale_after=180.0) is None
    assert rig.phase() is Phase.CANARY
    rig.run(40, until=Phase.PROMOTED)
    assert rig.decisions() == ["start", "advance", "promote"]
    rig.assert_nothing_decided_on_a_failed_poll()


def test_no_promotion_on_evidence_read_before_langfuse_failed(rig: Rig) -> None:
    while "advance" not in rig.decisions():
        assert len(rig.ticks) < 30, "the first step never advanced"
        rig.run(1)
    rig.run(2)  # every metric passes; the last step's minDuration has a minute left
    add_fault(rig.http, f"{OBSERVATIONS}=status:503")
    rig.run(6)
    assert rig.decisions() == ["start", "advance"]
    rig.assert_nothing_decided_on_a_failed_poll()


def test_a_429_storm_keeps_the_budget_and_retry_after(make_rig: RigFactory) -> None:
    budget = 8
    # A tick every 20 s wants ~9 reads a minute: the budget, not the ticks, sets the pace.
    rig = make_rig(plan=Plan.HOBBY, per_minute=budget, step=20.0)
    rig.run(6)
    storm_from, storm_until = rig.clock.now, rig.clock.now + 240.0

    def spend_the_minute() -> None:
        """Another user of the project empties the General API bucket."""
        if storm_from <= rig.clock.now < storm_until:
            for _ in range(30):
                if rig.http.get("/api/public/v3/scores").status_code == 429:
                    return

    rig.neighbour = spend_the_minute
    rig.run(12)
    rig.neighbour = None
    rig.run(120, until=Phase.PROMOTED)

    assert any(tick.report.poll_error == "request budget spent" for tick in rig.ticks)
    hits = [hit for hit in rig.langfuse.log.controller() if hit.public_api]
    limited = [index for index, hit in enumerate(hits) if hit.status == 429]
    assert limited, "the storm never reached the controller"
    for hit in hits:  # the budget: a sliding minute
        assert sum(hit.at - 60.0 < other.at <= hit.at for other in hits) <= budget
    for index in limited:  # Retry-After: not one request before it has passed
        hit = hits[index]
        assert hit.retry_after is not None and hit.retry_after > 0
        assert hits[index + 1].at >= hit.at + hit.retry_after, hit
    counted = (
        rig.source.request_counts[("observations", "429")]
        + rig.source.request_counts[("scores", "429")]
        + rig.labels.request_counts[("prompt_label_move", "429")]
    )
    assert counted == len(limited)
    assert rig.phase() is Phase.PROMOTED
    assert rig.decisions() == ["start", "advance", "promote"]
    rig.assert_nothing_decided_on_a_failed_poll()


def test_label_moves_failing_during_a_rollback_are_retried_until_they_land(rig: Rig) -> None:
    rig.canary_error = 0.3
    rig.run(1)
    assert rig.decisions() == ["start"]
    add_fault(rig.http, "PATCH:/api/public/v2/prompts=status:503")
    rig.run(30, until=Phase.ROLLED_BACK)
    assert rig.decisions() == ["start", "rollback"]
    assert rig.weight() == 0.0  # at once: the weight does not wait for Langfuse
    assert rig.label("canary") == 2
    assert rig.state.pending_actions(RELEASE)
    rig.run(3)
    assert rig.label("canary") == 2
    assert rig.state.pending_actions(RELEASE)
    assert rig.labels.request_counts[("prompt_label_move", "5xx")] >= 4

    clear_faults(rig.http)
    rig.run(1)
    assert rig.state.pending_actions(RELEASE) == []
    assert (rig.label("production"), rig.label("canary")) == (1, 1)
    assert rig.decisions() == ["start", "rollback"]
    moves = rig.state.label_moves(RELEASE)
    assert [(move.label, move.from_version, move.to_version) for move in moves] == [
        ("canary", 2, 1)
    ]
