"""The approval rung under a real ``coalmine run``, the emulator, the demo app and its
evaluator: a good candidate waits for approval after its last step, `coalmine approve`
promotes it; the next candidate is approved by a reviewer's score in a Langfuse
annotation queue. Prompts are created over the public API (the SDK keeps one client per
public key for the whole process, and the continuous-releases test's stack uses the same
keys)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.demo.run import Traffic
from coalmine.demo.scenarios import STABLE_PROMPT
from coalmine.emulator.settings import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY
from tests.e2e.support import Stack, place, wait_for
from tests.e2e.test_continuous_releases import (
    GOOD_CONFIG,
    PROMPT,
    RELEASE,
    ROLLOUT_WITHIN,
    STABLE_CONFIG,
    TRAFFIC_RATE,
    prompt_policy,
)

pytestmark = pytest.mark.slow

QUEUE = "release-reviews"
REVIEWER = "user-ada"


def _api(stack: Stack) -> httpx.Client:
    auth = (DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY)
    return httpx.Client(base_url=stack.emulator_url, auth=auth, timeout=10.0)


def _queue_and_config(stack: Stack) -> str:
    """A CATEGORICAL score config, the queue that uses it and a reviewer; the config id."""
    with _api(stack) as api:
        config = api.post(
            "/api/public/score-configs",
            json={
                "name": "release approval",
                "dataType": "CATEGORICAL",
                "categories": [{"value": 1, "label": "ship"}, {"value": 0, "label": "stop"}],
            },
        )
        assert config.status_code == 200, config.text
        config_id = str(config.json()["id"])
        queue = api.post(
            "/api/public/annotation-queues", json={"name": QUEUE, "scoreConfigIds": [config_id]}
        )
        assert queue.status_code == 200, queue.text
        member = api.post("/emulator/members", json={"userId": REVIEWER, "role": "MEMBER"})
        assert member.status_code == 201, member.text
    return config_id


def _queue_id(stack: Stack) -> str:
    with _api(stack) as api:
        queues = api.get("/api/public/annotation-queues").json()["data"]
    return str(next(queue["id"] for queue in queues if queue["name"] == QUEUE))


def _items(stack: Stack) -> list[str]:
    """The traces in the review queue (added when a rollout begins to wait)."""
    queue_id = _queue_id(stack)
    with _api(stack) as api:
        answer = api.get(f"/api/public/annotation-queues/{queue_id}/items", params={"limit": 100})
    assert answer.status_code == 200, answer.text
    return [str(item["objectId"]) for item in answer.json()["data"]]


def _policy(config_id: str) -> str:
    return prompt_policy((30, 60)) + (
        "approval:\n"
        "  timeout: 10m\n"
        f"  queue: {{name: {QUEUE}, scoreConfigId: {config_id}, approveValues: [ship], "
        "rejectValues: [stop], traces: 5}\n"
    )


def _waiting(stack: Stack, rollout: int) -> dict[str, Any]:
    def waits() -> dict[str, Any] | None:
        try:
            detail = stack.release(RELEASE)
        except httpx.TimeoutException:
            return None
        if detail and detail["rollout"] == rollout and detail["phase"] == "approval":
            return detail
        return None

    return wait_for(f"rollout {rollout} waiting for approval", waits, within=ROLLOUT_WITHIN)


def _promoted(stack: Stack, rollout: int) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        detail = stack.release(RELEASE)
        if detail and detail["rollout"] == rollout and detail["phase"] == "promoted":
            return detail
        return None

    return wait_for(f"rollout {rollout} promoted", ended, within=90)


def test_approval_by_the_cli_then_by_a_review_in_the_annotation_queue(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    with Stack(tmp_path / "stack", policy_reload_interval=2.0) as stack:
        stack.start_emulator()
        config_id = _queue_and_config(stack)
        place(policies / f"{RELEASE}.yaml", _policy(config_id))
        _create_prompt(stack, STABLE_PROMPT, STABLE_CONFIG, "production")
        stack.start_app()
        stack.start_coalmine(policies)
        stack.start_evaluator(delay_seconds=1)
        traffic = Traffic(stack.proxy_url, rate=TRAFFIC_RATE)
        traffic.start()
        try:
            _cli_then_queue(stack, config_id)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\n--- coalmine run, last lines of its log ---\n{stack.log_tail()}"
            ) from error
        finally:
            traffic.stop()


def _create_prompt(stack: Stack, text: str, config: dict[str, float], label: str) -> None:
    with _api(stack) as api:
        created = api.post(
            "/api/public/v2/prompts",
            json={
                "name": PROMPT,
                "type": "text",
                "prompt": text,
                "config": config,
                "labels": [label],
            },
        )
    assert created.status_code in (200, 201), created.text


def _cli_then_queue(stack: Stack, config_id: str) -> None:
    # rollout 1: waits after its last step, promoted by `coalmine approve`
    _create_prompt(stack, STABLE_PROMPT + " Greet.", GOOD_CONFIG, "canary")
    waiting = _waiting(stack, 1)
    assert waiting["canaryWeight"] == 60, waiting
    assert waiting["approval"]["queue"] == QUEUE, waiting
    assert stack.labels(PROMPT, ("production",)) == {"production": 1}
    first_items = _items(stack)
    assert len(first_items) == 5, first_items
    status = stack.cli("status", RELEASE)
    assert status.returncode == 0, status.stderr
    assert f"`coalmine approve {RELEASE}`" in status.stdout, status.stdout
    approved = stack.cli("approve", RELEASE, "--by", "grace", "--reason", "read the traces")
    assert approved.returncode == 0, (approved.stdout, approved.stderr)
    first = _promoted(stack, 1)
    assert stack.labels(PROMPT, ("production",)) == {"production": 2}
    last = first["decisions"][-1]
    assert (last["decision"], last["actor"]) == ("approve", "admin-api (grace)"), last
    assert any(
        move["toVersion"] == 2 and move["actor"] == "admin-api (grace)"
        for move in first["labelMoves"]
    ), first["labelMoves"]

    # rollout 2: its canary traces are put up for review; a reviewer's "ship" promotes it
    _create_prompt(stack, STABLE_PROMPT + " Thank.", GOOD_CONFIG, "canary")
    _waiting(stack, 2)
    items = _items(stack)
    added = sorted(set(items) - set(first_items))
    assert len(items) == 10 and len(added) == 5, items
    with _api(stack) as api:
        score = api.post(
            "/emulator/annotation-scores",
            json={
                "authorUserId": REVIEWER,
                "configId": config_id,
                "traceId": added[0],
                "queueId": _queue_id(stack),
                "value": "ship",
            },
        )
        assert score.status_code == 200, score.text
    began = time.monotonic()
    second = _promoted(stack, 2)
    assert stack.labels(PROMPT, ("production",)) == {"production": 3}
    last = second["decisions"][-1]
    assert (last["decision"], last["actor"]) == ("approve", f"langfuse-review ({REVIEWER})")
    print(f"approval read from the queue in {time.monotonic() - began:.1f} s")
