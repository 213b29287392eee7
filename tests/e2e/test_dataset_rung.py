"""The dataset rung under a real ``coalmine run``, judged by Langfuse-managed judges: a
prompt release whose application answers by prompt label, a dataset written with the
Langfuse SDK, and a thread of the test playing an LLM-as-a-judge rule on the dataset's
experiments (it lists the experiment items and writes EVAL scores on their task spans,
as Langfuse's evaluation worker does). A clearly worse candidate is rolled back at the
rung before any user could reach it; a judge that leaves items unscored makes the rung
inconclusive once ``scoreTimeout`` has passed, and the rollout pauses."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from langfuse import Langfuse

from tests.e2e.support import (
    FINISHED,
    QUESTIONS,
    Background,
    PromptApp,
    Recorder,
    RoutingRecorder,
    Stack,
    create_prompt,
    detail_if,
    judged,
    place,
    project_keys,
    rolled_back_at,
    wait_for,
)

pytestmark = pytest.mark.slow

PROMPT = "faq-answers"
RELEASE = "faq-answers"
DATASET = "faq-golden"
SCORE = "helpfulness"
ITEMS = 40
STABLE_QUALITY = 0.85
WORSE_QUALITY = 0.45
ROLLOUT_WITHIN = 120.0
"""A rollout's deadline at the rung: the items run in seconds, then up to two reads of
the judges' scores ten seconds apart, then ``scoreTimeout``; a loaded machine is
slower."""
SCORE_TIMEOUT = "10s"
JUDGE_EVERY = 0.3
"""Seconds between the judge's reads of the experiment items."""
_SCORE_NAMESPACE = uuid.UUID("0b8f9b2e-5a1c-4f55-8d0e-93a1c2f4d7e3")


def item_id(index: int) -> str:
    return f"faq-item-{index:02d}"


def run_names(rollout: int) -> set[str]:
    return {
        f"coalmine {RELEASE} rollout {rollout} attempt 1 {arm}" for arm in ("baseline", "candidate")
    }


def _policy() -> str:
    """A prompt-only release (both arms through the proxy's application) whose only rung
    before its canary step is the dataset, judged in Langfuse."""
    return f"""\
apiVersion: coalmine/v1
kind: Release
name: {RELEASE}
target:
  prompt: {{name: {PROMPT}}}
routing:
  pathPrefix: /v1
  stickiness: {{header: x-user-id}}
dataset:
  name: {DATASET}
  path: /v1/answer
  metric: {{score: {SCORE}, tolerance: 0.05, effectSize: 0.1}}
  evaluator: {{langfuse: true}}
  minPairs: 30
  concurrency: 4
  requestTimeout: 10s
  scoreTimeout: {SCORE_TIMEOUT}
  onInconclusive: pause
steps:
  - {{weight: 20, minDuration: 10m}}
analysis:
  interval: 1s
  minSamples: 30
  scoreTimeout: 20s
  metrics:
    - {{name: {SCORE}, source: score, score: {SCORE}, tolerance: 0.08, critical: true}}
"""


# -- the managed judge ----------------------------------------------------------------------


@dataclass
class ManagedJudge(Background):
    """An LLM-as-a-judge rule on the dataset's experiments, in a thread: every
    ``JUDGE_EVERY`` seconds it lists the experiment items with their input and output
    (the SDK's ``api.experiments.list_items``) and, for each new one that ``judges``
    accepts (dataset item id, experiment name), writes an EVAL score on the item's task
    span (its ``observationId`` is the experiment item's id) from the answer's quality."""

    langfuse: Langfuse
    api: httpx.Client
    since: datetime
    judges: Callable[[str, str], bool]
    scored: dict[str, float] = field(default_factory=dict)
    """Task span id: the value written."""
    every: float = JUDGE_EVERY

    def step(self) -> None:
        cursor: str | None = None
        while True:
            page = self.langfuse.api.experiments.list_items(
                from_start_time=self.since, fields="core,io", limit=100, cursor=cursor
            )
            for item in page.data:
                if item.id in self.scored or item.experiment_item_id is None:
                    continue
                if not self.judges(item.experiment_item_id, item.experiment_name or ""):
                    continue
                output, given = item.output, item.input
                if not isinstance(output, dict) or output.get("quality") is None:
                    continue  # no answer to grade
                question = given.get("question") if isinstance(given, dict) else None
                value = judged(float(output["quality"]), question, item.id)
                self._write(item.trace_id, item.id, value)
                self.scored[item.id] = value
            cursor = page.meta.cursor
            if not cursor:
                return

    def _write(self, trace_id: str, span_id: str, value: float) -> None:
        written = self.api.post(
            "/emulator/eval-scores",
            json={
                "id": str(uuid.uuid5(_SCORE_NAMESPACE, f"{span_id}/{SCORE}")),
                "traceId": trace_id,
                "observationId": span_id,
                "name": SCORE,
                "value": value,
                "dataType": "NUMERIC",
                "comment": "helpfulness judge",
            },
        )
        written.raise_for_status()


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Rig:
    stack: Stack
    langfuse: Langfuse
    app: PromptApp
    recorder: Recorder
    routing: RoutingRecorder
    since: datetime
    dataset_id: str


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """The emulator with the stable prompt version and the dataset, the application on
    the stack's app port, one ``coalmine run`` on the policy, and recorders of the admin
    API and the routing table; the candidate is left to the test."""
    public_key, secret_key = project_keys("dataset-rung")
    policies = tmp_path / "policies"
    policies.mkdir()
    place(policies / f"{RELEASE}.yaml", _policy())
    since = datetime.now(UTC) - timedelta(minutes=1)
    with Stack(
        tmp_path / "stack",
        policy_reload_interval=2.0,
        public_key=public_key,
        secret_key=secret_key,
    ) as stack:
        stack.start_emulator()
        langfuse = Langfuse(
            public_key=public_key,
            secret_key=secret_key,
            base_url=stack.emulator_url,
            tracing_enabled=False,
        )
        app = PromptApp(stack, PROMPT, port=stack.ports["app"])
        recorder = Recorder(stack)
        routing = RoutingRecorder(stack.base / "state.db", RELEASE)
        try:
            assert create_prompt(stack, PROMPT, STABLE_QUALITY, ("production",), "Answer.") == 1
            dataset = langfuse.create_dataset(name=DATASET, description="FAQ golden answers")
            for index in range(ITEMS):
                langfuse.create_dataset_item(
                    dataset_name=DATASET,
                    id=item_id(index),
                    input={"question": f"{QUESTIONS[index % len(QUESTIONS)]} Ticket {index}."},
                    metadata={"index": index},
                )
            app.start()
            stack.start_coalmine(policies)
            recorder.start()
            routing.start()
            wait_for(
                "the release waiting for its first candidate",
                lambda: detail_if(stack, RELEASE, lambda d: d["phase"] == "pending"),
                within=30,
            )
            yield Rig(stack, langfuse, app, recorder, routing, since, dataset.id)
        finally:
            routing.stop()
            recorder.stop()
            app.stop()
            langfuse.shutdown()


def _checked(rig: Rig, judge: ManagedJudge, check: Callable[[], None]) -> None:
    try:
        check()
    except AssertionError as error:
        raise AssertionError(
            f"{error}\njudge: {len(judge.scored)} scored, errors {judge.errors[-3:]}"
            f"\n--- coalmine run, last lines of its log ---\n{rig.stack.log_tail()}"
        ) from error


# -- the cases ------------------------------------------------------------------------------


def test_a_clearly_worse_candidate_is_rolled_back_at_the_dataset_rung(rig: Rig) -> None:
    began = time.monotonic()
    with rig.stack.api() as api:
        judge = ManagedJudge(rig.langfuse, api, rig.since, judges=lambda item, run: True)
        judge.start()
        try:
            _checked(rig, judge, lambda: _rolled_back(rig, judge))
        finally:
            judge.stop()
    print(f"dataset rung, worse candidate: {time.monotonic() - began:.1f} s")


def _rolled_back(rig: Rig, judge: ManagedJudge) -> None:
    stack = rig.stack
    assert create_prompt(stack, PROMPT, WORSE_QUALITY, ("canary",), "Answer briefly.") == 2
    ended, evidence = rolled_back_at(stack, rig.recorder, RELEASE, "dataset", ROLLOUT_WITHIN)
    decisions = sorted(ended["decisions"], key=lambda d: d["id"])
    assert evidence["items"] == ITEMS and evidence["pairs"] == ITEMS, evidence
    assert evidence["candidateMean"] < evidence["baselineMean"] - 0.2, evidence
    assert "worse by more than tolerance" in decisions[-1]["reason"], decisions[-1]

    # no weight ever moved to the candidate; its label is parked on the stable version
    tables = rig.routing.seen()
    assert tables and {table.canary_weight for table in tables} == {0.0}, tables
    listed = rig.recorder.of(RELEASE)
    assert listed and {s.canary_weight for s in listed} == {0.0}, listed
    assert stack.labels(PROMPT, ("production", "canary")) == {"production": 1, "canary": 1}
    moves = [
        (m["rollout"], m["label"], m["fromVersion"], m["toVersion"], m["actor"])
        for m in ended["labelMoves"]
    ]
    assert moves == [(1, "canary", 2, 1, "controller")], moves

    # every item went through both arms of the application, told apart by their labels
    served = Counter((a.arm, a.label, a.version) for a in rig.app.answers())
    assert served == {("baseline", "production", 1): ITEMS, ("canary", "canary", 2): ITEMS}, served
    assert len(judge.scored) == 2 * ITEMS, (len(judge.scored), judge.errors[-3:])

    # Langfuse lists the two runs as experiments of the dataset, named apart
    experiments = rig.langfuse.api.experiments.list(
        from_start_time=rig.since, dataset_id=rig.dataset_id
    ).data
    assert {e.name for e in experiments} == run_names(1), experiments
    assert [e.item_count for e in experiments] == [ITEMS, ITEMS], experiments


def test_a_judge_that_leaves_items_unscored_pauses_the_rollout(rig: Rig) -> None:
    began = time.monotonic()
    scored_items = {item_id(index) for index in range(20)}
    baseline_only = {item_id(index) for index in range(20, 24)}

    def judges(item: str, run: str) -> bool:
        return item in scored_items or (item in baseline_only and run.endswith(" baseline"))

    with rig.stack.api() as api:
        judge = ManagedJudge(rig.langfuse, api, rig.since, judges=judges)
        judge.start()
        try:
            _checked(rig, judge, lambda: _paused(rig, judge))
        finally:
            judge.stop()
    print(f"dataset rung, unscored items: {time.monotonic() - began:.1f} s")


def _paused(rig: Rig, judge: ManagedJudge) -> None:
    stack = rig.stack
    assert create_prompt(stack, PROMPT, STABLE_QUALITY, ("canary",), "Answer kindly.") == 2
    paused = wait_for(
        "rollout 1 paused",
        lambda: detail_if(
            stack, RELEASE, lambda d: d["rollout"] == 1 and d["phase"] in {"paused", *FINISHED}
        ),
        within=ROLLOUT_WITHIN,
        every=0.5,
        state=lambda: rig.recorder.latest(RELEASE),
    )
    assert paused["phase"] == "paused", paused
    decisions = sorted(paused["decisions"], key=lambda d: d["id"])
    assert [(d["rollout"], d["decision"]) for d in decisions] == [
        (1, "start"),
        (1, "pause"),
    ], decisions
    pause = decisions[-1]
    assert pause["reason"].startswith("inconclusive: "), pause
    assert f"20 pairs of {ITEMS} items (20 unscored), need 30" in pause["reason"], pause
    evidence = pause["evidence"]
    assert evidence["rung"] == "dataset" and evidence["pairs"] == 20, evidence
    unscored = evidence["unscored"]
    assert unscored["count"] == 20, unscored
    assert unscored["reasons"] == {
        "baseline: no judge score within scoreTimeout": 16,
        "candidate: no judge score within scoreTimeout": 20,
    }, unscored
    assert len(judge.scored) == 2 * 20 + 4, len(judge.scored)

    # never promoted: no user reached the candidate, the stable version keeps its label
    assert all(s.phase in {"pending", "dataset", "paused"} for s in rig.recorder.of(RELEASE))
    assert {table.canary_weight for table in rig.routing.seen()} == {0.0}
    assert stack.labels(PROMPT, ("production",)) == {"production": 1}

    status = stack.cli("status", RELEASE)
    assert status.returncode == 0, status.stderr
    said = " ".join(status.stdout.split())
    assert "ladder: dataset → canary; dataset rung since" in said, status.stdout
    assert "inconclusive: dataset faq-golden: 20 pairs of 40 items" in said, status.stdout
    listed = said.partition("unscored items: 20 (")[2].partition(")")[0]
    assert set(listed.split(", ")) == {item_id(index) for index in range(20, 40)}, status.stdout
