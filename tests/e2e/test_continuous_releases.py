"""Months of releases on real processes, in minutes: one `coalmine run`, never restarted,
takes candidate after candidate of a prompt, follows a policy file added and one edited
while it runs, and rolls the previous release back by hand while the next one runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langfuse import Langfuse

from coalmine.demo.run import Traffic
from coalmine.demo.scenarios import STABLE_PROMPT
from coalmine.emulator.settings import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY
from coalmine.shared.conventions import ARM_HEADER, RELEASE_HEADER
from tests.e2e.support import (
    FINISHED,
    EchoApp,
    Recorder,
    Snapshot,
    Stack,
    place,
    process_start_ticks,
    wait_for,
)

pytestmark = pytest.mark.slow

PROMPT = "support-agent"
"""The prompt the demo agent fetches."""
RELEASE = "support-agent"
SECOND = "echo-agent"
SECOND_PREFIX = "/echo"

POLICY_RELOAD_INTERVAL = 2.0
RELOAD_MARGIN = 5.0
"""Beyond the reload interval: a loaded machine's scheduling, the first request's
connection."""
TRAFFIC_RATE = 36.0
"""Requests a second to the prompt release, so that a step's samples come in seconds."""
ROLLOUT_WITHIN = 240.0
"""A rollout's deadline: the first whole minute of counts sizes its score sample (up to a
minute of waiting), then two steps of seconds each; a loaded machine is slower."""

STABLE_CONFIG = {"quality": 0.85, "error_rate": 0.01}
BAD_CONFIG = {"quality": 0.55, "error_rate": 0.08}
GOOD_CONFIG = {"quality": 0.86, "error_rate": 0.01}

FIRST_WEIGHTS = (30, 60)
EDITED_WEIGHTS = (50, 80)


def prompt_policy(weights: tuple[int, int]) -> str:
    """A prompt-only release (no upstreams: both arms go to the proxy's app URL), the
    demo's policy in seconds."""
    first, second = weights
    return f"""\
apiVersion: coalmine/v1
kind: Release
name: {RELEASE}
target:
  prompt: {{name: {PROMPT}}}
routing:
  pathPrefix: /v1
  stickiness: {{header: x-user-id}}
  readTimeout: 30s
steps:
  - {{weight: {first}, minDuration: 6s}}
  - {{weight: {second}, minDuration: 6s, maxDuration: 60s}}
analysis:
  interval: 1s
  alpha: 0.05
  minSamples: 30
  scoreTimeout: 20s
  metrics:
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.08
      effectSize: 0.15
      critical: true
    - {{name: errors, source: error_rate, tolerance: 0.04, critical: true}}
    - {{name: cost, source: cost, tolerancePercent: 50}}
"""


def echo_policy(stable: str, canary: str) -> str:
    """An agent release that stays in its first step for the whole test."""
    return f"""\
apiVersion: coalmine/v1
kind: Release
name: {SECOND}
target:
  upstreams: {{stable: "{stable}", canary: "{canary}"}}
  version: build-1
routing:
  pathPrefix: {SECOND_PREFIX}
steps:
  - {{weight: 50, minDuration: 30m}}
analysis:
  interval: 2s
  minSamples: 30
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.05, critical: true}}
"""


@pytest.fixture
def echo_apps() -> Iterator[tuple[EchoApp, EchoApp]]:
    apps = (EchoApp("echo-stable"), EchoApp("echo-canary"))
    try:
        yield apps
    finally:
        for app in apps:
            app.stop()


def test_one_coalmine_run_releases_candidate_after_candidate(
    tmp_path: Path, echo_apps: tuple[EchoApp, EchoApp]
) -> None:
    began = time.monotonic()
    policies = tmp_path / "policies"
    policies.mkdir()
    place(policies / f"{RELEASE}.yaml", prompt_policy(FIRST_WEIGHTS))
    figures: dict[str, Any] = {}
    with Stack(tmp_path / "stack", policy_reload_interval=POLICY_RELOAD_INTERVAL) as stack:
        langfuse = Langfuse(
            public_key=DEFAULT_PUBLIC_KEY,
            secret_key=DEFAULT_SECRET_KEY,
            base_url=stack.emulator_url,
            tracing_enabled=False,
        )
        recorder = Recorder(stack)
        traffic = Traffic(stack.proxy_url, rate=TRAFFIC_RATE)
        try:
            _months_of_releases(stack, langfuse, recorder, traffic, echo_apps, policies, figures)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\n--- coalmine run, last lines of its log ---\n{stack.log_tail()}"
            ) from error
        finally:
            traffic.stop()
            recorder.stop()
            langfuse.shutdown()
    figures["total_seconds"] = round(time.monotonic() - began, 1)
    figures["requests"] = {"sent": traffic.sent, "by_status": traffic.by_status}
    print("continuous releases:", json.dumps(figures, sort_keys=True))


def _months_of_releases(
    stack: Stack,
    langfuse: Langfuse,
    recorder: Recorder,
    traffic: Traffic,
    echo_apps: tuple[EchoApp, EchoApp],
    policies: Path,
    figures: dict[str, Any],
) -> None:
    stack.start_emulator()
    created: dict[int, float] = {}

    def candidate(config: dict[str, float], labels: list[str], text: str) -> int:
        prompt = langfuse.create_prompt(
            name=PROMPT, prompt=text, type="text", config=config, labels=labels
        )
        created[int(prompt.version)] = time.time()
        return int(prompt.version)

    assert candidate(STABLE_CONFIG, ["production"], STABLE_PROMPT) == 1
    stack.start_app()
    coalmine = stack.start_coalmine(policies)
    pid, born = coalmine.process.pid, process_start_ticks(coalmine.process.pid)
    stack.start_evaluator(delay_seconds=1)
    recorder.start()
    traffic.start()

    waiting = wait_for(
        "the prompt release waiting for its first candidate",
        lambda: _summary_if(stack, RELEASE, lambda r: r["phase"] == "pending"),
        within=30,
    )
    assert waiting["rollout"] == 0 and waiting["waiting"], waiting

    # rollout 1: a bad candidate, rolled back by the controller
    assert candidate(BAD_CONFIG, ["canary"], "You are a support agent. Be brief.") == 2
    first = _rollout_end(stack, recorder, 1)
    assert first["phase"] == "rolled_back", first
    assert first["candidateVersion"] == 2 and first["stableVersion"] == 1, first
    assert stack.labels(PROMPT, ("production", "canary")) == {"production": 1, "canary": 1}

    # rollout 2: a good candidate, promoted; its policy file is edited while it runs
    assert candidate(GOOD_CONFIG, ["canary"], STABLE_PROMPT + " Greet the customer.") == 3
    # waited for in the recorder's snapshots, so the run before the edit is on record
    wait_for(
        "rollout 2 recorded as running on the policy it started with",
        lambda: _recorded_running_unedited(recorder, 2),
        within=30,
        state=lambda: recorder.latest(RELEASE),
    )
    place(policies / f"{RELEASE}.yaml", prompt_policy(EDITED_WEIGHTS))
    edited = wait_for(
        "rollout 2 reported as running on a policy edited since it started",
        lambda: _summary_if(stack, RELEASE, lambda r: r["policyEdited"] is True),
        within=10,
        state=lambda: recorder.latest(RELEASE),
    )
    assert edited["rollout"] == 2 and edited["phase"] == "canary", edited
    assert [step["weight"] for step in edited["policySteps"]] == list(EDITED_WEIGHTS), edited
    assert edited["canaryWeight"] == FIRST_WEIGHTS[0], edited
    second = _rollout_end(stack, recorder, 2)
    assert second["phase"] == "promoted", second
    assert second["candidateVersion"] == 3, second
    assert stack.labels(PROMPT, ("production", "canary")) == {"production": 3, "canary": 3}

    # a second release: its policy file added to the watched directory
    stable_url, canary_url = (app.start() for app in echo_apps)
    with httpx.Client(base_url=stack.proxy_url, timeout=10.0) as client:
        before = client.get(f"{SECOND_PREFIX}/ping")
        assert before.status_code == 404, before.text
        added_at = time.monotonic()
        place(policies / f"{SECOND}.yaml", echo_policy(stable_url, canary_url))
        answer = wait_for(
            f"a request to {SECOND_PREFIX} answered by the release's app",
            lambda: _echoed(client),
            within=POLICY_RELOAD_INTERVAL + RELOAD_MARGIN,
            every=0.05,
        )
        routed_after = time.monotonic() - added_at
    figures["file_added_to_routed_seconds"] = round(routed_after, 2)
    assert answer["headers"][RELEASE_HEADER] == SECOND, answer
    seen = [headers for app in echo_apps for headers in app.seen()]
    assert seen and all(headers[RELEASE_HEADER] == SECOND for headers in seen), seen
    assert {headers[ARM_HEADER] for headers in seen} <= {"baseline", "canary"}, seen
    running = wait_for(
        f"{SECOND} starting its first rollout",
        lambda: _summary_if(stack, SECOND, lambda r: r["rollout"] == 1 and r["phase"] == "canary"),
        within=30,
        state=lambda: recorder.latest(SECOND),
    )
    assert running["canaryWeight"] == 50, running

    # the prompt release rolled back by hand, after its promotion, while the second runs
    rollback = stack.cli("rollback", RELEASE, "--reason", "support tickets about v3")
    assert rollback.returncode == 0, (rollback.stdout, rollback.stderr)
    assert stack.labels(PROMPT, ("production",)) == {"production": 1}
    back = stack.release(RELEASE)
    assert back is not None and back["phase"] == "rolled_back" and back["rollout"] == 2, back
    still = stack.release(SECOND)
    assert still is not None and still["phase"] == "canary" and still["rollout"] == 1, still
    with httpx.Client(base_url=stack.proxy_url, timeout=10.0) as client:
        assert _echoed(client) is not None

    # rollout 3: the next good candidate, on the edited policy
    assert candidate(GOOD_CONFIG, ["canary"], STABLE_PROMPT + " Thank the customer.") == 4
    third = _rollout_end(stack, recorder, 3)
    assert third["phase"] == "promoted", third
    assert third["candidateVersion"] == 4 and third["stableVersion"] == 1, third
    assert stack.labels(PROMPT, ("production", "canary")) == {"production": 4, "canary": 4}

    final = stack.release(RELEASE)
    assert final is not None
    _check_decisions(final, created, figures)
    _check_label_moves(final)
    _check_weights_and_policies(recorder.of(RELEASE))
    last = stack.release(SECOND)
    assert last is not None and last["phase"] == "canary" and last["rollout"] == 1, last
    assert [(d["rollout"], d["decision"]) for d in last["decisions"]] == [(1, "start")], last
    assert coalmine.process.poll() is None, "coalmine run exited"
    assert coalmine.process.pid == pid and process_start_ticks(pid) == born
    assert [started for started in stack.processes.started if started.name == coalmine.name] == [
        coalmine
    ]
    assert traffic.sent > 0 and traffic.by_status.get(0, 0) == 0, traffic.by_status


def _summary_if(
    stack: Stack, name: str, test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The release's admin detail when it passes ``test``; None otherwise, also when the
    admin API does not answer in time (a busy machine: the caller's deadline decides)."""
    try:
        detail = stack.release(name)
    except httpx.TimeoutException:
        return None
    return detail if detail is not None and test(detail) else None


def _rollout_end(stack: Stack, recorder: Recorder, rollout: int) -> dict[str, Any]:
    return wait_for(
        f"rollout {rollout} ending",
        lambda: _summary_if(
            stack, RELEASE, lambda r: r["rollout"] == rollout and r["phase"] in FINISHED
        ),
        within=ROLLOUT_WITHIN,
        every=0.5,
        state=lambda: recorder.latest(RELEASE),
    )


def _echoed(client: httpx.Client) -> dict[str, Any] | None:
    """The echo app's answer to a request through the proxy; None while the proxy does
    not route the second release's path."""
    try:
        response = client.get(f"{SECOND_PREFIX}/ping")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body if str(body.get("app", "")).startswith("echo-") else None


def _check_decisions(
    detail: dict[str, Any], created: dict[int, float], figures: dict[str, Any]
) -> None:
    """The decision log of three rollouts; ``created``: when each prompt version was
    created, by version."""
    decisions = sorted(detail["decisions"], key=lambda record: record["id"])
    assert [(d["rollout"], d["decision"]) for d in decisions] == [
        (1, "start"),
        (1, "rollback"),
        (2, "start"),
        (2, "advance"),
        (2, "promote"),
        (2, "rollback"),
        (3, "start"),
        (3, "advance"),
        (3, "promote"),
    ], decisions
    assert {d["actor"] for d in decisions[:5] + decisions[6:]} == {"controller"}, decisions
    assert decisions[5]["actor"] == "admin-api", decisions
    for rollout in (1, 2, 3):
        mine = [d for d in decisions if d["rollout"] == rollout]
        ended = next(d for d in mine if d["decision"] in ("rollback", "promote"))
        figures[f"rollout_{rollout}_created_to_started_seconds"] = round(
            mine[0]["at"] - created[rollout + 1], 2
        )
        figures[f"rollout_{rollout}_seconds_to_decide"] = round(ended["at"] - mine[0]["at"], 1)


def _recorded_running_unedited(recorder: Recorder, rollout: int) -> Snapshot | None:
    return next(
        (
            s
            for s in recorder.of(RELEASE)
            if s.rollout == rollout and s.phase == "canary" and not s.policy_edited
        ),
        None,
    )


def _check_label_moves(detail: dict[str, Any]) -> None:
    """Every label move, in the order they were made, with its rollout and actor."""
    moves = [
        (move["rollout"], move["label"], move["fromVersion"], move["toVersion"], move["actor"])
        for move in detail["labelMoves"]
    ]
    assert moves == [
        (1, "canary", 2, 1, "controller"),
        (2, "production", 1, 3, "controller"),
        (2, "production", 3, 1, "admin-api"),
        (2, "canary", 3, 1, "admin-api"),
        (3, "production", 1, 4, "controller"),
    ], moves


def _check_weights_and_policies(snapshots: list[Snapshot]) -> None:
    """Each rollout ran on the steps of the policy it started with."""
    running = [s for s in snapshots if s.phase == "canary"]
    steps = {
        rollout: {(s.step, s.canary_weight) for s in running if s.rollout == rollout}
        for rollout in (1, 2, 3)
    }
    assert steps[1] == {(1, FIRST_WEIGHTS[0])}, steps
    assert steps[2] == {(1, FIRST_WEIGHTS[0]), (2, FIRST_WEIGHTS[1])}, steps
    assert steps[3] == {(1, EDITED_WEIGHTS[0]), (2, EDITED_WEIGHTS[1])}, steps
    digests = {
        rollout: {s.policy_digest for s in running if s.rollout == rollout} for rollout in (1, 2, 3)
    }
    assert len(digests[1]) == len(digests[2]) == len(digests[3]) == 1, digests
    assert digests[1] == digests[2] != digests[3], digests
    edited = {
        rollout: {s.policy_edited for s in running if s.rollout == rollout} for rollout in (1, 2, 3)
    }
    assert edited == {1: {False}, 2: {False, True}, 3: {False}}, edited
