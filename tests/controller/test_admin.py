"""The admin API against a real controller on a state file, driven by a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controller.admin import create_admin_app, finite
from controller.lifecycle import policy_digest
from policies.domain import Phase
from tests.controller.release_rig import RELEASE, T0, TOKEN, Rig, make_rig

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    yield rig
    rig.close()


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    app = create_admin_app(rig.controller, token=TOKEN, clock=rig.clock, poll_stale_after=300)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("token", [None, ""])
def test_the_app_is_never_built_without_a_token(rig: Rig, token: str | None) -> None:
    with pytest.raises(ValueError, match="token"):
        create_admin_app(rig.controller, token=token)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_routes_refuse_a_missing_or_wrong_token(
    client: TestClient, headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/releases"),
        ("GET", f"/releases/{RELEASE}"),
        ("POST", f"/releases/{RELEASE}/rollback"),
    ):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"


def test_health_and_readiness_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_no_documentation_routes_are_open(client: TestClient) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code == 404


def test_the_list_shows_each_release_with_its_step_counted_from_one(
    rig: Rig, client: TestClient
) -> None:
    assert client.get("/releases", headers=AUTH).json()["releases"] == []
    rig.run(1)
    (release,) = client.get("/releases", headers=AUTH).json()["releases"]
    assert release == {
        "name": RELEASE,
        "phase": "canary",
        "step": 1,
        "steps": 3,
        "canaryWeight": 10.0,
        "startedAt": T0 + 60,
        "updatedAt": T0 + 60,
        "reason": "candidate version 4 against stable version 3",
        "rollout": 1,
        "waiting": None,
        "policyDigest": policy_digest(rig.policies[RELEASE]),
        "policyEdited": False,
        "approval": None,
        "ladder": ["canary"],
        "rungSince": None,
    }


def test_a_release_shows_its_judgement_history_and_policy(rig: Rig, client: TestClient) -> None:
    rig.run(4)
    response = client.get(f"/releases/{RELEASE}", headers=AUTH)
    assert response.status_code == 200
    detail = response.json()
    assert detail["phase"] == "canary"
    assert (detail["stableVersion"], detail["candidateVersion"]) == (3, 4)
    assert [step["weight"] for step in detail["policySteps"]] == [10.0, 30.0, 50.0]
    assert detail["policySteps"][2]["maxDuration"] == 4 * 3600
    assert detail["judgementSource"] == "live"
    judgement = detail["judgement"]
    assert judgement["at"] == rig.now
    metrics = {metric["name"]: metric for metric in judgement["metrics"]}
    assert set(metrics) == {"errors", "helpfulness"}
    for metric in metrics.values():
        assert metric["verdict"] in ("pass", "fail", "inconclusive", "nodata")
        assert metric["lower"] <= metric["estimate"] <= metric["upper"]
        assert metric["nBaseline"] > metric["nCanary"] > 0
    assert {check["name"] for check in judgement["checks"]} >= {"sample_ratio", "fresh"}
    (start,) = detail["decisions"]
    assert (start["decision"], start["actor"], start["step"]) == ("start", "controller", 1)
    assert detail["labelMoves"] == []
    assert detail["pendingActions"] == []


def test_the_decision_log_is_newest_last_and_limited_on_request(
    rig: Rig, client: TestClient
) -> None:
    rig.run(2)
    client.post(f"/releases/{RELEASE}/pause", headers=AUTH)
    client.post(f"/releases/{RELEASE}/resume", headers=AUTH)
    detail = client.get(f"/releases/{RELEASE}", headers=AUTH).json()
    assert [record["decision"] for record in detail["decisions"]] == ["start", "pause", "resume"]
    last = client.get(f"/releases/{RELEASE}", params={"decisions": 1}, headers=AUTH).json()
    assert [record["decision"] for record in last["decisions"]] == ["resume"]


def test_a_manual_rollback_rolls_back_and_is_logged_with_its_reason(
    rig: Rig, client: TestClient
) -> None:
    rig.run(3)
    response = client.post(
        f"/releases/{RELEASE}/rollback",
        json={"reason": "answers in the wrong language"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json()["phase"] == "rolled_back"
    assert response.json()["canaryWeight"] == 0.0
    assert rig.release().phase is Phase.ROLLED_BACK
    assert rig.labels.positions["canary"] == 3
    record = rig.state.decisions(RELEASE)[-1]
    assert (record.decision, record.actor, record.reason) == (
        "rollback",
        "admin-api",
        "answers in the wrong language",
    )
    detail = client.get(f"/releases/{RELEASE}", headers=AUTH).json()
    assert detail["labelMoves"] == [
        {
            "prompt": "support-agent",
            "label": "canary",
            "fromVersion": 4,
            "toVersion": 3,
            "at": rig.now,
            "actor": "admin-api",
            "reason": "answers in the wrong language",
            "rollout": 1,
        }
    ]


def test_pause_then_resume(rig: Rig, client: TestClient) -> None:
    rig.run(2)
    paused = client.post(f"/releases/{RELEASE}/pause", headers=AUTH)
    assert paused.status_code == 200
    assert paused.json()["phase"] == "paused"
    assert client.get(f"/releases/{RELEASE}", headers=AUTH).json()["resumePhase"] == "canary"
    resumed = client.post(f"/releases/{RELEASE}/resume", json={}, headers=AUTH)
    assert resumed.status_code == 200
    assert resumed.json()["phase"] == "canary"
    assert rig.release().phase is Phase.CANARY
    decision = rig.state.decisions(RELEASE)[-1]
    assert (decision.decision, decision.reason) == ("resume", "resume by admin-api")


def test_an_action_that_does_not_apply_is_a_conflict(rig: Rig, client: TestClient) -> None:
    rig.run(2)
    response = client.post(f"/releases/{RELEASE}/resume", headers=AUTH)
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "conflict",
            "message": "cannot resume release 'support': rollout 1 is canary",
        }
    }
    client.post(f"/releases/{RELEASE}/rollback", headers=AUTH)
    again = client.post(f"/releases/{RELEASE}/promote", headers=AUTH)
    assert again.status_code == 409
    assert "rolled_back" in again.json()["error"]["message"]
    assert rig.release().phase is Phase.ROLLED_BACK


def test_unknown_releases_and_actions_are_not_found(rig: Rig, client: TestClient) -> None:
    rig.run(1)
    for method, path in (
        ("GET", "/releases/nothing"),
        ("POST", "/releases/nothing/rollback"),
        ("POST", f"/releases/{RELEASE}/explode"),
        ("GET", "/no-such-route"),
    ):
        response = client.request(method, path, headers=AUTH)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"code", "message"}
    assert (
        client.post(f"/releases/{RELEASE}/explode", headers=AUTH).json()["error"]["code"]
        == "unknown_action"
    )


def test_a_release_without_a_policy_in_force_refuses_actions(rig: Rig, client: TestClient) -> None:
    rig.run(1)
    rig.policies.clear()
    response = client.post(f"/releases/{RELEASE}/rollback", headers=AUTH)
    assert response.status_code == 409
    assert "no policy in force" in response.json()["error"]["message"]
    listed = client.get("/releases", headers=AUTH).json()["releases"][0]
    assert listed["steps"] is None


@pytest.mark.parametrize(
    "body", [{"reason": 5}, {"reason": "x", "extra": True}, {"reason": "x" * 1001}]
)
def test_a_bad_body_is_refused(rig: Rig, client: TestClient, body: object) -> None:
    rig.run(1)
    response = client.post(f"/releases/{RELEASE}/pause", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert rig.release().phase is Phase.CANARY


def test_readiness_follows_the_polls_of_running_releases(rig: Rig, client: TestClient) -> None:
    rig.run(2)
    assert client.get("/readyz").status_code == 200
    rig.traffic.down = True
    rig.run(1)
    failed = client.get("/readyz")
    assert failed.status_code == 503
    assert failed.json()["error"] == {
        "code": "not_ready",
        "message": "the last poll failed: Langfuse answered 503",
    }
    rig.traffic.down = False
    rig.run(1)
    assert client.get("/readyz").status_code == 200
    rig.now += 301
    stale = client.get("/readyz")
    assert stale.status_code == 503
    assert "301s ago" in stale.json()["error"]["message"]


def test_a_finished_release_needs_no_polls_to_be_ready(rig: Rig, client: TestClient) -> None:
    rig.run(2)
    client.post(f"/releases/{RELEASE}/rollback", headers=AUTH)
    rig.traffic.down = True
    rig.now += 3600
    assert client.get("/readyz").status_code == 200


def test_a_finished_release_shows_the_evidence_of_its_last_logged_judgement(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, canary_share=0.5)
    try:
        rig.run(60, until=Phase.PAUSED)
        app = create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)
        with TestClient(app) as client:
            client.post(f"/releases/{RELEASE}/abort", headers=AUTH)
            rig.run(1)
            detail = client.get(f"/releases/{RELEASE}", headers=AUTH).json()
    finally:
        rig.close()
    assert detail["phase"] == "aborted"
    assert detail["judgementSource"] == "decision-log"
    assert detail["judgement"]["decision"] == "pause"
    assert {metric["name"] for metric in detail["judgement"]["metrics"]} == {
        "errors",
        "helpfulness",
    }


def test_unbounded_figures_become_null() -> None:
    assert finite({"a": [float("inf"), 1.5, float("nan")], "b": (float("-inf"),)}) == {
        "a": [None, 1.5, None],
        "b": [None],
    }
