"""The analysis endpoint and the Flagger webhook gates, against a real controller on a
state file driven by a fake clock: the verdict an external rollout acts on, from no
rollout to a rolled-back or a promoted one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.admin import MAX_WEBHOOK_BODY, create_admin_app
from controller.analysis import Question, verdict_of
from controller.judge import Verdict
from controller.lifecycle import ReleaseState
from controller.loop import Controller
from controller.samples import Cursors, Poll
from policies import Policy, load_policy_text
from policies.domain import Arm, Phase
from tests.controller.release_rig import POLICY, RELEASE, TOKEN, Rig, Traffic, make_rig

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLAGGER = {"name": "support-agent", "namespace": "llm", "phase": "Progressing", "checksum": "c1"}


@dataclass
class WorseCanary(Traffic):
    """The rig's traffic, with the canary's helpfulness ``drop`` below the baseline's."""

    drop: float = 0.25

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        poll = super().poll(releases, cursors, now)
        canary = {trace.trace_id for trace in poll.traces if trace.arm is Arm.CANARY}
        scores = tuple(
            replace(score, value=max(0.0, float(score.value) - self.drop))
            if score.trace_id in canary
            else score
            for score in poll.scores
        )
        return replace(poll, scores=scores)


def with_worse_canary(rig: Rig) -> Rig:
    rig.traffic = WorseCanary(rig.routing)
    rig.controller.source = rig.traffic
    return rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    yield rig
    rig.close()


@pytest.fixture
def client(rig: Rig) -> Iterator[TestClient]:
    app = create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)
    with TestClient(app) as client:
        yield client


def analysis(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get(f"/analysis/{RELEASE}", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def gate(client: TestClient, name: str, **params: Any) -> int:
    """The status code Flagger gets from a gate, authenticated by ``metadata.token`` as
    the example Canary does."""
    body = {**FLAGGER, "metadata": {"token": TOKEN}}
    response = client.post(f"/analysis/{RELEASE}/webhook/{name}", json=body, params=params)
    return response.status_code


def run_until(rig: Rig, phase: Phase, minutes: int = 400) -> None:
    rig.run(minutes, until=phase)
    assert rig.release().phase is phase, rig.release().reason


# -- the verdict through a rollout ---------------------------------------------------------


def test_nodata_before_a_rollout(rig: Rig, client: TestClient) -> None:
    rig.labels.move("support-agent", "canary", 3)  # no candidate: the release waits
    rig.run(1)
    answer = analysis(client)
    assert (answer["verdict"], answer["phase"], answer["rollout"]) == ("nodata", "pending", None)
    assert "waiting for a candidate" in answer["reason"]
    assert answer["metrics"] == []
    assert answer["decision"] is None
    assert (gate(client, "rollout"), gate(client, "promotion")) == (200, 409)


def test_early_the_rollout_is_inconclusive_with_its_evidence(rig: Rig, client: TestClient) -> None:
    rig.run(1)
    started = analysis(client)
    assert (started["verdict"], started["phase"], started["rollout"]) == (
        "nodata",
        "canary",
        1,
    )
    assert started["reason"] == "rollout 1 has no judgement yet"
    rig.run(3)
    answer = analysis(client)
    assert (answer["verdict"], answer["decision"], answer["judgementSource"]) == (
        "inconclusive",
        "continue",
        "live",
    )
    assert (answer["step"], answer["steps"], answer["canaryWeight"]) == (1, 3, 10.0)
    assert answer["at"] == rig.now
    assert answer["versions"] == ["4"]
    assert answer["reason"].startswith("rollout 1: waiting: minDuration")
    metrics = {metric["name"]: metric for metric in answer["metrics"]}
    assert set(metrics) == {"errors", "helpfulness"}
    for metric in metrics.values():
        assert set(metric) == {
            "name",
            "verdict",
            "critical",
            "scale",
            "estimate",
            "lower",
            "upper",
            "nBaseline",
            "nCanary",
        }
        assert metric["critical"] is True
        assert metric["verdict"] != "pass"
        assert metric["lower"] <= metric["estimate"] <= metric["upper"]
        assert metric["nBaseline"] > metric["nCanary"] > 0
    assert (gate(client, "rollout"), gate(client, "promotion")) == (200, 409)


def test_a_worse_canary_fails_and_closes_both_gates(tmp_path: Path) -> None:
    rig = with_worse_canary(make_rig(tmp_path))
    try:
        with TestClient(create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)) as client:
            rig.run(2)
            assert analysis(client)["verdict"] in ("nodata", "inconclusive")
            assert gate(client, "rollout") == 200
            run_until(rig, Phase.ROLLED_BACK, minutes=120)
            answer = analysis(client)
            assert (answer["verdict"], answer["decision"], answer["phase"]) == (
                "fail",
                "rollback",
                "rolled_back",
            )
            assert answer["reason"].startswith("rollout 1 was rolled back: critical metric")
            helpfulness = next(m for m in answer["metrics"] if m["name"] == "helpfulness")
            assert helpfulness["verdict"] == "fail"
            assert helpfulness["upper"] < -0.05  # shown worse than its tolerance
            rollout = client.post(
                f"/analysis/{RELEASE}/webhook/rollout",
                json={**FLAGGER, "metadata": {"token": TOKEN}},
            )
            assert rollout.status_code == 409
            assert rollout.json()["error"]["code"] == "canary_failed"
            assert rollout.json()["verdict"] == "fail"
            assert "rolled back" in rollout.json()["error"]["message"]
            assert gate(client, "promotion") == 409
    finally:
        rig.close()


def test_a_good_canary_passes_each_step_then_the_rollout(rig: Rig, client: TestClient) -> None:
    for _ in range(400):
        rig.run(1)
        if rig.release().step == 1:
            break
    assert rig.release().step == 1, rig.release().reason
    assert analysis(client, step=1)["verdict"] == "pass"
    assert analysis(client, step=1)["reason"] == "rollout 1 has passed step 1: it is at step 2"
    assert analysis(client, step=2)["verdict"] == "inconclusive"
    assert analysis(client, step=3)["verdict"] == "inconclusive"
    assert analysis(client)["verdict"] == "inconclusive"
    assert (gate(client, "rollout", step=1), gate(client, "promotion", step=1)) == (200, 200)
    assert gate(client, "promotion") == 409

    run_until(rig, Phase.PROMOTED)
    answer = analysis(client)
    assert (answer["verdict"], answer["phase"], answer["decision"]) == (
        "pass",
        "promoted",
        "promote",
    )
    assert all(metric["verdict"] == "pass" for metric in answer["metrics"])
    for step in (None, 1, 3):
        params = {} if step is None else {"step": step}
        assert analysis(client, **params)["verdict"] == "pass"
    assert (gate(client, "rollout"), gate(client, "promotion")) == (200, 200)
    opened = client.post(
        f"/analysis/{RELEASE}/webhook/promotion", json={**FLAGGER, "metadata": {"token": TOKEN}}
    ).json()
    assert (opened["gate"], opened["open"], opened["verdict"], opened["rollout"]) == (
        "promotion",
        True,
        "pass",
        1,
    )


def test_a_paused_rollout_is_inconclusive(rig: Rig, client: TestClient) -> None:
    rig.run(3)
    client.post(f"/releases/{RELEASE}/pause", json={"reason": "looking"}, headers=AUTH)
    answer = analysis(client)
    assert (answer["verdict"], answer["phase"]) == ("inconclusive", "paused")
    assert answer["reason"].startswith("rollout 1 is paused")
    assert (gate(client, "rollout"), gate(client, "promotion")) == (200, 409)


def test_a_manual_rollback_fails_and_a_manual_promotion_passes(
    rig: Rig, client: TestClient
) -> None:
    rig.run(3)
    client.post(f"/releases/{RELEASE}/rollback", headers=AUTH)
    assert analysis(client)["verdict"] == "fail"
    rig.labels.move("support-agent", "canary", 5)
    rig.run(1)
    second = analysis(client)
    assert (second["rollout"], second["verdict"], second["versions"]) == (2, "nodata", ["5"])
    client.post(f"/releases/{RELEASE}/promote", headers=AUTH)
    assert analysis(client)["verdict"] == "pass"


# -- which rollout the answer is about ------------------------------------------------------


def test_the_version_asked_about_must_be_the_one_judged(rig: Rig, client: TestClient) -> None:
    rig.run(3)
    assert analysis(client, version="4")["verdict"] == "inconclusive"
    other = analysis(client, version="5")
    assert other["verdict"] == "nodata"
    assert other["reason"] == (
        "rollout 1 judges 4, not 5: coalmine has not started judging that version"
    )
    client.post(f"/releases/{RELEASE}/promote", headers=AUTH)
    # a promoted rollout passes for its own version only: a newer build the external
    # rollout moves to is not judged yet, and must not ride on the last one's pass
    assert analysis(client, version="4")["verdict"] == "pass"
    assert analysis(client, version="5")["verdict"] == "nodata"
    assert gate(client, "promotion", version="5") == 409


def test_an_agent_release_is_asked_about_by_its_target_version(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    try:
        text = POLICY.replace(
            '  upstreams: {stable: "http://127.0.0.1:9"}',
            '  upstreams: {stable: "http://127.0.0.1:9", canary: "http://127.0.0.1:10"}\n'
            '  version: "1.4.3"',
        ).replace(
            "  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}\n", ""
        )
        rig.policies[RELEASE] = load_policy_text(text, "support.yaml")
        rig.run(3)
        with TestClient(create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)) as client:
            answer = analysis(client, version="1.4.3")
            assert (answer["verdict"], answer["versions"]) == ("inconclusive", ["1.4.3"])
            assert analysis(client, version="1.4.4")["verdict"] == "nodata"
    finally:
        rig.close()


def test_after_a_restart_the_answer_comes_from_the_decision_log(
    rig: Rig, client: TestClient
) -> None:
    run_until(rig, Phase.PROMOTED)
    restarted = Controller(
        state=rig.state,
        routing=rig.routing,
        source=rig.traffic,
        labels=rig.labels,
        policies=lambda: rig.policies,
    )
    with TestClient(create_admin_app(restarted, token=TOKEN, clock=rig.clock)) as fresh:
        answer = analysis(fresh)
        assert (answer["verdict"], answer["judgementSource"], answer["decision"]) == (
            "pass",
            "decision-log",
            "promote",
        )
        assert {metric["name"] for metric in answer["metrics"]} == {"errors", "helpfulness"}
        # the next rollout never answers with the last one's evidence
        rig.labels.move("support-agent", "canary", 5)
        restarted.tick(rig.now + 60)
        next_one = analysis(fresh)
        assert (next_one["rollout"], next_one["verdict"], next_one["metrics"]) == (2, "nodata", [])
        assert next_one["judgementSource"] is None


# -- requests -------------------------------------------------------------------------------


def test_an_unknown_release_or_gate_is_not_found(rig: Rig, client: TestClient) -> None:
    rig.run(1)
    assert client.get("/analysis/nothing", headers=AUTH).status_code == 404
    body = {**FLAGGER, "metadata": {"token": TOKEN}}
    missing = client.post("/analysis/nothing/webhook/rollout", json=body)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    for name in ("confirm-rollout", "rollback", "pre-rollout"):
        response = client.post(f"/analysis/{RELEASE}/webhook/{name}", json=body)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_gate"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
)
def test_the_analysis_needs_the_token(
    rig: Rig, client: TestClient, headers: dict[str, str]
) -> None:
    rig.run(1)
    response = client.get(f"/analysis/{RELEASE}", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    hook = client.post(f"/analysis/{RELEASE}/webhook/rollout", json=FLAGGER, headers=headers)
    assert hook.status_code == 401
    assert hook.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "body",
    [
        {**FLAGGER, "metadata": {"token": "wrong"}},
        {**FLAGGER, "metadata": {"token": TOKEN + "x"}},
        {**FLAGGER, "metadata": {"other": TOKEN}},
        {**FLAGGER, "token": TOKEN},
        {**FLAGGER, "metadata": TOKEN},
        [TOKEN],
    ],
)
def test_a_webhook_without_the_token_is_refused(rig: Rig, client: TestClient, body: Any) -> None:
    rig.run(1)
    response = client.post(f"/analysis/{RELEASE}/webhook/rollout", json=body)
    assert response.status_code == 401


def test_a_webhook_takes_the_token_from_either_place(rig: Rig, client: TestClient) -> None:
    rig.run(1)
    by_header = client.post(f"/analysis/{RELEASE}/webhook/rollout", json=FLAGGER, headers=AUTH)
    assert by_header.status_code == 200
    without_body = client.post(f"/analysis/{RELEASE}/webhook/rollout", headers=AUTH)
    assert without_body.status_code == 200
    newer_flagger = {**FLAGGER, "metadata": {"token": TOKEN}, "someNewField": {"x": 1}}
    assert (
        client.post(f"/analysis/{RELEASE}/webhook/rollout", json=newer_flagger).status_code == 200
    )


def test_an_unauthenticated_caller_learns_nothing_from_a_malformed_body(
    rig: Rig, client: TestClient
) -> None:
    rig.run(1)
    url = f"/analysis/{RELEASE}/webhook/rollout"
    assert client.post(url, content=b"{not json").status_code == 401
    malformed = client.post(url, content=b"{not json", headers=AUTH)
    assert malformed.status_code == 422
    assert malformed.json()["error"] == {
        "code": "invalid_request",
        "message": "the body is not JSON",
    }
    wrong_type = client.post(url, json={**FLAGGER, "metadata": {"token": TOKEN, "n": 1}})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["error"]["message"].startswith("metadata.n:")
    huge = client.post(url, content=b" " * (MAX_WEBHOOK_BODY + 1), headers=AUTH)
    assert huge.status_code == 413


# -- the verdict rules, case by case ---------------------------------------------------------


def state(phase: Phase, **fields: Any) -> ReleaseState:
    defaults: dict[str, Any] = {"rollout": 1, "step_starts": (0.0,), "candidate_version": 4}
    return ReleaseState(name=RELEASE, phase=phase, **{**defaults, **fields})


def judgement(decision: str = "continue", verdict: str = "inconclusive") -> dict[str, Any]:
    return {
        "at": 60.0,
        "decision": decision,
        "reason": "waiting",
        "metrics": [{"name": "helpfulness", "verdict": verdict, "critical": True}],
    }


POLICY_3 = load_policy_text(POLICY, "support.yaml")


@pytest.mark.parametrize(
    ("release", "judged", "step", "expected"),
    [
        (state(Phase.APPROVAL, step=2), judgement(verdict="pass"), None, Verdict.INCONCLUSIVE),
        (state(Phase.APPROVAL, step=2), judgement(verdict="pass"), 2, Verdict.PASS),
        (state(Phase.APPROVAL, step=2), judgement(verdict="pass"), 3, Verdict.INCONCLUSIVE),
        (state(Phase.ABORTED), judgement(), None, Verdict.INCONCLUSIVE),
        (state(Phase.ABORTED, step=2), judgement(), 1, Verdict.INCONCLUSIVE),
        (state(Phase.SHADOW, step_starts=()), None, None, Verdict.NODATA),
        (state(Phase.CANARY), judgement("rollback", "fail"), None, Verdict.FAIL),
        (state(Phase.CANARY), judgement("pause", "fail"), None, Verdict.FAIL),
        (state(Phase.PAUSED, step=1), judgement("pause"), 1, Verdict.PASS),
        (state(Phase.PAUSED, step=1), judgement("pause"), 2, Verdict.INCONCLUSIVE),
        (state(Phase.CANARY, step=2), None, 1, Verdict.PASS),
        (state(Phase.CANARY), None, None, Verdict.NODATA),
    ],
)
def test_the_verdict_rules(
    release: ReleaseState, judged: dict[str, Any] | None, step: int | None, expected: Verdict
) -> None:
    assert verdict_of(release, POLICY_3, judged, Question(step=step)).verdict is expected


def test_a_promotion_the_judge_decided_but_the_controller_holds_does_not_pass() -> None:
    # the loop promotes in the tick the judge decides, unless the evidence was not read
    # up to date: then the phase stays canary, and the external rollout must wait too
    held = verdict_of(
        state(Phase.CANARY, step=2), POLICY_3, judgement("promote", "pass"), Question()
    )
    assert held.verdict is Verdict.INCONCLUSIVE


READER = "analysis-only-token-0123456789abcdef"


def test_the_analysis_token_opens_the_analysis_and_nothing_else(rig: Rig) -> None:
    app = create_admin_app(rig.controller, token=TOKEN, analysis_token=READER, clock=rig.clock)
    rig.run(1)
    reader = {"Authorization": f"Bearer {READER}"}
    with TestClient(app) as client:
        assert client.get(f"/analysis/{RELEASE}", headers=reader).status_code == 200
        assert client.get(f"/analysis/{RELEASE}", headers=AUTH).status_code == 200
        hook = {**FLAGGER, "metadata": {"token": READER}}
        assert client.post(f"/analysis/{RELEASE}/webhook/rollout", json=hook).status_code == 200
        # never the releases' routes, manual actions or the dashboard's data
        assert client.get("/releases", headers=reader).status_code == 401
        paused = client.post(f"/releases/{RELEASE}/pause", headers=reader, json={})
        assert paused.status_code == 401
    assert rig.release().phase is not Phase.PAUSED
