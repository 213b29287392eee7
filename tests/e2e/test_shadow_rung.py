"""The shadow rung under a real ``coalmine run``: users post questions through the proxy
to a prompt release whose application answers by prompt label; the proxy mirrors every
request to a staging application that answers with the canary label; a thread of the
test plays the application's evaluator, scoring each trace it finds in Langfuse, copy
and primary alike, from the answer behind it. A worse candidate is rolled back at the
rung with no user ever answered by it; an equal one passes on to the canary steps. In
both cases the mirroring stops with the rung."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.shared.conventions import release_tag
from tests.e2e.support import (
    FINISHED,
    Background,
    PromptApp,
    Recorder,
    RoutingRecorder,
    Stack,
    Users,
    create_prompt,
    detail_if,
    judged,
    place,
    rolled_back_at,
    wait_for,
)

pytestmark = pytest.mark.slow

PROMPT = "faq-answers"
RELEASE = "faq-answers"
SCORE = "helpfulness"
FIRST_WEIGHT = 20
STABLE_QUALITY = 0.85
WORSE_QUALITY = 0.65
USER_RATE = 10.0
"""User requests a second."""
RUNG_WITHIN = 150.0
"""The rung's deadline: scores are read for the score sample only, which holds no
request until the proxy's counts of a whole minute size it (up to a minute), then the
pairs of seconds of traffic; a loaded machine is slower."""
SCORER_EVERY = 0.5
_SCORE_NAMESPACE = uuid.UUID("5d2a7c41-8e0b-4b6f-a3c9-1f7e2d6b9a04")


def _policy(staging: str) -> str:
    """A prompt-only release whose shadow is a rung: every POST mirrored to staging
    while the rollout stands at it, then two canary steps held for long."""
    return f"""\
apiVersion: coalmine/v1
kind: Release
name: {RELEASE}
target:
  prompt: {{name: {PROMPT}}}
routing:
  pathPrefix: /v1
  stickiness: {{header: x-user-id}}
shadow:
  upstream: "{staging}"
  percent: 100
  methods: [POST]
  gate:
    metric: {{score: {SCORE}, tolerance: 0.05, effectSize: 0.1}}
    minPairs: 30
    maxDuration: 3m
    onInconclusive: pause
steps:
  - {{weight: {FIRST_WEIGHT}, minDuration: 10m}}
  - {{weight: 50, minDuration: 10m}}
analysis:
  interval: 1s
  minSamples: 30
  scoreTimeout: 10s
  metrics:
    - {{name: {SCORE}, source: score, score: {SCORE}, tolerance: 0.08, critical: true}}
"""


# -- the application's evaluator ------------------------------------------------------------


@dataclass
class Scorer(Background):
    """The application's evaluator, in a thread: every ``SCORER_EVERY`` seconds it reads
    the release's traces in Langfuse (root observations of observations v2, by the
    release's tag) and scores each new one from the answer behind it, which the stable
    application gave to a primary and the staging application to a copy."""

    api: httpx.Client
    since: datetime
    stable: PromptApp
    staging: PromptApp
    scored: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Trace id: its arm and the value written."""
    every: float = SCORER_EVERY
    survives: tuple[type[BaseException], ...] = (httpx.HTTPError, ValueError, KeyError)

    def step(self) -> None:
        answers = {**self.stable.by_trace(), **self.staging.by_trace()}
        for root in self._roots():
            trace_id = str(root["traceId"])
            answer = answers.get(trace_id)
            if trace_id in self.scored or answer is None or answer.quality is None:
                continue
            arm = next(
                (tag.rpartition(":")[2] for tag in root.get("tags") or [] if "arm:" in tag), "?"
            )
            value = judged(answer.quality, answer.question, trace_id)
            written = self.api.post(
                "/api/public/scores",
                json={
                    "id": str(uuid.uuid5(_SCORE_NAMESPACE, f"{trace_id}/{SCORE}")),
                    "traceId": trace_id,
                    "name": SCORE,
                    "value": value,
                    "dataType": "NUMERIC",
                },
            )
            written.raise_for_status()
            self.scored[trace_id] = (arm, value)

    def _roots(self) -> Iterator[dict[str, Any]]:
        conditions = [
            {
                "type": "arrayOptions",
                "column": "tags",
                "operator": "any of",
                "value": [release_tag(RELEASE)],
            },
            {
                "type": "datetime",
                "column": "startTime",
                "operator": ">=",
                "value": self.since.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            },
        ]
        params: dict[str, Any] = {
            "fields": "core,basic,trace_context",
            "limit": 1000,
            "filter": json.dumps(conditions, separators=(",", ":")),
        }
        while True:
            response = self.api.get("/api/public/v2/observations", params=params)
            response.raise_for_status()
            body = response.json()
            yield from (row for row in body["data"] if row.get("isRootObservation"))
            cursor = (body.get("meta") or {}).get("cursor")
            if not cursor:
                return
            params["cursor"] = cursor


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Rig:
    stack: Stack
    stable: PromptApp
    staging: PromptApp
    users: Users
    scorer: Scorer
    recorder: Recorder
    routing: RoutingRecorder


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """The emulator with the stable prompt version, the stable application on the
    stack's app port and the staging one, one ``coalmine run``, users sending questions
    through its proxy, the evaluator, and recorders of the admin API and the routing
    table; the candidate is left to the test."""
    policies = tmp_path / "policies"
    policies.mkdir()
    since = datetime.now(UTC) - timedelta(minutes=1)
    with Stack(tmp_path / "stack", policy_reload_interval=2.0) as stack:
        # the proxy's counts size the score sample: flushed every second, as the demo does
        stack.env["COALMINE_AGGREGATES_FLUSH_SECONDS"] = "1"
        stack.start_emulator()
        stable = PromptApp(stack, PROMPT, port=stack.ports["app"])
        staging = PromptApp(stack, PROMPT)
        users = Users(stack.proxy_url, rate=USER_RATE)
        recorder = Recorder(stack)
        routing = RoutingRecorder(stack.base / "state.db", RELEASE)
        api = stack.api()
        scorer = Scorer(api, since, stable, staging)
        try:
            assert create_prompt(stack, PROMPT, STABLE_QUALITY, ("production",), "Answer.") == 1
            stable.start()
            place(policies / f"{RELEASE}.yaml", _policy(staging.start()))
            stack.start_coalmine(policies)
            recorder.start()
            routing.start()
            scorer.start()
            users.start()
            wait_for(
                "the release waiting for its first candidate",
                lambda: detail_if(stack, RELEASE, lambda d: d["phase"] == "pending"),
                within=30,
            )
            yield Rig(stack, stable, staging, users, scorer, recorder, routing)
        finally:
            users.stop()
            scorer.stop()
            routing.stop()
            recorder.stop()
            staging.stop()
            stable.stop()
            api.close()


def _checked(rig: Rig, check: Callable[[], None]) -> None:
    try:
        check()
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nscorer: {len(rig.scorer.scored)} scored, errors {rig.scorer.errors[-3:]}"
            f"; users: {rig.users.labels()}; staging: {len(rig.staging.answers())} copies"
            f"\n--- coalmine run, last lines of its log ---\n{rig.stack.log_tail()}"
        ) from error


def _copies_stop(rig: Rig) -> int:
    """Wait until the staging application gets no more copies while users keep sending
    requests; the copies it got."""
    last = {"copies": -1, "sent": 0}

    def still() -> int | None:
        copies, sent = len(rig.staging.answers()), rig.users.sent()
        if copies == last["copies"] and sent >= last["sent"] + 2 * USER_RATE:
            return copies
        if copies != last["copies"]:
            last.update(copies=copies, sent=sent)
        return None

    return wait_for(
        "the staging application getting no more copies",
        still,
        within=30,
        every=0.5,
        state=lambda: (len(rig.staging.answers()), rig.routing.latest()),
    )


# -- the cases ------------------------------------------------------------------------------


def test_a_worse_candidate_is_rolled_back_at_the_shadow_rung(rig: Rig) -> None:
    began = time.monotonic()
    _checked(rig, lambda: _rolled_back(rig))
    print(f"shadow rung, worse candidate: {time.monotonic() - began:.1f} s")


def _rolled_back(rig: Rig) -> None:
    stack = rig.stack
    assert create_prompt(stack, PROMPT, WORSE_QUALITY, ("canary",), "Answer briefly.") == 2
    ended, _ = rolled_back_at(stack, rig.recorder, RELEASE, "shadow", RUNG_WITHIN)
    decisions = sorted(ended["decisions"], key=lambda d: d["id"])
    assert stack.labels(PROMPT, ("production", "canary")) == {"production": 1, "canary": 1}
    copies = _copies_stop(rig)

    # no user was answered by the candidate: every answer came from the stable label
    primaries = rig.stable.answers()
    assert primaries and {(a.arm, a.label) for a in primaries} == {("baseline", "production")}
    answered = rig.users.labels()
    assert set(answered) == {"production"}, answered
    # the candidate answered only copies, in staging, with the canary label's version
    # (copies sent while the label was being parked, before the proxy applied the table
    # without a shadow, found it moving or on the stable version)
    mirrored = rig.staging.answers()
    assert copies > 0 and {(a.arm, a.label) for a in mirrored} == {("shadow", "canary")}
    started, decided = decisions[0]["at"], decisions[-1]["at"]
    assert {a.version for a in mirrored if started <= a.at < decided} == {2}, mirrored
    scored_arms = {arm for arm, _ in rig.scorer.scored.values()}
    assert scored_arms == {"baseline", "shadow"}, scored_arms

    # the routing table: no weight ever on the canary; the shadow only while at the rung
    tables = rig.routing.seen()
    assert {table.canary_weight for table in tables} == {0.0}, tables
    assert any(table.shadow is not None for table in tables), tables
    assert tables[-1].shadow is None, tables


def test_an_equal_candidate_passes_the_shadow_rung_to_the_canary_steps(rig: Rig) -> None:
    began = time.monotonic()
    _checked(rig, lambda: _passed(rig))
    print(f"shadow rung, equal candidate: {time.monotonic() - began:.1f} s")


def _passed(rig: Rig) -> None:
    stack = rig.stack
    assert create_prompt(stack, PROMPT, STABLE_QUALITY, ("canary",), "Answer kindly.") == 2
    canary = wait_for(
        "rollout 1 at its canary steps",
        lambda: detail_if(
            stack,
            RELEASE,
            lambda d: d["rollout"] == 1 and d["phase"] in {"canary", "paused", *FINISHED},
        ),
        within=RUNG_WITHIN,
        every=0.5,
        state=lambda: rig.recorder.latest(RELEASE),
    )
    assert canary["phase"] == "canary" and canary["step"] == 1, canary
    assert canary["canaryWeight"] == FIRST_WEIGHT, canary
    decisions = sorted(canary["decisions"], key=lambda d: d["id"])
    assert [(d["rollout"], d["decision"]) for d in decisions] == [
        (1, "start"),
        (1, "pass_rung"),
    ], decisions
    assert decisions[-1]["evidence"]["rung"] == "shadow", decisions[-1]
    _copies_stop(rig)

    # the routing table: the canary step's weight, and no more shadow
    latest = wait_for(
        "the routing table at the first step",
        lambda: (
            table
            if (table := rig.routing.latest()) is not None and table.canary_weight > 0
            else None
        ),
        within=10,
    )
    assert (latest.canary_weight, latest.shadow) == (FIRST_WEIGHT, None), latest
    before = [t for t in rig.routing.seen() if t.canary_weight == 0.0]
    assert any(table.shadow is not None for table in before), rig.routing.seen()

    # users now reach the candidate, through the stable application with the canary label
    wait_for(
        "a user answered by the candidate",
        lambda: rig.users.labels().get("canary") or None,
        within=30,
    )
    served = {(a.arm, a.label) for a in rig.stable.answers()}
    assert served == {("baseline", "production"), ("canary", "canary")}, served


def test_no_copies_while_the_release_waits_for_its_first_candidate(rig: Rig) -> None:
    sent = rig.users.sent()
    wait_for(
        "users' requests while the release waits for a candidate",
        lambda: rig.users.sent() >= sent + 3 * USER_RATE or None,
        within=30,
    )
    detail = rig.stack.release(RELEASE)
    assert detail is not None and (detail["phase"], detail["rollout"]) == ("pending", 0), detail
    copies = rig.staging.answers()
    assert copies == [], (
        f"{len(copies)} copies sent to staging while no rollout ran "
        f"({sorted({(a.arm, a.label, a.status) for a in copies})}); routing tables stored: "
        f"{rig.routing.seen()}"
    )
