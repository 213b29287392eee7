"""The approval rung: a rollout whose last step passed waits for a person before it is
promoted, still judged, and paused or rolled back when no one approves it in time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coalmine.cli import main
from coalmine.cli.releases import _time
from controller.admin import create_admin_app
from controller.errors import ManualActionError
from controller.lifecycle import ReleaseState
from policies import PolicyError, load_policy_text
from policies.domain import Phase
from tests.controller.release_rig import (
    MINUTE,
    POLICY,
    RELEASE,
    TOKEN,
    Rig,
    make_rig,
    serving,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG_ENOUGH = 400  # minutes: the rig's three 30-minute steps pass well within it


def approval(on_timeout: str = "pause", timeout: str = "2h") -> str:
    return POLICY + f"approval: {{timeout: {timeout}, onTimeout: {on_timeout}}}\n"


@pytest.fixture
def notified() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def rig(tmp_path: Path, notified: list[tuple[str, str]]) -> Iterator[Rig]:
    def notify(event: str, release: ReleaseState, reason: str) -> None:
        notified.append((event, release.phase.value))

    rig = make_rig(tmp_path, notify=notify)
    rig.policies[RELEASE] = load_policy_text(approval(), "support.yaml")
    yield rig
    rig.close()


def waiting(rig: Rig) -> ReleaseState:
    rig.run(LONG_ENOUGH, until=Phase.APPROVAL)
    release = rig.release()
    assert release.phase is Phase.APPROVAL, release
    return release


def decisions(rig: Rig) -> list[tuple[str, str]]:
    return [(d.decision, d.actor) for d in rig.state.decisions(RELEASE)]


def test_a_rollout_that_passed_every_step_waits_for_approval_untouched(
    rig: Rig, notified: list[tuple[str, str]]
) -> None:
    release = waiting(rig)
    assert release.approval_since == rig.now
    assert release.step == 2 and release.canary_weight == 50
    assert rig.labels.positions == {"production": 3, "canary": 4, "latest": 4}
    assert decisions(rig)[-1] == ("await_approval", "controller")
    assert ("await_approval", "approval") in notified
    table = rig.routing.read(RELEASE)
    assert table is not None and table.canary_weight == 50
    # the judge keeps looking, and keeps finding nothing wrong: the rollout still waits
    rig.run(60)
    assert rig.release().phase is Phase.APPROVAL
    assert rig.release().approval_since == release.approval_since
    assert decisions(rig)[-1][0] == "await_approval"


def test_an_approval_promotes_and_names_who_approved(
    rig: Rig, notified: list[tuple[str, str]]
) -> None:
    waiting(rig)
    promoted = rig.controller.manual(
        RELEASE, "approve", actor="admin-api (alice)", now=rig.now, reason="read 20 traces"
    )
    assert promoted.phase is Phase.PROMOTED
    assert rig.labels.positions["production"] == 4
    assert decisions(rig)[-1] == ("approve", "admin-api (alice)")
    moves = [(m.label, m.to_version, m.actor) for m in rig.state.label_moves(RELEASE)]
    assert ("production", 4, "admin-api (alice)") in moves
    assert notified[-1] == ("approve", "promoted")


def test_approve_is_refused_before_the_last_step_passed(rig: Rig) -> None:
    rig.run(5)
    assert rig.release().phase is Phase.CANARY
    with pytest.raises(ManualActionError, match="waits for approval once its last step passes"):
        rig.controller.manual(RELEASE, "approve", actor="admin-api", now=rig.now)
    assert rig.release().phase is Phase.CANARY


def test_no_approval_in_time_pauses_and_a_resume_waits_again(rig: Rig) -> None:
    since = waiting(rig).approval_since
    assert since is not None
    rig.run(200, until=Phase.PAUSED)
    paused = rig.release()
    assert paused.phase is Phase.PAUSED and paused.resume_phase is Phase.APPROVAL
    assert "no approval within 2h" in paused.reason
    assert rig.now - since == pytest.approx(2 * 3600, abs=MINUTE)
    assert rig.labels.positions["production"] == 3
    resumed = rig.controller.manual(RELEASE, "resume", actor="admin-api", now=rig.now)
    assert resumed.phase is Phase.APPROVAL and resumed.approval_since == rig.now
    rig.run(30)
    assert rig.release().phase is Phase.APPROVAL


def test_no_approval_in_time_rolls_back_when_the_policy_says_so(rig: Rig) -> None:
    rig.policies[RELEASE] = load_policy_text(approval("rollback", "30m"), "support.yaml")
    waiting(rig)
    rig.run(60, until=Phase.ROLLED_BACK)
    release = rig.release()
    assert release.phase is Phase.ROLLED_BACK
    assert "no approval within 30m" in release.reason
    assert rig.labels.positions == {"production": 3, "canary": 3, "latest": 4}
    table = rig.routing.read(RELEASE)
    assert table is not None and table.canary_weight == 0


def test_a_policy_without_approval_promotes_at_once(rig: Rig) -> None:
    rig.policies[RELEASE] = load_policy_text(POLICY, "support.yaml")
    rig.run(LONG_ENOUGH, until=Phase.PROMOTED)
    assert rig.release().phase is Phase.PROMOTED
    assert "await_approval" not in [decision for decision, _ in decisions(rig)]


def test_the_admin_api_approves_and_shows_the_wait(rig: Rig) -> None:
    app = create_admin_app(rig.controller, token=TOKEN, clock=rig.clock, poll_stale_after=300)
    with TestClient(app) as client:
        rig.run(1)
        refused = client.post(f"/releases/{RELEASE}/approve", headers=AUTH)
        assert refused.status_code == 409, refused.text
        since = waiting(rig).approval_since
        assert since is not None
        (listed,) = client.get("/releases", headers=AUTH).json()["releases"]
        assert listed["phase"] == "approval"
        assert listed["approval"] == {
            "since": since,
            "timeoutAt": since + 7200,
            "onTimeout": "pause",
            "queue": None,
            "reviewTraces": 0,
        }
        bad = client.post(
            f"/releases/{RELEASE}/approve", json={"by": "eve\nforged: yes"}, headers=AUTH
        )
        assert bad.status_code == 422, bad.text
        answer = client.post(
            f"/releases/{RELEASE}/approve",
            json={"by": "alice", "reason": "looked at the worst traces"},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["phase"] == "promoted"
        assert answer.json()["approval"] is None
        detail = client.get(f"/releases/{RELEASE}", headers=AUTH).json()
    last = detail["decisions"][-1]
    assert last["decision"] == "approve"
    assert last["actor"] == "admin-api (alice)"
    assert last["reason"] == "looked at the worst traces"


def test_coalmine_status_shows_the_wait_and_coalmine_approve_approves(
    rig: Rig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COALMINE_ADMIN_TOKEN_FILE", raising=False)
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("USER", "bob")
    waiting(rig)
    with serving(create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)) as url:
        assert main(["status", RELEASE, "--admin-url", url]) == 0
        shown = capsys.readouterr().out
        assert f"waits for approval since {_time(rig.now)}: `coalmine approve {RELEASE}`" in shown
        assert f"without it paused at {_time(rig.now + 7200)}" in shown
        assert main(["approve", RELEASE, "--admin-url", url, "--reason", "fine"]) == 0
        assert "promoted" in capsys.readouterr().out
    assert decisions(rig)[-1] == ("approve", "admin-api (bob)")


def test_a_queue_whose_values_both_approve_and_reject_is_refused() -> None:
    text = POLICY + (
        "approval:\n  queue: {name: q, scoreConfigId: c, approveValues: [ok, fine], "
        "rejectValues: [nope, ok]}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "support.yaml")
    issue = caught.value.issues[0]
    assert issue.path == "approval.queue.rejectValues", str(issue)
    assert "also in approveValues: ok" in issue.message
